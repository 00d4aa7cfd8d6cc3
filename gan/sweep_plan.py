"""A sweep's plan, read before any job runs: its jobs as Hydra's basic sweeper numbers them, and
the refusal of a sweep that Hydra would end at its first job (an option that does not exist, a
job directory name too long for the file system)."""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import DictConfig, OmegaConf

from gan.errors import UserError
from gan.population.enrollment import check_sweep_options

NAME_MAX = 255  # the longest file name most file systems take


def check_sweep(config: DictConfig) -> None:
    """Refuses, before any job, a sweep that Hydra would end at its first job: an option that does
    not exist in a sweep list (``-m init=foo,default``), a job directory whose name (made of
    the job's overrides) is too long for the file system, or an out-of-range option of the
    population launcher."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from gan.config import CONF_DIR

    check_sweep_options(config)
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    try:
        parsed = OverridesParser.create().parse_overrides(arguments)
    except Exception:  # noqa: BLE001 - Hydra reports its own parse errors
        return
    for override in parsed:
        group = override.key_or_group
        if group.startswith("hydra") or not (CONF_DIR / group).is_dir():
            continue
        for value in values_of(override):
            if value not in ("null", "None") and not (CONF_DIR / group / f"{value}.yaml").is_file():
                options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
                raise UserError(
                    f"{group}={value} in this sweep: there is no such option (conf/{group}/"
                    f"{value}.yaml); the options are {', '.join(options)}. Fix the sweep list; "
                    "no job was started"
                )
    _check_job_dir_names(config, parsed)


def values_of(override: Any) -> list[str]:
    """A parsed override's values as written: each of a sweep list's, or its one."""
    if override.is_discrete_sweep():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def _check_job_dir_names(config: DictConfig, parsed: list) -> None:
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    try:
        subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir", "")
        if "override_dirname" not in str(subdir):
            return
        naming = config.hydra.job.config.override_dirname
        (jobs,) = BasicSweeper.split_arguments(parsed, None)
        longest = max(
            len(
                get_overrides_dirname(
                    parser.parse_overrides(job),
                    list(naming.exclude_keys),
                    naming.item_sep,
                    naming.kv_sep,
                )
            )
            for job in jobs
        )
    except Exception:  # noqa: BLE001 - sweeps of other kinds: Hydra names their directories
        return
    if longest + 8 > NAME_MAX:  # a job's directory is <number>_<its overrides>
        raise UserError(
            f"this sweep's job directories would be named after their overrides, up to "
            f"{longest} characters, more than the {NAME_MAX} a file name may have; shorten the "
            "overrides (e.g. a long widths list), or name the jobs by number: "
            "hydra.sweep.subdir='${hydra.job.num}'. No job was started"
        )


def planned_jobs(config: DictConfig) -> list[str] | None:
    """Every job's overrides (comma-separated) as Hydra's basic sweeper numbers them, or None for
    another sweeper."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = OmegaConf.select(config, "hydra.sweeper", default=None) or {}
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    try:
        parsed = OverridesParser.create().parse_overrides(arguments)
        (jobs,) = BasicSweeper.split_arguments(parsed, None)
    except Exception:  # noqa: BLE001 - glob sweeps need Hydra's config loader: no list then
        return None
    return [",".join(job) for job in jobs]

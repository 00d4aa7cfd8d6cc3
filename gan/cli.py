"""Train one GAN: `gan-train init=he_xavier`, or `python train.py init=he_xavier` in a checkout
(Hydra; `-m` sweeps, e.g. seed=0,1,2). Hydra's entry point, resume and a sweep's failed jobs;
the run itself is ``gan.run``."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import yaml
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from gan import checkpoint, console, faults, files, record, sweep_outcomes, sweeps, tracking
from gan.config import CONF_DIR, RunConfig, run_config
from gan.errors import RunFailed, UserError, exits_on_user_error, report_user_error
from gan.files import atomic_file
from gan.key_hint import unknown_key_hint
from gan.record import Status
from gan.run import run
from gan.signals import (
    START_UP_INTERRUPTED,
    Interrupted,
    Preempted,
    take_late_signal,
    take_signal_outside_runs,
)

log = logging.getLogger("train")


def to_run_config(cfg: DictConfig, hydra_cfg: DictConfig, out_dir: Path) -> RunConfig:
    """The one conversion from Hydra's config to the typed objects the library takes."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
        if hydra_cfg.mode == RunMode.MULTIRUN and cfg.logger.sweep_id is None:
            # Every job of a sweep sits in the sweep's directory: its name identifies the sweep.
            cfg.logger.sweep_id = "-".join(Path(out_dir).parent.parts[-2:])
        elif cfg.logger.sweep_id is None and os.environ.get("WANDB_SWEEP_ID"):
            cfg.logger.sweep_id = os.environ["WANDB_SWEEP_ID"]  # a run of `wandb agent`
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "a value"
        raise UserError(
            f"{key}: its value cannot be resolved ({str(err).splitlines()[0]}); give it a plain "
            "value, or define what its ${...} refers to"
        ) from None
    return run_config(
        plain,
        out_dir=out_dir,
        init_choice=hydra_cfg.runtime.choices["init"],
        init_overrides=[o for o in hydra_cfg.overrides.task if o.lstrip("+~").startswith("init.")],
        overrides=[o for o in hydra_cfg.overrides.task if not o.startswith("resume=")],
        scheme_dir=CONF_DIR / "init",
    )


def resumed_config(resume: str, hydra_cfg: DictConfig) -> tuple[DictConfig, DictConfig, Path]:
    """The config of the run in ``resume``: its own overrides, then this command's (which win).

    `python train.py resume=DIR` needs nothing else; `resume=DIR trainer.steps=20000` extends it.
    The library refuses overrides that would change the run's seed, model, dataset or init.
    """
    run_dir = Path(resume)
    checkpoint.require(run_dir)  # first: a run that never started has overrides that fail
    saved = run_dir / record.OVERRIDES_FILE
    if not saved.is_file():
        raise UserError(
            f"resume={resume}: not a run directory of train.py (no {record.OVERRIDES_FILE} there)"
        )
    summary, own = saved_overrides(run_dir)
    now = [o for o in hydra_cfg.overrides.task if not o.startswith("resume=")]
    # Quoted: a sweep's job directory is named like `0_seed=7,trainer.lr=0.001`.
    again = [*own, *now, f"resume={checkpoint.hydra_value(resume)}"]
    try:
        cfg = compose("config", overrides=again, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(
            f"resume={resume}: the run's overrides and this command's do not compose "
            f"({str(err).splitlines()[0][:300]}); fix the overrides, or start a new run"
        ) from None
    if cfg.logger.sweep_id is None:  # a sweep's job keeps its sweep's id
        cfg.logger.sweep_id = summary.get("sweep_id")
    return cfg, cfg.hydra, run_dir


def saved_overrides(run_dir: Path) -> tuple[dict, list[str]]:
    """The run's summary.json ({} if none) and its own overrides: summary.json keeps them, as
    Hydra replaces .hydra/overrides.yaml with this command's when the resume runs in the run dir
    itself (hydra.run.dir=DIR). A UserError if either file is not what train.py wrote."""
    files_named = f"{record.SUMMARY_FILE} or {record.OVERRIDES_FILE}"
    summary_file = record.Summary(run_dir)
    try:
        summary = summary_file.load() if summary_file.exists() else {}
        own = summary.get("overrides") or list(OmegaConf.load(run_dir / record.OVERRIDES_FILE))
    except record.NotASummary:
        own = None
    except (OSError, ValueError, TypeError, OmegaConfBaseException, yaml.YAMLError) as err:
        raise UserError(
            f"resume={run_dir}: its {files_named} is not what train.py writes "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); restore them, or start a "
            "new run"
        ) from None
    if own is None or not all(isinstance(o, str) for o in own):
        raise UserError(
            f"resume={run_dir}: its {files_named} does not list the run's overrides as train.py "
            "writes them; restore them, or start a new run"
        )
    return summary, own


@contextmanager
def run_dir_log(out_dir: Path) -> Iterator[None]:
    """A resumed run's lines also go to its own train.log (Hydra's goes to this invocation's)."""
    if Path(HydraConfig.get().runtime.output_dir).resolve() == out_dir.resolve():
        yield
        return
    with console.train_log(out_dir, logging.getLogger()):
        yield


def record_resumed_config(cfg: DictConfig, run_dir: Path) -> None:
    """A resumed run's own .hydra files say what it now runs (e.g. the raised trainer.steps), so
    the report's settings guard and the next resume read the truth."""
    task = [o for o in cfg.hydra.overrides.task if not o.startswith("resume=")]
    plain = cfg.copy()
    with open_dict(plain):
        plain.pop("hydra", None)
    for name, content in (
        (record.CONFIG_FILE, plain),
        (record.OVERRIDES_FILE, OmegaConf.create(task)),
    ):
        with atomic_file(run_dir / name) as f:
            f.write(OmegaConf.to_yaml(content).encode())
    files.keep_current(run_dir)  # what a process refused meanwhile would put back


# An absolute path: the configs of a checkout or of the installed package (gan.config.CONF_DIR).
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
@exits_on_user_error
def main(cfg: DictConfig) -> dict | None:
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return sweep_job(cfg, hydra_cfg, out_dir)
    try:
        resumed = cfg.resume is not None
        if resumed:
            cfg, hydra_cfg, out_dir = resumed_config(cfg.resume, hydra_cfg)
        with run_dir_log(out_dir):
            on_accepted = (lambda: record_resumed_config(cfg, out_dir)) if resumed else None
            return run(to_run_config(cfg, hydra_cfg, out_dir), on_accepted=on_accepted)
    except (Preempted, Interrupted) as stop:
        log.error("preempted: %s", stop)
        raise SystemExit(stop.exit_code) from None


def sweep_job(cfg: DictConfig, hydra_cfg: DictConfig, out_dir: Path) -> dict | None:
    """One job of a multirun: its failure is a result (the sweep goes on), a signal stops the
    whole sweep (``gan.sweeps``), and a job an earlier launch of the sweep finished is kept, one
    it stopped resumes from its checkpoint."""
    sweep_dir = Path(hydra_cfg.sweep.dir)
    faults.point("sweep_job")
    between = take_signal_outside_runs()  # to this worker since its last job: the sweep stops
    if between is not None:
        name = signal.Signals(between).name
        sweeps.request_stop(sweep_dir, between, f"{name} to a worker (pid {os.getpid()})")
    sweeps.watch_sweep(sweep_dir)  # under a launcher that did not start it with the worker
    why_not = sweeps.why_not_start(sweep_dir)
    if why_not:
        log.warning("not started: %s", why_not)
        sweep_outcomes.discard_unstarted(out_dir)
        return None
    earlier = previous_summary(out_dir)
    if earlier.get("status") in record.FINAL:
        log.info("%s: kept, %s in an earlier launch of this sweep", out_dir, earlier["status"])
        return earlier
    try:
        with sweeps.job_in_progress():
            run_cfg = to_run_config(cfg, hydra_cfg, out_dir)
            if earlier and (out_dir / record.CHECKPOINT_FILE).is_file():
                run_cfg = dataclasses.replace(run_cfg, resume=True)  # stopped or killed before
            summary = run(run_cfg)
        # Came after the last step (or after the run): the job is done, the sweep stops.
        late = take_late_signal() or take_signal_outside_runs()
        if late is not None:
            name = signal.Signals(late).name
            sweeps.request_stop(sweep_dir, late, f"{name} in job {out_dir.name}, at its end")
        return summary
    except (Preempted, Interrupted) as stop:
        log.error("preempted: %s", stop)
        name = signal.Signals(stop.exit_code - 128).name
        sweeps.request_stop(sweep_dir, stop.exit_code - 128, f"{name} in job {out_dir.name}")
        return previous_summary(out_dir)
    except files.ClaimRefused as err:  # the directory and its summary are another process's
        report_user_error(err)
        return None
    except RunFailed as err:  # its run recorded it failed
        report_user_error(err)
        return previous_summary(out_dir)
    except UserError as err:
        report_user_error(err)
        return sweep_outcomes.job_failed(out_dir, Status.invalid, err)
    except Exception as err:  # noqa: BLE001 - a sweep outlives one job's crash, and says so
        log.exception("job failed: %s", err)
        return sweep_outcomes.job_failed(out_dir, Status.failed, err)


def previous_summary(out_dir: Path) -> dict:
    """The job's summary.json as an earlier launch (or this one) left it; {} if none."""
    return record.Summary(out_dir).read()


class RunDirCheck(Callback):
    """Before Hydra makes a single run's directory: a name it cannot resolve or make is one
    paragraph and exit 2, not Hydra's error (registered in conf/config.yaml)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        HydraConfig.instance().set_config(config)  # as Hydra's run_job does next: ${hydra:…}
        try:
            run_dir = OmegaConf.select(config, "hydra.run.dir", throw_on_resolution_failure=True)
            files.check_new_directory(Path(str(run_dir)), "hydra.run.dir")
        except OmegaConfBaseException as err:
            why = str(err).splitlines()[0]
            self._refuse(
                f"the run directory's name cannot be resolved ({why}); every value it is made "
                "of (the seed, the init, the time) must resolve: fix the override, or give "
                "hydra.run.dir=DIR"
            )
        except UserError as err:
            self._refuse(str(err))

    @staticmethod
    def _refuse(message: str) -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2)


def cli() -> None:
    """`gan-train` and `python train.py`: Hydra's main, and a single line for Ctrl-C before
    the run's own signal handling starts."""
    tracking.own_wandb_service()
    try:
        main()
    except KeyboardInterrupt:  # before the run's own signal handling (imports, composition)
        print(START_UP_INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    except SystemExit as stop:  # Hydra refused the command line, or a sweep had failed jobs
        hint = unknown_key_hint(sys.argv[1:]) if stop.code == 1 else None
        if hint:
            print(hint, file=sys.stderr)
        raise

"""`python -m gan.dashboard`: a saved W&B workspace that compares init arms.

Runs are grouped by arm (their W&B group: ``<setting>/<arm>`` for runs of a named setting or of
setting-changing overrides, so that settings stay apart) and, with ``--sweep ID``, limited to one
sweep (the tag ``sweep:ID`` every job of a sweep carries). Sections: the training metrics, the
evaluation, and the per-layer diagnostics (one panel per network and statistic, a line per layer).
The x-axis is W&B's Step, which is the trainer step in these runs. ``--dry-run`` prints the layout
and uses no network. Needs the ``dashboard`` extra: ``pip install 'gan-init[dashboard]'``
(wandb-workspaces).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf

from gan import quality
from gan.config import CONF_DIR, SWEEP_TAG_PREFIX
from gan.diagnostics import (
    ACT_MEAN,
    ACT_STD,
    DEAD_FRAC,
    DIAG_PREFIX,
    GRAD_NORM,
    LOG_SCALE,
    SATURATED_FRAC,
    WEIGHT_STD,
)
from gan.errors import UserError, exits_on_user_error
from gan.report.columns import TRAINING_CURVES
from gan.tracking import has_wandb_credentials

TRAINING = TRAINING_CURVES  # the same panels as the report's training curves
EVALUATION = (quality.FCD, quality.KCD, quality.CLASSES_COVERED, quality.CLASS_KL)
NETWORKS = ("G", "D")
# The statistics of gan.diagnostics.AGGREGATION, in panel order (a test keeps the two in step).
DIAGNOSTICS = (ACT_STD, ACT_MEAN, DEAD_FRAC, SATURATED_FRAC, GRAD_NORM, WEIGHT_STD)
PINNED_COLUMNS = [
    f"summary:{quality.FCD_BEST}",
    f"summary:{quality.FCD_BEST_STEP}",
    "summary:status",
]
MAX_RUNS = 100  # per panel; W&B's default of 10 would hide most of an ablation's runs
NO_ENTITY = "<your default entity>"  # what a dry run without --entity shows


def _libraries() -> tuple[Any, Any, Any]:
    """(workspaces, reports, expr) from wandb-workspaces, or a UserError saying how to install."""
    try:
        import wandb_workspaces.reports.v2 as reports
        import wandb_workspaces.workspaces as workspaces
        from wandb_workspaces import expr
    except ImportError:
        raise UserError(
            "the dashboard needs the wandb-workspaces package: "
            "pip install 'gan-init[dashboard]' (or pip install wandb-workspaces)"
        ) from None
    return workspaces, reports, expr


def _line(reports: Any, title: str, **panel: Any) -> Any:
    # Grouped runs draw as their mean with a standard-error band.
    return reports.LinePlot(
        title=title, x="Step", groupby_aggfunc="mean", groupby_rangefunc="stderr", **panel
    )


def sections(workspaces: Any, reports: Any) -> list[Any]:
    """The workspace's sections: training, evaluation, per-layer diagnostics."""
    per_layer = [
        _line(
            reports,
            f"{network} {statistic} per layer",
            metric_regex=f"^{DIAG_PREFIX}{network}/.+/{statistic}$",
            log_y=True if statistic in LOG_SCALE else None,
        )
        for network in NETWORKS
        for statistic in DIAGNOSTICS
    ]
    return [
        workspaces.Section(
            name="Training",
            panels=[_line(reports, key, y=[key]) for key in TRAINING],
            is_open=True,
        ),
        workspaces.Section(
            name="Evaluation",
            panels=[_line(reports, key, y=[key]) for key in EVALUATION],
            is_open=True,
        ),
        workspaces.Section(name="Per-layer diagnostics", panels=per_layer, is_open=True),
    ]


def build_workspace(entity: str, project: str, sweep: str | None = None) -> Any:
    """The workspace (not saved): runs grouped by arm, filtered to ``sweep`` when given."""
    workspaces, reports, expr = _libraries()
    runs = workspaces.RunsetSettings(
        groupby=[expr.Metric("Group")],  # the W&B group: the init arm, after its setting
        filters=[expr.Tags().isin([f"{SWEEP_TAG_PREFIX}{sweep}"])] if sweep else "",
        pinned_columns=list(PINNED_COLUMNS),
    )
    return workspaces.Workspace(
        entity=entity,
        project=project,
        name=f"gan-init: sweep {sweep}" if sweep else "gan-init: init arms",
        sections=sections(workspaces, reports),
        settings=workspaces.WorkspaceSettings(max_runs=MAX_RUNS),
        runset_settings=runs,
    )


def layout(workspace: Any) -> str:
    """The workspace as text: where, which runs, and each section's panels."""
    runs = workspace.runset_settings
    lines = [
        f"workspace {workspace.name!r} in {workspace.entity}/{workspace.project}",
        f"runs: grouped by {', '.join(g.name for g in runs.groupby)} "
        "(the init arm, after what makes its setting); "
        f"filter: {runs.filters or 'none (every run of the project)'}",
        f"columns: {', '.join(runs.pinned_columns)}",
    ]
    for section in workspace.sections:
        lines.append(f"section {section.name!r}:")
        for panel in section.panels:
            metrics = panel.metric_regex or ", ".join(panel.y)
            scale = ", log y" if panel.log_y else ""
            lines.append(f"  {panel.title}: {metrics} against {panel.x}{scale}")
    return "\n".join(lines)


def save(workspace: Any) -> str:
    """Saves the workspace to W&B (the one network call) and returns its URL."""
    workspace.save()
    return workspace.url


def default_entity() -> str:
    """The logged-in user's default entity (asks W&B)."""
    import wandb

    entity = wandb.Api().default_entity
    if not entity:
        raise UserError("W&B names no default entity for this login; pass --entity")
    return entity


def _network(what: str, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)``, which talks to W&B: any failure becomes one message."""
    try:
        return call(*args)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - a refused login, a wrong entity, no network…
        raise UserError(
            f"W&B could not {what} ({type(err).__name__}: {err}); check `wandb login`, "
            "--entity and --project"
        ) from None


def _parser(defaults: dict[str, Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gan.dashboard", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--project", default=defaults["project"], help="W&B project (default: logger.project)"
    )
    parser.add_argument(
        "--entity",
        default=defaults["entity"],
        help="W&B entity (default: logger.entity, WANDB_ENTITY, else your default entity)",
    )
    parser.add_argument("--sweep", help="only this sweep's runs (their tag sweep:ID)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the layout; no network, no login needed"
    )
    return parser


def _check(args: argparse.Namespace) -> None:
    if not args.project or "/" in args.project:
        raise UserError(
            f"--project must be one W&B project name, got {args.project!r} "
            "(give the entity with --entity)"
        )
    if args.sweep is not None:
        args.sweep = args.sweep.strip().removeprefix(SWEEP_TAG_PREFIX)  # the tag itself too
        if not args.sweep:
            raise UserError("--sweep must name a sweep id (the tag sweep:ID on its runs)")


@exits_on_user_error
def main(argv: list[str] | None = None) -> int:
    defaults = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))["logger"]
    args = _parser(defaults).parse_args(argv)
    _check(args)
    entity = args.entity or os.environ.get("WANDB_ENTITY")
    if args.dry_run:
        print(layout(build_workspace(entity or NO_ENTITY, args.project, args.sweep)))
        print("dry run: nothing was saved")
        return 0
    _libraries()  # a missing package is said before any login question
    if not has_wandb_credentials():
        raise UserError(
            "no W&B credentials found (WANDB_API_KEY or `wandb login`); log in, or use "
            "--dry-run to see the layout"
        )
    entity = entity or _network("name your default entity", default_entity)
    workspace = build_workspace(entity, args.project, args.sweep)
    print(f"W&B workspace: {_network('save the workspace', save, workspace)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

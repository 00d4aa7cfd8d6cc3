"""Where a run's results go: Weights & Biases, metrics.jsonl, init_report.json, sample PNGs.

metrics.jsonl is the W&B-independent record: one JSON object per log step, ``{"step": N, ...}``.
W&B is imported only when a run actually logs to it.

In W&B, every row is logged at ``step=`` the trainer step (W&B's ``Step`` is the number of updates
made) and carries it as ``trainer/step``, the declared x-axis of the run's metrics
(``METRIC_DEFINITIONS``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import netrc
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from gan import diagnostics, quality, trainer
from gan.config import LoggerConfig
from gan.errors import UserError
from gan.record import METRICS_FILE, sample_file, strict_json

log = logging.getLogger(__name__)

STEP_METRIC = "trainer/step"  # in every W&B row: the x-axis of the metrics below
# (name or glob, summary) as W&B's define_metric takes them; None keeps W&B's default summary,
# the last value under the plain name. An exact name takes precedence over a glob.
METRIC_DEFINITIONS = (
    (f"{trainer.TRAIN_PREFIX}*", None),
    (f"{quality.EVAL_PREFIX}*", None),
    (quality.FCD, "min,last"),  # GANs can worsen: the best score and the final one
    (quality.KCD, "min,last"),
    # Per-layer statistics at init (the step-0 record: what the init did) and at the end.
    (f"{diagnostics.DIAG_PREFIX}*", "first,last"),
    (f"{diagnostics.HIST_PREFIX}*", None),
)


WANDB_SERVICE_ENV = "WANDB_SERVICE"  # W&B's: its service process, which child processes share


def own_wandb_service() -> None:
    """A training command starts its own W&B service: one inherited from the process that
    started it (a notebook that used W&B, a test runner) may still hold a killed job's run,
    and would refuse that run's resume as "in use". Below the command, W&B's sharing stands: a
    worker process uses the service its parent started, if any."""
    os.environ.pop(WANDB_SERVICE_ENV, None)


def has_wandb_credentials() -> bool:
    """True when W&B could log in without asking: WANDB_API_KEY or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
    try:
        return bool(Path(path).is_file() and netrc.netrc(path).authenticators(host))
    except (netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> tuple[str, str]:
    """(W&B mode to use, why). ``auto``: a WANDB_MODE set in the environment, else online with
    credentials and offline without. ``online`` without credentials is an error."""
    if mode == "auto":
        env = os.environ.get("WANDB_MODE", "").lower()
        if env in ("online", "offline", "disabled"):
            return resolve_mode(env)[0], f"WANDB_MODE={env}"
        if env == "dryrun":
            return "offline", "WANDB_MODE=dryrun"
        if has_wandb_credentials():
            return "online", "W&B credentials found"
        return "offline", "no W&B credentials found"
    if mode == "online" and not has_wandb_credentials():
        raise UserError(
            "logger.mode=online but no W&B credentials were found (WANDB_API_KEY or "
            "`wandb login`). Log in, or use logger.mode=offline and upload later with `wandb sync`."
        )
    return mode, f"logger.mode={mode}"


def wandb_config(
    resolved: Mapping[str, Any], *, choices: Mapping[str, str], arm: str, overrides: Sequence[str]
) -> dict[str, Any]:
    """The run's W&B config: the resolved config, each config group (``choices``: group → the
    option chosen) as its option's name with its contents under ``<group>_config``, the arm, and
    this job's own Hydra overrides (``hydra_overrides``).

    A `wandb agent` sweep over a group records and locks the option's name under the group's key:
    the same value, so the sweep never replaces the nested contents, and runs look alike in W&B
    whether Hydra or an agent launched them. ``<group>_config`` is no Hydra key, so no sweep
    parameter can name it.
    """
    config = {key: value for key, value in resolved.items() if key not in choices}
    for group, choice in choices.items():
        config[group] = choice
        config[f"{group}_config"] = resolved[group]
    return {**config, "arm": arm, "hydra_overrides": list(overrides)}


@contextmanager
def _program_args(args: Sequence[str] | None) -> Iterator[None]:
    """W&B records ``sys.argv[1:]`` at init as the run's command; in a multirun, every job run in
    Hydra's own process would record the whole sweep's command line. ``args`` stands in for them
    during the call."""
    if args is None:
        yield
        return
    saved = sys.argv[1:]
    sys.argv[1:] = list(args)
    try:
        yield
    finally:
        sys.argv[1:] = saved


@dataclass(frozen=True)
class RunIdentity:
    """Which run a ``RunLogger`` logs: where its files go, and how W&B names, groups and tags it,
    what config it records, and whether it continues a run from a checkpoint."""

    out_dir: Path
    name: str
    group: str
    tags: tuple[str, ...]
    config: Mapping[str, Any]
    # A continued run: metrics.jsonl is cut back to what it held at the checkpoint (lines written
    # after it are re-made by the resumed steps), and the W&B run with that id continues.
    metrics_offset: int | None = None  # None: a new run, a new metrics.jsonl
    wandb_id: str | None = None  # None: a new W&B run
    args: Sequence[str] | None = None  # the arguments W&B records (None: this process's)


WANDB_GROUP_LENGTH = 128  # the longest run group W&B takes


def within_wandb_limit(group: str) -> str:
    """``group``, or where longer than W&B takes (many setting overrides), its start and a
    digest of the whole: groups that differ stay apart."""
    if len(group) <= WANDB_GROUP_LENGTH:
        return group
    digest = hashlib.sha256(group.encode()).hexdigest()[:8]
    return f"{group[: WANDB_GROUP_LENGTH - 9]}~{digest}"


class RunLogger:
    """Logs one run to metrics.jsonl, PNGs and (unless disabled) one W&B run; use as a context.

    ``section``: the run's logger section (W&B's project, entity and job type); ``mode``: its
    W&B mode as resolved (``resolve_mode``): online, offline or disabled. Leaving the context
    finishes the W&B run (exit code 1 on an exception), so each job of a multirun is its own
    finished run.
    """

    def __init__(self, section: LoggerConfig, run: RunIdentity, *, mode: str):
        self.out_dir = Path(run.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = self._open_metrics(run.metrics_offset)
        self.wandb_run = None
        self.mode = mode
        self._exit_code = 0
        if mode != "disabled":
            self._start_wandb(
                project=section.project,
                entity=section.entity,
                name=run.name,
                group=within_wandb_limit(run.group),
                job_type=section.job_type,
                tags=list(run.tags),
                config=dict(run.config),
                mode=mode,
                id=run.wandb_id,
                resume="allow" if run.wandb_id else None,
                args=run.args,
            )

    def _open_metrics(self, offset: int | None):
        path = self.out_dir / METRICS_FILE
        if offset is None:
            return path.open("w")
        metrics = path.open("a")
        metrics.truncate(offset)
        metrics.seek(0, os.SEEK_END)  # tell() must report the cut length, not the old one
        return metrics

    def _cut_back(self, offset: int) -> None:
        """Drops whatever part of a line a failed write left, and reopens at ``offset``."""
        try:
            self._metrics.close()  # may flush part of the line again: cut after it
        except OSError:
            pass
        try:
            os.truncate(self.out_dir / METRICS_FILE, offset)
        except OSError:
            pass
        self._metrics = self._open_metrics(offset)

    def _start_wandb(self, args: Sequence[str] | None, **init: Any) -> None:
        import wandb

        self._wandb = wandb
        try:
            with _program_args(args):
                self.wandb_run = wandb.init(
                    **init,
                    # Beside the run's other outputs unless the user chose a W&B dir. Passed on
                    # every call: W&B reads WANDB_DIR only once per process.
                    dir=os.environ.get("WANDB_DIR") or str(self.out_dir),
                    settings=wandb.Settings(silent=True),  # our one line says where the run is
                    # A population's members are W&B runs open side by side in one process.
                    reinit="create_new",
                )
        except wandb.errors.Error as err:  # e.g. a wrong API key or entity when online
            self._metrics.close()
            raise UserError(
                f"W&B refused the run ({type(err).__name__}: {err}). Check `wandb login` "
                "and logger.entity/logger.project, or use logger.mode=offline"
            ) from None
        self.wandb_run.define_metric(STEP_METRIC, hidden=True)  # an axis, not a chart
        for name, summary in METRIC_DEFINITIONS:
            self.wandb_run.define_metric(name, step_metric=STEP_METRIC, summary=summary)

    def _wandb_log(self, step: int, values: Mapping[str, Any]) -> None:
        self.wandb_run.log({**values, STEP_METRIC: step}, step=step)

    @property
    def wandb_dir(self) -> Path | None:
        """The W&B run's local folder (what `wandb sync` takes)."""
        return Path(self.wandb_run.dir).parent if self.wandb_run else None

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        line = json.dumps(strict_json({"step": step, **metrics}), allow_nan=False)
        start = self._metrics.tell()
        try:
            self._metrics.write(line + "\n")
            self._metrics.flush()
        except OSError as err:  # a full disk: no half line stays, and the run stops saying why
            self._cut_back(start)
            raise UserError(
                f"{self.out_dir / METRICS_FILE} cannot be written ({err.strerror or err}); the "
                "disk is full or failing. Free space, then resume the run: it continues from its "
                "last checkpoint"
            ) from None
        if self.wandb_run:  # strings (e.g. the eval classifier's id) live in W&B's config/summary
            self._wandb_log(step, {k: v for k, v in metrics.items() if not isinstance(v, str)})

    def log_samples(self, step: int, images: torch.Tensor) -> Path:
        """Saves a grid of ``images`` (B, C, H, W) in [-1, 1] as PNG and to W&B as ``samples``."""
        from torchvision.utils import make_grid, save_image

        grid = make_grid(
            images.detach().cpu(),
            nrow=int(math.sqrt(images.shape[0])) or 1,
            normalize=True,
            value_range=(-1, 1),
            padding=1,
        )
        # Blow small grids (64 digits of 8×8 are 73 px wide) up to ≥ 256 px, pixels kept sharp.
        scale = max(1, 256 // grid.shape[-1])
        grid = grid.repeat_interleave(scale, dim=-1).repeat_interleave(scale, dim=-2)
        path = sample_file(self.out_dir, step)
        path.parent.mkdir(exist_ok=True)
        save_image(grid, path)
        if self.wandb_run:
            self._wandb_log(step, {"samples": self._wandb.Image(str(path), caption=f"step {step}")})
        return path

    def log_diagnostics(
        self, step: int, values: Mapping[str, float], samples: Mapping[str, torch.Tensor]
    ) -> None:
        """Per-layer diagnostics to metrics.jsonl and W&B; activation samples as W&B histograms."""
        if values:
            self.log(step, values)
        if self.wandb_run and samples:
            histograms = {}
            for prefix, sample in samples.items():
                finite = sample[torch.isfinite(sample)]  # a diverging run's activations: NaN/inf
                if len(finite):
                    key = diagnostics.histogram_key(prefix)
                    histograms[key] = self._wandb.Histogram(finite.double().numpy())
            if histograms:
                self._wandb_log(step, histograms)

    def log_table(self, key: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if self.wandb_run and rows:
            columns = list(rows[0])
            data = [
                [json.dumps(r[c]) if isinstance(r[c], list) else r[c] for c in columns]
                for r in rows
            ]
            self._wandb_log(0, {key: self._wandb.Table(columns=columns, data=data)})

    def log_artifact(
        self,
        path: Path,
        *,
        name: str,
        kind: str,
        aliases: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """One file as a W&B artifact of type ``kind`` (W&B adds the alias ``latest``). The file
        is copied now, so a later change (a resumed run's next checkpoint) cannot alter it before
        an offline run is synced. A file that cannot be logged is a warning: the run's results
        stand without it."""
        if not self.wandb_run:
            return
        try:
            artifact = self._wandb.Artifact(name, type=kind, metadata=dict(metadata or {}))
            artifact.add_file(str(path))
            self.wandb_run.log_artifact(artifact, aliases=list(aliases))
        except (OSError, ValueError, self._wandb.errors.Error) as err:
            log.warning(
                "warning: W&B artifact %s not logged (%s: %s)", name, type(err).__name__, err
            )

    def metrics_offset(self) -> int:
        """Bytes of metrics.jsonl written so far (stored in checkpoints), on disk: the checkpoint
        is fsynced, and after a machine crash its offset must not point past the file's end."""
        self._metrics.flush()
        os.fsync(self._metrics.fileno())
        return self._metrics.tell()

    def mark_preempted(self, exit_code: int = 1) -> None:
        """The run stops early but may resume: W&B marks it preempting, and it ends non-zero."""
        self._exit_code = exit_code
        if self.wandb_run:
            self.wandb_run.mark_preempting()

    def summarize(self, values: Mapping[str, Any]) -> None:
        if self.wandb_run:
            self.wandb_run.summary.update(dict(values))

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._metrics.close()
        if self.wandb_run:
            self.wandb_run.finish(exit_code=self._exit_code if exc_type is None else 1)


def offline_hint(logger: RunLogger, why: str) -> str | None:
    """One line saying where an offline run is and how to upload it."""
    if logger.mode != "offline" or logger.wandb_dir is None:
        return None
    where = logger.wandb_dir
    return f"W&B offline ({why}): run saved in {where}; upload with `wandb sync {where}`"


def online_hint(logger: RunLogger, why: str) -> str | None:
    """One line with an online run's page (W&B's own lines are silenced)."""
    if logger.mode != "online" or logger.wandb_run is None:
        return None
    return f"W&B online ({why}): {logger.wandb_run.url}"

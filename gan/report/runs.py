"""Reading run directories: a run's summary, its metrics as curves, and its setting."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gan.config import among, not_setting, setting_name
from gan.diagnostics import DIAG_PREFIX
from gan.errors import UserError
from gan.quality import EVAL_PREFIX
from gan.record import (
    CONFIG_FILE,
    FINAL,
    METRICS_FILE,
    NON_FINITE,
    SUMMARY_FILE,
    NotASummary,
    Summary,
    sample_files,
)
from gan.report.columns import CURVES, FINALS, MORE_FINALS
from gan.trainer import TRAIN_PREFIX

log = logging.getLogger(__name__)

# Series read from metrics.jsonl: these prefixes, as numbers. Keys the report relies on must be
# numbers (a string there makes the line invalid); other strings (eval/classifier) are labels.
SERIES_PREFIXES = (TRAIN_PREFIX, EVAL_PREFIX, DIAG_PREFIX)
NUMERIC = frozenset(CURVES + FINALS + MORE_FINALS)


@dataclass
class Run:
    path: Path
    arm: str
    seed: int
    model: str
    dataset: str
    status: str
    # key → (steps, values)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    diverged_step: int | None = None
    outcome: str | None = None  # trained | collapsed | stuck | diverged (gan.outcome); None: older
    setting: dict[str, str] = field(default_factory=dict)  # read_setting: key → JSON value
    setting_name: str | None = None  # the `setting=` override, if the run was started with one

    def last_sample(self) -> Path | None:
        """The run's last sample grid (``samples/step_NNNNNNN.png``), if any."""
        grids = sample_files(self.path)
        return grids[-1] if grids else None

    def final(self, key: str) -> float | None:
        return float(self.curves[key][1][-1]) if key in self.curves else None

    def best(self, key: str) -> tuple[float, int] | None:
        if key not in self.curves:
            return None
        steps, values = self.curves[key]
        if np.isnan(values).all():
            return None
        i = int(np.nanargmin(values))
        return float(values[i]), int(steps[i])


def load_runs(inputs: Sequence[Path]) -> tuple[list[Run], list[Skipped]]:
    """Runs under ``inputs`` that have a summary; also the directories skipped as incomplete."""
    runs, incomplete = [], []
    seen: set[Path] = set()  # each run once, however the inputs overlap (twice, dir + subdir)
    for root in inputs:
        if not Path(root).is_dir():
            raise UserError(f"{root} is not a directory")
        for metrics in sorted(Path(root).rglob(METRICS_FILE)):
            if metrics.parent.resolve() in seen:
                continue
            seen.add(metrics.parent.resolve())
            try:
                run = read_run(metrics.parent)
            except UnreadableRun as err:
                log.warning("warning: skipping %s: %s", metrics.parent, err)
                incomplete.append(Skipped(metrics.parent, str(err)))
                continue
            if run is None:
                incomplete.append(Skipped(metrics.parent, "no finished summary"))
            else:
                runs.append(run)
        for summary in sorted(Path(root).rglob(SUMMARY_FILE)):  # invalid, or lost its metrics
            if summary.parent.resolve() not in seen:
                seen.add(summary.parent.resolve())
                status = Summary(summary.parent).read().get("status", "unreadable")
                incomplete.append(Skipped(summary.parent, f"{status}, no {METRICS_FILE}"))
    runs = _each_seed_once(runs, incomplete)
    if not runs:
        raise UserError(
            f"no finished runs (directories with {SUMMARY_FILE} and {METRICS_FILE}) under "
            + ", ".join(map(str, inputs))
        )
    return runs, incomplete


def _each_seed_once(runs: list[Run], skipped: list[Skipped]) -> list[Run]:
    """One run per setting, arm and seed: a copy of a run (a backup beside the sweep) would count
    twice, narrowing its arm's interval on no new evidence. The others are listed as skipped."""
    first: dict[tuple, Run] = {}
    for run in runs:
        key = (tuple(run.setting.items()), run.arm, run.seed)
        if key in first:
            log.warning("warning: skipping %s: the same run as %s", run.path, first[key].path)
            skipped.append(Skipped(run.path, f"same setting, arm and seed as {first[key].path}"))
        else:
            first[key] = run
    return list(first.values())


class UnreadableRun(Exception):
    """A run whose files cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


def read_run(run_dir: Path) -> Run | None:
    """The run in ``run_dir``; None while it has no finished (or diverged) summary."""
    record = Summary(run_dir)
    summary_path = record.path
    if not record.exists():
        return None
    try:
        summary = record.load()
    except NotASummary:
        raise UnreadableRun(f"{summary_path} holds no summary (a JSON object)") from None
    except ValueError as err:
        raise UnreadableRun(f"{summary_path} is not valid JSON ({err})") from None
    if summary.get("status") not in FINAL:
        return None
    try:
        run = Run(
            run_dir,
            str(summary["arm"]),
            int(summary["seed"]),
            summary["model"],
            summary["dataset"],
            summary["status"],
            diverged_step=summary.get("diverged_step"),
            outcome=summary.get("outcome"),
            setting=read_setting(run_dir, summary),
            setting_name=setting_name(summary.get("overrides", [])),
        )
    except (KeyError, ValueError, TypeError) as err:
        what = f"has no {err}" if isinstance(err, KeyError) else f"has a bad value ({err})"
        raise UnreadableRun(f"{summary_path} {what}") from None
    run.curves = _read_curves(run_dir / METRICS_FILE)
    return run


def _read_curves(metrics: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for number, line in enumerate(metrics.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
            for key, value in record.items():
                if key.startswith(SERIES_PREFIXES) and (key in NUMERIC or _is_number(value)):
                    # non-finite values are written as "NaN" / "Infinity": float() reads them
                    series[key].append((int(record["step"]), float(value)))
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise UnreadableRun(f"{metrics} line {number} is not a valid record ({err})") from None
    return {key: _by_step(pairs) for key, pairs in series.items()}


def _by_step(pairs: list[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) in step order; a step logged twice (lines re-made by a resume) keeps its
    last value, so runs align step by step."""
    last = dict(pairs)
    steps = sorted(last)
    return np.array(steps, dtype=int), np.array([last[s] for s in steps], dtype=float)


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
        value in NON_FINITE.values()
    )


# Keys of the resolved config that do not change what a run measures (the init arm, the seed,
# logging, paths, speed knobs), declared in gan.config.KEY_USES. trainer.precision gives way to the
# precision it resolved to on the run's machine (summary.json); trainer.default_lr to the resolved
# trainer.lr.
NOT_SETTING = not_setting()


def read_setting(run_dir: Path, summary: dict) -> dict[str, str]:
    """The run's setting: dotted key → value as JSON, from summary.json's model, dataset and
    resolved precision and, when present, the resolved .hydra/config.yaml minus NOT_SETTING."""
    setting = {
        "model.name": summary["model"],
        "dataset.name": summary["dataset"],
        "precision (resolved)": summary.get("precision", "fp32"),
    }
    path = run_dir / CONFIG_FILE
    if path.is_file():
        setting.update(_flat(_resolved_config(path)))
    return {
        key: json.dumps(_one_spelling(value), sort_keys=True)
        for key, value in sorted(setting.items())
        if not among(key, NOT_SETTING)
    }


def _one_spelling(value: object) -> object:
    """A whole number one way, whether YAML read it as ``0`` or ``0.0``: one setting, not two."""
    if isinstance(value, list):
        return [_one_spelling(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _resolved_config(path: Path) -> dict:
    """The config with interpolations resolved (trainer.lr is written as one); one that cannot be
    resolved outside its run stays as written."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - yaml's and omegaconf's errors alike
        raise UnreadableRun(f"{path} is not a readable config ({err})") from None
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:  # each key on its own: one must not keep the others as written
        written = _flat(OmegaConf.to_container(cfg, resolve=False))
        return {key: _resolved(cfg, key, value) for key, value in written.items()}


def _resolved(cfg: object, key: str, written: object) -> object:
    """``key``'s value in ``cfg`` resolved, or as ``written`` if it cannot be."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        value = OmegaConf.select(cfg, key)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    except OmegaConfBaseException:
        return written


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat

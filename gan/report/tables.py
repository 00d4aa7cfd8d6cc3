"""The report page's Markdown tables and paragraphs, and summary.csv's rows."""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gan.quality import EVAL_PREFIX, KCD
from gan.record import Status
from gan.report.columns import FINALS, LABELS, MORE_FINALS, PRIMARY, TRAIN_FINALS
from gan.report.runs import Run, Skipped
from gan.report.stats import FEW_SEEDS, clip_interval, mean_ci

log = logging.getLogger(__name__)


def _fmt(mean: float, half: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def _digits(key: str) -> int:
    return 2 if key.startswith(EVAL_PREFIX) else 3


def _cell(values: Sequence[float | None], key: str, digits: int | None = None) -> str:
    """Mean ± the t half-width; where that interval reaches past what ``key`` can take (few
    seeds), the mean and the interval clipped to the metric's range, as ``mean [low, high]``."""
    digits = _digits(key) if digits is None else digits
    mean, half, used = mean_ci(values)
    # The runs a value comes from, where some have none (no evaluation, NaN): n says all.
    of = f" ({used} of {len(values)})" if 0 < used < len(values) else ""
    if math.isnan(mean) or math.isnan(half):
        return _fmt(mean, half, digits) + of
    low, high = clip_interval(mean - half, mean + half, key)
    if (low, high) == (mean - half, mean + half):
        return _fmt(mean, half, digits) + of
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]{of}"


def few_seeds_warning(arms: dict[str, list[Run]], console: bool = True) -> list[str]:
    """A warning block when an arm has fewer than FEW_SEEDS finished runs; also on the console
    unless ``console`` is False (a setting's page under an atlas, whose page warns once)."""
    counts = {arm: sum(r.status == Status.finished for r in rs) for arm, rs in arms.items()}
    few = {arm: n for arm, n in counts.items() if n < FEW_SEEDS}
    if not few:
        return []
    which = ", ".join(f"{arm}: {n}" for arm, n in few.items())
    text = (
        f"Warning: fewer than {FEW_SEEDS} finished seeds per arm ({which}). Intervals from so "
        "few runs are wide (shown clipped to what each metric can take) and the tests have little "
        "power: read this report as a demonstration, not as evidence."
    )
    if console:
        log.warning("warning: %s", text.removeprefix("Warning: "))
    return [f"> **{text}**", ""]


def run_row(r: Run, threshold: float | None) -> dict[str, object]:
    row: dict[str, object] = {
        "arm": r.arm,
        "seed": r.seed,
        "model": r.model,
        "dataset": r.dataset,
        "status": r.status,
        "diverged_step": r.diverged_step,
        "path": str(r.path),
    }
    for key in FINALS:
        row[f"final {key}"] = r.final(key)
    best = r.best(PRIMARY)
    row[f"best {PRIMARY}"], row[f"best {PRIMARY} step"] = best if best else (None, None)
    if threshold is not None:
        row[f"steps to {PRIMARY} ≤ {threshold:g}"] = steps_to(r, threshold)
    for key in MORE_FINALS:
        row[f"final {key}"] = r.final(key)
    return row


def steps_to(r: Run, threshold: float) -> int | None:
    if PRIMARY not in r.curves:
        return None
    steps, values = r.curves[PRIMARY]
    hit = np.nonzero(values <= threshold)[0]
    return int(steps[hit[0]]) if len(hit) else None


def write_csv(rows: list[dict[str, object]], path: Path) -> None:
    """One row per run, the columns of the first row."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def intro(runs: list[Run], arms: dict[str, list[Run]], setting: str | None = None) -> list[str]:
    named = f", setting {setting}" if setting else ""
    return [
        f"# Init ablation: model={runs[0].model}, dataset={runs[0].dataset}{named}",
        "",
        f"{len(runs)} runs in {len(arms)} arms; mean ± 95 % confidence interval (Student t) "
        "across seeds, or mean [low, high] where that interval is clipped to what the metric "
        "can take; final = the last logging window or evaluation. Diverged runs are counted "
        "but left out of the statistics. FCD: Fréchet distance in the dataset classifier's "
        "features (biased upwards at small sample sizes); KCD: the unbiased kernel distance in "
        "the same features (0 for the real distribution, so it can be slightly negative).",
        "",
        "![curves](curves.png)",
        "",
    ]


def arm_table(
    arms: dict[str, list[Run]],
    finished: dict[str, list[Run]],
    has_fcd: bool,
    has_kcd: bool,
    threshold: float | None,
) -> list[str]:
    """The per-arm table: runs, divergences and the mean ± CI of each final value."""
    header = ["arm", "n", "diverged"]
    if has_fcd:
        header += ["final FCD", "best FCD"]
        header += [f"steps to FCD ≤ {threshold:g}"] if threshold is not None else []
    header += ["final KCD"] if has_kcd else []
    header += [f"final {key.split('/')[1]}" for key in TRAIN_FINALS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, rs in arms.items():
        ok = finished[arm]
        cells = [arm, str(len(ok)), str(sum(r.status == Status.diverged for r in rs))]
        if has_fcd:
            cells += _fcd_cells(ok, threshold)
        if has_kcd:
            cells.append(_cell([r.final(KCD) for r in ok], KCD))
        cells += [_cell([r.final(key) for r in ok], key, 3) for key in TRAIN_FINALS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fcd_cells(ok: list[Run], threshold: float | None) -> list[str]:
    cells = [
        _cell([r.final(PRIMARY) for r in ok], PRIMARY),
        _cell([b[0] for r in ok if (b := r.best(PRIMARY))], PRIMARY),
    ]
    if threshold is not None:
        reached = [s for r in ok if (s := steps_to(r, threshold)) is not None]
        steps = _cell(reached, "steps", 0)
        cells.append(f"{steps} ({len(reached)}/{len(ok)} reached)")
    return cells


def coverage_table(finished: dict[str, list[Run]], keys: list[str]) -> list[str]:
    """Class coverage and D's mean outputs on reals and fakes (final, mean ± CI per arm)."""
    if not keys:
        return []
    header = ["arm", "n", *(f"final {LABELS.get(k, k.split('/')[1])}" for k in keys)]
    lines = ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, ok in finished.items():
        cells = [_cell([r.final(k) for r in ok], k) for k in keys]
        lines.append("| " + " | ".join([arm, str(len(ok)), *cells]) + " |")
    return [
        *lines,
        "",
        "class_kl: KL(predicted-class histogram ‖ uniform), 0 when balanced, ln 10 = 2.30 when one "
        "class takes all; classes covered: classes with at least half their fair share; D(x), "
        'D(G(z)): D\'s mean probability of "real" on reals and on fakes (0.5: D cannot tell).',
    ]


def skipped(incomplete: list[Skipped]) -> list[str]:
    if not incomplete:
        return []
    return [
        "",
        f"Skipped {len(incomplete)} run(s), unfinished or unreadable: "
        + ", ".join(map(str, incomplete)),
    ]

"""The ablation report's figures: curves per arm, samples side by side, per-layer diagnostics.

Every function takes the report's runs grouped by arm (``gan.report.grouping.arms_of``) and
writes one PNG; arm ``i`` is drawn in colour ``C{i}`` in every figure. The figures are returned
(closed) so tests can check what was drawn.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gan.diagnostics import (
    ACT_STD,
    DEAD_FRAC,
    DIAG_PREFIX,
    GRAD_NORM,
    LOG_SCALE,
    SATURATED_FRAC,
    WEIGHT_STD,
)
from gan.figures import pyplot
from gan.quality import CLASS_KL, CLASSES_COVERED, FCD, KCD
from gan.record import Status
from gan.report.columns import PROBABILITIES
from gan.report.stats import t_half_width, value_range
from gan.trainer import ACC_D, ACC_G, D_G_Z, D_X, LOSS_D, LOSS_G

if TYPE_CHECKING:
    from gan.report.effects import AtlasRow
    from gan.report.runs import Run

SEED_LINES_UP_TO = 5  # arms with at most this many runs also show each seed as a thin line
MARKERS_UP_TO = 20  # curves with at most this many points get markers (one evaluation shows)
DPI = 110
# The y axis of each curve: what its numbers are.
Y_LABELS = {
    LOSS_D: "BCE loss",
    LOSS_G: "BCE loss",
    ACC_D: "accuracy",
    ACC_G: "fraction of fakes called real",
    D_X: "mean D(x), probability",
    D_G_Z: "mean D(G(z)), probability",
    FCD: "FCD (lower: closer to the data)",
    KCD: "KCD (lower: closer to the data)",
    CLASS_KL: "KL to uniform classes (nats)",
    CLASSES_COVERED: "classes (of 10)",
}


def band(runs: Sequence[Run], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Steps common to all runs, mean and 95 % CI half-width across runs at each step (the
    interval as drawn is ``band_limits``: clipped to the metric's range)."""
    curves = [r.curves[key] for r in runs if key in r.curves]
    if not curves:
        return None
    steps = curves[0][0]
    for s, _ in curves[1:]:
        steps = np.intersect1d(steps, s)
    matrix = np.stack([v[np.isin(s, steps)] for s, v in curves])  # (runs, steps)
    return steps, matrix.mean(0), t_half_width(matrix)


def band_limits(mean: np.ndarray, half: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
    """The band's lower and upper edges, clipped to what ``key`` can take: a t interval of few
    seeds would otherwise draw accuracies above 1 or an FCD below 0."""
    low, high = value_range(key)
    return np.clip(mean - half, low, high), np.clip(mean + half, low, high)


def _save(fig, path: Path):
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return fig


def _message(path: Path, text: str):
    """A figure that only says why there is nothing to draw."""
    fig, ax = pyplot().subplots(figsize=(5, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return _save(fig, path)


def _arm_handles(arms: dict[str, list[Run]]) -> list:
    from matplotlib.lines import Line2D

    return [
        Line2D([], [], color=f"C{i}", marker="o", label=f"{arm} (n={_n_finished(runs)})")
        for i, (arm, runs) in enumerate(arms.items())
    ]


def _n_finished(runs: Sequence[Run]) -> int:
    return sum(r.status == Status.finished for r in runs)


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------


def _columns(panels: int) -> int:
    """Columns that leave at most one slot free (it takes the legend), preferring three."""
    return next((c for c in (3, 4, 2) if -panels % c <= 1), 3)


def plot_curves(arms: dict[str, list[Run]], keys: Sequence[str], path: Path):
    """One panel per key that some run logged: each arm's mean across finished seeds with its
    95 % band; thin per-seed lines for small arms; markers where a curve has few points."""
    plt = pyplot()
    keys = [k for k in keys if any(k in r.curves for runs in arms.values() for r in runs)]
    if not keys:  # e.g. every run diverged before its first logging window
        return _message(path, "no curves: no run logged a metric window")
    cols = _columns(len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        _plot_bands(ax, arms, key)
    spare = list(axes.flat)[len(keys) :]
    if spare:  # the one free slot holds the legend
        spare[0].axis("off")
        spare[0].legend(handles=_arm_handles(arms), loc="center", fontsize=9)
    else:
        axes.flat[0].legend(handles=_arm_handles(arms), fontsize=8)
    thin = any(_n_finished(runs) <= SEED_LINES_UP_TO for runs in arms.values())
    title = "mean across seeds, 95 % confidence band" + ("; thin lines: single seeds" * thin)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _plot_bands(ax, arms: dict[str, list[Run]], key: str) -> None:
    """One panel: each arm's mean curve of ``key`` and its band, over finished runs."""
    single = set()  # steps of arms evaluated once
    for i, runs in enumerate(arms.values()):
        ok = [r for r in runs if r.status == Status.finished and key in r.curves]
        b = band(ok, key)
        if b is None:
            continue
        steps, mean, half = b
        marker = "o" if len(steps) <= MARKERS_UP_TO else None
        # A single evaluation is one point per arm: side by side, with its interval as a bar.
        dx = 0.0
        if len(steps) == 1:
            single.add(int(steps[0]))
            dx = (i - (len(arms) - 1) / 2) * 0.1 / len(arms) * max(abs(int(steps[0])), 1)
        if len(ok) <= SEED_LINES_UP_TO:
            for r in ok:
                s, v = r.curves[key]
                ax.plot(s + dx, v, color=f"C{i}", lw=0.7, alpha=0.35, marker=marker and ".", ms=4)
        ax.plot(steps + dx, mean, color=f"C{i}", lw=1.6, marker=marker, ms=4)
        low, high = band_limits(mean, half, key)
        if len(steps) == 1 and np.isfinite(half).all():  # a band of one point draws nothing
            yerr = [mean - low, high - mean]
            ax.errorbar(steps + dx, mean, yerr=yerr, color=f"C{i}", capsize=4, lw=1.2)
        else:
            ax.fill_between(steps, low, high, color=f"C{i}", alpha=0.2, lw=0)
    if single and not any(line.get_xdata().size > 1 for line in ax.lines):
        margin = 0.08 * max(max(single), 1)  # room for the arms side by side
        ax.set(xticks=sorted(single), xlim=(min(single) - margin, max(single) + margin))
    ax.set(title=key, xlabel="step", ylabel=Y_LABELS.get(key, key.split("/")[-1]))
    if "acc" in key or key in PROBABILITIES:
        ax.axhline(0.5, color="grey", lw=0.6, ls="--")


# --------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplePick:
    """The sample grid shown for one arm (``image`` None: ``title`` says why there is none)."""

    arm: str
    title: str
    image: Path | None


def plot_samples(picks: Sequence[SamplePick], path: Path):
    """The picked grids side by side, at most five per row."""
    plt = pyplot()
    rows = math.ceil(len(picks) / 5)
    cols = math.ceil(len(picks) / rows)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, pick) in enumerate(zip(axes.flat, picks)):
        ax.set_title(pick.title, fontsize=9, color=f"C{i}")
        if pick.image is not None:
            ax.imshow(plt.imread(pick.image), interpolation="nearest")
        else:
            ax.text(0.5, 0.5, "no sample grid", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Per-layer diagnostics
# --------------------------------------------------------------------------------------------

# (statistics, panel title); a log scale where diagnostics says the values span decades. "dead"
# exists for layers feeding a (Leaky) ReLU and "saturated" for those feeding tanh or sigmoid:
# different quantities of different layers, so each has its own panel, with gaps at the layers
# that do not have it.
DIAG_PANELS = (
    ((ACT_STD,), "activation std"),
    ((DEAD_FRAC,), "dead fraction (into (Leaky) ReLU)"),
    ((SATURATED_FRAC,), "saturated fraction (into tanh, σ)"),
    ((GRAD_NORM,), "gradient norm of the weights"),
    ((WEIGHT_STD,), "weight std"),
)
NETWORKS = {"G": "generator", "D": "discriminator"}


def diag_layers(runs: Sequence[Run], net: str) -> list[str]:
    """Layers of ``net`` (G or D) with diagnostics, in the order they were logged."""
    prefix = f"{DIAG_PREFIX}{net}/"
    keys = (k for r in runs for k in r.curves if k.startswith(prefix))
    return list(dict.fromkeys(k[len(prefix) :].rsplit("/", 1)[0] for k in keys))


def diag_value(run: Run, net: str, layer: str, stats: Sequence[str], last: bool) -> float:
    """The first of ``stats`` the run logged for the layer, at step 0 or at its last diagnostic
    step; nan when it has none."""
    for stat in stats:
        series = run.curves.get(f"{DIAG_PREFIX}{net}/{layer}/{stat}")
        if series is not None:
            steps, values = series
            if last:
                return float(values[-1])
            return float(values[0]) if steps[0] == 0 else math.nan
    return math.nan


def last_diag_step(arms: dict[str, list[Run]]) -> int | None:
    """The last diagnostic step of the finished runs (the same in all, as their settings are)."""
    steps = [
        int(series[0][-1])
        for runs in arms.values()
        for r in runs
        if r.status == Status.finished
        for key, series in r.curves.items()
        if key.startswith(DIAG_PREFIX)
    ]
    return max(steps) if steps else None


def diag_profile(
    runs: Sequence[Run], net: str, layers: Sequence[str], stats: Sequence[str], last: bool
) -> np.ndarray:
    """Per layer, the mean across ``runs`` (nan where no run logged it)."""
    values = np.array([[diag_value(r, net, x, stats, last) for x in layers] for r in runs])
    if values.size == 0:
        return np.full(len(layers), math.nan)
    with warnings.catch_warnings():  # a layer no run logged: nan is the answer
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, 0)


def plot_diagnostics(arms: dict[str, list[Run]], path: Path):
    """Rows G and D, one panel per DIAG_PANELS entry, layers along x; each arm's mean across
    seeds at step 0 (dashed, open markers: all its runs, the init is what it is even where a run
    diverged later) and at the last diagnostic step (solid: finished runs). None when no run
    logged diagnostics (trainer.diag_every=0)."""
    from matplotlib.lines import Line2D

    everything = [r for runs in arms.values() for r in runs]
    nets = [n for n in NETWORKS if diag_layers(everything, n)]
    if not nets:
        return None
    last = last_diag_step(arms) or None  # 0: only the init was recorded
    fig, axes = pyplot().subplots(
        len(nets), len(DIAG_PANELS), figsize=(4.3 * len(DIAG_PANELS), 3.3 * len(nets) + 0.6)
    )
    axes = np.atleast_2d(axes)
    for row, net in zip(axes, nets):
        layers = diag_layers(everything, net)
        for ax, (stats, title) in zip(row, DIAG_PANELS):
            log = all(stat in LOG_SCALE for stat in stats)
            _diag_panel(ax, arms, net, layers, stats, log, last)
            ax.set_title(f"{NETWORKS[net]}: {title}", fontsize=9)
            ax.set_xticks(range(len(layers)), layers)
    styles = [Line2D([], [], color="k", ls="--", marker="o", mfc="none", label="step 0")]
    if last:
        styles.append(Line2D([], [], color="k", ls="-", marker="o", label=f"step {last}"))
    fig.legend(handles=_arm_handles(arms) + styles, loc="lower center", ncol=8, fontsize=8)
    fig.suptitle("per-layer diagnostics: mean across seeds per arm", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)


def _diag_panel(ax, arms, net, layers, stats, log: bool, last: int | None) -> None:
    x = np.arange(len(layers))
    positive = False
    for i, runs in enumerate(arms.values()):
        lines = [(runs, False, "--", "none")]
        if last:
            lines.append(([r for r in runs if r.status == Status.finished], True, "-", f"C{i}"))
        for chosen, at_last, style, face in lines:
            y = diag_profile(chosen, net, layers, stats, at_last)
            if log:  # exactly 0 (all-zero weights, no gradient) has no place on a log axis:
                zero = y <= 0  # a ▼ at the panel's bottom marks it
                ax.plot(
                    x[zero],
                    np.full(zero.sum(), 0.03),
                    transform=ax.get_xaxis_transform(),
                    ls="none",
                    marker="v",
                    color=f"C{i}",
                    mfc=face,
                )
                y = np.where(zero, math.nan, y)
                positive |= bool(np.isfinite(y).any())
            ax.plot(x, y, color=f"C{i}", ls=style, marker="o", mfc=face, ms=5, lw=1.2)
    if positive:
        ax.set_yscale("log")
    if not log:  # a fraction: the whole of [0, 1], so 0.02 never looks like 0.9
        ax.set(ylim=(-0.03, 1.03), ylabel="fraction of outputs")


# --------------------------------------------------------------------------------------------
# The atlas's forest plot
# --------------------------------------------------------------------------------------------

SYMLOG_ABOVE = 20.0  # differences beyond this (FCD units) put the axis on a symlog scale


def plot_forest(rows: Sequence[AtlasRow], path: Path):
    """One line per setting × arm: Δ FCD (arm − control) with its 95 % interval, for the final
    and the first evaluation side by side; filled where Holm's p < 0.05; a line at 0."""
    plt = pyplot()
    if not rows:
        return _message(path, "no atlas rows: no setting has an arm beside its control")
    labels = [f"{r.setting}: {r.arm} − {r.control}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.36 * len(rows)), sharey=True, squeeze=False)
    panels = (("final", "Δ final FCD"), ("first", "Δ FCD at the first evaluation"))
    for ax, (which, title) in zip(axes.flat, panels):
        _forest_panel(ax, [getattr(r, which) for r in rows], title)
    axes.flat[0].set_yticks(range(len(rows)), labels, fontsize=8)
    axes.flat[0].invert_yaxis()  # the table's order, top to bottom
    fig.suptitle(
        "arm − control, mean with Welch 95 % CI; filled: Holm p < 0.05; left of 0: arm better",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, path)


def _forest_panel(ax, effects: Sequence, title: str) -> None:
    bounds = [0.0]
    for y, e in enumerate(effects):
        if e is None:
            continue
        has_ci = math.isfinite(e.low) and math.isfinite(e.high)
        xerr = [[e.diff - e.low], [e.high - e.diff]] if has_ci else None
        colour = "C3" if e.significant else "C0"
        face = colour if e.significant else "white"
        ax.errorbar(e.diff, y, xerr=xerr, fmt="o", color=colour, mfc=face, capsize=3, lw=1.2)
        bounds += [e.low, e.high] if has_ci else [e.diff]
    ax.axvline(0, color="grey", lw=0.8)
    low, high = min(bounds), max(bounds)
    if max(-low, high) > SYMLOG_ABOVE:
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(1.5 * low - 1, 1.5 * high + 1)  # padding by magnitude, as the axis is drawn
        title += " (symlog)"
    else:
        pad = 0.08 * (high - low) or 1.0
        ax.set_xlim(low - pad, high + pad)
    ax.set(title=title, xlabel="FCD, arm − control")
    ax.grid(axis="x", lw=0.3, alpha=0.5)

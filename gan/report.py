"""`python -m gan.report <multirun dir> [...]`: an ablation's statistics from its files alone.

Reads every run directory below the inputs (``summary.json`` + ``metrics.jsonl``; no network, no
W&B account) and writes into ``--out``: ``curves.png`` (mean and 95 % confidence band across seeds
per arm), ``report.md`` (per-arm table, pairwise tests, plain-words verdict) and ``summary.csv``
(one row per run).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import math
import sys
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gan import console
from gan.errors import UserError, exits_on_user_error
from gan.figures import pyplot
from gan.tracking import METRICS_FILE, SUMMARY_FILE

log = logging.getLogger(__name__)

CURVES = ("train/loss_D", "train/loss_G", "train/acc_D", "train/acc_G", "eval/fcd")
FINALS = ("train/loss_D", "train/loss_G", "train/acc_D", "train/acc_G", "eval/fcd")
PRIMARY = "eval/fcd"  # lower is better; the verdict is given on it when present
TRAIN_FINALS = ("train/acc_D", "train/acc_G", "train/loss_D", "train/loss_G")  # report.md's order
ALPHA = 0.05


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
    for root in inputs:
        if not Path(root).is_dir():
            raise UserError(f"{root} is not a directory")
        for metrics in sorted(Path(root).rglob(METRICS_FILE)):
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
    if not runs:
        raise UserError(
            f"no finished runs (directories with {SUMMARY_FILE} and {METRICS_FILE}) under "
            + ", ".join(map(str, inputs))
        )
    _refuse_mixed_settings(runs)
    _refuse_mixed_kinds(runs)
    return runs, incomplete


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
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.is_file():
        return None
    try:
        summary = json.loads(summary_path.read_text())
    except ValueError as err:
        raise UnreadableRun(f"{summary_path} is not valid JSON ({err})") from None
    if summary.get("status") not in ("finished", "diverged"):
        return None
    run = Run(
        run_dir,
        summary["arm"],
        int(summary["seed"]),
        summary["model"],
        summary["dataset"],
        summary["status"],
        diverged_step=summary.get("diverged_step"),
    )
    run.curves = _read_curves(run_dir / METRICS_FILE)
    return run


def _read_curves(metrics: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for number, line in enumerate(metrics.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
            for key in CURVES:
                if key in record:  # non-finite values are written as "NaN" / "Infinity"
                    series[key].append((int(record["step"]), float(record[key])))
        except (ValueError, TypeError, KeyError) as err:
            raise UnreadableRun(f"{metrics} line {number} is not a valid record ({err})") from None
    return {
        k: (np.array([s for s, _ in v]), np.array([x for _, x in v], dtype=float))
        for k, v in series.items()
    }


def _refuse_mixed_kinds(runs: list[Run]) -> None:
    """Refuses runs of more than one (model, dataset)."""
    kinds = sorted({(r.model, r.dataset) for r in runs})
    if len(kinds) > 1:
        counts = [
            f"model={m} dataset={d}: {sum((r.model, r.dataset) == (m, d) for r in runs)} runs"
            for m, d in kinds
        ]
        raise UserError(
            "runs of different models/datasets cannot be averaged into one report: "
            + "; ".join(counts)
            + ". Report each combination separately."
        )


# Settings that change what an arm's runs measure: seeds may differ, and init defines the arm.
SETTINGS = (
    ("trainer", "steps"),
    ("trainer", "batch_size"),
    ("trainer", "lr"),
    ("trainer", "betas"),
    ("model",),
    ("eval", "num_samples"),
)


def _refuse_mixed_settings(runs: list[Run]) -> None:
    """Refuses runs whose Hydra configs (.hydra/config.yaml, when present) differ in SETTINGS."""
    import yaml

    seen: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        path = r.path / ".hydra" / "config.yaml"
        if not path.is_file():
            continue
        cfg = yaml.safe_load(path.read_text()) or {}
        for keys in SETTINGS:
            value = cfg
            for k in keys:
                value = value.get(k) if isinstance(value, dict) else None
            seen[".".join(keys)].add(json.dumps(value, sort_keys=True))
    mixed = {k: sorted(v) for k, v in seen.items() if len(v) > 1}
    if mixed:
        raise UserError(
            "runs with different training settings cannot be averaged into one report: "
            + "; ".join(f"{k} takes {', '.join(v)}" for k, v in mixed.items())
            + ". Report each setting separately."
        )


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the t-based confidence interval, n); half-width nan for n < 2."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, 0
    return float(x.mean()), float(t_half_width(x[:, None], level)[0]), len(x)


def t_half_width(samples: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Half-width of the Student-t confidence interval of the mean, per column of (n, k) samples;
    nan where n < 2."""
    from scipy import stats

    n = samples.shape[0]
    if n < 2:
        return np.full(samples.shape[1], math.nan)
    return stats.t.ppf(0.5 + level / 2, n - 1) * samples.std(0, ddof=1) / math.sqrt(n)


def compare(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Welch's t-test, Mann–Whitney U (two-sided) and Hedges' g (a − b, pooled sd)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.var() == 0 and b.var() == 0:  # no spread at all: the tests are undefined
        return dict.fromkeys(("t", "p_welch", "u", "p_mannwhitney", "hedges_g"), math.nan)
    with (
        warnings.catch_warnings()
    ):  # near-identical seeds: scipy's precision note, the numbers stand
        warnings.simplefilter("ignore", RuntimeWarning)
        welch = stats.ttest_ind(a, b, equal_var=False)
        mw = stats.mannwhitneyu(a, b, alternative="two-sided")
    return {
        "t": float(welch.statistic),
        "p_welch": float(welch.pvalue),
        "u": float(mw.statistic),
        "p_mannwhitney": float(mw.pvalue),
        "hedges_g": hedges_g(a, b),
    }


def hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    """Standardized mean difference a − b (pooled sd), corrected for small samples."""
    na, nb = len(a), len(b)
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    if pooled == 0:
        return math.copysign(math.inf, a.mean() - b.mean())
    correction = 1 - 3 / (4 * (na + nb) - 9)  # small-sample bias of Cohen's d
    return float((a.mean() - b.mean()) / pooled * correction)


def band(runs: Sequence[Run], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Steps common to all runs, mean and 95 % CI half-width across runs at each step."""
    curves = [r.curves[key] for r in runs if key in r.curves]
    if not curves:
        return None
    steps = curves[0][0]
    for s, _ in curves[1:]:
        steps = np.intersect1d(steps, s)
    matrix = np.stack([v[np.isin(s, steps)] for s, v in curves])  # (runs, steps)
    return steps, matrix.mean(0), t_half_width(matrix)


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def arms_of(runs: Sequence[Run]) -> dict[str, list[Run]]:
    grouped: dict[str, list[Run]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: r.seed):
        grouped[r.arm].append(r)
    # The control arm first, then alphabetical.
    return dict(sorted(grouped.items(), key=lambda kv: (kv[0] != "default", kv[0])))


def plot_curves(arms: dict[str, list[Run]], path: Path) -> None:
    plt = pyplot()
    keys = [k for k in CURVES if any(k in r.curves for runs in arms.values() for r in runs)]
    if not keys:  # e.g. every run diverged before its first logging window
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no curves: no run logged a metric window", ha="center", va="center")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return
    cols = 3 if len(keys) > 4 else 2
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):  # more axes than keys: the rest are blank
        _plot_bands(ax, arms, key)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("mean across seeds, 95 % confidence band", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_bands(ax, arms: dict[str, list[Run]], key: str) -> None:
    """One panel: each arm's mean curve of ``key`` and its band, over finished runs."""
    for i, (arm, runs) in enumerate(arms.items()):
        b = band([r for r in runs if r.status == "finished"], key)
        if b is None:
            continue
        steps, mean, half = b
        ax.plot(steps, mean, color=f"C{i}", label=f"{arm} (n={len(runs)})")
        ax.fill_between(steps, mean - half, mean + half, color=f"C{i}", alpha=0.2, lw=0)
    ax.set(title=key, xlabel="step")
    if "acc" in key:
        ax.axhline(0.5, color="grey", lw=0.6, ls="--")


def _fmt(mean: float, half: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


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
    return row


def steps_to(r: Run, threshold: float) -> int | None:
    if PRIMARY not in r.curves:
        return None
    steps, values = r.curves[PRIMARY]
    hit = np.nonzero(values <= threshold)[0]
    return int(steps[hit[0]]) if len(hit) else None


def write_report(
    runs: list[Run], incomplete: list[Skipped], out: Path, threshold: float | None
) -> str:
    """Writes summary.csv, curves.png and report.md into ``out``; returns report.md's text."""
    arms = arms_of(runs)
    finished = {arm: [r for r in rs if r.status == "finished"] for arm, rs in arms.items()}
    write_csv([run_row(r, threshold) for rs in arms.values() for r in rs], out / "summary.csv")
    plot_curves(arms, out / "curves.png")
    has_fcd = any(PRIMARY in r.curves for r in runs)
    metrics = ([PRIMARY] if has_fcd else []) + list(TRAIN_FINALS)
    pairs = list(itertools.combinations(finished, 2))
    lines = [
        *intro(runs, arms),
        *arm_table(arms, finished, has_fcd, threshold),
        *pairwise_tests(finished, pairs, metrics),
        *verdict_section(verdicts(finished, pairs, metrics[0], has_fcd), len(pairs)),
        *skipped(incomplete),
    ]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def write_csv(rows: list[dict[str, object]], path: Path) -> None:
    """One row per run, the columns of the first row."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def intro(runs: list[Run], arms: dict[str, list[Run]]) -> list[str]:
    return [
        f"# Init ablation: model={runs[0].model}, dataset={runs[0].dataset}",
        "",
        f"{len(runs)} runs in {len(arms)} arms; mean ± 95 % confidence interval (Student t) "
        "across seeds; final = the last logging window. Diverged runs are counted but left out "
        "of the statistics.",
        "",
        "![curves](curves.png)",
        "",
    ]


def arm_table(
    arms: dict[str, list[Run]],
    finished: dict[str, list[Run]],
    has_fcd: bool,
    threshold: float | None,
) -> list[str]:
    """The per-arm table: runs, divergences and the mean ± CI of each final value."""
    header = ["arm", "n", "diverged"]
    if has_fcd:
        header += ["final FCD", "best FCD"]
        header += [f"steps to FCD ≤ {threshold:g}"] if threshold is not None else []
    header += [f"final {key.split('/')[1]}" for key in TRAIN_FINALS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, rs in arms.items():
        ok = finished[arm]
        cells = [arm, str(len(ok)), str(sum(r.status == "diverged" for r in rs))]
        if has_fcd:
            cells += _fcd_cells(ok, threshold)
        cells += [_fmt(*mean_ci([r.final(key) for r in ok])[:2]) for key in TRAIN_FINALS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fcd_cells(ok: list[Run], threshold: float | None) -> list[str]:
    cells = [
        _fmt(*mean_ci([r.final(PRIMARY) for r in ok])[:2], 2),
        _fmt(*mean_ci([b[0] for r in ok if (b := r.best(PRIMARY))])[:2], 2),
    ]
    if threshold is not None:
        reached = [s for r in ok if (s := steps_to(r, threshold)) is not None]
        cells.append(f"{_fmt(*mean_ci(reached)[:2], 0)} ({len(reached)}/{len(ok)} reached)")
    return cells


def _finite_finals(runs: list[Run], key: str) -> list[float]:
    return [x for r in runs if (x := r.final(key)) is not None and math.isfinite(x)]


def pairwise_tests(
    finished: dict[str, list[Run]], pairs: list[tuple[str, str]], metrics: list[str]
) -> list[str]:
    """One table per metric: each pair of arms, their difference and its tests."""
    lines = ["", "## Pairwise tests", ""]
    for key in metrics:
        lines += [
            f"**final {key}**",
            "",
            "| A | B | mean A − B | Welch p | Mann–Whitney p | Hedges' g |",
            "|---|---|---|---|---|---|",
        ]
        for a, b in pairs:
            va, vb = _finite_finals(finished[a], key), _finite_finals(finished[b], key)
            lines.append(_test_row(a, b, va, vb))
        lines.append("")
    return lines


def _test_row(a: str, b: str, va: list[float], vb: list[float]) -> str:
    if len(va) < 2 or len(vb) < 2:
        return f"| {a} | {b} | – | needs ≥ 2 runs per arm | | |"
    c = compare(va, vb)
    diff = f"{np.mean(va) - np.mean(vb):+.3f}"
    if math.isnan(c["p_welch"]):
        return f"| {a} | {b} | {diff} | – (no variance) | – | – |"
    return (
        f"| {a} | {b} | {diff} | {c['p_welch']:.3g} | {c['p_mannwhitney']:.3g} | "
        f"{c['hedges_g']:+.2f} |"
    )


def verdicts(
    finished: dict[str, list[Run]], pairs: list[tuple[str, str]], key: str, lower_is_better: bool
) -> list[str]:
    """A sentence per pair of arms with ≥ 2 finished runs each, on final ``key``."""
    said = []
    for a, b in pairs:
        va, vb = _finite_finals(finished[a], key), _finite_finals(finished[b], key)
        if len(va) < 2 or len(vb) < 2:
            continue
        c = compare(va, vb)
        if math.isnan(c["p_welch"]):
            said.append(
                f"{a} and {b}: final {key} has no spread across seeds; no test is possible."
            )
        else:
            said.append(verdict(key, a, b, va, vb, c, lower_is_better))
    return said


def verdict(
    key: str,
    a: str,
    b: str,
    va: list[float],
    vb: list[float],
    c: dict[str, float],
    lower_is_better: bool,
) -> str:
    ma, mb = float(np.mean(va)), float(np.mean(vb))
    significant = c["p_welch"] < ALPHA
    strength = (
        f"Welch p = {c['p_welch']:.3g}, Hedges' g = {c['hedges_g']:+.2f}, "
        f"n = {len(va)} vs {len(vb)}"
    )
    if not lower_is_better:  # no quality metric: say whether they differ, not which is better
        word = "differ significantly" if significant else "do not differ significantly"
        return (
            f"{a} and {b} {word} in final {key} ({ma:.3f} vs {mb:.3f}; {strength}). "
            "Losses and accuracies do not rank GANs: add a quality metric (eval/fcd) to say which "
            "is better."
        )
    better, worse = (a, b) if ma < mb else (b, a)
    lo, hi = min(ma, mb), max(ma, mb)
    if significant:
        return (
            f"**{better}** is better than {worse} on final {key} "
            f"({lo:.2f} vs {hi:.2f}; {strength})."
        )
    return (
        f"{better} has the lower final {key} ({lo:.2f} vs {hi:.2f}), but the difference is not "
        f"significant at {ALPHA} ({strength})."
    )


def verdict_section(said: list[str], n_pairs: int) -> list[str]:
    fallback = ["Fewer than two arms with ≥ 2 finished runs: no comparison possible."]
    lines = ["## Verdict", "", *[f"- {v}" for v in said or fallback], ""]
    if n_pairs > 1:
        lines.append(
            f"{n_pairs} pairs are tested; p-values are not corrected for multiple comparisons "
            f"(Bonferroni: compare against {ALPHA / n_pairs:.3g})."
        )
    return lines


def skipped(incomplete: list[Skipped]) -> list[str]:
    if not incomplete:
        return []
    return [
        "",
        f"Skipped {len(incomplete)} incomplete run(s): " + ", ".join(map(str, incomplete)),
    ]


@exits_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gan.report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="multirun (or run) directories")
    parser.add_argument("--out", type=Path, help="output directory (default: <first input>/report)")
    parser.add_argument(
        "--fcd-threshold",
        type=float,
        default=None,
        help="report the steps each run needs to reach eval/fcd ≤ this value",
    )
    args = parser.parse_args(argv)
    console.setup()
    runs, incomplete = load_runs(args.inputs)
    out = args.out or args.inputs[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    text = write_report(runs, incomplete, out, args.fcd_threshold)
    print(text)
    print(f"wrote {out / 'report.md'}, {out / 'curves.png'}, {out / 'summary.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

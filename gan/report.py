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
import math
import sys
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gan.errors import UserError
from gan.tracking import METRICS_FILE, SUMMARY_FILE

CURVES = ("train/loss_D", "train/loss_G", "train/acc_D", "train/acc_G", "eval/fcd")
FINALS = ("train/loss_D", "train/loss_G", "train/acc_D", "train/acc_G", "eval/fcd")
PRIMARY = "eval/fcd"  # lower is better; the verdict is given on it when present
ALPHA = 0.05


@dataclass
class Run:
    path: Path
    arm: str
    seed: int
    model: str
    dataset: str
    status: str
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # key → (steps, values)
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


def load_runs(inputs: Sequence[Path]) -> tuple[list[Run], list[Path]]:
    """Runs under ``inputs`` that have a summary; also the directories skipped as incomplete."""
    runs, incomplete = [], []
    for root in inputs:
        if not Path(root).is_dir():
            raise UserError(f"{root} is not a directory")
        for metrics in sorted(Path(root).rglob(METRICS_FILE)):
            run_dir = metrics.parent
            summary_path = run_dir / SUMMARY_FILE
            if not summary_path.is_file():
                incomplete.append(run_dir)
                continue
            summary = json.loads(summary_path.read_text())
            if summary.get("status") not in ("finished", "diverged"):
                incomplete.append(run_dir)
                continue
            run = Run(run_dir, summary["arm"], int(summary["seed"]), summary["model"], summary["dataset"],
                      summary["status"], diverged_step=summary.get("diverged_step"))
            series: dict[str, list[tuple[int, float]]] = defaultdict(list)
            for line in metrics.read_text().splitlines():
                record = json.loads(line)
                for key in CURVES:
                    if key in record:
                        series[key].append((record["step"], record[key]))
            run.curves = {k: (np.array([s for s, _ in v]), np.array([x for _, x in v], dtype=float))
                          for k, v in series.items()}
            runs.append(run)
    if not runs:
        raise UserError(f"no finished runs (directories with {SUMMARY_FILE} and {METRICS_FILE}) under "
                        + ", ".join(map(str, inputs)))
    _refuse_mixed_settings(runs)
    kinds = sorted({(r.model, r.dataset) for r in runs})
    if len(kinds) > 1:
        raise UserError(
            "runs of different models/datasets cannot be averaged into one report: "
            + "; ".join(f"model={m} dataset={d}: {sum((r.model, r.dataset) == (m, d) for r in runs)} runs"
                        for m, d in kinds)
            + ". Report each combination separately."
        )
    return runs, incomplete


# Settings that change what an arm's runs measure: seeds may differ, and init defines the arm.
SETTINGS = (("trainer", "steps"), ("trainer", "batch_size"), ("trainer", "lr"), ("trainer", "betas"),
            ("model",), ("eval", "num_samples"))


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
        raise UserError("runs with different training settings cannot be averaged into one report: "
                        + "; ".join(f"{k} takes {', '.join(v)}" for k, v in mixed.items())
                        + ". Report each setting separately.")


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
        return {"t": math.nan, "p_welch": math.nan, "u": math.nan, "p_mannwhitney": math.nan,
                "hedges_g": math.nan}
    with warnings.catch_warnings():  # near-identical seeds: scipy's precision note, the numbers stand
        warnings.simplefilter("ignore", RuntimeWarning)
        welch = stats.ttest_ind(a, b, equal_var=False)
        mw = stats.mannwhitneyu(a, b, alternative="two-sided")
    na, nb = len(a), len(b)
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    correction = 1 - 3 / (4 * (na + nb) - 9)  # small-sample bias of Cohen's d
    g = (a.mean() - b.mean()) / pooled * correction if pooled > 0 else math.copysign(math.inf, a.mean() - b.mean())
    return {"t": float(welch.statistic), "p_welch": float(welch.pvalue), "u": float(mw.statistic),
            "p_mannwhitney": float(mw.pvalue), "hedges_g": float(g)}


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in CURVES if any(k in r.curves for runs in arms.values() for r in runs)]
    cols = 3 if len(keys) > 4 else 2
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
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
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("mean across seeds, 95 % confidence band", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(mean: float, half: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def run_row(r: Run, threshold: float | None) -> dict[str, object]:
    row: dict[str, object] = {"arm": r.arm, "seed": r.seed, "model": r.model, "dataset": r.dataset,
                              "status": r.status, "diverged_step": r.diverged_step, "path": str(r.path)}
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


def write_report(runs: list[Run], incomplete: list[Path], out: Path, threshold: float | None) -> str:
    arms = arms_of(runs)
    finished = {arm: [r for r in rs if r.status == "finished"] for arm, rs in arms.items()}
    rows = [run_row(r, threshold) for rs in arms.values() for r in rs]
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_curves(arms, out / "curves.png")

    has_fcd = any(PRIMARY in r.curves for r in runs)
    model, dataset = runs[0].model, runs[0].dataset
    lines = [f"# Init ablation: model={model}, dataset={dataset}", "",
             f"{len(runs)} runs in {len(arms)} arms; mean ± 95 % confidence interval (Student t) across "
             "seeds; final = the last logging window. Diverged runs are counted but left out of the "
             "statistics.", "", "![curves](curves.png)", ""]
    header = ["arm", "n", "diverged"]
    if has_fcd:
        header += ["final FCD", "best FCD"] + ([f"steps to FCD ≤ {threshold:g}"] if threshold is not None else [])
    header += ["final acc_D", "final acc_G", "final loss_D", "final loss_G"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, rs in arms.items():
        ok = finished[arm]
        cells = [arm, str(len(ok)), str(sum(r.status == "diverged" for r in rs))]
        if has_fcd:
            cells += [_fmt(*mean_ci([r.final(PRIMARY) for r in ok])[:2], 2),
                      _fmt(*mean_ci([b[0] for r in ok if (b := r.best(PRIMARY))])[:2], 2)]
            if threshold is not None:
                reached = [s for r in ok if (s := steps_to(r, threshold)) is not None]
                cells.append(f"{_fmt(*mean_ci(reached)[:2], 0)} ({len(reached)}/{len(ok)} reached)")
        for key in ("train/acc_D", "train/acc_G", "train/loss_D", "train/loss_G"):
            cells.append(_fmt(*mean_ci([r.final(key) for r in ok])[:2]))
        lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "## Pairwise tests", ""]
    metrics = ([PRIMARY] if has_fcd else []) + ["train/acc_D", "train/acc_G", "train/loss_D", "train/loss_G"]
    verdicts = []
    pairs = list(itertools.combinations(finished, 2))
    for key in metrics:
        lines += [f"**final {key}**", "", "| A | B | mean A − B | Welch p | Mann–Whitney p | Hedges' g |",
                  "|---|---|---|---|---|---|"]
        for a, b in pairs:
            va = [x for r in finished[a] if (x := r.final(key)) is not None and math.isfinite(x)]
            vb = [x for r in finished[b] if (x := r.final(key)) is not None and math.isfinite(x)]
            if len(va) < 2 or len(vb) < 2:
                lines.append(f"| {a} | {b} | – | needs ≥ 2 runs per arm | | |")
                continue
            c = compare(va, vb)
            if math.isnan(c["p_welch"]):
                lines.append(f"| {a} | {b} | {np.mean(va) - np.mean(vb):+.3f} | – (no variance) | – | – |")
                if key == metrics[0]:
                    verdicts.append(f"{a} and {b}: final {key} has no spread across seeds; no test is possible.")
                continue
            lines.append(f"| {a} | {b} | {np.mean(va) - np.mean(vb):+.3f} | {c['p_welch']:.3g} | "
                         f"{c['p_mannwhitney']:.3g} | {c['hedges_g']:+.2f} |")
            if key == metrics[0]:
                verdicts.append(verdict(key, a, b, va, vb, c, lower_is_better=has_fcd))
        lines.append("")
    lines += ["## Verdict", "", *[f"- {v}" for v in verdicts or ["Fewer than two arms with ≥ 2 finished runs: "
                                                                 "no comparison possible."]], ""]
    if len(pairs) > 1:
        lines.append(f"{len(pairs)} pairs are tested; p-values are not corrected for multiple comparisons "
                     f"(Bonferroni: compare against {ALPHA / len(pairs):.3g}).")
    if incomplete:
        lines += ["", f"Skipped {len(incomplete)} incomplete run(s) (no finished summary): "
                  + ", ".join(str(p) for p in incomplete)]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def verdict(key: str, a: str, b: str, va: list[float], vb: list[float], c: dict[str, float],
            lower_is_better: bool) -> str:
    ma, mb = float(np.mean(va)), float(np.mean(vb))
    significant = c["p_welch"] < ALPHA
    strength = f"Welch p = {c['p_welch']:.3g}, Hedges' g = {c['hedges_g']:+.2f}, n = {len(va)} vs {len(vb)}"
    if not lower_is_better:  # no quality metric: say whether they differ, not which is better
        word = "differ significantly" if significant else "do not differ significantly"
        return (f"{a} and {b} {word} in final {key} ({ma:.3f} vs {mb:.3f}; {strength}). "
                "Losses and accuracies do not rank GANs: add a quality metric (eval/fcd) to say which is better.")
    better, worse = (a, b) if ma < mb else (b, a)
    if significant:
        return f"**{better}** is better than {worse} on final {key} ({min(ma, mb):.2f} vs {max(ma, mb):.2f}; {strength})."
    return (f"{better} has the lower final {key} ({min(ma, mb):.2f} vs {max(ma, mb):.2f}), but the difference "
            f"is not significant at {ALPHA} ({strength}).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gan.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="multirun (or run) directories")
    parser.add_argument("--out", type=Path, help="output directory (default: <first input>/report)")
    parser.add_argument("--fcd-threshold", type=float, default=None,
                        help="report the steps each run needs to reach eval/fcd ≤ this value")
    args = parser.parse_args(argv)
    try:
        runs, incomplete = load_runs(args.inputs)
        out = args.out or args.inputs[0] / "report"
        out.mkdir(parents=True, exist_ok=True)
        text = write_report(runs, incomplete, out, args.fcd_threshold)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    print(f"wrote {out / 'report.md'}, {out / 'curves.png'}, {out / 'summary.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

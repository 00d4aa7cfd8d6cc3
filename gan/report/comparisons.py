"""Every pair of arms tested on every final value, Holm-adjusted, and the verdict in words."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gan.report.columns import ALPHA, PRIMARY
from gan.report.runs import Run
from gan.report.stats import BOOTSTRAP_RESAMPLES, bootstrap_ci, clip_difference, compare, holm


@dataclass
class Comparison:
    """One cell group of the pairwise tables: arms ``a`` and ``b`` on final ``key``."""

    key: str
    a: str
    b: str
    va: list[float]
    vb: list[float]
    tests: dict[str, float] | None = None  # None: fewer than 2 finished runs in an arm
    bootstrap: tuple[float, float] = (math.nan, math.nan)
    holm: float = math.nan  # Welch's p adjusted over every test of the tables

    @property
    def tested(self) -> bool:
        return self.tests is not None and not math.isnan(self.tests["p_welch"])


def _finite_finals(runs: list[Run], key: str) -> list[float]:
    return [x for r in runs if (x := r.final(key)) is not None and math.isfinite(x)]


def pairwise(
    finished: dict[str, list[Run]], pairs: list[tuple[str, str]], metrics: list[str]
) -> list[Comparison]:
    """Every pair of arms on every metric, Welch's p Holm-adjusted across all of them."""
    comparisons = []
    for key in metrics:
        for a, b in pairs:
            c = Comparison(
                key, a, b, _finite_finals(finished[a], key), _finite_finals(finished[b], key)
            )
            if len(c.va) >= 2 and len(c.vb) >= 2:
                c.tests = compare(c.va, c.vb)
                if c.tested:
                    low, high = clip_difference(c.tests["ci_low"], c.tests["ci_high"], key)
                    c.tests.update(ci_low=low, ci_high=high)
                    c.bootstrap = bootstrap_ci(c.va, c.vb)
            comparisons.append(c)
    adjusted = holm([c.tests["p_welch"] if c.tested else math.nan for c in comparisons])
    for c, p in zip(comparisons, adjusted):
        c.holm = p
    return comparisons


def pairwise_tables(comparisons: list[Comparison], metrics: list[str]) -> list[str]:
    """One table per metric: each pair of arms, their difference and its tests."""
    if not comparisons:
        return ["", "## Pairwise tests", "", "A single arm: there is no pair to compare.", ""]
    family = sum(c.tested for c in comparisons)
    lines = [
        "",
        "## Pairwise tests",
        "",
        "Mean difference A − B of the final values with two 95 % intervals: Welch's t and a "
        f"percentile bootstrap ({BOOTSTRAP_RESAMPLES:,} resamples per arm, seeded; with few "
        "seeds it is narrower than the t interval, as a resample never leaves the observed "
        f"values). Holm p: Welch's p adjusted by Holm's method over all {family} tests below.",
        "",
    ]
    for key in metrics:
        lines += [
            f"**final {key}**",
            "",
            "| A | B | mean A − B | t 95 % CI | bootstrap 95 % CI | Welch p | Holm p "
            "| Mann–Whitney p | Hedges' g |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [_test_row(c) for c in comparisons if c.key == key]
        lines.append("")
    return lines


def _test_row(c: Comparison) -> str:
    if c.tests is None:
        return f"| {c.a} | {c.b} | – | needs ≥ 2 runs per arm | | | | | |"
    diff = f"{np.mean(c.va) - np.mean(c.vb):+.3f}"
    if not c.tested:
        return f"| {c.a} | {c.b} | {diff} | – (no variance) | – | – | – | – | – |"
    t = c.tests
    return (
        f"| {c.a} | {c.b} | {diff} | [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}] | "
        f"[{c.bootstrap[0]:+.3f}, {c.bootstrap[1]:+.3f}] | {t['p_welch']:.3g} | {c.holm:.3g} | "
        f"{t['p_mannwhitney']:.3g} | {t['hedges_g']:+.2f} |"
    )


def verdicts(comparisons: list[Comparison], key: str, lower_is_better: bool) -> list[str]:
    """A sentence per pair of arms with ≥ 2 finished runs each, on final ``key``."""
    said = []
    for c in comparisons:
        if c.key != key or c.tests is None:
            continue
        if c.tested:
            said.append(verdict(c, lower_is_better))
        else:
            said.append(
                f"{c.a} and {c.b}: final {key} has no spread across seeds; no test is possible."
            )
    return said


def verdict(c: Comparison, lower_is_better: bool) -> str:
    """Significant means Holm-adjusted p < ALPHA; the raw p is stated beside it."""
    ma, mb = float(np.mean(c.va)), float(np.mean(c.vb))
    significant = c.holm < ALPHA
    strength = (
        f"Welch p = {c.tests['p_welch']:.3g}, Holm p = {c.holm:.3g}, "
        f"Hedges' g = {c.tests['hedges_g']:+.2f}, n = {len(c.va)} vs {len(c.vb)}"
    )
    if not lower_is_better:  # no quality metric: say whether they differ, not which is better
        word = "differ significantly" if significant else "do not differ significantly"
        return (
            f"{c.a} and {c.b} {word} in final {c.key} ({ma:.3f} vs {mb:.3f}; {strength}). "
            f"Losses and accuracies do not rank GANs: add a quality metric ({PRIMARY}) to say "
            "which is better."
        )
    if ma == mb:  # equal means (a t of 0): neither is lower
        return f"{c.a} and {c.b} have the same mean final {c.key}, {ma:.2f} ({strength})."
    better, worse = (c.a, c.b) if ma < mb else (c.b, c.a)
    lo, hi = min(ma, mb), max(ma, mb)
    if significant:
        return (
            f"**{better}** is better than {worse} on final {c.key} "
            f"({lo:.2f} vs {hi:.2f}; {strength})."
        )
    return (
        f"{better} has the lower final {c.key} ({lo:.2f} vs {hi:.2f}), but the difference is not "
        f"significant at {ALPHA} after Holm's correction ({strength})."
    )


def verdict_section(
    comparisons: list[Comparison], keys: list[str], lower_is_better: bool, n_pairs: int
) -> list[str]:
    said = [s for key in keys for s in verdicts(comparisons, key, lower_is_better)]
    fallback = ["Fewer than two arms with ≥ 2 finished runs: no comparison possible."]
    lines = ["## Verdict", "", *[f"- {v}" for v in said or fallback], ""]
    family = sum(c.tested for c in comparisons)
    if family > 1:
        lines.append(
            f"Significance is judged on Holm-adjusted p-values over all {family} tests of the "
            f"pairwise tables ({n_pairs} pair(s) of arms × metrics), so testing more metrics or "
            "arms makes each verdict stricter."
        )
    return lines

"""The ablation report's statistics: confidence intervals across seeds, two-sample tests, effect
sizes, a seeded bootstrap and Holm's correction for the many tests of one table."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from gan.quality import CLASS_KL, CLASSES_COVERED, CONFIDENCE, FCD, KCD_STD
from gan.trainer import ACC_D, ACC_D_FAKE, ACC_D_REAL, ACC_G, D_G_Z, D_X, LOSS_D, LOSS_G

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same runs give the same report
# Below this many finished seeds in an arm, the report warns: a t interval from 2-4 values is wide,
# can reach past what the metric can take, and a test has little power (gan.power).
FEW_SEEDS = 5
N_CLASSES = 10  # every dataset here has ten classes (eval/classes_covered, eval/class_kl)

# What each final metric can take. A t interval is symmetric about the mean, so at small n it can
# claim values no run could have (11.5 of 10 classes, an accuracy below 0): clipped to these.
_UNIT = (0.0, 1.0)
RANGES = {
    **dict.fromkeys((ACC_D, ACC_G, ACC_D_REAL, ACC_D_FAKE, D_X, D_G_Z, CONFIDENCE), _UNIT),
    **dict.fromkeys((LOSS_D, LOSS_G, FCD, KCD_STD), (0.0, math.inf)),
    CLASSES_COVERED: (0.0, float(N_CLASSES)),
    CLASS_KL: (0.0, math.log(N_CLASSES)),
}  # eval/kcd is unbiased, so a single estimate may be negative: it has no bound here


def value_range(key: str) -> tuple[float, float]:
    """The values metric ``key`` can take; unbounded for a metric not in RANGES."""
    return RANGES.get(key, (-math.inf, math.inf))


def clip_interval(low: float, high: float, key: str) -> tuple[float, float]:
    """The interval ``[low, high]`` of a mean of ``key`` within the metric's range."""
    floor, ceiling = value_range(key)
    return max(low, floor), min(high, ceiling)


def clip_difference(low: float, high: float, key: str) -> tuple[float, float]:
    """An interval of a difference of two means of ``key``: within ± the width of its range."""
    floor, ceiling = value_range(key)
    span = ceiling - floor
    return max(low, -span), min(high, span)


def mean_ci(values: Sequence[float | None], level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the t-based confidence interval, n) of the finite values; half-width
    nan for n < 2."""
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


def compare(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Welch's t-test with its confidence interval of the mean difference a − b, Mann–Whitney U
    (two-sided) and Hedges' g (a − b, pooled sd); all nan when neither sample has any spread."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keys = ("t", "p_welch", "ci_low", "ci_high", "u", "p_mannwhitney", "hedges_g")
    if no_spread(a, b):  # the tests are undefined
        return dict.fromkeys(keys, math.nan)
    with warnings.catch_warnings():  # near-identical seeds: scipy's precision note, numbers stand
        warnings.simplefilter("ignore", RuntimeWarning)
        welch = stats.ttest_ind(a, b, equal_var=False)
        mw = stats.mannwhitneyu(a, b, alternative="two-sided")
    low, high = welch_ci(a, b, level)
    return {
        "t": float(welch.statistic),
        "p_welch": float(welch.pvalue),
        "ci_low": low,
        "ci_high": high,
        "u": float(mw.statistic),
        "p_mannwhitney": float(mw.pvalue),
        "hedges_g": hedges_g(a, b),
    }


def no_spread(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether every seed of both arms gave one value. Compared as values, not variances: the
    variance of equal values such as 0.1 is rounding residue, not zero."""
    return bool(np.ptp(a) == 0 and np.ptp(b) == 0)


def welch_ci(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of mean(a) − mean(b) with Welch–Satterthwaite degrees of freedom."""
    from scipy import stats

    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    diff = float(a.mean() - b.mean())
    return diff - half, diff + half


def hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    """Standardized mean difference a − b (pooled sd), corrected for small samples."""
    if no_spread(a, b):
        return math.copysign(math.inf, a.mean() - b.mean())
    na, nb = len(a), len(b)
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    correction = 1 - 3 / (4 * (na + nb) - 9)  # small-sample bias of Cohen's d
    return float((a.mean() - b.mean()) / pooled * correction)


def bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) − mean(b), each sample resampled on its own.

    With few seeds it is narrower than the t interval: a resample never leaves the range of the
    values observed, so it cannot account for the seeds not run."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means_a = a[rng.integers(0, len(a), (resamples, len(a)))].mean(1)
    means_b = b[rng.integers(0, len(b), (resamples, len(b)))].mean(1)
    tail = (1 - level) / 2
    low, high = np.quantile(means_a - means_b, [tail, 1 - tail])
    return float(low), float(high)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input's order: the k-th smallest of m p-values
    is multiplied by m − k + 1, made non-decreasing, capped at 1. Nan p-values (no test) stay nan
    and do not count towards m."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted

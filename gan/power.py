"""How many seeds per arm an ablation needs: the power of a two-sided two-sample t-test.

With n runs per arm and a true standardized difference ``effect`` (Cohen's d; Hedges' g estimates
it), the t statistic follows a noncentral t distribution with 2n − 2 degrees of freedom and
noncentrality effect·sqrt(n/2). Welch's test, which the report runs, has the same statistic for
equal n and at most those degrees of freedom; with equal spreads it is the same test.

Written with ``math`` alone (no scipy): T = (Z + δ) / sqrt(V/ν) with Z standard normal and V
chi-square with ν degrees of freedom, so P(T ≤ t) = E_V[Φ(t·sqrt(V/ν) − δ)], an integral over V
taken by Simpson's rule. ``tests/test_power.py`` checks it against scipy and a simulation.
"""

from __future__ import annotations

import functools
import math

_GRID = 4000  # Simpson intervals over V (even); accurate to ~1e-9 for the ν used here


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _chi2_pdf(v: float, df: int) -> float:
    if v <= 0:
        return 0.0
    k = df / 2.0
    return math.exp((k - 1) * math.log(v) - v / 2 - k * math.log(2) - math.lgamma(k))


@functools.lru_cache(maxsize=64)
def _nodes(df: int) -> tuple[tuple[float, float], ...]:
    """Simpson's nodes over V as (sqrt(V/ν), weight·density)."""
    # V beyond its mean + 12 standard deviations carries no mass that matters here.
    h = (df + 12 * math.sqrt(2 * df) + 12) / _GRID
    nodes = []
    for i in range(_GRID + 1):
        simpson = 1 if i in (0, _GRID) else (4 if i % 2 else 2)
        nodes.append((math.sqrt(i * h / df), simpson * h / 3 * _chi2_pdf(i * h, df)))
    return tuple(nodes)


def nct_cdf(t: float, df: int, nc: float) -> float:
    """P(T ≤ t) for T noncentral t with ``df`` degrees of freedom and noncentrality ``nc``."""
    return sum(w * _normal_cdf(t * root - nc) for root, w in _nodes(df))


def t_critical(df: int, alpha: float) -> float:
    """The two-sided critical value: P(|T| > t) = alpha for a central t, by bisection."""
    low, high = 0.0, 100.0
    for _ in range(50):
        mid = (low + high) / 2
        if 2 * (1 - nct_cdf(mid, df, 0.0)) > alpha:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def power(n: int, effect: float, alpha: float = 0.05) -> float:
    """The chance that a two-sided two-sample t-test at level ``alpha`` with ``n`` runs per arm
    finds a true standardized difference of ``effect``."""
    df = 2 * n - 2
    nc = effect * math.sqrt(n / 2)
    crit = t_critical(df, alpha)
    return 1 - nct_cdf(crit, df, nc) + nct_cdf(-crit, df, nc)


def seeds_needed(effect: float = 1.0, alpha: float = 0.05, target: float = 0.8) -> int:
    """The fewest runs per arm whose test reaches power ``target`` for ``effect``."""
    n = 2
    while power(n, effect, alpha) < target:
        n += 1
    return n

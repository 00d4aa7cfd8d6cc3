"""How many seeds per arm an ablation needs: the power of a two-sided two-sample t-test.

With n runs per arm and a true standardized difference ``effect`` (Cohen's d; Hedges' g estimates
it), the t statistic follows a noncentral t distribution with 2n − 2 degrees of freedom and
noncentrality effect·sqrt(n/2). Welch's test, which the report runs, has the same statistic for
equal n and at most those degrees of freedom; with equal spreads it is the same test.

The distributions are scipy's (``scipy.stats.nct`` and ``scipy.stats.t``). ``tests/test_power.py``
checks the README's power table, and ``tests/test_atlas.py`` checks the power against a simulation
of Welch's test.
"""

from __future__ import annotations

import math


def nct_cdf(t: float, df: int, nc: float) -> float:
    """P(T ≤ t) for T noncentral t with ``df`` degrees of freedom and noncentrality ``nc``."""
    from scipy import stats  # imported here: slow to import, and only the atlas needs it

    return float(stats.nct.cdf(t, df, nc))


def t_critical(df: int, alpha: float) -> float:
    """The two-sided critical value of a central t: P(|T| > t) = alpha."""
    from scipy import stats

    return float(stats.t.ppf(1 - alpha / 2, df))


def power(n: int, effect: float, alpha: float = 0.05) -> float:
    """The chance that a two-sided two-sample t-test at level ``alpha`` with ``n`` runs per arm
    finds a true standardized difference of ``effect``."""
    df = 2 * n - 2
    nc = effect * math.sqrt(n / 2)
    crit = t_critical(df, alpha)
    return 1 - nct_cdf(crit, df, nc) + nct_cdf(-crit, df, nc)


def seeds_needed(effect: float = 1.0, alpha: float = 0.05, target: float = 0.8) -> int:
    """The fewest runs per arm whose test reaches power ``target`` for ``effect``."""
    if effect == 0 or not alpha < target < 1:  # no n reaches it: the search would never end
        raise ValueError(f"no seed count reaches power {target} for effect {effect} at {alpha}")
    n = 2
    while power(n, effect, alpha) < target:
        n += 1
    return n

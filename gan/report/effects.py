"""An arm against the control on one value: the difference, its test, and the atlas's rows."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gan.report.columns import ALPHA
from gan.report.stats import compare


@dataclass
class Effect:
    """Mean(arm) − mean(control) of one value over finished runs, with Welch's test."""

    diff: float
    low: float
    high: float
    p: float
    g: float
    n: tuple[int, int]
    holm: float = math.nan  # p adjusted over every test of the atlas table

    @property
    def significant(self) -> bool:
        return self.holm < ALPHA


@dataclass
class AtlasRow:
    setting: str
    arm: str
    control: str
    final: Effect | None  # None: fewer than 2 finished runs with FCD in an arm
    first: Effect | None
    first_step: int | None  # the step of the first evaluation
    outcomes: dict[str, Counter] = field(default_factory=dict)  # arm and control → counts


def effect(values: Sequence[float], control: Sequence[float]) -> Effect | None:
    if len(values) < 2 or len(control) < 2:
        return None
    t = compare(values, control)
    diff = float(np.mean(values) - np.mean(control))
    n = (len(values), len(control))
    return Effect(diff, t["ci_low"], t["ci_high"], t["p_welch"], t["hedges_g"], n)

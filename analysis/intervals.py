"""Means with 95% confidence intervals over repetitions, and paired gains.

An experiment's repetitions are interleaved rounds (``testbed.describe.experiment``): round r runs
every configuration once. A gain is therefore computed *per round* (a mode's peak over
Regular TCP's peak of the same round, minutes apart at most) and the interval is taken
over the rounds' gains: the machine's slow drift (the same Regular run gave 3,500 and
7,700 req/s minutes apart while other programs were busy) cancels within a round instead
of landing on whichever configuration ran at the wrong time.

Intervals use Student's t with n-1 degrees of freedom (the rounds are few); with one
round there is no interval (NaN). A gain is "higher" or "lower" when its interval excludes
0, "no difference" only when the interval lies inside the equivalence bound (default
``EQUIVALENCE_PCT`` = ±5%, an experiment's ``equivalence_pct`` overrides it), and "not
resolved" otherwise: an interval that contains 0 but also effects beyond the bound has not
decided anything. A one-sided bound (a peak on the top offered step is only a lower bound)
decides only on its own side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (scipy is not a
# dependency; beyond 30 the normal quantile is within 4%)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


# one-sided 95% quantiles (the lower bound of a value known only from below)
_T95 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812,
        1.796, 1.782, 1.771, 1.761, 1.753, 1.746, 1.740, 1.734, 1.729, 1.725,
        1.721, 1.717, 1.714, 1.711, 1.708, 1.706, 1.703, 1.701, 1.699, 1.697)

EQUIVALENCE_PCT = 5.0
NOT_RESOLVED = "not resolved"
NO_DIFFERENCE = "no difference"


def t95(df: int) -> float:
    if df < 1:
        return float("nan")
    return _T95[df - 1] if df <= len(_T95) else 1.645


def t975(df: int) -> float:
    if df < 1:
        return float("nan")
    return _T975[df - 1] if df <= len(_T975) else 1.960


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float
    n: int
    std: float

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.lo > 0 or self.hi < 0)


def mean_ci(values: Iterable[float]) -> Interval:
    """Mean and 95% interval of the finite values (NaN interval below two values)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(float(x))], dtype=float)
    n = len(v)
    if n == 0:
        nan = float("nan")
        return Interval(nan, nan, nan, 0, nan)
    mean = float(v.mean())
    if n == 1:
        return Interval(mean, float("nan"), float("nan"), 1, float("nan"))
    std = float(v.std(ddof=1))
    half = t975(n - 1) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, std)


def rounds_for(half_width: float, n: int, target: float, most: int = 1000) -> int | None:
    """Paired rounds a 95% interval of ``half_width`` from ``n`` rounds would need to come
    within ±``target`` if the rounds kept the spread they showed (None: over ``most``)."""
    if n < 2 or not math.isfinite(half_width) or half_width <= target:
        return n if half_width <= target else None
    sd = half_width * math.sqrt(n) / t975(n - 1)
    for m in range(n + 1, most + 1):
        if t975(m - 1) * sd / math.sqrt(m) <= target:
            return m
    return None


def paired_gain_pct(values: dict[int, float], baseline: dict[int, float]) -> Interval:
    """Gain in percent of ``values`` over ``baseline``, paired by round (the keys)."""
    rounds = sorted(set(values) & set(baseline))
    gains = [(values[r] / baseline[r] - 1.0) * 100.0 for r in rounds
             if _finite(values[r]) and _finite(baseline[r]) and baseline[r] > 0]
    return mean_ci(gains)


def verdict(iv: Interval, equivalence_pct: float = EQUIVALENCE_PCT) -> str:
    """'higher' / 'lower' when the interval excludes 0; 'no difference' when it lies
    inside ±``equivalence_pct``; else 'not resolved' (and 'not measured', 'one
    repetition: no interval'). A one-sided interval (NaN on one side) decides on its
    known side only."""
    if iv.n == 0:
        return "not measured"
    if iv.n < 2:
        return "one repetition: no interval"
    lo, hi = iv.lo, iv.hi
    if _finite(lo) and lo > 0:
        return "higher"
    if _finite(hi) and hi < 0:
        return "lower"
    if _finite(lo) and _finite(hi) and lo >= -equivalence_pct and hi <= equivalence_pct:
        return NO_DIFFERENCE
    return NOT_RESOLVED


def one_sided_lower(values: Iterable[float]) -> Interval:
    """Mean and one-sided 95% lower bound (``hi`` NaN: the values are lower bounds)."""
    iv = mean_ci(values)
    if iv.n < 2:
        return iv
    return Interval(iv.mean, iv.mean - t95(iv.n - 1) * iv.std / math.sqrt(iv.n), float("nan"), iv.n, iv.std)


def one_sided_upper(values: Iterable[float]) -> Interval:
    """Mean and one-sided 95% upper bound (``lo`` NaN: the values are upper bounds)."""
    iv = mean_ci(values)
    if iv.n < 2:
        return iv
    return Interval(iv.mean, float("nan"), iv.mean + t95(iv.n - 1) * iv.std / math.sqrt(iv.n), iv.n, iv.std)


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(float(x))

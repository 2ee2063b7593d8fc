"""Means with 95% confidence intervals over repetitions, and paired gains.

An experiment's repetitions are interleaved rounds (``testbed.experiment``): round r runs
every configuration once. A gain is therefore computed *per round* (a mode's peak over
Regular TCP's peak of the same round, minutes apart at most) and the interval is taken
over the rounds' gains: the machine's slow drift (the same Regular run gave 3,500 and
7,700 req/s minutes apart while other programs were busy) cancels within a round instead
of landing on whichever configuration ran at the wrong time.

Intervals use Student's t with n-1 degrees of freedom (the rounds are few); with one
round there is no interval (NaN), and a gain whose interval contains 0 is reported as
"no difference".
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


def paired_gain_pct(values: dict[int, float], baseline: dict[int, float]) -> Interval:
    """Gain in percent of ``values`` over ``baseline``, paired by round (the keys)."""
    rounds = sorted(set(values) & set(baseline))
    gains = [(values[r] / baseline[r] - 1.0) * 100.0 for r in rounds
             if _finite(values[r]) and _finite(baseline[r]) and baseline[r] > 0]
    return mean_ci(gains)


def verdict(iv: Interval) -> str:
    """'higher', 'lower', 'no difference' or 'one repetition' for a gain interval."""
    if iv.n == 0:
        return "not measured"
    if iv.n < 2:
        return "one repetition: no interval"
    if iv.excludes_zero:
        return "higher" if iv.mean > 0 else "lower"
    return "no difference"


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(float(x))

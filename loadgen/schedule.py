"""Offered-load schedules: the rates of a sweep and the send instants of one step.

Pure functions of their arguments (and a seed), so every process of a sweep can compute
its own share of a step without talking to the others.
"""

from __future__ import annotations

import math

import numpy as np

MAX_RATE = 1_000_000.0  # req/s: beyond any one machine; a typo guard, not a limit of the code


class ScheduleError(ValueError):
    """Rates or durations that make no sense."""


MAX_STEPS = 1000  # offered-rate steps in one sweep


def parse_rates(spec: object) -> list[float]:
    """The one parser of offered rates (the load generator's ``--rates``, experiment files'
    ``load.rates``): ``"100:1000:100"`` (start:stop:step, stop included), ``"500"``,
    ``"100,200,400"``, a number or a list of numbers. ScheduleError says what is wrong."""
    if isinstance(spec, bool) or not isinstance(spec, (str, int, float, list, tuple)):
        raise ScheduleError(f"rates must be a list of numbers or START:STOP:STEP, not {spec!r}")
    if isinstance(spec, (int, float)):
        rates = [float(spec)]
    elif isinstance(spec, (list, tuple)):
        if not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in spec):
            raise ScheduleError(f"rates {spec!r}: not a list of numbers")
        rates = [float(r) for r in spec]
    elif ":" in spec:
        try:
            parts = [float(p) for p in spec.strip().split(":")]
        except ValueError:
            raise ScheduleError(f"rates {spec!r}: START, STOP and STEP must be numbers, e.g. 100:1000:100") from None
        if len(parts) != 3:
            raise ScheduleError(f"rates {spec!r}: use START:STOP:STEP, e.g. 100:1000:100")
        start, stop, step = parts
        if not all(math.isfinite(x) for x in parts):
            raise ScheduleError(f"rates {spec!r}: START, STOP and STEP must be numbers, e.g. 100:1000:100")
        if step <= 0:
            raise ScheduleError(f"rates {spec!r}: the step must be positive")
        if stop < start:
            raise ScheduleError(f"rates {spec!r}: STOP is below START")
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        if count > MAX_STEPS:
            raise ScheduleError(f"rates {spec!r}: {count} steps; at most {MAX_STEPS}")
        rates = [start + i * step for i in range(count)]
    else:
        try:
            rates = [float(p) for p in spec.split(",") if p.strip()]
        except ValueError:
            raise ScheduleError(f"rates {spec!r}: not a list of numbers (use 100:1000:100 or 100,200)") from None
    if not rates:
        raise ScheduleError("rates: no offered rate given")
    if len(rates) > MAX_STEPS:
        raise ScheduleError(f"rates: {len(rates)} steps; at most {MAX_STEPS}")
    for r in rates:
        check_rate(r)
    return rates


def check_rate(rate: float) -> None:
    if not math.isfinite(rate) or rate <= 0:
        raise ScheduleError(f"offered rate {rate:g} req/s: rates must be above zero")
    if rate > MAX_RATE:
        raise ScheduleError(f"offered rate {rate:g} req/s is absurd (limit {MAX_RATE:g}); "
                            "check the --rates units (requests per second)")


def send_times(rate: float, duration: float, *, share: int = 0, shares: int = 1,
               poisson: bool = False, seed: int = 0) -> np.ndarray:
    """Instants (seconds from the step's start) at which process ``share`` of ``shares`` sends.

    Fixed gaps: the processes interleave (process k sends at (k + shares*j) / rate), so the
    merged stream has exactly the offered gaps. Poisson: each process draws exponential gaps
    at rate/shares; a sum of independent Poisson streams is Poisson at the full rate.
    """
    check_rate(rate)
    if duration <= 0:
        raise ScheduleError(f"step duration {duration:g} s must be positive")
    if not 0 <= share < shares:
        raise ScheduleError(f"share {share} of {shares}")
    if not poisson:
        first = share / rate
        n = int(math.ceil((duration - first) * rate / shares - 1e-9))
        return first + np.arange(max(n, 0)) * (shares / rate)
    rng = np.random.default_rng([seed, share])
    per = rate / shares
    n_guess = int(per * duration + 6 * math.sqrt(per * duration) + 16)
    t = np.cumsum(rng.exponential(1.0 / per, size=n_guess))
    while t[-1] < duration:  # rare: extend
        more = t[-1] + np.cumsum(rng.exponential(1.0 / per, size=n_guess))
        t = np.concatenate([t, more])
    return t[t < duration]

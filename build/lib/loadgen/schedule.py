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


def parse_rates(text: str) -> list[float]:
    """``100:1000:100`` (start:stop:step, stop included), ``500`` or ``100,200,400``."""
    text = text.strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ScheduleError(f"--rates {text!r}: use START:STOP:STEP, e.g. 100:1000:100")
            start, stop, step = parts
            if step <= 0:
                raise ScheduleError(f"--rates {text!r}: the step must be positive")
            if stop < start:
                raise ScheduleError(f"--rates {text!r}: STOP is below START")
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            if count > 1000:
                raise ScheduleError(f"--rates {text!r}: {count} steps; at most 1000")
            rates = [start + i * step for i in range(count)]
        else:
            rates = [float(p) for p in text.split(",") if p.strip()]
    except ValueError as e:
        if isinstance(e, ScheduleError):
            raise
        raise ScheduleError(f"--rates {text!r}: not numbers (use 100:1000:100 or 100,200)") from None
    if not rates:
        raise ScheduleError("--rates: no rate given")
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

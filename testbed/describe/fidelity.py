"""How an experiment guards its measurements: one typed form, checked where the file is read.

    fidelity: {pairing: step, remeasure: 2, refine: 3, resolution_pct: 4,
               max_foreign_cpu: 0.25, min_idle: 0.05}

- ``pairing``: how the configurations of a round are set against each other in time.
  ``step`` (default): the round's testbeds of one workload are all up at once and the
  offered rates are swept side by side, every configuration taking its turn at each rate
  (the order reversed at every other rate), so that the steps a gain compares ran seconds
  apart, not minutes (testbed.measure.interleave). ``round``: one point after another, one testbed
  at a time, each sweeping all its rates (the order shuffled per round).
- ``remeasure``: how many more times a spoiled part is measured: with ``step`` pairing one
  rate's turn of every configuration, with ``round`` pairing a whole point.
- ``refine``: with ``step`` pairing, how many more turns search each configuration's knee
  after the grid: a turn offers each configuration the midpoint between its best step that
  kept up and the next offered step (past the top step, 1.25x it), until that gap is within
  ``resolution_pct`` of the rate. The grid bounds an interval (a peak that kept up lies up
  to the next step), so a coarse grid alone cannot give a narrow one.
- ``max_foreign_cpu``: cores busy outside the testbed's cgroups above which a step is
  ``interfered``; ``min_idle``: the machine's idle share below which it is oversubscribed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import SpecError

PAIRINGS = ("step", "round")


@dataclass(frozen=True)
class Fidelity:
    pairing: str = "step"
    remeasure: int = 0
    refine: int = 0
    resolution_pct: float = 4.0
    max_foreign_cpu: float = 0.25
    min_idle: float = 0.05

    @classmethod
    def from_yaml(cls, raw: Any, source: str) -> "Fidelity":
        if raw is None:
            return cls()
        keys = tuple(cls.__dataclass_fields__)
        if not isinstance(raw, dict) or set(raw) - set(keys):
            raise SpecError(f"{source}: fidelity is a mapping of {', '.join(keys)}")
        out = cls(**raw)
        if out.pairing not in PAIRINGS:
            raise SpecError(f"{source}: fidelity.pairing must be one of {', '.join(PAIRINGS)}, not {out.pairing!r}")
        r = out.remeasure
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 10:
            raise SpecError(f"{source}: fidelity.remeasure must be a whole number from 0 to 10, not {r!r}")
        if isinstance(out.refine, bool) or not isinstance(out.refine, int) or not 0 <= out.refine <= 10:
            raise SpecError(f"{source}: fidelity.refine must be a whole number from 0 to 10, not {out.refine!r}")
        for name, hi in (("max_foreign_cpu", 64.0), ("min_idle", 1.0), ("resolution_pct", 100.0)):
            v = getattr(out, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= hi:
                raise SpecError(f"{source}: fidelity.{name} must be a number from 0 to {hi:g}, not {v!r}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRECISION_KEYS = ("half_width_pct", "max_rounds", "minutes")


@dataclass(frozen=True)
class Precision:
    half_width_pct: float = 5.0
    max_rounds: int = 10
    minutes: float = 60.0

    @classmethod
    def from_yaml(cls, raw: Any, source: str, min_rounds: int) -> "Precision | None":
        if raw is None:
            return None
        if not isinstance(raw, dict) or set(raw) - set(PRECISION_KEYS):
            raise SpecError(f"{source}: precision is a mapping of {', '.join(PRECISION_KEYS)}")
        out = cls(**raw)
        hw, rounds, minutes = out.half_width_pct, out.max_rounds, out.minutes
        if isinstance(hw, bool) or not isinstance(hw, (int, float)) or not 0 < hw <= 100 or not math.isfinite(hw):
            raise SpecError(f"{source}: precision.half_width_pct must be percentage points in (0, 100], not {hw!r}")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or not min_rounds <= rounds <= 100:
            raise SpecError(f"{source}: precision.max_rounds must be a whole number from repetitions "
                            f"({min_rounds}) to 100, not {rounds!r}")
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not 0 < minutes <= 24 * 60:
            raise SpecError(f"{source}: precision.minutes must be minutes in (0, 1440], not {minutes!r}")
        return out

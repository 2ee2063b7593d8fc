"""How every CPU budget of a testbed is enforced: the CFS period and burst, one typed form.

A budget of ``cpu`` CPUs is a quota of ``cpu x period`` of CPU time per period. The period
decides how a node that has spent its quota waits: up to one period minus the quota (85 ms
for 0.15 CPU under the kernel's default 100 ms). A burst lets a node that left quota unused
in earlier periods spend up to that much more in one period (``cpu.cfs_burst_us`` on v1,
``cpu.max.burst`` on v2; Linux 5.14 and later). Both are parameters every topology takes::

    testbed up -p cpu_period_ms=10 -p cpu_burst_pct=50    # or params: in an experiment

- ``cpu_period_ms``: 1 to 1000 (the kernel's bounds), default 100;
- ``cpu_burst_pct``: 0 to 100, the burst as a share of each node's quota, default 0 (none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError

PERIOD_PARAM, BURST_PARAM = "cpu_period_ms", "cpu_burst_pct"
DEFAULT_PERIOD_MS, DEFAULT_BURST_PCT = 100.0, 0.0
#: what every topology takes besides its own parameters
PARAMS: dict[str, Any] = {PERIOD_PARAM: DEFAULT_PERIOD_MS, BURST_PARAM: DEFAULT_BURST_PCT}
MIN_QUOTA_US = 1000  # the kernel's smallest quota


@dataclass(frozen=True)
class BudgetShape:
    period_ms: float = DEFAULT_PERIOD_MS
    burst_pct: float = DEFAULT_BURST_PCT

    @classmethod
    def from_params(cls, params: dict[str, Any], source: str) -> "BudgetShape":
        out = cls(params.get(PERIOD_PARAM, DEFAULT_PERIOD_MS), params.get(BURST_PARAM, DEFAULT_BURST_PCT))
        for name, value, lo, hi in ((PERIOD_PARAM, out.period_ms, 1, 1000), (BURST_PARAM, out.burst_pct, 0, 100)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not lo <= value <= hi:
                raise SpecError(f"{source}: {name} must be a number from {lo} to {hi}, not {value!r}")
        return cls(float(out.period_ms), float(out.burst_pct))

    @property
    def period_us(self) -> int:
        return round(self.period_ms * 1000)

    def quota_us(self, cpu: float) -> int:
        return max(MIN_QUOTA_US, round(cpu * self.period_us))

    def burst_us(self, cpu: float) -> int:
        return round(self.quota_us(cpu) * self.burst_pct / 100)

    @property
    def is_default(self) -> bool:
        return self == BudgetShape()


def split_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the budget shape's parameters, the rest): for topologies that take only their own."""
    return ({k: v for k, v in params.items() if k in PARAMS},
            {k: v for k, v in params.items() if k not in PARAMS})

"""An experiment's offered load, typed: ``LoadPlan`` (its ``load:`` mapping) and ``Phase`` (one
step of a shifting mix), each checked once where the YAML enters, with one line naming the
field and its rule. The runner turns a plan into the load generator's ``SweepConfig``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from loadgen.config import DEFAULT_LATENCY_TARGET_MS

from ..errors import SpecError

RATED_WORKLOADS = ("static", "dynamic", "mixed")  # the workloads swept over offered rates


def rates_from(spec: Any) -> tuple[float, ...]:
    """``[100, 200]``, ``"100:1000:100"`` (start:stop:step, inclusive) or ``"100,200"``: the
    load generator's own parser (loadgen/schedule.py), its error as a SpecError."""
    from loadgen.schedule import ScheduleError, parse_rates
    try:
        return tuple(parse_rates(spec))
    except ScheduleError as e:
        raise SpecError(str(e)) from None


def _number(where: str, v: Any, low: float, high: float, what: str, *, whole: bool = False,
            open_low: bool = True) -> Any:
    ok_type = isinstance(v, int) if whole else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok_type or not math.isfinite(v) or not (
            (low < v if open_low else low <= v) and v <= high):
        bracket = "(" if open_low else "["
        raise SpecError(f"{where} must be {what} in {bracket}{low:g}, {high:g}], not {v!r}")
    return v


@dataclass(frozen=True)
class Phase:
    """A shifting mix's phase: ``rate`` requests/s for ``seconds``, ``mix`` of them static."""
    mix: float
    rate: float
    seconds: float

    @classmethod
    def from_yaml(cls, raw: Any, where: str) -> "Phase":
        if not isinstance(raw, dict) or set(raw) != {"mix", "rate", "seconds"}:
            raise SpecError(f"{where}: each phase is {{mix: STATIC_SHARE, rate: REQ_PER_S, seconds: S}}")
        (rate,) = rates_from([raw["rate"]])
        return cls(mix=float(_number(f"{where}.mix", raw["mix"], 0, 1, "the static share", open_low=False)),
                   rate=rate, seconds=float(_number(f"{where}.seconds", raw["seconds"], 0, 3600, "seconds")))


@dataclass(frozen=True)
class LoadPlan:
    """The ``load:`` mapping: offered rates (one list, or one per workload), step lengths,
    generator processes, and the request options every step shares."""
    rates: tuple[float, ...] | Mapping[str, tuple[float, ...]] = (500.0,)
    step_seconds: float = 5.0
    warmup_seconds: float = 1.0
    processes: int = 1
    keepalive: bool = False
    poisson: bool = False
    mix: float | None = None             # mixed workload: the static share (None: the generator's)
    dynamic_cost_us: int | None = None   # the dynamic requests' cost (None: the generator's)
    timeout_s: float = 60.0              # seconds past its own length before a generator is stopped
    latency_target_ms: float = DEFAULT_LATENCY_TARGET_MS

    @classmethod
    def from_yaml(cls, raw: Any, source: str) -> "LoadPlan":
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise SpecError(f"{source}: load is a mapping (rates, step_seconds, ...)")
        bad = set(raw) - LOAD_KEYS
        if bad:
            raise SpecError(f"{source}: load: unknown key(s) {', '.join(sorted(map(str, bad)))}; "
                            f"allowed: {', '.join(sorted(LOAD_KEYS))}")
        where = f"{source}: load."
        kw: dict[str, Any] = {}
        rates = raw.get("rates", [500])
        if isinstance(rates, dict):  # per workload: {static: "1000:6000:500", dynamic: [200, 400]}
            unknown = set(rates) - set(RATED_WORKLOADS)
            if unknown:
                raise SpecError(f"{where}rates names unknown workload(s) {', '.join(sorted(map(str, unknown)))}; "
                                f"rated workloads: {', '.join(RATED_WORKLOADS)}")
            kw["rates"] = {wl: rates_from(r) for wl, r in rates.items()}
        else:
            kw["rates"] = rates_from(rates)
        for key in ("step_seconds", "warmup_seconds", "timeout_s"):
            if key in raw:
                kw[key] = float(_number(where + key, raw[key], 0, 3600, "a number of seconds"))
        if "processes" in raw:
            kw["processes"] = _number(where + "processes", raw["processes"], 1, 64, "a whole number",
                                      whole=True, open_low=False)
        for key in ("keepalive", "poisson"):
            if key in raw:
                if not isinstance(raw[key], bool):
                    raise SpecError(f"{where}{key} must be true or false, not {raw[key]!r}")
                kw[key] = raw[key]
        if "mix" in raw:
            kw["mix"] = float(_number(where + "mix", raw["mix"], 0, 1, "the static share, a number", open_low=False))
        if "dynamic_cost_us" in raw:
            kw["dynamic_cost_us"] = _number(where + "dynamic_cost_us", raw["dynamic_cost_us"], 0, 10_000_000,
                                            "a whole number", whole=True, open_low=False)
        if "latency_target_ms" in raw:
            kw["latency_target_ms"] = float(_number(where + "latency_target_ms", raw["latency_target_ms"],
                                                    0, 600_000, "a number of milliseconds"))
        return cls(**kw)

    def rates_for(self, workload: str) -> list[float]:
        """The offered rates of ``workload`` (SpecError when the plan gives it none)."""
        if isinstance(self.rates, Mapping):
            if workload not in self.rates:
                raise SpecError(f"load.rates gives no rates for workload {workload!r}")
            return list(self.rates[workload])
        return list(self.rates)

    def to_values(self) -> dict[str, Any]:
        """Plain values for the run's manifest."""
        rates: Any = ({wl: list(r) for wl, r in self.rates.items()} if isinstance(self.rates, Mapping)
                      else list(self.rates))
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["rates"] = rates
        return {k: v for k, v in out.items() if v is not None}


LOAD_KEYS = frozenset(f.name for f in fields(LoadPlan))

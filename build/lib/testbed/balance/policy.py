"""Balancing policy: a pure function from samples to the next split.

The *split* is the network side's share, a number in [0, 1]:

- work split (cluster, multihost): the share of new connections the TCP server
  terminates and tunnels; the rest pass straight through to the hosts' kernel TCP;
- CPU split (smp): the share of a fixed total CPU budget given to the TCP-server process;
  the application processes get the rest;
- function placement (``place``, any offloaded topology): the share of new connections
  whose cacheable static requests the TCP server answers itself (the network side's
  share of the static work it could take over); the rest reach the host as before.

Each interval the controller measures each side's *pressure*: CPU used over budget plus
the fraction of the interval it was throttled (so a side pinned at its quota reads above
one). The imbalance is network pressure minus application pressure. When the busier side
is busy enough and the imbalance exceeds a dead band in the same direction for ``hold``
consecutive intervals (hysteresis), the split moves by ``gain * imbalance``, at most the
current step. The step starts at ``step``, halves at every reversal of direction (down to
``min_step``) and grows back by half after moves in the same direction, so the split
homes in on the balance point instead of swinging around it. An overloaded network side means: offload *less* work (work split), answer
fewer requests in the TCP server (placement), or give the network side *more* CPU (CPU
split); an overloaded application side, the opposite.

``decide`` has no side effects, so recorded samples replay exactly in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import TestbedError

KNOBS = ("work", "cpu", "place")


@dataclass(frozen=True)
class Policy:
    kind: str = "adaptive"  # adaptive | fixed
    split: float = 0.5  # the fixed split, or the adaptive policy's starting point
    step: float = 0.1  # largest move per interval
    min_step: float = 0.02  # the step never shrinks below this
    gain: float = 0.5  # move = gain * imbalance (then bounded by step)
    deadband: float = 0.1  # imbalances smaller than this are noise
    hold: int = 2  # intervals an imbalance must persist before acting
    busy: float = 0.7  # act only when the busier side's pressure is above this
    min_split: float = 0.0
    max_split: float = 1.0
    interval: float = 1.0  # seconds between samples

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.split:g}"
        return (f"adaptive(start={self.split:g}, step={self.step:g}, gain={self.gain:g}, "
                f"deadband={self.deadband:g}, hold={self.hold}, busy={self.busy:g}, interval={self.interval:g}s)")


@dataclass(frozen=True)
class Sample:
    """One interval's measurements of both sides (0..1 each, throttled as fraction of time)."""
    net_util: float
    app_util: float
    net_throttled: float = 0.0
    app_throttled: float = 0.0


@dataclass(frozen=True)
class State:
    split: float
    pending: int = 0  # direction of the imbalance being held (-1, 0, +1)
    held: int = 0  # consecutive intervals it has persisted
    last_move: int = 0  # direction of the last move
    reversals: int = 0
    moves: int = 0
    step: float | None = None  # the current largest move (None: the policy's step)


@dataclass(frozen=True)
class Decision:
    split: float
    moved: float
    net_pressure: float
    app_pressure: float
    imbalance: float
    reason: str


def pressure(util: float, throttled: float) -> float:
    return max(0.0, util) + max(0.0, throttled)


def decide(policy: Policy, knob: str, state: State, sample: Sample) -> tuple[State, Decision]:
    """The next split and why; pure."""
    net = pressure(sample.net_util, sample.net_throttled)
    app = pressure(sample.app_util, sample.app_throttled)
    imbalance = net - app

    def result(new_state: State, moved: float, reason: str) -> tuple[State, Decision]:
        return new_state, Decision(new_state.split, moved, net, app, imbalance, reason)

    if policy.kind == "fixed":
        return result(replace(state, split=policy.split), 0.0, "fixed")
    if max(net, app) < policy.busy:
        return result(replace(state, pending=0, held=0), 0.0, "idle: neither side busy")
    if abs(imbalance) < policy.deadband:
        return result(replace(state, pending=0, held=0), 0.0, "balanced within dead band")
    # network overloaded: offload less work / place less there, or give it more CPU
    direction = (1 if imbalance > 0 else -1) if knob == "cpu" else (-1 if imbalance > 0 else 1)
    held = state.held + 1 if direction == state.pending else 1
    if held < policy.hold:
        return result(replace(state, pending=direction, held=held), 0.0,
                      f"holding ({held}/{policy.hold}) before moving {'up' if direction > 0 else 'down'}")
    reversal = state.last_move != 0 and direction != state.last_move
    step = policy.step if state.step is None else state.step
    step = max(policy.min_step, step / 2) if reversal else min(policy.step, step * 1.5)
    move = direction * min(step, policy.gain * abs(imbalance))
    split = min(policy.max_split, max(policy.min_split, state.split + move))
    moved = split - state.split
    if moved == 0:
        return result(replace(state, pending=direction, held=held), 0.0, "at the limit")
    new = State(split=split, pending=direction, held=0, last_move=direction,
                reversals=state.reversals + int(reversal), moves=state.moves + 1, step=step)
    side = "network" if imbalance > 0 else "application"
    return result(new, moved, f"{side} side busier by {abs(imbalance):.2f}")


def parse_policy(spec: str, knob: str = "work") -> Policy:
    """``adaptive``, ``adaptive:step=0.05,hold=3``, ``fixed:0.6``; a clear error otherwise."""
    if knob not in KNOBS:
        raise TestbedError(f"balance knob {knob!r}: one of {', '.join(KNOBS)}")
    kind, _, rest = spec.partition(":")
    limits: dict[str, float] = {"min_split": 0.1, "max_split": 0.9} if knob == "cpu" else {}
    if knob == "place":
        limits["split"] = 0.0  # the paper's system until the host is the bottleneck
    if kind == "fixed":
        try:
            split = float(rest)
        except ValueError:
            raise TestbedError(f"balance {spec!r}: fixed needs a split, e.g. fixed:0.6") from None
        if not 0.0 <= split <= 1.0:
            raise TestbedError(f"balance {spec!r}: the split is the network side's share, in [0, 1]")
        if knob == "cpu" and not 0.05 <= split <= 0.95:
            raise TestbedError(f"balance {spec!r}: a CPU split must leave each side at least 5% of the budget")
        return Policy(kind="fixed", split=split)
    if kind != "adaptive":
        raise TestbedError(f"balance {spec!r}: expected adaptive[:key=value,...] or fixed:SPLIT")
    fields: dict[str, float | int] = dict(limits)
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        key = {"start": "split"}.get(key.strip(), key.strip())
        if not eq or key not in Policy.__dataclass_fields__ or key == "kind":
            allowed = ", ".join(k for k in Policy.__dataclass_fields__ if k != "kind")
            raise TestbedError(f"balance {spec!r}: unknown setting {item!r}; settings: {allowed}")
        try:
            fields[key] = int(value) if key == "hold" else float(value)
        except ValueError:
            raise TestbedError(f"balance {spec!r}: {key} must be a number") from None
    policy = Policy(kind="adaptive", **fields)  # type: ignore[arg-type]
    checks = [(0 < policy.step <= 1, "step must be in (0, 1]"),
              (0 < policy.min_step <= policy.step, "min_step must be in (0, step]"), (policy.gain > 0, "gain must be positive"),
              (policy.deadband >= 0, "deadband must be >= 0"), (policy.hold >= 1, "hold must be >= 1"),
              (0 <= policy.min_split <= policy.split <= policy.max_split <= 1,
               "need 0 <= min_split <= start <= max_split <= 1"),
              (0.1 <= policy.interval <= 60, "interval must be in [0.1, 60] s")]
    for ok, message in checks:
        if not ok:
            raise TestbedError(f"balance {spec!r}: {message}")
    return policy

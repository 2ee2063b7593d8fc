"""The balancing decision as a pure function: replayed on sample sequences."""

import pytest

from testbed.balance.controller import WorkSplit
from testbed.balance.policy import Policy, Sample, State, decide, parse_policy
from testbed.errors import TestbedError


def replay(policy: Policy, knob: str, samples: list[Sample]) -> list[State]:
    state, states = State(split=policy.split), []
    for s in samples:
        state, _ = decide(policy, knob, state, s)
        states.append(state)
    return states


def test_fixed_policy_reproduces_the_static_split_exactly():
    states = replay(parse_policy("fixed:0.6"), "work", [Sample(1.0, 0.2, 0.5, 0.0)] * 20)
    assert {s.split for s in states} == {0.6}


def test_work_split_moves_toward_the_host_when_the_tcp_server_saturates():
    # network pinned at its quota, host half idle: offload less, within a few intervals
    states = replay(parse_policy("adaptive:start=1.0"), "work", [Sample(1.0, 0.5, 0.4, 0.0)] * 8)
    assert states[0].split == 1.0, "hysteresis: one interval is not enough to move"
    assert states[1].split < 1.0
    assert states[-1].split <= 0.7


def test_cpu_split_goes_to_the_network_side_under_static_and_to_the_application_under_dynamic():
    static = replay(parse_policy("adaptive", "cpu"), "cpu", [Sample(1.0, 0.6, 0.5, 0.0)] * 10)
    dynamic = replay(parse_policy("adaptive", "cpu"), "cpu", [Sample(0.4, 1.0, 0.0, 0.6)] * 10)
    assert static[-1].split > 0.7 and dynamic[-1].split < 0.3
    assert static[-1].split <= 0.9 and dynamic[-1].split >= 0.1, "a CPU split never starves a side"


def test_no_oscillation_on_steady_balanced_load_and_bounded_reversals_on_noise():
    balanced = replay(parse_policy("adaptive"), "work", [Sample(0.95, 0.97, 0.3, 0.32)] * 50)
    assert {s.split for s in balanced} == {0.5}
    noisy = [Sample(1.0, 0.8, 0.2, 0.0) if i % 2 else Sample(0.8, 1.0, 0.0, 0.2) for i in range(60)]
    states = replay(parse_policy("adaptive"), "work", noisy)
    assert states[-1].reversals == 0 and states[-1].moves == 0, "alternating noise must not move it"


def test_idle_system_does_not_move():
    states = replay(parse_policy("adaptive"), "work", [Sample(0.3, 0.05)] * 10)
    assert states[-1].split == 0.5 and states[-1].moves == 0


def test_steps_are_bounded():
    p = parse_policy("adaptive:step=0.05,hold=1")
    states = replay(p, "work", [Sample(2.0, 0.0, 1.0, 0.0)] * 3)
    assert [round(s.split, 3) for s in states] == [0.45, 0.4, 0.35]


@pytest.mark.parametrize("spec, message", [
    ("fixed", "fixed needs a split"), ("fixed:1.5", r"in \[0, 1\]"), ("sometimes", "expected adaptive"),
    ("adaptive:speed=3", "unknown setting"), ("adaptive:step=0", "step must be"),
    ("adaptive:hold=x", "hold must be a number"), ("adaptive:start=0.95,max_split=0.9", "min_split <= start"),
])
def test_bad_policy_settings_get_a_clear_error(spec, message):
    with pytest.raises(TestbedError, match=message):
        parse_policy(spec)
    with pytest.raises(TestbedError, match="at least 5%"):
        parse_policy("fixed:0.99", "cpu")


def test_work_split_ruleset_edges():
    ws = WorkSplit("10.77.255.1", 80, ["10.77.1.2", "10.77.1.3"])
    assert "dnat" not in ws.ruleset(1.0)                    # all offloaded: no pass-through rule
    assert "numgen random" not in ws.ruleset(0.0) and "dnat to numgen inc mod 2" in ws.ruleset(0.0)
    assert "< 4000" in ws.ruleset(0.6)


def test_closed_loop_homes_in_on_the_balance_point_with_few_reversals():
    """A plant where each side's load follows the split (network side heavier per request,
    as on static load): the controller must settle near where both sides are equally busy."""
    policy = parse_policy("adaptive:start=1.0")
    state = State(split=policy.split)
    net_cost, app_cost_offloaded, app_cost_direct = 1.6, 0.4, 1.3  # per unit of load

    def plant(split: float) -> Sample:
        net = net_cost * split
        app = app_cost_offloaded * split + app_cost_direct * (1 - split)
        return Sample(min(net, 1.0), min(app, 1.0), max(0.0, net - 1.0), max(0.0, app - 1.0))

    splits = []
    for _ in range(80):
        state, _ = decide(policy, "work", state, plant(state.split))
        splits.append(state.split)
    balance_point = app_cost_direct / (net_cost - app_cost_offloaded + app_cost_direct)
    assert abs(splits[-1] - balance_point) < 0.1, (splits[-1], balance_point)
    assert state.reversals <= 4
    assert max(splits[-20:]) - min(splits[-20:]) < 0.1, "settled, not swinging"


def test_place_share_rises_when_the_host_is_the_bottleneck_and_falls_when_the_tcp_server_is():
    policy = parse_policy("adaptive", "place")
    assert policy.split == 0.0, "placement starts off: the paper's system until the host saturates"
    host_bound = replay(policy, "place", [Sample(0.4, 1.0, 0.0, 0.5)] * 8)
    assert host_bound[0].split == 0.0, "hysteresis: one interval is not enough"
    assert host_bound[1].split > 0.0 and host_bound[-1].split >= 0.4
    net_bound = replay(parse_policy("adaptive:start=0.8", "place"), "place", [Sample(1.0, 0.3, 0.6, 0.0)] * 8)
    assert net_bound[-1].split < 0.45
    assert parse_policy("adaptive:start=0.3", "place").split == 0.3


def test_fixed_place_share_is_exact_and_idle_does_not_move():
    assert {s.split for s in replay(parse_policy("fixed:0.5", "place"), "place", [Sample(0.1, 1.0, 0, 0.9)] * 10)} == {0.5}
    assert replay(parse_policy("adaptive", "place"), "place", [Sample(0.2, 0.3)] * 10)[-1].moves == 0
    with pytest.raises(TestbedError, match="knob"):
        parse_policy("adaptive", "spin")


def test_placement_actuator_writes_atomically_and_reads_back(tmp_path):
    import json

    from testbed.balance.controller import Placement
    path = tmp_path / "placement.json"
    act = Placement(path)
    act.apply(0.123456)
    assert json.loads(path.read_text()) == {"share": 0.1235}
    act.apply(1.0)
    assert json.loads(path.read_text()) == {"share": 1.0}
    assert not list(tmp_path.glob("*.tmp"))

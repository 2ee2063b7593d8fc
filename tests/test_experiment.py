"""Experiment files: every shipped one loads; malformed ones get a one-line message."""

from __future__ import annotations

import re

import pytest

from testbed.errors import SpecError
from testbed.describe.experiment import Point, available_experiments, experiment_from_dict, load_experiment


@pytest.mark.parametrize("name", available_experiments())
@pytest.mark.parametrize("quick", [False, True])
def test_every_shipped_experiment_loads(name: str, quick: bool) -> None:
    exp = load_experiment(name, quick=quick)
    assert exp.modes and exp.workloads and exp.points()


@pytest.mark.parametrize("raw, message", [
    ([1, 2], "an experiment is a mapping"),
    ({"colour": "red"}, "unknown key.*colour"),
    ({"load": {"speed": 3}}, "load: unknown key.*speed"),
    ({"modes": ["turbo"]}, "unknown mode 'turbo'"),
    ({"backend": "docker"}, "backend must be one of netns, mininet, not 'docker'"),
    ({"workloads": ["bursty"]}, "unknown workload 'bursty'"),
    ({"workloads": ["shifting"]}, "needs phases"),
    ({"budgets": "half"}, "budgets must be one of"),
    ({"service": ["poll_us"]}, "service is a mapping"),
    ({"service": {"turbo": 1}}, "unknown service option.*turbo.*known:.*poll_us"),
    ({"service": {"poll_us": -5}}, "poll_us must be a whole number"),
    ({"service": {"poll_us": "fast"}}, "poll_us must be a whole number"),
    ({"load": {"step_seconds": 0}}, "step_seconds must be"),
])
def test_malformed_experiments_get_a_clear_message(raw, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        experiment_from_dict(raw, source="bad.yaml")



def test_service_options_can_be_swept() -> None:
    exp = experiment_from_dict({"modes": ["regular", "setup-with-accept"], "sweep_modes": ["setup-with-accept"],
                                "sweep": {"service.poll_us": [0, 2000]}, "params": {"host_cpu": 0.3},
                                "service": {"dynamic_cost_us": 100}})
    pts = [p for p in exp.points() if p.mode.name == "setup-with-accept"]
    assert sorted(exp.service_options(p).poll_us for p in pts) == [0, 2000]
    assert all(exp.service_options(p).dynamic_cost_us == 100 for p in pts)
    assert all("service.poll_us" not in exp.topology_params(p) for p in exp.points())
    regular = [p for p in exp.points() if not p.mode.offloaded]
    assert len(regular) == 1 and "poll_us" not in exp.service_options(regular[0]).changed()


@pytest.mark.parametrize("raw, message", [
    ({"sweep": {"service.poll_us": [0, -1]}}, r"sweep/configs service.poll_us: poll_us must be.*-1"),
    ({"configs": [{"service.colour": "red"}]}, "unknown service option.*colour"),
    ({"configs": [{"service.host_poll_us": 2_000_000}]}, r"host_poll_us must be.*2000000"),
    ({"configs": [{"service.channel": "via"}]}, "channel must be one of tcp, unix, shm, not 'via'"),
])
def test_swept_service_options_are_checked(raw, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        experiment_from_dict(raw, source="bad.yaml")


def test_repetitions_are_interleaved_rounds_in_a_seeded_order() -> None:
    raw = {"modes": ["regular", "split", "eager-accept", "async-send"], "workloads": ["static", "dynamic"],
           "params": {"host_cpu": 0.3}, "repetitions": 3, "seed": 4}
    pts = experiment_from_dict(raw).points()
    combos = lambda ps: sorted((p.mode.name, p.workload) for p in ps)  # noqa: E731
    rounds = [[p for p in pts if p.repetition == r] for r in (1, 2, 3)]
    # round by round, each configuration once per round
    assert [p.repetition for p in pts] == sorted(p.repetition for p in pts)
    assert all(combos(r) == combos(rounds[0]) and len(r) == 8 for r in rounds)
    orders = [[(p.mode.name, p.workload) for p in r] for r in rounds]
    assert len({tuple(o) for o in orders}) > 1, "every round in the same order: not shuffled"
    assert [p.id for p in experiment_from_dict(raw).points()] == [p.id for p in pts]  # resumable
    other = experiment_from_dict({**raw, "order_seed": 5}).points()
    assert [p.id for p in other] != [p.id for p in pts]


@pytest.mark.parametrize("load, message", [
    ({"latency_target_ms": 0}, "latency_target_ms"),
    ({"latency_target_ms": "fast"}, "latency_target_ms"),
    ({"processes": -3}, "processes"),
    ({"processes": 1.5}, "processes"),
    ({"step_seconds": float("nan")}, "step_seconds"),
    ({"warmup_seconds": True}, "warmup_seconds"),
    ({"rates": "1:200000:0.0001"}, "1999990001 steps; at most 1000"),
    ({"rates": "1:nan:1"}, "must be numbers"),
    ({"rates": [100, "x"]}, "not a list of numbers"),
    ({"rates": list(range(1, 1500))}, "1499 steps; at most 1000"),
])
def test_bad_load_settings_are_refused_before_anything_runs(load: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        experiment_from_dict({"params": {"host_cpu": 0.3}, "load": {"rates": [100], **load}})


@pytest.mark.parametrize("value", ["a/b", "../../etc", "x y", "\u00e9t\u00e9"])
def test_swept_values_make_safe_point_directories(value: str) -> None:
    from testbed.offload.modes import get_mode
    pid = Point(0, {"name": value}, get_mode("regular"), "static", 1).id
    assert "/" not in pid and ".." not in pid and " " not in pid and pid.isascii(), pid
    assert pid.startswith("000-name") and pid.endswith("-regular-static-r1")


def test_san_cost_pairs_each_channel_with_both_sides_polling_or_not() -> None:
    """The shipped SAN experiment: tcp and shm, each per event and with both sides polling."""
    from testbed.describe.experiment import load_experiment
    exp = load_experiment("san-cost")
    pts = [p for p in exp.points() if p.mode.name == "eager-accept" and p.repetition == 1]
    got = sorted((o.channel, o.poll_us, o.host_poll_us) for o in map(exp.service_options, pts))
    assert got == [("shm", 0, 0), ("shm", 2000, 2000), ("tcp", 0, 0), ("tcp", 2000, 2000)]
    assert len(exp.points()) == 15


def test_dry_run_lists_the_points_and_runs_nothing(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "testbed", "run", "san-cost", "--dry-run",
                          "--results", str(tmp_path)], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # 15 points, each 8 rates and 2 knee-search turns of a 10 s step, 1 s warm-up and the
    # generator's 3 s start, plus 5 s: 36.25 min
    assert "san-cost: 15 points, 36 min of offered load" in out.stdout
    assert "'channel': 'shm', 'poll_us': 2000, 'host_poll_us': 2000" in out.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
@pytest.mark.parametrize("name", available_experiments())
def test_every_shipped_experiment_dry_runs(name: str, quick: bool, tmp_path, capsys) -> None:
    """Each shipped file, shifting phases included, is checked, listed and timed by --dry-run."""
    from testbed.commands.cli import main
    argv = ["run", name, "--dry-run", "--results", str(tmp_path)] + (["--quick"] if quick else [])
    assert main(argv) == 0
    assert re.search(rf"^{name}: \d+ points, \d+ min of offered load", capsys.readouterr().out, re.M)
    assert list(tmp_path.iterdir()) == []

"""Every bad setting refused before anything runs: each service, balance and load option
given a bad value through an experiment file (``run FILE --dry-run``, and ``run``) and
through ``up``'s command line, is one line on stderr naming the option, exit code 2, and
nothing built (no results, no testbed state, no namespace)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from testbed.commands.cli import main
from testbed.describe import budget
from testbed.describe.load import LOAD_KEYS
from testbed.system.kernel import list_netns
from testbed.describe.options import SERVICE_KEYS
from testbed.system.state import StateStore

BASE = {"name": "bad", "topology": "cluster", "params": {"host_cpu": 0.3, "tcpserver_cpu": 0.3},
        "modes": ["regular", "eager-accept"], "load": {"rates": [100], "step_seconds": 1}}

# option -> (a bad value, the word the one line must hold)
BAD_SERVICE = {
    "seed": (-1, "seed"), "dynamic_cost_us": ("x", "dynamic_cost_us"), "docroot_dirs": (0, "docroot_dirs"),
    "channel": ("via", "channel"), "ready_timeout": (0, "ready_timeout"), "balance": ("bogus", "balance"),
    "balance_knob": ("lever", "balance_knob"), "poll_us": (-1, "poll_us"),
    "host_poll_us": (2_000_000, "host_poll_us"), "backlog": (0, "backlog"),
    "listen_backlog": (70000, "listen_backlog"), "queue_deadline": (-1, "queue_deadline"),
    "host_conns": (-1, "host_conns"), "overload_control": ("yes", "overload_control"),
    "tcpserver_args": ("--x", "tcpserver_args"), "direct_files": ("yes", "direct_files"),
    "zero_copy": ("maybe", "zero_copy"),
}
BAD_LOAD = {
    "rates": ("x", "rates"), "step_seconds": (0, "step_seconds"), "warmup_seconds": (-1, "warmup_seconds"),
    "processes": (0, "processes"), "keepalive": ("yes", "keepalive"), "poisson": (2, "poisson"),
    "mix": (1.5, "mix"), "dynamic_cost_us": (-1, "dynamic_cost_us"), "timeout_s": (0, "timeout_s"),
    "latency_target_ms": (0, "latency_target_ms"),
}
BAD_TOP = {  # the balance spec and the mode, at the top of an experiment
    "balance": (["adaptive", "bogus"], "balance"), "balance_knob": ("lever", "balance_knob"),
    "modes": (["regular", "sometimes"], "mode"),
}
# up's flags: (flag, a bad value, the words the line must hold)
BAD_FLAGS = [
    ("--seed", "x", "--seed"), ("--dynamic-cost-us", "-5", "--dynamic-cost-us"), ("--channel", "via", "--channel"),
    ("--balance", "bogus", "--balance"), ("--knob", "lever", "--knob"), ("--poll-us", "-1", "--poll-us"),
    ("--host-poll-us", "x", "--host-poll-us"), ("--backlog", "0", "--backlog"),
    ("--listen-backlog", "0", "--listen-backlog"), ("--queue-deadline", "nan", "--queue-deadline"),
    ("--host-conns", "-1", "--host-conns"), ("--mode", "sometimes", "--mode"),
    ("-p", "cpu_period_ms=2000", "cpu_period_ms"), ("-p", "cpu_burst_pct=-1", "cpu_burst_pct"),
]


def test_every_option_has_a_bad_case() -> None:
    assert set(BAD_SERVICE) == SERVICE_KEYS
    assert set(BAD_LOAD) == LOAD_KEYS
    flags = {f for f, _, _ in BAD_FLAGS}
    import argparse
    from testbed.describe.options import ServiceOptions
    p = argparse.ArgumentParser()
    ServiceOptions.add_arguments(p)
    from testbed.describe.options import SWITCHES  # flags without a value: nothing to get wrong
    declared = {s for a in p._actions for s in a.option_strings} - {"-h", "--help", *SWITCHES}
    assert declared <= flags, declared - flags
    assert {f"-p {k}" for k in budget.PARAMS} == {f"-p {v.split('=')[0]}" for f, v, _ in BAD_FLAGS if f == "-p"}


def _cases() -> list[tuple[str, dict, str]]:
    out = []
    for key, (value, word) in BAD_SERVICE.items():
        out.append((f"service.{key}", {**BASE, "service": {key: value}}, word))
    for key, (value, word) in BAD_LOAD.items():
        out.append((f"load.{key}", {**BASE, "load": {**BASE["load"], key: value}}, word))
    for key, (value, word) in BAD_TOP.items():
        out.append((key, {**BASE, key: value}, word))
    out.append(("sweep service.backlog", {**BASE, "sweep": {"service.backlog": [64, 0]}}, "backlog"))
    out.append(("balance knob limits", {**BASE, "topology": "smp", "balance": ["fixed:0.02"],
                                        "balance_knob": "cpu"}, "balance"))
    out.append(("params cpu_period_ms", {**BASE, "params": {**BASE["params"], "cpu_period_ms": 0.5}},
                "cpu_period_ms"))
    out.append(("configs cpu_burst_pct", {**BASE, "configs": [{"cpu_burst_pct": 0}, {"cpu_burst_pct": 200}]},
                "cpu_burst_pct"))
    out.append(("work knob on smp", {**BASE, "topology": "smp", "balance": ["adaptive"],
                                     "balance_knob": "work"}, "work knob"))
    return out


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("what, raw, word", _cases(), ids=[c[0] for c in _cases()])
def test_a_bad_experiment_setting_is_refused_by_dry_run_and_run(what, raw, word, tmp_path, capsys,
                                                                 monkeypatch) -> None:
    import testbed.measure.runner as runner
    monkeypatch.setattr(runner, "run_experiment", lambda *a, **k: pytest.fail("the experiment ran"))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    results = tmp_path / "results"
    for extra in (["--dry-run"], []):
        assert main(["run", str(path), "--results", str(results), *extra]) == 2
        captured = capsys.readouterr()
        line = _one_line(captured.err)
        assert word in line, (what, line)
        assert captured.out == "" and not results.exists()


@pytest.mark.parametrize("flag, value, word", BAD_FLAGS, ids=[f for f, _, _ in BAD_FLAGS])
def test_a_bad_option_of_up_is_refused_before_anything_is_built(flag, value, word, capsys) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    mode = [] if flag == "--mode" else ["--mode", "eager-accept"]
    assert main(["up", "cluster", "--name", name, *mode, f"{flag}={value}"]) == 2
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert word in line, line
    assert not StateStore(name).exists() and list_netns(f"tcps-{name}") == []
    assert not Path(f"/run/tcps/{name}").exists()

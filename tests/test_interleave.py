"""Points measured side by side (``fidelity.pairing: step``): on real namespaces, a round's
configurations take turns at each offered rate, and a turn spoiled by another program's CPU
is measured again for every configuration, so the final tables hold no interfered step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.errors import SpecError
from testbed.describe.experiment import experiment_from_dict
from tests.conftest import ROOT, RUNNER, interruptible

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

TINY = {
    "name": "pairs", "topology": "cluster", "params": {"host_cpu": 0.3, "tcpserver_cpu": 0.3},
    "budgets": "extra", "modes": ["regular", "eager-accept", "split"], "workloads": ["static"],
    "load": {"rates": [200, 300, 400], "step_seconds": 2, "warmup_seconds": 1}, "repetitions": 1, "seed": 1,
}


def _steps(run_dir: Path) -> "list[dict]":
    import analysis
    return analysis.load(run_dir)["steps"].to_dict("records")


def test_configurations_take_turns_at_each_rate(tmp_path: Path) -> None:
    """Three modes, three rates, then one knee-search turn: every mode kept up with 400/s on
    0.3 CPU (it serves thousands), so the search offers each of them 1.25x the top step."""
    run_dir = tmp_path / "pairs"
    exp = {**TINY, "fidelity": {"refine": 1}}
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(exp), str(run_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 testbeds up side by side" in proc.stdout
    steps = sorted(_steps(run_dir), key=lambda s: s["t_start"])
    assert len(steps) == 12
    # in time order: the rates one after another, each taken by all three modes
    rates = [s["offered_rate"] for s in steps]
    assert rates == [200] * 3 + [300] * 3 + [400] * 3 + [500] * 3, rates
    turns = [[s["mode"] for s in steps[i:i + 3]] for i in (0, 3, 6, 9)]
    assert all(sorted(t) == ["eager-accept", "regular", "split"] for t in turns)
    assert turns[1] == turns[0][::-1] and turns[2] == turns[0]  # the order reversed at every other rate


def test_a_turn_overlapping_a_cpu_hog_is_measured_again(tmp_path: Path) -> None:
    """A busy loop outside the testbed during the first rate's turn: that turn is set aside
    and measured again for every configuration; no interfered step is left."""
    exp = {**TINY, "name": "hog", "modes": ["regular", "eager-accept"], "load": {**TINY["load"], "rates": [200, 400]},
           "fidelity": {"remeasure": 2}}
    run_dir = tmp_path / "hog"
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(exp), str(run_dir)], cwd=ROOT,
                            preexec_fn=interruptible, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    hog: subprocess.Popen | None = None
    out = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if hog is None and "rate 200/s (1/2)" in line and not any("measured again" in l for l in out):
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a core, outside every cgroup
            if hog is not None and "measured again" in line:
                hog.kill()
                hog.wait()
        proc.wait(timeout=240)
    finally:
        for p in (hog, proc):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    text = "".join(out)
    assert proc.returncode == 0, text
    manifest = json.loads((run_dir / "manifest.json").read_text())
    redo = manifest.get("remeasured") or []
    assert redo and "interfered" in redo[0]["reason"] and redo[0]["step"] == 0, text
    assert len(redo[0]["kept_in"]) == 2 and all((run_dir / k / "steps.csv").exists() for k in redo[0]["kept_in"])
    steps = _steps(run_dir)
    assert len(steps) == 4 and not any(s["interfered"] for s in steps), [(s["mode"], s["foreign_cpu"]) for s in steps]


def _write_steps(out: Path, rows: "list[tuple[float, float]]") -> Path:
    for k, (offered, replied) in enumerate(rows):
        d = out / "load" / f"step{k:02d}"
        d.mkdir(parents=True)
        (d / "steps.csv").write_text("offered_rate,reply_rate_avg,replies,window_s\n"
                                     f"{offered},{replied},{replied * 5},5\n")
    return out


def test_the_knee_search_halves_the_gap_after_the_best_step_that_kept_up(tmp_path: Path) -> None:
    from testbed.measure.interleave import next_rate
    # kept up to 1,000/s, collapsed at 2,000/s: the peak lies in between
    assert next_rate(_write_steps(tmp_path / "a", [(500, 500), (1000, 998), (2000, 900)]), 4) == 1500
    # ... and once 1,500 fell behind too, between 1,000 and 1,500
    assert next_rate(_write_steps(tmp_path / "b", [(1000, 998), (2000, 900), (1500, 950)]), 4) == 1250
    # the top step kept up: beyond it
    assert next_rate(_write_steps(tmp_path / "c", [(500, 500), (1000, 999)]), 4) == 1250
    # the best step fell behind its load: the peak is a measured rate, nothing to search
    assert next_rate(_write_steps(tmp_path / "d", [(1000, 998), (2000, 1800), (3000, 1500)]), 4) is None
    # within the resolution: done
    assert next_rate(_write_steps(tmp_path / "e", [(1000, 998), (1030, 900)]), 4) is None


@pytest.mark.parametrize("raw", [{"pairing": "duet"}, {"remeasure": -1}, {"remeasure": True},
                                 {"max_foreign_cpu": "a"}, {"bogus": 1}, "step",
                                 {"refine": 11}, {"resolution_pct": -1}])
def test_bad_fidelity_is_refused_naming_the_field(raw) -> None:
    with pytest.raises(SpecError, match="fidelity"):
        experiment_from_dict({**TINY, "fidelity": raw})

"""The guard's rule on probe readings and the precision stopping rule (pure parts)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from testbed.measure import probe
from testbed.errors import SpecError
from testbed.describe.fidelity import Precision
from testbed.measure.precision import decide


def _readings(values_by_cpu):
    return {cpu: (np.arange(len(v), dtype=float), np.asarray(v, dtype=float)) for cpu, v in values_by_cpu.items()}


def test_a_slow_window_on_one_cpu_marks_its_steps_slowed_and_only_those():
    quiet = [1.0] * 60
    slow = [1.0] * 30 + [1.5] * 10 + [1.0] * 20
    r = _readings({"cpu0": quiet, "cpu1": slow})
    base = probe.baselines(r)
    assert probe.is_slowed(probe.slowdown(r, base, 31, 39))
    assert not probe.is_slowed(probe.slowdown(r, base, 0, 29))
    assert math.isnan(probe.slowdown(r, base, 100, 110))  # no readings: not judged


def test_probe_work_is_timed_in_cpu_time():
    assert 0 < probe.work_ms(loop=2000, reps=2) < 1000


def test_rounds_stop_when_precise_or_out_of_time():
    target = Precision(half_width_pct=5, max_rounds=8, minutes=60)
    assert decide({"a": 4.0, "b": 3.0}, target, 3, 10, 10).startswith("every headline gain")
    assert decide({"a": 9.0}, target, 3, 10, 10) == ""
    assert "time budget" in decide({"a": 9.0}, target, 5, 55, 10)
    assert "max_rounds" in decide({"a": 9.0}, target, 8, 10, 1)


@pytest.mark.parametrize("raw", [{"half_width_pct": 0}, {"max_rounds": 2}, {"minutes": -1}, {"bogus": 1}, [5]])
def test_bad_precision_is_refused_naming_the_field(raw):
    with pytest.raises(SpecError):
        Precision.from_yaml(raw, "x.yaml", min_rounds=3)

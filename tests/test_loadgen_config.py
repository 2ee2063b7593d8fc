"""A sweep's command line is made from a SweepConfig and read back by the generator's own
parser: what the runner and the shell write is what the generator runs with."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadgen.cli import build_parser
from loadgen.config import SweepConfig
from loadgen.schedule import parse_rates


@pytest.mark.parametrize("cfg", [
    SweepConfig(target="http://10.77.255.1/", rates=[500.0, 1000.0], out=Path("/tmp/x")),
    SweepConfig(target="http://10.77.255.1/", rates=[350.0], out=Path("/r/load/step03"), workload="mixed",
                step_seconds=5.0, warmup=1.0, processes=2, poisson=True, keepalive=True, mix=0.3,
                dynamic_cost_us=100, seed=4, timeout=2.5, max_inflight=64, latency_target_ms=150.0, cpus=[0, 1],
                expect_workers=2, master_bind="*", master_port=5557, worker_wait_s=10.0, locust_events="off",
                pause_s=0.5),
])
def test_argv_round_trips_through_the_generators_parser(cfg: SweepConfig) -> None:
    a = build_parser().parse_args(["sweep", *cfg.to_argv()])
    assert SweepConfig.from_args(a, parse_rates(a.rates)) == cfg


def test_defaults_are_left_out() -> None:
    argv = SweepConfig(target="http://t/", rates=[1.0], out=Path("o")).to_argv()
    assert argv == ["--target", "http://t/", "--rates", "1", "--out", "o"]


def test_a_points_configuration_and_a_phase_of_a_shifting_mix() -> None:
    from dataclasses import replace

    from testbed.describe.experiment import experiment_from_dict
    from testbed.measure.point import sweep_config
    exp = experiment_from_dict({
        "name": "x", "topology": "cluster", "modes": ["regular"], "workloads": ["static", "shifting"],
        "load": {"rates": {"static": [500, 1000]}, "step_seconds": 4, "warmup_seconds": 1, "dynamic_cost_us": 200},
        "phases": [{"mix": 0.5, "rate": 1500, "seconds": 3}], "repetitions": 1})
    p = next(q for q in exp.points() if q.workload == "static")
    cfg = sweep_config(exp, p, "http://t/", Path("o"))
    assert (cfg.rates, cfg.step_seconds, cfg.warmup, cfg.dynamic_cost_us) == ([500.0, 1000.0], 4.0, 1.0, 200)
    phase = sweep_config(exp, replace(p, workload="mixed"), "http://t/", Path("o"), [1500.0], step_seconds=3.0, mix=0.5)
    assert (phase.rates, phase.step_seconds, phase.mix, phase.workload) == ([1500.0], 3.0, 0.5, "mixed")

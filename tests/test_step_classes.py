"""What limited a step, on real testbeds: a saturated server is the server's answer, not a
generator limit; a generator held to a tiny CPU budget is flagged as generator-bound.

The server here is Regular TCP on a 0.05-CPU host (a few hundred replies/s), offered 3,000
and 6,000 req/s: far past its knee, with the generator mostly idle."""

from __future__ import annotations

import csv
import os
import secrets
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]


def _sweep(params: dict[str, str], rates: str, out: Path, client_cpu_after_first_step: float | None = None
           ) -> list[dict]:
    """Sweep Regular TCP in a fresh testbed; optionally hold the generator's node to a CPU
    budget from the second step on (under 0.03 CPU its start-up alone would take minutes)."""
    from testbed.system import cgroups
    from testbed.system.lifecycle import Testbed
    from testbed.describe.topology import load_topology

    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces)")
    topo = load_topology("cluster", params)
    with Testbed(topo, "k" + secrets.token_hex(3), mode="regular", start_services=True) as tb:
        argv = [sys.executable, "-m", "loadgen", "sweep", "--target", tb.service_url, "--out", str(out), "-q",
                "--rates", rates, "--step-seconds", "4", "--warmup", "1", "--processes", "2", "--timeout", "2",
                "--worker-wait", "120"]
        proc = tb.popen("client", argv, log_name="sweep", cwd=str(ROOT))
        try:
            if client_cpu_after_first_step is not None:
                deadline = time.monotonic() + 150
                while not (out / "steps.csv").exists():
                    assert proc.poll() is None and time.monotonic() < deadline, "the first step never ended"
                    time.sleep(0.05)
                cgroups.detect().set_cpu(tb.cgroup("client"), client_cpu_after_first_step)
            assert proc.wait(timeout=150) == 0, (tb.store.logs / "client-sweep.log").read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with open(out / "steps.csv") as f:
        return list(csv.DictReader(f))


def test_a_saturated_server_is_not_a_generator_limit(tmp_path: Path) -> None:
    rows = _sweep({"host_cpu": "0.05", "tcpserver_cpu": "0.05"}, "3000,6000", tmp_path / "sat")
    for r in rows:
        assert r["generator_bound"] == "False", (r["offered_rate"], r["bound_reasons"], r["gen_cpu_share_max"])
        assert r["saturated"] == "True", r
        assert int(r["overflow"]) == 0 and int(r["err_timeout"]) + int(r["err_reset"]) + int(r["err_refused"]) > 0
        # every failure counts in the latency percentiles: p99 reaches the timeout's order
        assert float(r["lat_p99_ms"]) > 1000, r


def test_a_generator_held_to_a_tiny_budget_is_flagged(tmp_path: Path) -> None:
    rows = _sweep({"host_cpu": "0.3", "tcpserver_cpu": "0.3"}, "200,3000", tmp_path / "gen",
                  client_cpu_after_first_step=0.03)
    assert rows[0]["generator_bound"] == "False", rows[0]["bound_reasons"]
    r = rows[1]
    assert r["generator_bound"] == "True", r
    assert "CPU set" in r["bound_reasons"] or "sent" in r["bound_reasons"] or "lag" in r["bound_reasons"], r

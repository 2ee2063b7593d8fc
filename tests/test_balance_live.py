"""The balancer on real small runs: real namespaces, cgroups, nftables, TCP server and load."""

from __future__ import annotations

import csv
import json
import sys
import time

import pytest

from testbed.errors import TestbedError
from testbed.system.lifecycle import Testbed
from testbed.describe.topology import load_topology

from .conftest import ROOT, leftovers, run_cli

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]


def drive(tb: Testbed, workload: str, rate: int, seconds: float, tmp_path, cost_us: int = 0) -> None:
    argv = [sys.executable, "-m", "loadgen", "sweep", "--target", tb.service_url, "--workload", workload,
            "--rates", str(rate), "--step-seconds", str(seconds), "--warmup", "0.5",
            "--out", str(tmp_path / f"load-{workload}"), "-q"]
    if cost_us:
        argv += ["--dynamic-cost-us", str(cost_us)]
    res = tb.run("client", argv, timeout=seconds + 60, cwd=str(ROOT))
    assert res.returncode == 0, res.stderr.decode()[-2000:]


def decisions(tb: Testbed) -> list[dict]:
    return [json.loads(l) for l in (tb.store.dir / "balance.jsonl").read_text().splitlines()]


def busy_intervals_until_moved(rows: list[dict], moved) -> int:
    busy = [r for r in rows if not r["reason"].startswith("idle")]
    for i, r in enumerate(busy, start=1):
        if moved(r["split"]):
            return i
    return 10**6


def test_cpu_split_moves_to_the_network_side_under_static_load(tb_name, tmp_path):
    topo = load_topology("smp", {"tcpserver_cpu": "0.2", "host_cpu": "0.2"})
    with Testbed(topo, tb_name, mode="eager-accept", start_services=True,
                 service_options={"balance": "adaptive"}) as tb:
        drive(tb, "static", 5000, 10, tmp_path)
        rows = decisions(tb)
        assert busy_intervals_until_moved(rows, lambda s: s > 0.55) <= 5, rows
        state = json.loads(run_cli("status", tb_name, "--json").stdout)["balance"]
        assert state["knob"] == "cpu" and state["split"] > 0.55 and state["last_decision"]
        net = tb.cgroups.limits(tb.cgroup("tcpserver"))["cpu"]
        app = tb.cgroups.limits(tb.cgroup("host1"))["cpu"]
        assert net + app == pytest.approx(0.4, abs=0.002), "the total stays fixed"
        assert net == pytest.approx(state["split"] * 0.4, abs=0.002), "the cgroups hold the split"
    assert leftovers(tb_name) == []


def test_cpu_split_moves_to_the_application_side_under_dynamic_load(tb_name, tmp_path):
    topo = load_topology("smp", {"tcpserver_cpu": "0.2", "host_cpu": "0.2"})
    with Testbed(topo, tb_name, mode="eager-accept", start_services=True,
                 service_options={"balance": "adaptive", "dynamic_cost_us": 2000}) as tb:
        drive(tb, "dynamic", 400, 10, tmp_path, cost_us=2000)
        rows = decisions(tb)
        assert busy_intervals_until_moved(rows, lambda s: s < 0.45) <= 5, rows
        assert rows[-1]["reversals"] <= 2, "steady load: no oscillation"


def test_work_split_moves_work_off_a_saturated_tcp_server(tb_name, tmp_path):
    topo = load_topology("cluster", {"tcpserver_cpu": "0.15", "host_cpu": "0.3"})
    with Testbed(topo, tb_name, mode="eager-accept", start_services=True,
                 service_options={"balance": "adaptive:start=1.0"}) as tb:
        drive(tb, "static", 4500, 10, tmp_path)
        rows = decisions(tb)
        assert busy_intervals_until_moved(rows, lambda s: s < 0.9) <= 5, rows
        ruleset = tb.run("tcpserver", ["nft", "list", "table", "ip", "tcps_balance"]).stdout.decode()
        assert "numgen random mod 10000" in ruleset and "dnat to" in ruleset
        # both paths served: the host app answered requests relayed by the TCP server (its
        # tunnel counters) and requests passed through to its kernel-TCP twin (its own counters)
        time.sleep(0.7)  # stats files are written every 0.5 s
        relayed = json.loads((tb.store.dir / "stats-host1.json").read_text())["requests"]
        direct = json.loads((tb.store.dir / "stats-host1-direct.json").read_text())["requests"]
        daemon = json.loads((tb.store.dir / "stats-tcpserver.json").read_text())["connections_total"]
        replies = sum(int(r["replies"]) for r in
                      csv.DictReader(open(tmp_path / "load-static" / "steps.csv")))
        print(f"relayed {relayed}, passed through {direct}, daemon connections {daemon}, replies {replies}")
        assert relayed > 0.05 * replies and direct > 0.05 * replies, (relayed, direct, replies)
        assert daemon >= relayed


def test_bad_balance_settings_are_refused_cleanly(tb_name):
    bad = run_cli("up", "--name", tb_name, "--mode", "eager-accept", "--balance", "sometimes", check=False)
    assert bad.returncode == 2 and "expected adaptive" in bad.stderr and "Traceback" not in bad.stderr
    assert leftovers(tb_name) == []
    bad = run_cli("up", "--name", tb_name, "--balance", "adaptive", check=False)
    assert bad.returncode == 2 and "needs an offloaded mode" in bad.stderr
    assert leftovers(tb_name) == []


def test_place_knob_fixed_serves_static_in_the_tcp_server_and_adaptive_raises_the_share(tb_name, tmp_path):
    import hashlib

    from testbed.system.starter import http_get

    def stats(node: str) -> dict:
        return json.loads((tb.store.dir / f"stats-{node}.json").read_text())

    topo = load_topology("cluster", {"tcpserver_cpu": "0.4", "host_cpu": "0.4"})
    with Testbed(topo, tb_name, mode="eager-accept", start_services=True,
                 service_options={"balance": "fixed:1.0", "balance_knob": "place"}) as tb:
        assert json.loads((tb.store.dir / "placement.json").read_text()) == {"share": 1.0}
        time.sleep(0.7)  # the TCP server polls its control file; stats files every 0.5 s
        host0, tcps0 = stats("host1")["requests"], stats("tcpserver")["placed_requests"]
        files = json.loads((tb.store.dir / "docroot" / "manifest.json").read_text())["files"]
        for f in files:
            status, body = http_get(tb, "client", f["path"])
            assert status == 200 and hashlib.sha256(body).hexdigest() == f["sha256"], f["path"]
        time.sleep(0.7)
        assert stats("host1")["requests"] == host0, "the host app saw none of them"
        assert stats("tcpserver")["placed_requests"] - tcps0 == len(files)
        state = json.loads(run_cli("status", tb_name, "--json").stdout)["balance"]
        assert state["knob"] == "place" and state["split"] == 1.0
    assert leftovers(tb_name) == []

    # the host is the bottleneck (small budget, static load): the share rises from 0
    name2 = tb_name + "b"
    topo = load_topology("cluster", {"tcpserver_cpu": "0.5", "host_cpu": "0.05"})
    with Testbed(topo, name2, mode="eager-accept", start_services=True,
                 service_options={"balance": "adaptive", "balance_knob": "place"}) as tb:
        drive(tb, "static", 2000, 8, tmp_path)
        rows = decisions(tb)
        assert rows[0]["knob"] == "place"
        assert busy_intervals_until_moved(rows, lambda s: s >= 0.1) <= 5, rows
        assert max(r["split"] for r in rows) >= 0.2, rows
        assert stats("tcpserver")["placed_requests"] > 0
    assert leftovers(name2) == []

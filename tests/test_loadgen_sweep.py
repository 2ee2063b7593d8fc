"""Open-loop sweeps against real servers: in testbed namespaces (generator in the client
node, server in host1), and on loopback for master/worker, bad input and interruption.

Rates are low enough for a shared 2-core machine; no absolute time is asserted."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from loadgen.servers import make_docroot, nginx_argv, slow_server_argv, start_nginx, free_port
from loadgen.stats import STEP_COLUMNS
from loadgen.sweep import REQUEST_COLUMNS

from .conftest import ROOT, interruptible

LOADGEN = [sys.executable, "-m", "loadgen"]


def read_steps(out: Path) -> list[dict]:
    with open(out / "steps.csv") as f:
        return list(csv.DictReader(f))


def sweep_argv(target: str, out: Path, *extra: str) -> list[str]:
    return LOADGEN + ["sweep", "--target", target, "--out", str(out), "-q", *extra]


def within(x: float, want: float, rel: float = 0.02) -> bool:
    return abs(x - want) <= rel * want


# -- in the testbed's namespaces ------------------------------------------------------------

@pytest.fixture(scope="module")
def tb():
    from testbed.system.lifecycle import Testbed
    from testbed.describe.topology import load_topology

    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces)")
    import secrets
    with Testbed(load_topology("cluster", {"host_cpu": "0.6", "tcpserver_cpu": "0.3"}), "l" + secrets.token_hex(4)) as bed:
        work = Path(tempfile.mkdtemp(prefix="tcps-lgtest-"))
        work.chmod(0o755)
        make_docroot(work / "root")
        bed.popen("host1", nginx_argv(work, "0.0.0.0:8080"), log_name="nginx", supervise=True)
        bed.popen("host1", slow_server_argv("0.0.0.0:8081", 0.02, backlog=32), log_name="slow", supervise=True)
        probe = ("import socket,sys,time\nfor p in (8080, 8081):\n for _ in range(200):\n"
                 "  try: socket.create_connection((sys.argv[1], p), 1).close(); break\n"
                 "  except OSError: time.sleep(0.05)\n else: sys.exit(1)")
        bed.run("client", [sys.executable, "-c", probe, bed.address("host1")], timeout=30, check=True)
        yield bed
        import shutil
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.needs_root
def test_sweep_in_client_node_holds_offered_rate_and_writes_all_outputs(tb, tmp_path):
    out = tmp_path / "run"
    target = f"http://{tb.address('host1')}:8080/"
    p = tb.run("client", sweep_argv(target, out, "--workload", "static", "--rates", "300,1200",
                                    "--step-seconds", "2.5", "--warmup", "0.5", "--processes", "2"),
               timeout=90, cwd=str(ROOT))
    assert p.returncode == 0, p.stderr.decode()
    rows = read_steps(out)
    assert list(rows[0]) == STEP_COLUMNS and len(rows) == 2
    for r in rows:
        offered = float(r["offered_rate"])
        assert within(float(r["achieved_rate"]), offered), r
        assert within(float(r["reply_rate_avg"]), offered), r
        assert r["errors_total"] == "0" and r["generator_bound"] == "False", r
        assert float(r["t_end"]) - float(r["t_start"]) == pytest.approx(2.0, abs=1e-3)
        assert int(r["tcp_inuse_max"]) >= 0 and r["tcp_tw_max"] != ""
    req = pd.read_parquet(out / "requests.parquet")
    assert tuple(req.columns) == REQUEST_COLUMNS
    assert set(req["process"]) == {0, 1} and set(req["status"]) == {200}
    assert (req["done"] >= req["sent"]).all() and (req["sent"] >= req["intended"] - 1e-6).all()
    assert req["request"].astype(str).str.startswith("/dir0/class").all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["generator_bound_steps"] == []
    assert len({w["pid"] for w in summary["workers"]}) == 2
    assert (out / "locust_stats.csv").read_text().count("static class") >= 3
    assert (out / "locust_report.html").stat().st_size > 0


@pytest.mark.needs_root
def test_slow_server_gives_rising_latency_and_errors_but_the_offered_rate_holds(tb, tmp_path):
    out = tmp_path / "slow"
    target = f"http://{tb.address('host1')}:8081/"  # serves one request per 20 ms: 50/s
    p = tb.run("client", sweep_argv(target, out, "--workload", "dynamic", "--rates", "25,75",
                                    "--step-seconds", "3", "--warmup", "0.5", "--timeout", "1.0"),
               timeout=90, cwd=str(ROOT))
    assert p.returncode == 0, p.stderr.decode()
    low, high = read_steps(out)
    for r in (low, high):
        assert within(float(r["achieved_rate"]), float(r["offered_rate"])), r  # open loop: no back-off
        assert r["generator_bound"] == "False", r
    assert int(low["errors_total"]) == 0
    assert int(high["errors_total"]) > 0 and int(high["err_timeout"]) > 0
    assert float(high["lat_p50_ms"]) > 2 * float(low["lat_p50_ms"])
    assert float(high["reply_rate_avg"]) < 0.8 * 75  # the server tops out near 50/s


# -- loopback -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nginx():
    with start_nginx() as server:
        yield server


def test_master_with_two_worker_processes_shares_the_rate(nginx, tmp_path):
    port = free_port()
    workers = [subprocess.Popen(LOADGEN + ["worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        out = tmp_path / "mw"
        p = subprocess.run(sweep_argv(nginx.url, out, "--rates", "600", "--step-seconds", "2.5", "--warmup", "0.5",
                                      "--processes", "0", "--expect-workers", "2", "--master-port", str(port)),
                           cwd=ROOT, capture_output=True, text=True, timeout=90)
        assert p.returncode == 0, p.stderr
        for w in workers:  # the master's quit ends the workers
            assert w.wait(timeout=20) == 0
        (row,) = read_steps(out)
        assert within(float(row["achieved_rate"]), 600) and row["processes"] == "2"
        req = pd.read_parquet(out / "requests.parquet")
        share = req[req["measured"]].groupby("process").size()
        assert len(share) == 2 and abs(share[0] - share[1]) <= 1
        summary = json.loads((out / "summary.json").read_text())
        assert {w["pid"] for w in summary["workers"]} == {w.pid for w in workers}
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
                w.wait(timeout=10)


LATE_WORKER = """
import sys, gevent
from locust import events
from locust.env import Environment
from loadgen.worker import SweepWorker
env = Environment(user_classes=[], events=events)
runner = env.create_worker_runner("127.0.0.1", int(sys.argv[1]))
gevent.sleep(2.0)  # the master sees this worker ready; its first set-up arrives before we listen
SweepWorker(env).register(runner)
runner.greenlet.join()
"""


def test_a_worker_that_listens_late_still_gets_its_set_up(nginx, tmp_path):
    """Locust workers announce themselves before their handlers are registered: the master
    resends the set-up until the worker answers (this race once failed CI runs)."""
    port = free_port()
    log = tmp_path / "late.log"
    with open(log, "wb") as logf:
        worker = subprocess.Popen([sys.executable, "-c", LATE_WORKER, str(port)], cwd=ROOT, stdout=logf,
                                  stderr=subprocess.STDOUT)
    try:
        out = tmp_path / "late"
        p = subprocess.run(sweep_argv(nginx.url, out, "--rates", "200", "--step-seconds", "1", "--warmup", "0.5",
                                      "--processes", "0", "--expect-workers", "1", "--master-port", str(port)),
                           cwd=ROOT, capture_output=True, text=True, timeout=90)
        assert p.returncode == 0, p.stderr
        assert worker.wait(timeout=20) == 0
        assert "Unknown message type received: loadgen_setup" in log.read_text()  # the race happened
        (row,) = read_steps(out)
        assert int(row["replies"]) > 0
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=10)


@pytest.mark.parametrize("args, message", [
    (["--workload", "bogus"], "unknown workload"),
    (["--rates", "0"], "above zero"),
    (["--rates", "5e9"], "absurd"),
    (["--target", "http://10.99.3.4/"], "not loopback"),
    (["--target", "http://127.0.0.1:{dead}/"], "cannot reach"),
    (["--warmup", "5"], "shorter than the step"),
])
def test_bad_input_gives_one_clear_line(args, message, nginx, tmp_path):
    base = {"--target": nginx.url, "--rates": "100", "--workload": "static", "--warmup": "0.5"}
    args = [a.format(dead=free_port()) for a in args]
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    argv = LOADGEN + ["sweep", "--out", str(tmp_path / "x"), "--step-seconds", "2"] + \
        [x for kv in base.items() for x in kv]
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_interrupted_sweep_keeps_the_steps_already_measured(nginx, tmp_path):
    out = tmp_path / "cut"
    p = subprocess.Popen(sweep_argv(nginx.url, out, "--rates", "200,200,200,200,200", "--step-seconds", "1.5",
                                    "--warmup", "0.5"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=interruptible)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (out / "steps.csv").exists() and len(read_steps(out)) >= 1:
                break
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert "kept in" in err
    rows = read_steps(out)
    assert 1 <= len(rows) < 5
    assert len(pd.read_parquet(out / "requests.parquet")["step"].unique()) == len(rows)
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"


def test_plain_locust_open_loop_shape_offers_its_steps(nginx, tmp_path):
    p = subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "loadgen" / "locustfile_sweep.py"),
                        "--host", nginx.url, "--headless", "--sweep-rates", "100,200", "--sweep-step-seconds", "2",
                        "--rate-per-user", "50", "--csv", str(tmp_path / "lc"), "--only-summary"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "lc_stats.csv")))
    total = next(r for r in rows if r["Name"] == "Aggregated")
    assert within(int(total["Request Count"]), 100 * 2 + 200 * 2, rel=0.1)
    assert total["Failure Count"] == "0"

"""Nodes on two machines, through the CLI as a user runs it: this machine holds the client
and the TCP server, the peer (``TCPS_CLUSTER_PEER``, root@ADDRESS, the project installed at
the same path) holds the host. Every mode serves byte-exact across the machines, the
host's budget reads back on the peer, an open-loop sweep runs with metrics from both,
``down`` and ``clean`` (after a lost state) leave nothing on either, and each reason a
machine cannot take part is refused in one line before anything is built.

In the VMs of scripts/vm-test.sh --cluster (qemu's software emulation) everything is
slow: no time is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT, run_cli

# under software emulation an up takes minutes and a sweep of two points longer still
pytestmark = [pytest.mark.needs_root, pytest.mark.timeout(1800)]

PEER = os.environ.get("TCPS_CLUSTER_PEER", "")
MACHINE = ["--machine", f"peer={PEER}", "-p", "host_machine=peer"]
BUDGETS = ["-p", "host_cpu=0.3", "-p", "tcpserver_cpu=0.2"]
FILES = ["/dir0/class0_0", "/dir0/class1_4", "/dir0/class2_3", "/dir0/class3_1"]  # 102 B to 300 KiB
MODES = ("regular", "split", "async-send", "eager-receive", "eager-accept", "setup-with-accept")
#: what the testbed may leave nowhere (the peer's check runs the same lines over ssh)
LEFTOVERS = ("ip netns list | grep '^tcps' ; ip -o link show | grep -o 'tcps[^:@ ]*' ; "
             "ls -d /sys/fs/cgroup/tcps-* /sys/fs/cgroup/cpu*/tcps-* 2>/dev/null ; ls /run/tcps 2>/dev/null ; true")


def peer(command: str, check: bool = True) -> subprocess.CompletedProcess:
    got = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", PEER, command],
                         capture_output=True, text=True, timeout=120)
    if check:
        assert got.returncode == 0, got.stderr
    return got


def leftovers() -> dict[str, list[str]]:
    here = subprocess.run(["bash", "-c", LEFTOVERS], capture_output=True, text=True).stdout.split()
    return {"here": here, "peer": peer(LEFTOVERS).stdout.split()}


def state_of(name: str) -> dict:
    return json.loads((Path("/run/tcps") / name / "state.json").read_text())


def test_the_peer_answers_and_nothing_is_left_from_before():
    assert peer("id -u").stdout.strip() == "0"
    assert leftovers() == {"here": [], "peer": []}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_serves_byte_exact_across_machines_and_down_leaves_nothing(mode, tb_name):
    run_cli("up", "cluster", "--name", tb_name, "--mode", mode, *MACHINE, *BUDGETS, timeout=900)
    try:
        state = state_of(tb_name)
        assert state["nodes"]["host1"]["machine"] == "peer"
        assert state["machines"]["peer"]["budgets"]["host1"]["cpu"] == pytest.approx(0.3, abs=0.011)
        # the host's process runs on the peer, in its node's cgroup there
        (app,) = [p for p in state["processes"] if p["node"] == "host1"]
        assert app["machine"] == "peer"
        cgroup = peer(f"cat /proc/{app['pid']}/cgroup").stdout
        assert f"tcps-{tb_name}/host1" in cgroup, cgroup
        # the SAN crosses as a tunnel: the TCP server's end is a VXLAN device, MTU 1450
        link = run_cli("exec", "--name", tb_name, "tcpserver", "--", "ip", "-d", "link", "show",
                       "tcpserver-eth1").stdout
        assert "vxlan id" in link and "mtu 1450" in link, link
        for f in FILES:
            got = subprocess.run([sys.executable, "-m", "testbed", "exec", "--name", tb_name, "client", "--",
                                  "curl", "-sf", "--max-time", "120", state["service_url"].rstrip("/") + f],
                                 cwd=ROOT, capture_output=True, timeout=300)
            assert got.returncode == 0, (f, got.stderr.decode())
            assert got.stdout == (Path(state["docroot"]) / f.lstrip("/")).read_bytes(), f
        # the peer's node answers `exec` and `status` from here
        there = run_cli("exec", "--name", tb_name, "host1", "--", "ip", "-d", "link", "show", "host1-eth0").stdout
        assert "vxlan id" in there and "mtu 1450" in there, there
        status = json.loads(run_cli("status", tb_name, "--json", timeout=300).stdout)
        assert status["nodes"]["host1"]["cpu_used_s"] > 0
        assert all(p["alive"] for p in status["processes"]), status["processes"]
    finally:
        run_cli("down", tb_name, timeout=300)
    assert leftovers() == {"here": [], "peer": []}


def test_an_open_loop_sweep_records_metrics_from_both_machines(tb_name, tmp_path):
    """A two-rate sweep of the quick experiment's kind with the host on the peer: every
    step's replies, and per-node samples of the host taken on the peer."""
    spec = tmp_path / "cluster-sweep.yaml"
    spec.write_text(f"""
name: cluster-sweep
topology: cluster
params: {{host_cpu: 0.3, tcpserver_cpu: 0.2, host_machine: peer}}
machines: {{peer: {{ssh: "{PEER}"}}}}
modes: [regular, eager-accept]
workloads: [static]
load: {{rates: {{static: [20, 40]}}, step_seconds: 4, warmup_seconds: 1, processes: 1}}
repetitions: 1
fidelity: {{pairing: round}}
seed: 1
""")
    run_cli("run", str(spec), "--results", str(tmp_path / "results"), "--no-report", timeout=1800)
    (run_dir,) = (tmp_path / "results").iterdir()
    import pandas as pd
    for point in sorted((run_dir / "points").iterdir()):
        steps = pd.read_csv(point / "load" / "steps.csv")
        assert list(steps["offered_rate"]) == [20.0, 40.0], point
        assert (steps["errors_total"] == 0).all(), point
        samples = pd.read_parquet(point / "samples.parquet")
        host = samples[samples["node"] == "host1"]
        assert len(host) >= 4 and (host["cpu_s"] > 0).any(), point
        meta = json.loads((point / "point.json").read_text())
        assert "peer" in meta["machines"] and "offset_s" in meta["machines"]["peer"]["clock"], meta
    assert leftovers() == {"here": [], "peer": []}


def test_clean_removes_both_shares_by_journal_after_the_state_is_lost(tb_name):
    run_cli("up", "cluster", "--name", tb_name, "--no-services", *MACHINE, *BUDGETS, timeout=900)
    assert peer(f"ls /run/tcps/{tb_name}/journal.jsonl").returncode == 0
    (Path("/run/tcps") / tb_name / "state.json").unlink()  # as if the builder had been killed
    run_cli("clean", timeout=300)
    assert leftovers() == {"here": [], "peer": []}


def refused(*extra: str, name: str) -> str:
    got = run_cli("up", "cluster", "--name", name, "--no-services", *extra, *BUDGETS, check=False, timeout=300)
    assert got.returncode == 2, (got.stdout, got.stderr)
    assert leftovers() == {"here": [], "peer": []}
    return got.stderr.strip()


def test_refusals_name_the_machine_and_what_to_do(tb_name):
    host = PEER.split("@", 1)[1]
    err = refused("--machine", f"peer={PEER},project=/nowhere", "-p", "host_machine=peer", name=tb_name)
    assert err.startswith("error: machine peer: no project at /nowhere"), err
    err = refused("--machine", f"peer=tcpsuser@{host}", "-p", "host_machine=peer", name=tb_name)
    assert "machine peer: tcpsuser@" in err and "not root" in err, err
    # other code there: one more line in one of its modules
    target = "/opt/tcps/testbed/describe/names.py" if not os.environ.get("TCPS_CLUSTER_PROJECT") else \
        os.environ["TCPS_CLUSTER_PROJECT"] + "/testbed/describe/names.py"
    peer(f"cp {target} /tmp/names.py.orig && echo '# changed' >> {target}")
    try:
        err = refused(*MACHINE, name=tb_name)
        assert "machine peer: the project at" in err and "runs other code" in err, err
    finally:
        peer(f"cp /tmp/names.py.orig {target}")
    # a clock 30 s ahead
    peer("date -s '+30 seconds' >/dev/null")
    try:
        err = refused(*MACHINE, name=tb_name)
        assert "machine peer: its clock is +" in err and "synchronize" in err, err
    finally:
        peer("date -s '-30 seconds' >/dev/null")


@pytest.mark.skipif(not os.environ.get("TCPS_CLUSTER_POWEROFF"), reason="switches the peer off: VMs only")
def test_zz_a_machine_switched_off_is_refused_before_anything_is_built(tb_name):
    """Run last: the peer powers off."""
    peer("systemctl --no-block poweroff", check=False)
    import time
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and peer("true", check=False).returncode == 0:
        time.sleep(2)
    got = run_cli("up", "cluster", "--name", tb_name, *MACHINE, *BUDGETS, check=False, timeout=300)
    assert got.returncode == 2 and "machine peer" in got.stderr and "unreachable over SSH" in got.stderr, got.stderr
    assert subprocess.run(["bash", "-c", LEFTOVERS], capture_output=True, text=True).stdout.split() == []

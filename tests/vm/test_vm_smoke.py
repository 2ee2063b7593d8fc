"""Smoke suite on a stock Debian 12 (cgroup v2 under systemd, a kernel with netem), run
inside the VM that scripts/vm-test.sh boots; the development machine (cgroup v1, no netem)
cannot test these paths. Everything goes through the CLI where a user would use it.

Rates and repetitions are small: the VM is emulated in software (qemu TCG, several times
slower than the host), so no absolute time is asserted except netem's configured delay,
which is a lower bound the kernel keeps whatever the emulation's speed."""

from __future__ import annotations

import csv
import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from testbed.system import cgroups
from testbed.system.lifecycle import Testbed
from testbed.describe.topology import topology_from_dict

from ..conftest import ROOT, run_cli

pytestmark = pytest.mark.needs_root

CGROUP = Path("/sys/fs/cgroup")
SAMPLE_FILE = "/dir0/class2_3"   # 40 KiB: several segments on every path
#: what systemd enabled at the root before any testbed (Debian 12: memory pids)
ROOT_CONTROLLERS = ((CGROUP / "cgroup.subtree_control").read_text().split()
                    if (CGROUP / "cgroup.subtree_control").exists() else None)


def leftovers_anywhere() -> list[str]:
    """Every tcps object in the VM: it runs nothing but this suite."""
    found = [f"cgroup {p}" for p in CGROUP.glob("tcps-*")]
    netns = Path("/run/netns")
    if netns.is_dir():
        found += [f"netns {p.name}" for p in netns.iterdir() if p.name.startswith("tcps-")]
    with IPRoute() as ipr:
        found += [f"link {l.get_attr('IFLA_IFNAME')}" for l in ipr.get_links()
                  if l.get_attr("IFLA_IFNAME").startswith("tcps")]
    state = Path("/run/tcps")
    if state.is_dir():
        found += [f"state {p}" for p in state.iterdir()]
    return found


def state_of(name: str) -> dict:
    return json.loads((Path("/run/tcps") / name / "state.json").read_text())


def test_the_vm_is_cgroup_v2_under_systemd_with_netem():
    assert (CGROUP / "cgroup.controllers").exists(), "not a cgroup v2 mount"
    assert cgroups.detect().version == 2
    assert Path("/proc/1/comm").read_text().strip() == "systemd"
    assert {"cpu", "cpuset"} <= set((CGROUP / "cgroup.controllers").read_text().split())
    assert leftovers_anywhere() == []


# (topology, mode, parameters): every mode once on cluster, the other two topologies once
UPS = [("cluster", mode, ["-p", "host_cpu=0.3", "-p", "tcpserver_cpu=0.2"])
       for mode in ("regular", "split", "async-send", "eager-receive", "eager-accept",
                    "setup-with-accept")]
UPS += [("smp", "setup-with-accept", ["-p", "host_cpu=0.3", "-p", "tcpserver_cpu=0.2"]),
        ("multihost", "eager-accept", ["-p", "hosts=2", "-p", "host_cpu=0.3",
                                       "-p", "tcpserver_cpu=0.2"])]


@pytest.mark.parametrize("topology,mode,params", UPS, ids=[f"{t}-{m}" for t, m, _ in UPS])
def test_up_budgets_read_back_curl_byte_exact_and_down(topology, mode, params, tb_name):
    run_cli("up", topology, "--name", tb_name, "--mode", mode, *params, timeout=600)
    try:
        state = state_of(tb_name)
        assert state["cgroup_version"] == 2
        for node, info in state["nodes"].items():
            group = CGROUP / f"tcps-{tb_name}" / node
            assert info["cgroups"] == [str(group)]
            want = {"client": None, "tcpserver": 20000}.get(node, 30000)
            assert (group / "cpu.max").read_text().split() == [
                "max" if want is None else str(want), "100000"], node
            assert (group / "cpuset.cpus.effective").read_text().strip() == info["cpuset"], node
            procs = set((group / "cgroup.procs").read_text().split())
            assert {str(p) for p in info["pids"]} <= procs, (node, info["pids"], procs)
        # the top group holds no process (v2's no-internal-process rule) and delegates both
        top = CGROUP / f"tcps-{tb_name}"
        assert (top / "cgroup.procs").read_text() == ""
        assert {"cpu", "cpuset"} <= set((top / "cgroup.subtree_control").read_text().split())
        got = subprocess.run([sys.executable, "-m", "testbed", "exec", "--name", tb_name, "client",
                              "--", "curl", "-sf", "--max-time", "60",
                              state["service_url"].rstrip("/") + SAMPLE_FILE],
                             cwd=ROOT, capture_output=True, timeout=120)
        assert got.returncode == 0, got.stderr.decode()
        assert got.stdout == (Path(state["docroot"]) / SAMPLE_FILE.lstrip("/")).read_bytes()
    finally:
        run_cli("down", tb_name, timeout=300)
    assert leftovers_anywhere() == []


def test_budgets_survive_systemd_and_the_root_cannot_drop_their_controllers(tb_name):
    """systemd re-applies its own controller set to the root on reload and re-exec (any
    package installation reloads) and would drop one no unit of its own asks for. Our
    groups keep theirs because the testbed's top group enables them for its nodes: the
    kernel refuses to disable a controller at the root while a child still enables it."""
    run_cli("up", "cluster", "--name", tb_name, "--no-services", "-p", "host_cpu=0.3", timeout=300)
    group = CGROUP / f"tcps-{tb_name}" / "host1"
    try:
        for how in ("daemon-reload", "daemon-reexec"):
            subprocess.run(["systemctl", how], check=True, timeout=300)
            assert (group / "cpu.max").read_text().split() == ["30000", "100000"], how
            assert (group / "cpuset.cpus.effective").read_text().strip() == "1", how
        for controller in ("cpu", "cpuset"):
            with pytest.raises(OSError) as refused:
                (CGROUP / "cgroup.subtree_control").write_text(f"-{controller}")
            assert refused.value.errno == errno.EBUSY, controller
        assert (group / "cpu.max").read_text().split() == ["30000", "100000"]
        # and the quota acts: a busy loop is throttled in most periods and gets at most 30 ms
        # in each (cpu.stat; its interpreter's start-up is slow here, so no fixed total)
        run_cli("exec", "--name", tb_name, "host1", "--", sys.executable, "-c",
                "import time\nt = time.time()\nwhile time.time() - t < 1.0: pass", timeout=120)
        used = cgroups.detect().usage(f"tcps-{tb_name}/host1")
        assert used.nr_periods >= 10 and used.nr_throttled >= used.nr_periods / 2, used
        assert 0.15 < used.total_s / (used.nr_periods * 0.1) < 0.33, used
    finally:
        run_cli("down", tb_name, timeout=300)
    assert leftovers_anywhere() == []


def test_a_budget_shape_is_written_as_cpu_max_and_cpu_max_burst(tb_name):
    """v2's files for the period and the burst (v1's are tested on the host)."""
    run_cli("up", "cluster", "--name", tb_name, "--no-services", "-p", "host_cpu=0.3", "-p", "cpu_period_ms=10",
            "-p", "cpu_burst_pct=50", timeout=300)
    group = CGROUP / f"tcps-{tb_name}" / "host1"
    try:
        assert (group / "cpu.max").read_text().split() == ["3000", "10000"]
        assert (group / "cpu.max.burst").read_text().strip() == "1500"
    finally:
        run_cli("down", tb_name, timeout=300)
    assert leftovers_anywhere() == []


def test_open_loop_sweep_holds_its_rates(tb_name, tmp_path):
    run_cli("up", "cluster", "--name", tb_name, "--mode", "setup-with-accept", timeout=600)
    try:
        url = state_of(tb_name)["service_url"]
        out = tmp_path / "sweep"
        p = subprocess.run([sys.executable, "-m", "testbed", "exec", "--name", tb_name, "client", "--",
                            sys.executable, "-m", "loadgen", "sweep", "--target", url, "--out", str(out),
                            "-q", "--workload", "static", "--rates", "20,40", "--step-seconds", "4",
                            "--warmup", "1", "--processes", "1"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        with open(out / "steps.csv") as f:
            rows = list(csv.DictReader(f))
        assert [float(r["offered_rate"]) for r in rows] == [20.0, 40.0]
        for r in rows:
            assert abs(float(r["achieved_rate"]) - float(r["offered_rate"])) <= 0.1 * float(r["offered_rate"]), r
            assert int(float(r["errors_total"])) == 0, r
    finally:
        run_cli("down", tb_name, timeout=300)


DELAY_MS, LOSS_PCT = 20, 5.0
PINGS = 400


def ping_stats(tb: Testbed, src: str, dst: str) -> tuple[float, float, float]:
    """(loss fraction, min RTT ms, average RTT ms) of PINGS pings, 10 ms apart."""
    out = tb.run(src, ["ping", "-q", "-n", "-c", str(PINGS), "-i", "0.01", "-W", "2", tb.address(dst)],
                 timeout=300).stdout.decode()
    sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
    rtt_min, rtt_avg = map(float, re.search(r"= ([\d.]+)/([\d.]+)/", out).groups())
    return 1 - received / sent, rtt_min, rtt_avg


@pytest.mark.parametrize("backend", ["netns", "mininet"])
def test_link_delay_and_loss_are_applied_and_measured(backend, tb_name):
    """netem on each end's egress: a round trip crosses the delay twice and survives with
    probability (1 - loss)^2 (netem on both ends: testbed/system/backends/netns.py)."""
    raw = {"name": "netem", "nodes": [{"name": "client", "role": "client"},
                                      {"name": "host1", "role": "host"}],
           "links": [{"name": "wan", "nodes": ["client", "host1"],
                      "delay_ms": DELAY_MS, "loss_pct": LOSS_PCT}]}
    with Testbed(topology_from_dict(raw, {}), tb_name, backend=backend) as tb:
        qdisc = tb.run("host1", ["tc", "qdisc", "show"]).stdout.decode()
        assert f"delay {DELAY_MS}ms" in qdisc and f"loss {LOSS_PCT:g}%" in qdisc, qdisc
        loss, rtt_min, rtt_avg = ping_stats(tb, "client", "host1")
    print(f"{backend}: delay {DELAY_MS} ms and loss {LOSS_PCT}% per direction: round trip "
          f"min {rtt_min} ms, avg {rtt_avg} ms, loss {loss:.1%} of {PINGS}")
    assert leftovers_anywhere() == []
    expected = 1 - (1 - LOSS_PCT / 100) ** 2
    # binomial: 400 pings at 9.75% -> sd 1.5 points; 4 sd either way
    assert abs(loss - expected) < 0.06, (loss, expected)
    # the fastest round trip shows the delay itself: at least twice netem's, and not much
    # more (the average also holds the emulated CPU's stalls: 67 ms on a busy host)
    assert 2 * DELAY_MS * 0.99 <= rtt_min < 2 * DELAY_MS + 10, rtt_min


def test_clean_after_a_killed_builder_and_down_leave_nothing(tb_name):
    """Two testbeds: one removed by `down`, the other's builder SIGKILLed and `clean`ed."""
    other = tb_name + "k"
    run_cli("up", "multihost", "--name", tb_name, "-p", "hosts=2", "--no-services", timeout=300)
    code = ("from testbed.system.lifecycle import Testbed; from testbed.describe.topology import load_topology\n"
            "import time\n"
            f"Testbed(load_topology('cluster'), '{other}').up()\n"
            "print('up', flush=True)\ntime.sleep(600)\n")
    builder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert builder.stdout.readline().strip() == "up"
    finally:
        builder.kill()
        builder.wait()
    assert (CGROUP / f"tcps-{other}").is_dir()
    run_cli("down", tb_name, timeout=300)
    run_cli("clean", timeout=300)
    assert leftovers_anywhere() == []


def test_the_root_keeps_only_the_controllers_it_had_before_any_testbed():
    """Run last: every testbed is gone, so what up enabled at the root is disabled again."""
    assert leftovers_anywhere() == []
    assert "cpu" not in ROOT_CONTROLLERS and "cpuset" not in ROOT_CONTROLLERS, ROOT_CONTROLLERS
    assert (CGROUP / "cgroup.subtree_control").read_text().split() == ROOT_CONTROLLERS
    assert not cgroups.ROOT_RECORD.exists()

"""The testbed core on the real kernel: namespaces, links, cgroups, processes, teardown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.commands.status import print_status
from testbed.system import cgroups
from testbed.errors import KernelFeatureMissing, SpecError, TestbedError
from testbed.system.lifecycle import Testbed
from testbed.describe.topology import available_topologies, load_topology, topology_from_dict

from .conftest import ECHO_CLIENT as CLIENT, ECHO_SERVER as SERVER, ROOT, leftovers, run_cli

pytestmark = pytest.mark.needs_root



def test_cluster_passes_tcp_from_client_through_tcpserver_to_host(tb_name):
    with Testbed(load_topology("cluster"), tb_name) as tb:
        tb.popen("host1", SERVER, log_name="echo", supervise=True)
        out = tb.run("client", CLIENT + [tb.address("host1")], timeout=20, check=True).stdout.decode()
        # the host saw the client's own address: routed by the tcpserver node, not proxied
        assert out.strip() == f"echo:hello from {tb.address('client')}"
        hops = tb.run("client", ["ip", "route", "get", tb.address("host1")]).stdout.decode()
        assert f"via {tb.address('tcpserver', 'public')}" in hops
        assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "0", \
            "the machine's own forwarding must stay untouched"
        fwd = tb.run("tcpserver", ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.decode().strip()
        assert fwd == "1"
    assert leftovers(tb_name) == []


def test_processes_run_in_their_node_cgroup_with_budget_read_back(tb_name):
    topo = load_topology("cluster", {"host_cpu": "0.3", "tcpserver_cpu": "0.2"})
    with Testbed(topo, tb_name) as tb:
        groups = cgroups.detect()
        limits = groups.limits(tb.cgroup("host1"))
        assert limits["cpu"] == pytest.approx(0.3) and limits["cpuset"] == "1"
        assert groups.limits(tb.cgroup("tcpserver"))["quota_us"] == 20000
        burn = tb.popen("host1", [sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<1.0: pass"])
        assert burn.pid in groups.pids(tb.cgroup("host1"))
        burn.wait(timeout=10)
        used = groups.usage(tb.cgroup("host1"))
        # a 1 s busy loop under a 0.3 CPU quota: throttled, and about 0.3 s of CPU
        assert 0.15 < used.total_s < 0.6, used
        assert used.nr_throttled > 0 and used.throttled_s > 0.2
        assert used.user_s > used.system_s


def test_the_budget_shape_is_written_read_back_and_sets_how_often_a_node_is_stopped(tb_name, capsys):
    topo = load_topology("cluster", {"host_cpu": "0.3", "tcpserver_cpu": "0.2", "cpu_period_ms": "10",
                                     "cpu_burst_pct": "50"})
    with Testbed(topo, tb_name) as tb:
        groups = cgroups.detect()
        limits = groups.limits(tb.cgroup("host1"))
        assert (limits["quota_us"], limits["period_us"]) == (3000, 10000)
        if (groups.root / "cpu" / "cpu.cfs_burst_us").exists() or (groups.root / "cpu.max.burst").exists():
            assert limits["burst_us"] == 1500
        burn = tb.popen("host1", [sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<1.0: pass"])
        burn.wait(timeout=10)
        used = groups.usage(tb.cgroup("host1"))
        # a 1 s busy loop, stopped at the end of each 10 ms period's 3 ms (100 ms: about 10 times)
        assert used.nr_throttled >= 50, used
        print_status(tb._state())
        assert "budgets: each quota per 10 ms CFS period, a burst of 50% of it" in capsys.readouterr().out


def test_every_shipped_topology_builds_execs_and_goes_away(tb_name):
    for name in available_topologies():
        params = {"hosts": "3"} if name == "multihost" else {}
        with Testbed(load_topology(name, params), tb_name) as tb:
            host = tb.topology.by_role("host")[-1].name
            out = tb.run(host, ["ip", "-br", "addr"], check=True).stdout.decode()
            assert tb.address(host) in out
            ping = tb.run("client", ["ping", "-c1", "-W2", tb.address(host)])
            assert ping.returncode == 0, (name, ping.stdout, ping.stderr)
        assert leftovers(tb_name) == [], name


def test_bandwidth_shaping_is_applied_and_delay_is_refused_clearly(tb_name):
    topo = load_topology("cluster", {"san_mbit": "100"})
    with Testbed(topo, tb_name) as tb:
        qdisc = tb.run("host1", ["tc", "qdisc", "show", "dev", "host1-eth0"]).stdout.decode()
        assert "tbf" in qdisc and "100Mbit" in qdisc
    raw = {"nodes": [{"name": "client", "role": "client"}, {"name": "host1", "role": "host"}],
           "links": [{"name": "l", "nodes": ["client", "host1"], "delay_ms": 5}]}
    with pytest.raises(KernelFeatureMissing, match="netem.*delay_ms.*link\\(s\\) l"):
        Testbed(topology_from_dict(raw, {}), tb_name).up()
    assert leftovers(tb_name) == []


def test_a_subnet_overlapping_the_machines_routes_is_refused(tb_name):
    with pytest.raises(SpecError, match="overlaps this machine's route"):
        Testbed(load_topology("cluster"), tb_name, subnet="192.0.0.0/16").up()
    assert leftovers(tb_name) == []


def test_down_after_the_builder_was_killed_with_sigkill(tb_name):
    """A builder killed mid-way leaves a journal; `down` and `clean` remove all it made."""
    code = (f"from testbed.system.lifecycle import Testbed; from testbed.describe.topology import load_topology\n"
            f"import time, os\n"
            f"tb = Testbed(load_topology('multihost', {{'hosts': '8', 'host_cpu': 'none'}}), '{tb_name}').up()\n"
            f"tb.popen('host1', ['sleep', '300'], supervise=True)\n"
            f"print('up', flush=True)\ntime.sleep(300)\n")
    builder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert builder.stdout.readline().strip() == "up"
    sleeper = Testbed.attach(tb_name).processes[0].pid
    os.kill(builder.pid, signal.SIGKILL)
    builder.wait()
    assert leftovers(tb_name), "the killed builder's testbed should still be there"
    run_cli("down", tb_name)
    assert leftovers(tb_name) == []
    assert not Path(f"/proc/{sleeper}").exists() or "Z" in Path(f"/proc/{sleeper}/stat").read_text().split()[2]


def test_clean_removes_a_half_built_testbed_whose_builder_died(tb_name):
    # kill the builder while it is still creating namespaces: only the journal knows
    code = (f"from testbed.system.lifecycle import Testbed; from testbed.describe.topology import load_topology\n"
            f"import testbed.system.kernel as k, os, signal\n"
            f"orig = k.create_netns\n"
            f"n = [0]\n"
            f"def slow(name):\n    orig(name); n[0] += 1\n"
            f"    if n[0] == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"import testbed.system.backends.netns as b; b.create_netns = slow\n"
            f"Testbed(load_topology('multihost', {{'hosts': '6', 'host_cpu': 'none'}}), '{tb_name}').up()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL
    assert any(x.startswith("netns") for x in leftovers(tb_name))
    out = run_cli("clean").stdout
    assert f"netns tcps-{tb_name}-" in out
    assert leftovers(tb_name) == []


def test_clean_removes_only_what_journals_name(tb_name):
    """A foreign ``tcps-foreign`` namespace and cgroup survive ``clean`` (listed, left
    alone), the testbed's own do not; ``up`` refuses to build over a namespace of its own
    names that it did not make, and leaves that namespace in place."""
    from testbed.system.kernel import create_netns, remove_netns
    groups = cgroups.detect()
    foreign, squatter = "tcps-foreign", f"tcps-{tb_name}-host1"
    create_netns(foreign)
    groups.create(foreign, None, None)
    try:
        Testbed(load_topology("cluster"), tb_name).up()  # left up: clean's job
        out = run_cli("clean").stdout
        assert f"netns tcps-{tb_name}-host1" in out and leftovers(tb_name) == []
        assert "left alone netns tcps-foreign" in out and "left alone cgroup tcps-foreign" in out
        assert Path(f"/run/netns/{foreign}").exists() and groups.list_groups(foreign) == [foreign]
        create_netns(squatter)
        with pytest.raises(TestbedError, match=f"netns {squatter} already exist"):
            Testbed(load_topology("cluster"), tb_name).up()
        assert Path(f"/run/netns/{squatter}").exists() and not (Path("/run/tcps") / tb_name).exists()
    finally:
        remove_netns(foreign)
        remove_netns(squatter)
        groups.remove(foreign)
    assert leftovers(tb_name) == []


def test_cli_lifecycle_for_every_topology(tb_name):
    for name in available_topologies():
        up = run_cli("up", name, "--name", tb_name, "--no-services")
        assert "tcpserver" in up.stdout or "nic1" in up.stdout
        import json
        state = json.loads(run_cli("status", tb_name, "--json").stdout)
        assert state["topology"]["name"] == name
        host = state["nodes"]["host1"]
        assert host["netns"].startswith(f"tcps-{tb_name}-") and host["cgroups"]
        ex = run_cli("exec", "--name", tb_name, "host1", "--", "ip", "-br", "addr")
        assert host["addresses"][next(iter(host["addresses"]))] in ex.stdout
        run_cli("down", tb_name)
        assert leftovers(tb_name) == []


def test_status_names_a_namespace_removed_behind_the_testbeds_back(tb_name):
    from testbed.system.kernel import remove_netns
    from testbed.commands.status import status_of
    with Testbed(load_topology("cluster"), tb_name) as tb:
        network = status_of(tb_name)["network"]
        assert network["namespaces"] == [f"tcps-{tb_name}-client", f"tcps-{tb_name}-tcpserver",
                                         f"tcps-{tb_name}-host1"] and network["missing"] == []
        remove_netns(tb.netns("client"))
        assert status_of(tb_name)["network"]["missing"] == [f"netns tcps-{tb_name}-client"]
        out = run_cli("status", tb_name).stdout
        assert f"warning: netns tcps-{tb_name}-client of this testbed is gone" in out
    assert leftovers(tb_name) == []


def test_cli_errors_are_one_line_without_traceback(tb_name):
    bad = run_cli("up", "cluster", "--name", tb_name, "-p", "host_cpu=0.9", "-p", "tcpserver_cpu=0.9",
                      check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: CPU budgets exceed")
    assert "Traceback" not in bad.stderr
    bad = run_cli("exec", "--name", "nosuchtb", "host1", "--", "true", check=False)
    assert bad.returncode == 2 and "no running testbed named 'nosuchtb'" in bad.stderr
    for args, message in ((["--host-conns", "-1"], "--host-conns: must be a whole number in [0, 65535]"),
                          (["--queue-deadline", "nan"], "--queue-deadline: must be seconds"),
                          (["--backlog", "0"], "--backlog: must be a whole number in [1, 65535]"),
                          (["--subnet", "0.0.0.0/0"], "from /8 to /16"),
                          (["-p", "host_cpu=1/0"], "host1.cpu must be a number")):
        bad = run_cli("up", "cluster", "--name", tb_name, "--mode", "eager-accept", *args, check=False, timeout=20)
        assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.splitlines()) == 1, (args, bad.stderr)
    assert leftovers(tb_name) == []


def test_not_root_is_a_clear_error(tb_name, monkeypatch, capsys):
    # the interpreter lives under /root here, so an unprivileged user cannot even start it:
    # check the verb's answer with the effective uid reported as a normal user's
    from testbed.commands import cli
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["up", "--name", tb_name]) == 2
    assert "needs root" in capsys.readouterr().err
    assert leftovers(tb_name) == []


def test_two_testbeds_side_by_side_and_name_clash(tb_name):
    other = tb_name + "b"
    with Testbed(load_topology("cluster", {"host_cpu": "0.2", "tcpserver_cpu": "0.2"}), tb_name):
        with pytest.raises(TestbedError, match="already exists"):
            Testbed(load_topology("cluster"), tb_name).up()
        with Testbed(load_topology("cluster", {"host_cpu": "0.2", "tcpserver_cpu": "0.2"}), other) as tb2:
            assert tb2.run("client", ["ping", "-c1", "-W2", tb2.address("host1")]).returncode == 0
    assert leftovers(tb_name) == [] and leftovers(other) == []

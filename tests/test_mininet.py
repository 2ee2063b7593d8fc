"""The Mininet backend on the real kernel, and Mininet Topo classes as topologies.

Everything is built with Debian's Mininet (no mocks); cleanup is checked by exact name:
namespaces, cgroups, state, root-namespace bridges and ports, Mininet's shells.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from testbed.system import cgroups
from testbed.errors import KernelFeatureMissing, SpecError, TestbedError
from testbed.system.kernel import pid_alive
from testbed.system.lifecycle import Testbed
from testbed.system.starter import http_get
from testbed.describe.topology import load_topology, topology_from_dict
from testbed.describe.mininet_topo import (from_mininet, is_mininet_ref, load_custom_topology, load_mininet_topology,
                                  parse_roles)

from .conftest import ECHO_CLIENT, ECHO_SERVER, ROOT, leftovers, run_cli

mininet = pytest.importorskip("mininet.net", reason="Debian's mininet package is not installed")

pytestmark = [pytest.mark.needs_root, pytest.mark.mininet]

TWO_TIER_ROLES = ["client=h1", "tcpserver=t1", "host=h2,h3"]


def root_links(prefix: str = "tcps") -> set[str]:
    with IPRoute() as ipr:
        return {l.get_attr("IFLA_IFNAME") for l in ipr.get_links()
                if l.get_attr("IFLA_IFNAME").startswith(prefix)}


def journaled(name: str, kind: str) -> list[str]:
    path = Path("/run/tcps") / name / "journal.jsonl"
    return [r["name"] for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


def test_cluster_on_mininet_execs_routes_tcp_and_budgets(tb_name):
    before = root_links()
    topo = load_topology("cluster", {"host_cpu": "0.3", "tcpserver_cpu": "0.2"})
    with Testbed(topo, tb_name, backend="mininet") as tb:
        shells = journaled(tb_name, "pid")
        assert len(shells) == 3, "one Mininet host shell per namespace"
        # exec: same interface names and addresses as the netns backend's plan
        out = tb.run("host1", ["ip", "-br", "addr"], check=True).stdout.decode()
        assert "host1-eth0" in out and tb.address("host1") in out
        # TCP from client through the tcpserver node (routed, not proxied) to the host
        tb.popen("host1", ECHO_SERVER, log_name="echo", supervise=True)
        got = tb.run("client", ECHO_CLIENT + [tb.address("host1")], timeout=20, check=True).stdout.decode()
        assert got.strip() == f"echo:hello from {tb.address('client')}"
        hops = tb.run("client", ["ip", "route", "get", tb.address("host1")]).stdout.decode()
        assert f"via {tb.address('tcpserver', 'public')}" in hops
        # sysctls per namespace, never on the machine
        assert tb.run("tcpserver", ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.decode().strip() == "1"
        assert tb.run("host1", ["cat", "/proc/sys/net/ipv4/tcp_tw_reuse"]).stdout.decode().strip() == "1"
        assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "0"
        # CPU budgets: the testbed's own cgroups, read back, with processes inside them
        groups = cgroups.detect()
        assert groups.limits(tb.cgroup("host1"))["cpu"] == pytest.approx(0.3)
        assert groups.limits(tb.cgroup("tcpserver"))["quota_us"] == 20000
        burn = tb.popen("host1", [sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<0.6: pass"])
        assert burn.pid in groups.pids(tb.cgroup("host1"))
        burn.wait(timeout=10)
        assert groups.usage(tb.cgroup("host1")).nr_throttled > 0
        # Mininet's shells are gone once the namespaces are attached; host links stay in nodes
        assert not any(pid_alive(int(p.split(":")[0]), int(p.split(":")[1])) for p in shells)
        assert root_links() == before, "point-to-point links must not touch the root namespace"
        state = json.loads(run_cli("status", tb_name, "--json").stdout)
        assert state["backend"] == "mininet"
    assert leftovers(tb_name) == []
    assert root_links() == before


def test_lan_is_a_tcps_bridge_in_the_root_namespace_removed_by_name(tb_name):
    before = root_links()
    with Testbed(load_topology("multihost", {"hosts": "3", "san_mbit": "100"}), tb_name,
                 backend="mininet") as tb:
        links = journaled(tb_name, "link")
        assert len(links) == 1 + 4 and all(l.startswith("tcps") and len(l) <= 15 for l in links)
        assert set(links) <= root_links()
        bridge = links[0]
        assert (Path("/sys/class/net") / bridge / "bridge").is_dir()
        assert sorted(p.name for p in (Path("/sys/class/net") / bridge / "brif").iterdir()) == sorted(links[1:])
        ping = tb.run("client", ["ping", "-c1", "-W2", tb.address("host3")])
        assert ping.returncode == 0, ping.stdout
        qdisc = tb.run("host2", ["tc", "class", "show", "dev", "host2-eth0"]).stdout.decode()
        assert "htb" in qdisc and "100Mbit" in qdisc
        # status reads the bridge and its ports back through the backend
        network = json.loads(run_cli("status", tb_name, "--json").stdout)["network"]
        assert network["links"] == links and network["missing"] == []
        subprocess.run(["ip", "link", "del", links[1]], check=True)  # one port, behind its back
        network = json.loads(run_cli("status", tb_name, "--json").stdout)["network"]
        assert network["missing"] == [f"link {links[1]}"]
    assert leftovers(tb_name) == []
    assert root_links() == before


def test_every_shipped_topology_builds_on_mininet(tb_name):
    for name in ("smp", "inic"):  # smp: two nodes in one Mininet host; inic: 2000 Mbit/s > Mininet's 1000
        with Testbed(load_topology(name), tb_name, backend="mininet") as tb:
            host = tb.topology.by_role("host")[-1].name
            assert tb.run("client", ["ping", "-c1", "-W2", tb.address(host)]).returncode == 0
            if name == "inic":
                cls = tb.run("host1", ["tc", "class", "show", "dev", "host1-eth0"]).stdout.decode()
                assert "2Gbit" in cls
        assert leftovers(tb_name) == [], name


def test_delay_without_netem_is_refused_not_ignored(tb_name):
    raw = {"nodes": [{"name": "client", "role": "client"}, {"name": "host1", "role": "host"}],
           "links": [{"name": "l", "nodes": ["client", "host1"], "delay_ms": 5}]}
    with pytest.raises(KernelFeatureMissing, match="netem.*delay_ms.*link\\(s\\) l"):
        Testbed(topology_from_dict(raw, {}), tb_name, backend="mininet").up()
    assert leftovers(tb_name) == []


def test_missing_mininet_says_how_to_install(tb_name, monkeypatch):
    for mod in [m for m in sys.modules if m == "mininet" or m.startswith("mininet.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "mininet", None)  # import mininet -> ImportError
    with pytest.raises(TestbedError, match="apt-get install --no-install-recommends mininet bridge-utils"):
        Testbed(load_topology("cluster"), tb_name, backend="mininet").up()
    assert leftovers(tb_name) == []


def test_sigkill_of_the_builder_then_down_removes_everything(tb_name):
    before = root_links()
    code = (f"from testbed.system.lifecycle import Testbed; from testbed.describe.topology import load_topology\n"
            f"import time\n"
            f"tb = Testbed(load_topology('multihost', {{'hosts': '3', 'host_cpu': 'none'}}), '{tb_name}',"
            f" backend='mininet').up()\n"
            f"tb.popen('host1', ['sleep', '300'], supervise=True)\n"
            f"print('up', flush=True)\ntime.sleep(300)\n")
    builder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert builder.stdout.readline().strip() == "up"
        sleeper = Testbed.attach(tb_name).processes[0].pid
        links = journaled(tb_name, "link")
        os.kill(builder.pid, signal.SIGKILL)
        builder.wait()
        assert leftovers(tb_name) and set(links) <= root_links(), "the testbed must outlive its builder"
        run_cli("down", tb_name)
    finally:
        if builder.poll() is None:
            builder.kill()
    assert leftovers(tb_name) == []
    assert root_links() == before
    assert not Path(f"/proc/{sleeper}").exists() or "Z" in Path(f"/proc/{sleeper}/stat").read_text().split()[2]


def test_builder_killed_mid_build_leaves_nothing_after_down(tb_name):
    """Killed while Mininet is still attaching namespaces: only the journal knows what exists."""
    before = root_links()
    code = (f"from testbed.system.lifecycle import Testbed; from testbed.describe.topology import load_topology\n"
            f"import os, signal, testbed.system.backends.mininet as b\n"
            f"orig, n = b.attach_netns, [0]\n"
            f"def slow(name, pid):\n    orig(name, pid); n[0] += 1\n"
            f"    if n[0] == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"b.attach_netns = slow\n"
            f"Testbed(load_topology('multihost', {{'hosts': '4', 'host_cpu': 'none'}}), '{tb_name}',"
            f" backend='mininet').up()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL
    shells = journaled(tb_name, "pid")
    assert any(x.startswith("netns") for x in leftovers(tb_name))
    run_cli("down", tb_name)
    assert leftovers(tb_name) == [] and root_links() == before
    assert not any(pid_alive(int(p.split(":")[0]), int(p.split(":")[1])) for p in shells)


@pytest.mark.parametrize("mode", ["regular", "split"])
def test_both_backends_serve_byte_exact_files(tb_name, mode):
    for backend in ("netns", "mininet"):
        with Testbed(load_topology("cluster"), tb_name, backend=backend, start_services=True, mode=mode) as tb:
            status, body = http_get(tb, "client", "/manifest.json")
            assert status == 200
            files = json.loads(body)["files"]
            docroot = Path(tb.recorded["docroot"])
            assert files
            for f in files:
                status, data = http_get(tb, "client", f["path"])
                assert status == 200 and len(data) == f["size"], (backend, f)
                assert data == (docroot / f["path"].lstrip("/")).read_bytes(), (backend, f["path"])
        assert leftovers(tb_name) == [], backend


@pytest.mark.slow
def test_short_sweep_gives_comparable_reply_rates_on_both_backends(tb_name):
    rates = {}
    for backend in ("netns", "mininet"):
        with Testbed(load_topology("cluster"), tb_name, backend=backend, start_services=True,
                     mode="split") as tb:
            out = tb.store.dir / "sweep"
            sweep = tb.run("client", [sys.executable, "-m", "loadgen", "sweep", "--target", tb.service_url,
                                      "--rates", "200,500", "--step-seconds", "1.5", "--warmup", "0.5",
                                      "--out", str(out)], timeout=60)
            assert sweep.returncode == 0, sweep.stderr.decode()[-2000:]
            steps = list(csv.DictReader(open(out / "steps.csv")))
            rates[backend] = [float(s["reply_rate_avg"]) for s in steps]
            assert all(int(s["errors_total"]) == 0 for s in steps), (backend, steps)
    for net, mn, offered in zip(rates["netns"], rates["mininet"], (200, 500)):
        assert net == pytest.approx(offered, rel=0.1) and mn == pytest.approx(net, rel=0.15), rates


# -- bring your own Mininet topology -----------------------------------------------------------

def test_topo_conversion_roles_segments_and_errors():
    from tests.mininet_topos import TwoTier
    topo = from_mininet(TwoTier(hosts=2, san_bw=100), parse_roles(TWO_TIER_ROLES), name="twotier")
    assert {n.name: n.role for n in topo.nodes} == {"h1": "client", "t1": "tcpserver", "h2": "host", "h3": "host"}
    assert topo.node("t1").cpu == pytest.approx(0.1 * (os.cpu_count() or 1))  # Mininet: share of the machine
    public, san = topo.links
    assert (public.name, public.kind, public.nodes) == ("s1", "public", ("h1", "t1"))
    assert (san.name, san.kind, set(san.nodes), san.mbit) == ("s2", "san", {"t1", "h2", "h3"}, 100.0)
    assert is_mininet_ref("tests.mininet_topos:TwoTier") and not is_mininet_ref("cluster")
    with pytest.raises(SpecError, match="h3 have no role.*--role host=h3"):
        from_mininet(TwoTier(), parse_roles(["client=h1", "tcpserver=t1", "host=h2"]))
    with pytest.raises(SpecError, match="--role names h9, not in the Topo"):
        from_mininet(TwoTier(), parse_roles(TWO_TIER_ROLES + ["host=h9"]))
    with pytest.raises(SpecError, match="ROLE=NODE"):
        parse_roles(["router=h1"])
    with pytest.raises(SpecError, match="cannot import nosuchmod"):
        load_mininet_topology("nosuchmod:Topo", TWO_TIER_ROLES)

    from mininet.topo import Topo

    class WithJitter(Topo):
        def build(self) -> None:
            self.addLink(self.addHost("h1"), self.addHost("h2"), bw=10, jitter="1ms")
    with pytest.raises(SpecError, match="h1-h2: jitter cannot be converted"):
        from_mininet(WithJitter(), {"h1": "client", "h2": "host"})


def test_cli_up_mininet_topo_class_on_either_backend(tb_name):
    cases = [("netns", "tests.mininet_topos:TwoTier", ["-p", "hosts=2"], TWO_TIER_ROLES, "h3"),
             # Mininet's own LinearTopo, with a switch playing the TCP server
             ("mininet", "mininet.topo:LinearTopo", ["-p", "k=2"], ["client=h1", "tcpserver=s1", "host=h2"], "h2")]
    for backend, ref, params, roles, host in cases:
        role_args = [a for r in roles for a in ("--role", r)]
        try:
            run_cli("up", ref, *params, *role_args, "--name", tb_name, "--backend", backend, "--mode", "split")
            state = json.loads(run_cli("status", tb_name, "--json").stdout)
            assert state["backend"] == backend and state["nodes"][host]["role"] == "host"
            got = run_cli("exec", "--name", tb_name, "h1", "--", "curl", "-s", "-o", "/dev/null", "-w",
                          "%{http_code}", state["service_url"] + "manifest.json")
            assert got.stdout.strip() == "200", (backend, got.stdout, got.stderr)
        finally:
            run_cli("down", tb_name, check=False)
        assert leftovers(tb_name) == [], backend


def test_custom_file_and_topo_as_mininet_takes_them():
    """`--custom FILE --topo NAME[,ARG,k=v]`: the file's `topos` mapping, positional and
    keyword arguments, -p pairs; bad names get one line naming what the file offers."""
    roles = ["client=h1", "tcpserver=t1", "host=h2,h3,h4"]
    topo = load_custom_topology(str(ROOT / "tests" / "mininet_topos.py"), "twotier,3", roles)
    assert sorted(n.name for n in topo.by_role("host")) == ["h2", "h3", "h4"]
    topo = load_custom_topology(str(ROOT / "tests" / "mininet_topos.py"), "twotier,hosts=3,san_bw=100", roles)
    assert {l.mbit for l in topo.links if l.kind == "san"} == {100.0}
    with pytest.raises(SpecError, match="offers twotier"):
        load_custom_topology(str(ROOT / "tests" / "mininet_topos.py"), "threetier", roles)
    with pytest.raises(SpecError, match="no such file"):
        load_custom_topology("/nonexistent/topo.py", "x", roles)
    bad = run_cli("up", "--custom", str(ROOT / "tests" / "mininet_topos.py"), check=False)
    assert bad.returncode == 2 and "--custom FILE and --topo NAME go together" in bad.stderr


def test_an_experiment_file_can_use_a_mininet_topo():
    """`topology: file.py:Class` with `roles:` in an experiment file; every configuration is
    loaded and checked before anything runs."""
    from testbed.describe.experiment import experiment_from_dict
    raw = {"topology": f"{ROOT / 'tests' / 'mininet_topos.py'}:TwoTier", "params": {"hosts": 2},
           "roles": {"client": "h1", "tcpserver": "t1", "host": ["h2", "h3"]},
           "modes": ["regular", "split"], "load": {"rates": [100]}}
    exp = experiment_from_dict(raw, source="topo.yaml")
    topos = [exp.topology_for({k: str(v) for k, v in exp.topology_params(p).items()}) for p in exp.points()]
    assert [sorted(n.name for n in t.by_role("host")) for t in topos] == [["h2", "h3"]] * 2
    with pytest.raises(SpecError, match="point .*hosts3.*h4 have no role"):
        experiment_from_dict({**raw, "sweep": {"hosts": [2, 3]}}, source="topo.yaml")
    with pytest.raises(SpecError, match="give roles"):
        experiment_from_dict({k: v for k, v in raw.items() if k != "roles"}, source="topo.yaml")
    with pytest.raises(SpecError, match="roles are for a Mininet Topo"):
        experiment_from_dict({"topology": "cluster", "roles": {"client": "h1"}}, source="x.yaml")


def test_hints_name_the_nodes_of_a_users_topo(capsys):
    """`up` with a Topo whose client is c1 and hosts h1, h2 prints hints naming c1 and h1,
    not the shipped topologies' client and host1 (no kernel object is made for this)."""
    from testbed.commands.status import print_status
    topo = load_mininet_topology("tests.mininet_topos:Star", ["client=c1", "tcpserver=ts", "host=h1,h2"])
    tb = Testbed(topo, "hints", mode="split")
    print_status(tb._state())
    out = capsys.readouterr().out
    assert "sudo testbed exec c1 -- curl" in out and "sudo testbed exec h1 -- ip" in out, out
    assert "exec client" not in out and "exec host1" not in out


def test_a_topo_takes_the_budget_shape_beside_its_own_parameters():
    topo = load_mininet_topology("tests.mininet_topos:Star", ["client=c1", "tcpserver=ts", "host=h1,h2"],
                                 {"cpu_period_ms": "10", "cpu_burst_pct": "25"})
    assert (topo.budget.period_ms, topo.budget.burst_pct) == (10, 25)
    with pytest.raises(SpecError, match="cpu_burst_pct must be a number from 0 to 100"):
        load_mininet_topology("tests.mininet_topos:Star", ["client=c1", "tcpserver=ts", "host=h1,h2"],
                              {"cpu_burst_pct": "x"})

"""Nodes placed on other machines, as far as one machine can test them: the placement and
its refusals (pure), a Mininet Topo's ``server=``, a machine that cannot be reached refused
before anything is built, and a journaled machine that cannot be reached kept for the next
``down`` or ``clean``. Two machines for real: tests/cluster/ (make cluster-test)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from testbed.describe.machines import LOCAL, TUNNEL_MTU, machines_from_yaml, parse_machine_flag, vni
from testbed.describe.options import ServiceOptions
from testbed.describe.services import plan_services
from testbed.describe.topology import load_topology, plan_addresses, topology_from_dict
from testbed.errors import SpecError, TestbedError
from testbed.offload.modes import get_mode
from testbed.system.state import StateStore

from .conftest import leftovers, run_cli

B = "b=root@10.99.0.2"


def placed(**node_machines: str) -> dict:
    nodes = [{"name": "client", "role": "client"}, {"name": "tcpserver", "role": "tcpserver"},
             {"name": "host1", "role": "host"}]
    for n in nodes:
        if n["name"] in node_machines:
            n["machine"] = node_machines[n["name"]]
    return {"name": "t", "machines": {"b": {"ssh": "root@10.99.0.2"}}, "nodes": nodes,
            "links": [{"name": "public", "nodes": ["client", "tcpserver"]},
                      {"name": "san", "kind": "san", "nodes": ["tcpserver", "host1"]}]}


def test_a_node_names_its_machine_and_the_default_stays_here():
    topo = topology_from_dict(placed(host1="b"), {})
    assert [topo.machine_of(n) for n in ("client", "tcpserver", "host1")] == [LOCAL, LOCAL, "b"]
    assert [m.name for m in topo.remote_machines] == ["b"]
    m = topo.machine("b")
    assert (m.address, m.port, m.python.endswith("/.venv/bin/python")) == ("10.99.0.2", 22, True)
    # the shipped cluster places its host by a parameter, on this machine unless told
    assert load_topology("cluster").remote_machines == []
    moved = load_topology("cluster", {"host_machine": "b"}, [parse_machine_flag(B)])
    assert moved.machine_of("host1") == "b" and moved.machine_of("tcpserver") == LOCAL
    # what the state records reads back the same (status, down and the agent read it)
    again = topology_from_dict(json.loads(json.dumps(moved.to_dict())), {})
    assert again.machines == moved.machines and again.machine_of("host1") == "b"


@pytest.mark.parametrize("raw,words", [
    ({"b": {"ssh": "10.99.0.2"}}, "machine b: ssh must be user@host"),
    ({"b": {"ssh": "root@lab-b"}}, "machine b: address must be an IPv4 address"),
    ({"b": {"ssh": "root@127.0.0.1"}}, "machine b: address 127.0.0.1 must be another machine's"),
    ({"b": {"ssh": "root@10.0.0.2", "port": 0}}, "machine b: port must be a TCP port number"),
    ({"b": {"ssh": "root@10.0.0.2", "project": "tcps"}}, "machine b: project must be an absolute path"),
    ({"b": {"ssh": "root@10.0.0.2", "user": "x"}}, "machine b: a mapping with ssh"),
    ({"local": {"ssh": "root@10.0.0.2"}}, "not 'local'"),
    (["b"], "machines is a mapping"),
])
def test_a_bad_machine_is_one_line_naming_the_field(raw, words):
    with pytest.raises(SpecError) as e:
        machines_from_yaml(raw, "f.yaml")
    assert words in str(e.value) and "\n" not in str(e.value)


def test_placements_that_cannot_work_are_refused():
    with pytest.raises(SpecError, match="node host1: machine 'c' is not listed under machines"):
        topology_from_dict(placed(host1="c"), {})
    with pytest.raises(SpecError, match="node client: the client runs on this machine"):
        topology_from_dict(placed(client="b"), {})
    smp = placed(host1="b")
    smp["nodes"][2]["namespace"] = "tcpserver"
    smp["links"] = [smp["links"][0]]
    with pytest.raises(SpecError, match="shares namespace tcpserver with a node on another machine"):
        topology_from_dict(smp, {})
    for flag, words in (("b", "NAME=user@host"), ("b=root@10.0.0.2,mtu=9000", "'mtu=9000' is not"),
                        ("local=root@10.0.0.2", "not 'local'")):
        with pytest.raises(SpecError, match=words):
            parse_machine_flag(flag)


def test_memory_channels_cannot_join_two_machines():
    topo = topology_from_dict(placed(host1="b"), {})
    for channel in ("unix", "shm"):
        with pytest.raises(TestbedError, match=f"channel {channel} joins tcpserver and host1 .* use --channel tcp"):
            plan_services("t", topo, plan_addresses(topo), get_mode("eager-accept"),
                          ServiceOptions.from_mapping({"channel": channel}), Path("/run/tcps/t"))
    # over TCP each machine makes its own document root (the same seed, the same bytes)
    plan = plan_services("t", topo, plan_addresses(topo), get_mode("eager-accept"),
                         ServiceOptions.from_mapping({}), Path("/run/tcps/t"))
    makers = [s.node for s in plan.steps if type(s).__name__ == "RunToEnd"]
    assert sorted(topo.machine_of(n) for n in makers) == ["b", LOCAL]


def test_both_ends_of_a_tunnel_compute_its_id_and_each_link_member_has_its_own():
    ids = {vni("t1", link, k) for link in ("san", "public") for k in range(3)}
    assert len(ids) == 6 and all(2 <= i < 2 ** 24 for i in ids)
    assert vni("t1", "san", 0) == vni("t1", "san", 0) != vni("t2", "san", 0)
    assert TUNNEL_MTU == 1450


def test_a_mininet_topo_places_hosts_with_the_cluster_editions_server_option():
    pytest.importorskip("mininet.topo")
    from testbed.describe.mininet_topo import load_mininet_topology
    roles = ["client=h1", "tcpserver=t1", "host=h2"]
    topo = load_mininet_topology("tests.mininet_topos:Placed", roles, {}, [parse_machine_flag(B)])
    assert topo.machine_of("h2") == "b" and topo.machine_of("t1") == LOCAL
    with pytest.raises(SpecError, match="node h2: machine 'b' is not listed"):
        load_mininet_topology("tests.mininet_topos:Placed", roles, {})


def _closed_port() -> socket.socket:
    """A loopback port bound but not listening: a connection to it is refused at once."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


@pytest.mark.needs_root
def test_an_unreachable_machine_is_refused_before_anything_is_built(tb_name):
    with _closed_port() as s:
        port = s.getsockname()[1]
        got = run_cli("up", "cluster", "--name", tb_name, "--machine",
                      f"b=root@127.0.0.1,address=10.99.0.2,port={port}", "-p", "host_machine=b",
                      check=False, timeout=120)
    assert got.returncode == 2, got.stdout + got.stderr
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: machine b (root@127.0.0.1): unreachable over SSH"), lines
    assert "Connection refused" in lines[0]
    assert leftovers(tb_name) == []


@pytest.mark.needs_root
def test_a_journaled_machine_that_cannot_be_reached_stays_journaled(tb_name):
    """A share on a machine that is off: `down` says so and keeps it for the next try."""
    import shutil
    with _closed_port() as s:
        machine = {"name": "b", "ssh": "root@127.0.0.1", "address": "10.99.0.2", "port": s.getsockname()[1],
                   "project": "/opt/tcps"}
        store = StateStore(tb_name)
        store.create()
        store.journal("machine", json.dumps({"machine": machine, "owner": "0" * 32}))
        got = run_cli("down", tb_name, check=False)
        assert got.returncode == 2 and "machine b (root@127.0.0.1): unreachable over SSH" in got.stderr
        assert "its share stays journaled" in got.stderr
        assert [k for k, _ in store.journaled()] == ["machine"]
        again = run_cli("down", tb_name, check=False)
        assert again.returncode == 2 and "unreachable" in again.stderr
    shutil.rmtree(store.dir)  # (what `clean --force` does to a machine that never comes back)
    assert leftovers(tb_name) == []


@pytest.mark.needs_root
def test_a_link_between_machines_is_a_vxlan_tunnel_that_carries_tcp(tb_name):
    """Two machines played by two namespaces joined by a veth (their network): each builds
    its share of ``cluster`` from inside its own namespace, as its agent does on a machine;
    the SAN between the TCP server (here) and host1 (on b) becomes a VXLAN tunnel over the
    veth, MTU 1450 at both ends, and a client's TCP crosses it. Nothing touches this
    machine's own namespace. (Over SSH between two machines: tests/cluster/.)"""
    import os
    import subprocess
    from pyroute2 import IPRoute
    from testbed.system.backends.netns import NetnsBackend
    from testbed.system.kernel import create_netns, in_netns, netns_path, remove_netns
    from testbed.system.processes import spawn, stop
    from .conftest import ECHO_CLIENT, ECHO_SERVER
    machines = {LOCAL: f"tcps-{tb_name}-ma", "b": f"tcps-{tb_name}-mb"}
    wire = {LOCAL: "10.254.0.1", "b": "10.254.0.2"}
    topo = load_topology("cluster", {"host_machine": "b"}, [parse_machine_flag("b=root@10.254.0.2")])
    plan = plan_addresses(topo)
    journal: list[tuple[str, str]] = []
    server = None
    try:
        for ns in machines.values():
            create_netns(ns)
        fd = os.open(netns_path(machines["b"]), os.O_RDONLY)
        try:
            with in_netns(machines[LOCAL]), IPRoute() as ipr:
                ipr.link("add", ifname="wire", kind="veth", peer={"ifname": "wire", "net_ns_fd": fd})
        finally:
            os.close(fd)
        for m, ns in machines.items():
            with in_netns(ns), IPRoute() as ipr:
                idx = ipr.link_lookup(ifname="wire")[0]
                ipr.addr("add", index=idx, address=wire[m], prefixlen=24)
                ipr.link("set", index=idx, state="up")
        for m, ns in machines.items():  # each machine's share, built where that machine's agent runs
            with in_netns(ns):
                NetnsBackend(tb_name, lambda kind, name: journal.append((kind, name)), here=m,
                             peers={o: wire[o] for o in wire if o != m}).build(topo, plan)
        tunnels = [name for kind, name in journal if kind == "tunnel"]
        assert len(tunnels) == 2 and tunnels[0] == tunnels[1] and tunnels[0].startswith("tcps-v"), journal
        for node, ifname in (("tcpserver", "tcpserver-eth1"), ("host1", "host1-eth0")):
            with in_netns(f"tcps-{tb_name}-{node}"), IPRoute() as ipr:
                (link,) = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])
                info = link.get_attr("IFLA_LINKINFO")
                assert info.get_attr("IFLA_INFO_KIND") == "vxlan" and link.get_attr("IFLA_MTU") == 1450, node
        for ns in machines.values():  # the tunnels left the machines' own namespaces
            with in_netns(ns), IPRoute() as ipr:
                assert [l.get_attr("IFLA_IFNAME") for l in ipr.get_links()] == ["lo", "wire"]
        server = spawn(f"tcps-{tb_name}-host1", [], ECHO_SERVER, stdout=subprocess.DEVNULL)
        client = spawn(f"tcps-{tb_name}-client", [], [*ECHO_CLIENT, plan.links[1].addresses["host1"]],
                       stdout=subprocess.PIPE)
        out, _ = client.communicate(timeout=30)
        assert out.decode().strip() == f"echo:hello from {plan.links[0].addresses['client']}"
    finally:
        if server is not None:
            stop(server.pid, None)
        for ns in [*(name for kind, name in journal if kind == "netns"), *machines.values()]:
            remove_netns(ns)
    assert leftovers(tb_name) == []

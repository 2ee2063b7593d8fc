"""Topology descriptions: loading, parameters, validation, address plan (pure, no kernel)."""

import pytest

from testbed.describe.budget import BudgetShape
from testbed.errors import SpecError
from testbed.describe.topology import (available_topologies, check_cpu_budgets, load_topology,
                          parse_params, plan_addresses, topology_from_dict)


def test_every_shipped_topology_loads_and_fits_this_kind_of_machine():
    assert {"cluster", "smp", "inic", "multihost"} <= set(available_topologies())
    for name in available_topologies():
        topo = load_topology(name)
        assert topo.by_role("client") and topo.by_role("host")
        check_cpu_budgets(topo, ncpus=2)


def test_cluster_is_client_tcpserver_host_with_public_and_san_links():
    topo = load_topology("cluster")
    assert [n.name for n in topo.nodes] == ["client", "tcpserver", "host1"]
    assert [(l.name, l.kind, l.nodes) for l in topo.links] == [
        ("public", "public", ("client", "tcpserver")), ("san", "san", ("tcpserver", "host1"))]


def test_parameters_override_cpu_budgets_and_host_count():
    topo = load_topology("multihost", parse_params(["hosts=6", "host_cpu=0.1", "tcpserver_cpu=0.25"]))
    hosts = topo.by_role("host")
    assert [h.name for h in hosts] == [f"host{i}" for i in range(1, 7)]
    assert all(h.cpu == 0.1 for h in hosts)
    assert topo.node("tcpserver").cpu == 0.25
    san = next(l for l in topo.links if l.name == "san")
    assert san.is_lan and len(san.nodes) == 7


def test_inic_nic_budget_is_a_ratio_of_the_host_budget():
    topo = load_topology("inic", {"host_cpu": "0.4", "nic_ratio": "0.25", "hosts": "2"})
    assert topo.node("nic1").cpu == pytest.approx(0.1)
    assert [l.name for l in topo.links] == ["public", "io1", "io2"]
    assert next(l for l in topo.links if l.name == "io1").mbit == 2000


def test_smp_processes_share_one_namespace_with_separate_budgets():
    topo = load_topology("smp", {"tcpserver_cpu": "0.3", "host_cpu": "0.5"})
    assert topo.node("tcpserver").netns_key == topo.node("host1").netns_key == "server"
    assert (topo.node("tcpserver").cpu, topo.node("host1").cpu) == (0.3, 0.5)
    assert topo.channel == "unix"


def test_address_plan_one_subnet_per_link_and_a_service_address():
    plan = plan_addresses(load_topology("cluster"))
    assert plan.service_address == "10.77.255.1"
    assert plan.addresses_of("tcpserver") == [("public", "10.77.0.2"), ("san", "10.77.1.1")]
    for lp in plan.links:
        assert all(len(i) <= 15 for i in lp.interfaces.values())


@pytest.mark.parametrize("raw, message", [
    ({"nodes": [{"name": "client", "role": "client", "colour": "red"}]}, "unknown key(s) colour"),
    ({"nodes": [{"name": "client", "role": "client"}, {"name": "client", "role": "host"}]}, "duplicate node name"),
    ({"nodes": [{"name": "client", "role": "client"}, {"name": "h", "role": "router"}]}, "role 'router'"),
    ({"nodes": [{"name": "averyverylongname", "role": "client"}]}, "15 characters"),
    ({"nodes": [{"name": "client", "role": "client"}, {"name": "h", "role": "host"}],
      "links": [{"name": "l", "nodes": ["client", "x"]}]}, "unknown node 'x'"),
    ({"nodes": [{"name": "client", "role": "client"}, {"name": "h", "role": "host", "cpu": "fast"}]}, "unknown parameter .fast."),
    ({"nodes": [{"name": "client", "role": "client"}, {"name": "h", "role": "host", "cpuset": "a-b"}]}, "not a CPU list"),
    ({"nodes": [{"name": "client", "role": "client"}]}, "role host"),
    ("just a string", "is a mapping"),
    ({"nodes": ["client"]}, "node 'client': expected a mapping"),
    ({"nodes": [{"name": "client", "role": "client"}, {"name": "h{0}{i}", "role": "host", "count": 2}]},
     "the only placeholder a name may hold is {i}"),
    ({"nodes": [{"name": "client", "role": "client"}, {"name": "h{i}", "role": "host", "count": 300}]},
     "count must be from 1 to 253"),
    ({"nodes": [{"name": "client", "role": "client"}, {"name": "h", "role": "host"}],
      "links": ["client-h"]}, "link 'client-h': expected a mapping"),
    ({"nodes": [{"name": "client", "role": "client"}, {"name": "h", "role": "host"}],
      "links": [{"name": "l", "nodes": ["client", "h"], "loss_pct": 150}]}, "loss_pct is a percentage, at most 100"),
])
def test_malformed_topologies_get_a_clear_message(raw, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        topology_from_dict(raw, {})


@pytest.mark.parametrize("subnet, message", [
    ("0.0.0.0/0", "from /8 to /16"),
    ("10.77.0.0/24", "from /8 to /16"),
    ("10.77.0.0/33", "is not a network"),
])
def test_bad_subnets_are_refused_at_once(subnet, message):
    with pytest.raises(SpecError, match=message):
        plan_addresses(load_topology("cluster"), subnet)


def test_a_lan_holds_at_most_one_subnet_of_members():
    raw = {"nodes": [{"name": "client", "role": "client"}, {"name": "tcpserver", "role": "tcpserver"},
                     {"name": "h{i}", "role": "host", "count": 200}, {"name": "f{i}", "role": "fileserver", "count": 100}],
           "links": [{"name": "pub", "kind": "public", "nodes": ["client", "tcpserver"]},
                     {"name": "san", "kind": "san", "nodes": ["tcpserver", "h{i}", "f{i}"]}]}
    with pytest.raises(SpecError, match="link san has 301 members; at most 253"):
        topology_from_dict(raw, {})


def test_unknown_parameter_is_refused_naming_the_known_ones():
    with pytest.raises(SpecError, match="unknown parameter.*hostz.*takes:.*hosts"):
        load_topology("multihost", {"hostz": "3"})


def test_cpu_budgets_that_exceed_the_machine_are_refused():
    topo = load_topology("cluster", {"host_cpu": "0.7", "tcpserver_cpu": "0.7"})
    with pytest.raises(SpecError, match=r"tcpserver 0.7 \+ host1 0.7 = 1.4 CPUs"):
        check_cpu_budgets(topo, ncpus=2)
    with pytest.raises(SpecError, match="names CPU"):
        check_cpu_budgets(load_topology("cluster"), ncpus=1)
    warnings = check_cpu_budgets(load_topology("cluster", {"host_cpu": "0.05"}), ncpus=2)
    assert any("below 0.1" in w for w in warnings)


def test_bad_yaml_and_missing_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_topology(bad)
    with pytest.raises(SpecError, match="cannot read"):
        load_topology(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="not key=value"):
        parse_params(["hosts"])


@pytest.mark.parametrize("name", available_topologies())
def test_every_topology_takes_the_budget_shape_and_keeps_it_through_its_record(name):
    topo = load_topology(name, {"cpu_period_ms": "20", "cpu_burst_pct": "50"})
    assert topo.budget == BudgetShape(period_ms=20, burst_pct=50)
    assert topology_from_dict(topo.to_dict(), {}).budget == topo.budget  # what a remote agent rebuilds
    assert load_topology(name).budget.is_default


def test_a_budget_the_period_makes_too_small_for_the_kernel_is_refused():
    with pytest.raises(SpecError, match=r"node tcpserver: cpu 0.15 per 5 ms period is a quota below .*1000 us"):
        load_topology("cluster", {"cpu_period_ms": "5", "tcpserver_cpu": "0.15", "host_cpu": "0.5"})
    assert load_topology("cluster", {"cpu_period_ms": "10", "tcpserver_cpu": "0.1"}).budget.quota_us(0.1) == 1000

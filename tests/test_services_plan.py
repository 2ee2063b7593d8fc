"""The service plan as plain values: what starts where, per topology and mode, written out
by hand from the topology files and the address plan (no namespaces are built)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.balance.config import ControllerConfig
from testbed.errors import TestbedError
from testbed.offload.modes import get_mode
from testbed.describe.options import ServiceOptions
from testbed.describe.services import (LocalAddress, PathAppears, PortListens, Process, Route, RunToEnd,
                              ServiceAnswers, plan_services)
from testbed.describe.topology import load_topology, plan_addresses

RUN = Path("/run/tcps/p1")
VIP = "10.77.255.1"
DOCROOT = ("--docroot", "/run/tcps/p1/docroot")
COST = ("--dynamic-cost-us", "1000")
MAKE_DOCROOT = RunToEnd("host1", ("py", "-m", "testbed.app.docroot", "/run/tcps/p1/docroot", "--seed", "1",
                                  "--dirs", "2"), 120.0)


def plan(topology: str, mode: str, params: dict[str, str] | None = None, **options):
    topo = load_topology(topology, params or {})
    return plan_services("p1", topo, plan_addresses(topo), get_mode(mode), ServiceOptions.from_mapping(options),
                         RUN, python="py")


def test_regular_on_cluster_puts_the_address_on_the_host_and_routes_through_the_tcp_server():
    p = plan("cluster", "regular")
    assert p.steps == (
        MAKE_DOCROOT,
        LocalAddress("host1", VIP),
        Process("host1", "app", ("py", "-m", "testbed.app.server", *DOCROOT, "--mode", "regular",
                                 "--listen", "0.0.0.0:80", *COST, "--stats-file", "/run/tcps/p1/stats-host1.json")),
        Route("tcpserver", "10.77.255.1/32", ("10.77.1.2",)),  # host1 on the san
        Route("client", "10.77.255.1/32", ("10.77.0.2",)),     # tcpserver on the public link
        ServiceAnswers("client"),
    )
    assert p.token_file == RUN / "token" and p.ready_timeout == 20.0
    assert p.state["service_url"] == "http://10.77.255.1/" and p.state["channel"] == "tcp"


def test_regular_on_two_hosts_spreads_the_tcp_servers_route_over_both():
    p = plan("multihost", "regular", {"hosts": "2"})
    assert Route("tcpserver", "10.77.255.1/32", ("10.77.1.2", "10.77.1.3")) in p.steps
    assert [(s.node, s.name) for s in p.processes()] == [("host1", "app"), ("host2", "app")]


def test_offloaded_on_cluster_starts_the_daemon_on_the_tcp_server_and_the_app_over_the_san():
    p = plan("cluster", "eager-accept")
    assert p.steps == (
        MAKE_DOCROOT,
        LocalAddress("tcpserver", VIP),
        Process("tcpserver", "tcpserver", (
            "py", "-m", "testbed.offload", "--listen", "10.77.255.1:80", "--san", "tcp:10.77.1.1:7000",
            "--mode", "eager-accept", "--token-file", "/run/tcps/p1/token",
            "--stats-file", "/run/tcps/p1/stats-tcpserver.json")),
        Process("host1", "app", (
            "py", "-m", "testbed.app.server", *DOCROOT, "--mode", "eager-accept",
            "--tunnel", "tcp:10.77.1.1:7000", "--token-file", "/run/tcps/p1/token",  # port 80: the default
            "--host-id", "host1", *COST, "--stats-file", "/run/tcps/p1/stats-host1.json")),
        Route("client", "10.77.255.1/32", ("10.77.0.2",)),
        ServiceAnswers("client"),
    )


def test_smp_uses_a_unix_socket_and_the_app_waits_for_it():
    p = plan("smp", "setup-with-accept")
    daemon, app = p.processes()
    assert daemon.node == "tcpserver" and "unix:/run/tcps/p1/san-tcpserver.sock" in daemon.argv
    assert daemon.waits_for == PathAppears(Path("/run/tcps/p1/san-tcpserver.sock"))
    assert app.argv[app.argv.index("--tunnel") + 1] == "unix:/run/tcps/p1/san-tcpserver.sock"
    assert p.steps.index(daemon) < p.steps.index(app)
    # one namespace for both: no route inside it, only the client's
    assert [s for s in p.steps if isinstance(s, Route)] == [Route("client", "10.77.255.1/32", ("10.77.0.2",))]


def test_shm_channel_is_named_after_the_testbed_and_the_front():
    p = plan("smp", "eager-accept", channel="shm")
    assert p.processes()[1].argv[p.processes()[1].argv.index("--tunnel") + 1] == "shm:tcps-p1-tcpserver"


def test_overload_and_polling_options_reach_the_daemon_only():
    p = plan("cluster", "split", poll_us=50, backlog=65, overload_control=False)
    daemon, app = p.processes()
    assert daemon.argv[-6:] == ("--backlog", "65", "--overload-control", "off", "--poll-us", "50")
    assert "--backlog" not in app.argv and "--poll-us" not in app.argv


def test_host_polling_reaches_the_app_only():
    p = plan("cluster", "eager-accept", channel="shm", poll_us=2000, host_poll_us=1000)
    daemon, app = p.processes()
    assert app.argv[app.argv.index("--poll-us") + 1] == "1000"
    assert daemon.argv[daemon.argv.index("--poll-us") + 1] == "2000"
    assert app.argv[app.argv.index("--tunnel") + 1] == "shm:tcps-p1-tcpserver"


def test_work_balance_adds_the_kernel_tcp_path_and_a_controller_after_the_service_answers():
    p = plan("cluster", "eager-accept", balance="adaptive")
    answers = p.steps.index(ServiceAnswers("client"))
    direct, controller = p.steps[answers + 1:]
    assert direct == Process("host1", "app-direct", (
        "py", "-m", "testbed.app.server", *DOCROOT, "--mode", "regular", "--listen", "0.0.0.0:80", *COST,
        "--stats-file", "/run/tcps/p1/stats-host1-direct.json"),
        waits_for=PortListens("tcpserver", "10.77.1.2", 80))
    assert controller.node == "tcpserver" and controller.argv[:3] == ("py", "-m", "testbed.balance.controller")
    assert controller.waits_for == PathAppears(Path("/run/tcps/p1/balance.json"))
    # what the controller reads back from its command line
    assert ControllerConfig.from_argv(controller.argv[3:]) == ControllerConfig(
        knob="work", policy="adaptive", net_cgroup="tcps-p1/tcpserver", app_cgroups=("tcps-p1/host1",),
        state_dir=Path("/run/tcps/p1"), vip=VIP, port=80, hosts=("10.77.1.2",))
    assert p.state["balance"]["knob"] == "work"


def test_cpu_balance_on_smp_shares_the_two_budgets():
    p = plan("smp", "eager-accept", {"host_cpu": "0.2", "tcpserver_cpu": "0.3"}, balance="fixed:0.5")
    controller = p.processes()[-1]
    cfg = ControllerConfig.from_argv(controller.argv[3:])
    assert (cfg.knob, cfg.total_cpu, cfg.app_cgroups) == ("cpu", 0.5, ("tcps-p1/host1",))


def test_place_balance_lets_the_daemon_serve_static_files():
    p = plan("cluster", "eager-accept", balance="fixed:1.0", balance_knob="place")
    daemon = p.processes()[0]
    assert daemon.argv[daemon.argv.index("--serve-static") + 1] == "/run/tcps/p1/docroot"
    assert daemon.argv[daemon.argv.index("--placement-file") + 1] == "/run/tcps/p1/placement.json"


@pytest.mark.parametrize("topology, mode, options, message", [
    ("cluster", "regular", {"balance": "adaptive"}, "needs an offloaded mode"),
    ("smp", "eager-accept", {"balance": "adaptive", "balance_knob": "work"}, "work knob needs the TCP server"),
    ("smp", "eager-accept", {"balance": "fixed:0.02"}, "a CPU split must leave each side"),
])
def test_bad_options_are_refused_before_anything_is_built(topology, mode, options, message):
    with pytest.raises(TestbedError, match=message):
        plan(topology, mode, **options)


@pytest.mark.parametrize("options, message", [
    ({"balance": "sometimes"}, "expected adaptive"),
    ({"overload_control": "yes"}, "overload_control must be true or false"),
    ({"backlog": 0}, r"backlog must be a whole number in \[1, 65535\], not 0"),
])
def test_bad_options_are_refused_when_the_options_are_made(options, message):
    with pytest.raises(TestbedError, match=message):
        ServiceOptions.from_mapping(options)


def test_the_daemons_argv_is_read_back_as_the_configuration_it_was_made_from():
    from testbed.offload.config import ServerConfig
    daemon = plan("cluster", "split", poll_us=50, backlog=65, queue_deadline=0.5,
                  overload_control=False).processes()[0]
    cfg, _ = ServerConfig.from_argv(list(daemon.argv[3:]))
    assert cfg.to_argv() == list(daemon.argv[3:])
    assert (cfg.mode, cfg.poll_us, cfg.backlog, cfg.queue_deadline, cfg.overload_control) == \
        (get_mode("split"), 50, 65, 0.5, False)
    assert cfg.token_file == RUN / "token" and str(cfg.san) == "tcp:10.77.1.1:7000"


def test_cpu_split_without_budgets_is_refused():
    with pytest.raises(TestbedError, match="CPU split shares a fixed total"):
        plan("smp", "eager-accept", {"host_cpu": "none"}, balance="adaptive")


@pytest.mark.parametrize("cfg", [
    ControllerConfig("work", "adaptive", "tcps-x/tcpserver", ("tcps-x/host1", "tcps-x/host2"), Path("/r"),
                     vip="10.77.255.1", port=8080, hosts=("10.77.1.2", "10.77.2.2"), duration=30.0),
    ControllerConfig("cpu", "fixed:0.5", "tcps-x/tcpserver", ("tcps-x/host1",), Path("/r"), total_cpu=0.45),
    ControllerConfig("place", "adaptive", "tcps-x/tcpserver", ("tcps-x/host1",), Path("/r"),
                     placement_file=Path("/r/placement.json")),
])
def test_the_controllers_argv_round_trips(cfg: ControllerConfig) -> None:
    assert ControllerConfig.from_argv(cfg.to_argv()) == cfg


@pytest.mark.parametrize("kw, says", [
    ({"knob": "disk"}, "--knob must be one of"),
    ({"knob": "work"}, "needs --vip and --hosts"),
    ({"knob": "cpu"}, "needs --total-cpu"),
    ({"knob": "cpu", "total_cpu": -1.0}, "needs --total-cpu"),
    ({"knob": "place"}, "needs --placement-file"),
    ({"knob": "cpu", "total_cpu": 1.0, "app_cgroups": ()}, "--app-cgroup"),
    ({"knob": "cpu", "total_cpu": 1.0, "duration": 0.0}, "--duration"),
])
def test_a_bad_controller_setting_is_refused_naming_it(kw: dict, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        ControllerConfig(**{"policy": "adaptive", "net_cgroup": "n", "app_cgroups": ("a",), "state_dir": Path("/r"), **kw})

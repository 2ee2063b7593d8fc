"""What runs in the nodes for each mode, as a plan: pure data computed from the topology,
its address plan, the mode and the service options. starter.py carries a plan out.

Clients always use ``http://<service address>/`` (10.77.255.1 by default):

- ``regular``: the address is on each host's loopback; the front node (TCP server or NIC)
  only routes IP to it (several hosts: a multipath route hashed per connection), and the
  host's own kernel TCP serves clients.
- offloaded modes: the address is on the front node, where the TCP-server daemon
  (``python -m testbed.offload``, its argv made by ``ServerConfig.to_argv``) accepts
  clients and relays to the hosts over the SAN channel (TCP over the SAN link; a Unix
  socket or shared memory inside the smp node).
- with ``balance``: one controller per front node; for the work knob the hosts also serve
  on their kernel TCP (the pass-through path), for the place knob the TCP server answers
  a share of static requests itself.

The plan is a tuple of steps in the order they must happen (a command run to its end, an
address, a route, a process and what shows it is ready, the service answering through the
client). Because nothing here touches the kernel, what starts where for a topology and a
mode is tested as plain values (tests/test_services_plan.py). The options arrive checked
(a ``ServiceOptions``, testbed/describe/options.py); what only the topology and the mode decide (the
balancing knob, balancing without a TCP server) is refused here, before anything is built.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from ..errors import TestbedError
from .names import cgroup_name, shm_channel_name
from ..offload import channels
from ..offload.config import ServerConfig
from ..app.config import AppConfig
from ..balance.config import ControllerConfig
from ..offload.modes import REGULAR, Mode
from ..offload.zerocopy import kernel_refusal
from .options import ServiceOptions
from .topology import FRONT_ROLES, SERVICE_PORT, AddressPlan, Topology

SAN_PORT = 7000
FILE_PORT = 80  # the file server node's HTTP port (its own namespace)
DOCROOT_TIMEOUT_S = 120.0


# -- the plan's steps ------------------------------------------------------------------------

@dataclass(frozen=True)
class RunToEnd:
    """A command run in ``node`` to its end; a non-zero exit stops the start."""
    node: str
    argv: tuple[str, ...]
    timeout: float


@dataclass(frozen=True)
class LocalAddress:
    """``address``/32 on the loopback of ``node``'s namespace."""
    node: str
    address: str


@dataclass(frozen=True)
class Route:
    """A route in ``node`` to ``dst`` via ``gateways`` (several: multipath, hashed per flow)."""
    node: str
    dst: str
    gateways: tuple[str, ...]


@dataclass(frozen=True)
class PathAppears:
    """Ready when ``path`` exists (a Unix socket bound, a status file written)."""
    path: Path


@dataclass(frozen=True)
class PortListens:
    """Ready when ``address``:``port`` accepts a connection made from ``node``."""
    node: str
    address: str
    port: int


Readiness = Union[PathAppears, PortListens]


@dataclass(frozen=True)
class Process:
    """Process ``name`` (also its log's name) kept running in ``node``: ``argv`` with ``env``
    added to the environment; the next step waits for ``waits_for``, if any."""
    node: str
    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    waits_for: Readiness | None = None


@dataclass(frozen=True)
class ServiceAnswers:
    """Wait until the service answers HTTP 200 through ``client`` (and no process has exited)."""
    client: str


Step = Union[RunToEnd, LocalAddress, Route, Process, ServiceAnswers]


@dataclass(frozen=True)
class ServicePlan:
    """Everything ``start`` does, in order. ``token_file`` is written (0600, a fresh secret)
    before the first step; ``state`` is what the testbed's state.json records."""
    token_file: Path
    steps: tuple[Step, ...]
    ready_timeout: float
    state: dict[str, Any] = field(default_factory=dict)

    def processes(self) -> list[Process]:
        return [s for s in self.steps if isinstance(s, Process)]


# -- the topology seen from the services -----------------------------------------------------

def fronts_of(topo: Topology, addresses: AddressPlan, host: str) -> list[str]:
    """The front node(s) (TCP server / NIC) sharing a link or namespace with ``host``."""
    key = topo.node(host).netns_key
    fronts = [n.name for n in topo.nodes if n.role in FRONT_ROLES and n.netns_key == key]
    for lp in addresses.links:
        if key in lp.addresses:
            fronts += [n.name for n in topo.nodes if n.role in FRONT_ROLES
                       and n.netns_key in lp.addresses and n.name not in fronts]
    return fronts


def shared_link(topo: Topology, addresses: AddressPlan, a: str, b: str) -> str:
    ka, kb = topo.node(a).netns_key, topo.node(b).netns_key
    for lp in addresses.links:
        if ka in lp.addresses and kb in lp.addresses:
            return lp.link.name
    raise TestbedError(f"nodes {a} and {b} share no link")


def address_toward(topo: Topology, addresses: AddressPlan, node: str, peer: str) -> str:
    """``node``'s address on the link it shares with ``peer``."""
    link = shared_link(topo, addresses, node, peer)
    return dict(addresses.addresses_of(topo.node(node).netns_key))[link]


def balance_knob(topo: Topology, addresses: AddressPlan) -> str:
    """cpu when the TCP server and the application share a node (smp), else work."""
    hosts = topo.by_role("host")
    same = any(topo.node(f).netns_key == h.netns_key for h in hosts for f in fronts_of(topo, addresses, h.name))
    return "cpu" if same else "work"


def chosen_knob(topo: Topology, addresses: AddressPlan, opts: ServiceOptions) -> str:
    """The knob asked for (``balance_knob`` service option, ``up --knob``), else by topology."""
    by_topology = balance_knob(topo, addresses)
    knob = opts.balance_knob or by_topology
    if knob == "work" and by_topology == "cpu":
        raise TestbedError("the work knob needs the TCP server in its own node (cluster, multihost, "
                           "inic); with smp choose cpu or place")
    return knob


# -- the plan --------------------------------------------------------------------------------

def plan_services(testbed: str, topo: Topology, addresses: AddressPlan, mode: Mode,
                  opts: ServiceOptions, run_dir: Path, python: str = sys.executable) -> ServicePlan:
    """What starts where for ``mode`` on this topology with options checked when they were
    made; raises TestbedError for what only the topology and the mode decide (a knob the
    topology cannot move, balancing without a TCP server). ``run_dir`` is the testbed's
    state directory (document root, sockets, stats files)."""
    policy = None
    knob = None
    if opts.balance is not None:
        if not mode.offloaded:
            raise TestbedError(f"--balance needs an offloaded mode: in {mode.name} mode the TCP server "
                               "does no TCP work to balance (e.g. --mode eager-accept)")
        knob = chosen_knob(topo, addresses, opts)
        policy = opts.balance.policy(knob)  # the knob's limits: a clear error before anything starts

    def module(name: str, *args: str) -> tuple[str, ...]:
        return (python, "-m", name, *args)

    vip = addresses.service_address
    hosts = [n.name for n in topo.by_role("host")]
    docroot = run_dir / "docroot"
    token_file = run_dir / "token"
    channel = opts.channel or topo.channel
    port = "" if SERVICE_PORT == 80 else f":{SERVICE_PORT}"
    url = f"http://{vip}{port}/"
    fileservers = [n.name for n in topo.by_role("fileserver")]
    if opts.direct_files and not mode.offloaded:
        raise TestbedError(f"direct_files has the TCP server send file bodies: in {mode.name} mode there is "
                           "no TCP server (e.g. --mode eager-accept)")
    if opts.zero_copy:
        if not mode.offloaded:
            raise TestbedError(f"zero_copy has the TCP server send the host's bytes: in {mode.name} mode "
                               "there is no TCP server (e.g. --mode async-send)")
        why = kernel_refusal()
        if why:
            raise TestbedError(f"zero_copy: {why}")
    if opts.direct_files and not fileservers:
        raise TestbedError("direct_files needs a file server node (role fileserver): use the multitier "
                           "topology")
    # where the document root is: made on the file server's node and served by it, or made
    # where the hosts read it from disk
    # (the same seed makes the same bytes: each other machine makes its own copy, so that
    # whatever reads the root there, or checks replies here, finds it)
    makers = [fileservers[0] if fileservers else hosts[0]]
    for n in topo.nodes:
        if topo.machine_of(n.name) not in {topo.machine_of(m) for m in makers}:
            makers.append(n.name)
    steps: list[Step] = [RunToEnd(node, module("testbed.app.docroot", str(docroot), "--seed", str(opts.seed),
                                               "--dirs", str(opts.docroot_dirs)), DOCROOT_TIMEOUT_S)
                         for node in makers]
    if fileservers:
        fs = fileservers[0]
        fs_addr = address_toward(topo, addresses, fs, hosts[0])
        steps.append(Process(fs, "fileserver", module(
            "testbed.app.fileserver", "--root", str(docroot), "--listen", f"{fs_addr}:{FILE_PORT}",
            "--workdir", str(run_dir / "fileserver")), waits_for=PortListens(fs, fs_addr, FILE_PORT)))

    def files_for(host: str) -> dict[str, Any]:
        """The host application's document root: on disk, or on the file server."""
        if not fileservers:
            return {"docroot": docroot}
        return {"docroot": None, "file_server": (address_toward(topo, addresses, fileservers[0], host), FILE_PORT)}

    def app(mode: Mode, host: str, **own: Any) -> tuple[str, ...]:
        return module("testbed.app.server", *AppConfig(mode=mode, dynamic_cost_us=opts.dynamic_cost_us,
                                                       **files_for(host), **own).to_argv())
    by_front: dict[str, list[str]] = {}
    if not mode.offloaded:
        for host in hosts:
            for front in fronts_of(topo, addresses, host):
                by_front.setdefault(front, []).append(host)
            # the public port is the app's here: the listen_backlog option bounds its queue
            backlog = {"listen_backlog": opts.listen_backlog} if opts.listen_backlog else {}
            steps += [LocalAddress(host, vip),
                      Process(host, "app", app(mode, host, listen=("0.0.0.0", SERVICE_PORT), **backlog,
                                               stats_file=run_dir / f"stats-{host}.json"))]
        for front, fhosts in by_front.items():
            if topo.node(front).netns_key != topo.node(fhosts[0]).netns_key:
                steps.append(Route(front, f"{vip}/32",
                                   tuple(address_toward(topo, addresses, h, front) for h in fhosts)))
    else:
        # the daemon's options as given (None: its default), its argv made by ServerConfig
        tuning = {k: getattr(opts, k) for k in ("backlog", "listen_backlog", "queue_deadline",
                                                "host_conns", "overload_control")
                  if getattr(opts, k) is not None}
        if knob == "place":  # the balancer moves the share through this file
            tuning.update(serve_static=str(docroot), placement_file=run_dir / "placement.json")
        if opts.direct_files:  # FETCH frames: the TCP server reads bodies from the file server
            front0 = fronts_of(topo, addresses, hosts[0])[0]
            tuning["file_server"] = (address_toward(topo, addresses, fileservers[0], front0), FILE_PORT)
        for host in hosts:
            front = fronts_of(topo, addresses, host)[0]
            if channel in ("unix", "shm") and topo.machine_of(front) != topo.machine_of(host):
                raise TestbedError(f"channel {channel} joins {front} and {host} through one machine's memory, but "
                                   f"they are on machines {topo.machine_of(front)} and {topo.machine_of(host)}: "
                                   "use --channel tcp")
            san = _san_endpoint(testbed, topo, addresses, run_dir, front, host, channel)
            if front not in by_front:
                ready = PathAppears(Path(san.split(":", 1)[1])) if channel == "unix" else None
                try:
                    daemon = ServerConfig(vip, SERVICE_PORT, channels.parse(san), mode, token_file=token_file,
                                          stats_file=run_dir / f"stats-{front}.json", poll_us=opts.poll_us,
                                          zero_copy=opts.zero_copy, **tuning)
                except ValueError as e:  # a combination only the channel and the mode decide
                    raise TestbedError(str(e)) from None
                steps += [LocalAddress(front, vip),
                          Process(front, "tcpserver", module("testbed.offload", *daemon.to_argv(),
                                                             *opts.tcpserver_args), waits_for=ready)]
            by_front.setdefault(front, []).append(host)
            steps.append(Process(host, "app", app(
                mode, host, tunnel=san, token_file=token_file, listen_port=SERVICE_PORT, host_id=host,
                stats_file=run_dir / f"stats-{host}.json", poll_us=opts.host_poll_us or 0,
                direct_files=opts.direct_files)))
    for client in (n.name for n in topo.by_role("client")):
        steps.append(Route(client, f"{vip}/32",
                           tuple(address_toward(topo, addresses, f, client) for f in sorted(by_front))))
    steps.append(ServiceAnswers(topo.by_role("client")[0].name))
    state: dict[str, Any] = {"docroot": str(docroot), "mode": mode.name, "channel": channel, "service_url": url,
                             **({"fileserver": f"{fileservers[0]} {fs_addr}:{FILE_PORT}"} if fileservers else {}),
                             "dynamic_url": f"{url}dynamic?cost_us={opts.dynamic_cost_us}"}
    if policy is not None and knob is not None and opts.balance is not None:
        steps += _balancer(testbed, topo, addresses, opts.balance.text, knob, by_front, app,
                           run_dir, module)
        state["balance"] = {"knob": knob, "policy": policy.describe()}
    return ServicePlan(token_file, tuple(steps), float(opts.ready_timeout), state)


def _balancer(testbed: str, topo: Topology, addresses: AddressPlan, spec: str, knob: str,
              by_front: dict[str, list[str]], app: Any, run_dir: Path, module: Any) -> list[Step]:
    """One controller per front node; for the work knob, hosts also serve on kernel TCP;
    for the place knob, the TCP server already runs with --serve-static and a control file."""
    steps: list[Step] = []
    vip = addresses.service_address
    for front, hosts in by_front.items():
        own: dict[str, Any] = {}
        if knob == "place":
            own["placement_file"] = run_dir / "placement.json"
        elif knob == "work":
            direct = [address_toward(topo, addresses, h, front) for h in hosts]
            for h, addr in zip(hosts, direct):
                # the pass-through path: the same app on the host's kernel TCP, counted apart
                steps.append(Process(h, "app-direct", app(
                    REGULAR, h, listen=("0.0.0.0", SERVICE_PORT), stats_file=run_dir / f"stats-{h}-direct.json"),
                    waits_for=PortListens(front, addr, SERVICE_PORT)))
            own.update(vip=vip, port=SERVICE_PORT, hosts=tuple(direct))
        else:
            budgets = [topo.node(n).cpu for n in [front, *hosts]]
            if any(b is None for b in budgets):
                raise TestbedError("the CPU split shares a fixed total: give the TCP server and the "
                                   "hosts CPU budgets (-p tcpserver_cpu=... -p host_cpu=...)")
            own["total_cpu"] = sum(budgets)  # type: ignore[arg-type]
        controller = ControllerConfig(knob=knob, policy=spec, net_cgroup=cgroup_name(testbed, front),
                                      app_cgroups=tuple(cgroup_name(testbed, h) for h in hosts),
                                      state_dir=run_dir, **own)
        steps.append(Process(front, "balance", module("testbed.balance.controller", *controller.to_argv()),
                             waits_for=PathAppears(run_dir / "balance.json")))
    return steps


def _san_endpoint(testbed: str, topo: Topology, addresses: AddressPlan, run_dir: Path,
                  front: str, host: str, channel: str) -> str:
    same_ns = topo.node(front).netns_key == topo.node(host).netns_key
    if channel == "unix" or (same_ns and channel == "tcp"):
        return f"unix:{run_dir / f'san-{front}.sock'}"
    if channel == "shm":
        return f"shm:{shm_channel_name(testbed, front)}"
    return f"tcp:{address_toward(topo, addresses, front, host)}:{SAN_PORT}"

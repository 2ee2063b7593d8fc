"""What runs in the nodes for each mode: the host application, the TCP server, and where
the service address lives.

Clients always use ``http://<service address>/`` (10.77.255.1 by default):

- ``regular``: the address is on each host's loopback; the front node (TCP server or NIC)
  only routes IP to it (several hosts: a multipath route hashed per connection), and the
  host's own kernel TCP serves clients.
- offloaded modes: the address is on the front node, where the TCP-server daemon
  terminates client TCP and tunnels socket calls to the hosts over the SAN channel
  (TCP over the SAN link; a Unix socket or shared memory inside the smp node).
"""

from __future__ import annotations

import http.client
import logging
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backends.netns import NetnsBackend
from .errors import TestbedError
from .kernel import in_netns, pid_alive
from .offload.modes import MODES as MODE_TABLE
from .spec import FRONT_ROLES, SERVICE_PORT

if TYPE_CHECKING:
    from .lifecycle import Testbed

log = logging.getLogger(__name__)

MODES = tuple(MODE_TABLE)  # names, in the table's order (testbed/offload/modes.py)
OFFLOADED_MODES = tuple(n for n, m in MODE_TABLE.items() if m.offloaded)
SAN_PORT = 7000
DEFAULTS = {"seed": 1, "dynamic_cost_us": 1000, "docroot_dirs": 2, "channel": None,
            "ready_timeout": 20.0, "balance_knob": None, "poll_us": 0,
            # the TCP server's overload control (None: the daemon's defaults; offload/server.py)
            "backlog": None, "listen_backlog": None, "queue_deadline": None, "host_conns": None,
            "overload_control": None}
OVERLOAD_KEYS = ("backlog", "listen_backlog", "queue_deadline", "host_conns")
# what a user may set (experiment files' ``service:``); tcpserver_args is for benchmarks
SERVICE_KEYS = set(DEFAULTS) | {"balance", "tcpserver_args"}


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise TestbedError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")


def fronts_of(tb: "Testbed", host: str) -> list[str]:
    """The front node(s) (TCP server / NIC) sharing a link or namespace with ``host``."""
    topo = tb.topology
    key = topo.node(host).netns_key
    fronts = [n.name for n in topo.nodes if n.role in FRONT_ROLES and n.netns_key == key]
    for lp in tb.plan.links:
        if key in lp.addresses:
            fronts += [n.name for n in topo.nodes if n.role in FRONT_ROLES
                       and n.netns_key in lp.addresses and n.name not in fronts]
    return fronts


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def start_services(tb: "Testbed") -> None:
    check_mode(tb.mode)
    opts = {**DEFAULTS, **tb.service_options}
    overload = overload_args(opts)  # bad bounds: a clear error before anything starts
    if opts.get("balance"):  # bad settings: a clear error before anything starts
        from .balance.policy import parse_policy
        parse_policy(str(opts["balance"]), chosen_knob(tb, opts))
    run_dir = tb.store.dir
    docroot = run_dir / "docroot"
    tb.run(_any_host(tb), python_module("testbed.app.docroot", str(docroot), "--seed", str(opts["seed"]),
                                        "--dirs", str(opts["docroot_dirs"])), timeout=120, check=True)
    token_file = run_dir / "token"
    # created 0600 (not chmod'ed afterwards): never readable by others, even for a moment
    token_file.unlink(missing_ok=True)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(16))
    vip = tb.plan.service_address
    hosts = [n.name for n in tb.topology.by_role("host")]
    client_fronts: set[str] = set()
    app_common = ["--docroot", str(docroot), "--dynamic-cost-us", str(opts["dynamic_cost_us"])]
    channel = opts["channel"] or tb.topology.channel
    tb.extra.update({"docroot": str(docroot), "mode": tb.mode, "channel": channel,
                     "service_url": tb.service_url,
                     "dynamic_url": f"{tb.service_url}dynamic?cost_us={opts['dynamic_cost_us']}"})

    if tb.mode == "regular":
        for host in hosts:
            NetnsBackend.add_local_address(tb.netns(host), vip)
            # the public port is the app's here: the listen_backlog option bounds its queue
            backlog = ["--listen-backlog", str(opts["listen_backlog"])] if opts.get("listen_backlog") else []
            tb.popen(host, python_module("testbed.app.server", *app_common,
                                         "--listen", f"0.0.0.0:{SERVICE_PORT}", *backlog,
                                         "--stats-file", str(run_dir / f"stats-{host}.json")),
                     log_name="app", supervise=True)
        by_front: dict[str, list[str]] = {}
        for host in hosts:
            for front in fronts_of(tb, host):
                by_front.setdefault(front, []).append(host)
        for front, fhosts in by_front.items():
            client_fronts.add(front)
            if tb.topology.node(front).netns_key != tb.topology.node(fhosts[0]).netns_key:
                gws = [tb.address(h, _shared_link(tb, front, h)) for h in fhosts]
                NetnsBackend.set_route(tb.netns(front), f"{vip}/32", gws)
    else:
        served: set[str] = set()
        place: list[str] = []
        if opts.get("balance") and chosen_knob(tb, opts) == "place":
            # the balancer starts later and moves the share through this file
            place = ["--serve-static", str(docroot), "--placement-file", str(run_dir / "placement.json")]
        for host in hosts:
            front = fronts_of(tb, host)[0]
            san = _san_endpoint(tb, front, host, channel)
            if front not in served:
                served.add(front)
                client_fronts.add(front)
                NetnsBackend.add_local_address(tb.netns(front), vip)
                tb.popen(front, python_module(
                    "testbed.offload.server", "--listen", f"{vip}:{SERVICE_PORT}", "--san", san,
                    "--mode", tb.mode, "--token-file", str(token_file),
                    "--stats-file", str(run_dir / f"stats-{front}.json"), *place,
                    *(["--poll-us", str(int(opts["poll_us"]))] if opts["poll_us"] else []),
                    *overload,
                    *opts.get("tcpserver_args", ())),
                    log_name="tcpserver", supervise=True)
                if channel == "unix":
                    _wait_for_path(Path(san.split(":", 1)[1]), opts["ready_timeout"])
            tb.popen(host, python_module("testbed.app.server", *app_common, "--mode", tb.mode,
                                         "--tunnel", san, "--token-file", str(token_file),
                                         "--listen-port", str(SERVICE_PORT), "--host-id", host,
                                         "--stats-file", str(run_dir / f"stats-{host}.json")),
                     log_name="app", supervise=True)

    for client in (n.name for n in tb.topology.by_role("client")):
        gws = [tb.address(f, _shared_link(tb, client, f)) for f in sorted(client_fronts)]
        NetnsBackend.set_route(tb.netns(client), f"{vip}/32", gws)
    wait_ready(tb, opts["ready_timeout"])
    if opts.get("balance"):
        start_balancer(tb, str(opts["balance"]), app_common, opts["ready_timeout"],
                       knob=chosen_knob(tb, opts))


def overload_args(opts: dict[str, Any]) -> list[str]:
    """The TCP server's overload-control options given as service options (``backlog``,
    ``listen_backlog``, ``queue_deadline``, ``host_conns``), checked, as daemon arguments."""
    from .offload.server import ServerConfig, check_overload
    given = {k: opts.get(k) for k in OVERLOAD_KEYS if opts.get(k) is not None}
    full = {k: given.get(k, getattr(ServerConfig, k)) for k in OVERLOAD_KEYS}
    try:
        check_overload(full["backlog"], full["listen_backlog"], full["queue_deadline"], full["host_conns"])
    except ValueError as e:
        raise TestbedError(f"service options: {e}") from None
    args = [a for k, v in given.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    oc = opts.get("overload_control")
    if oc is not None:
        if not isinstance(oc, bool):
            raise TestbedError(f"service options: overload_control must be true or false, not {oc!r}")
        args += ["--overload-control", "on" if oc else "off"]
    return args


def chosen_knob(tb: "Testbed", opts: dict[str, Any]) -> str:
    """The knob asked for (``balance_knob`` service option, ``up --knob``), else by topology."""
    from .balance.policy import KNOBS
    knob = opts.get("balance_knob") or balance_knob(tb)
    if knob not in KNOBS:
        raise TestbedError(f"balance knob {knob!r}: one of {', '.join(KNOBS)}")
    if knob == "work" and balance_knob(tb) == "cpu":
        raise TestbedError("the work knob needs the TCP server in its own node (cluster, multihost, "
                           "inic); with smp choose cpu or place")
    return knob


def balance_knob(tb: "Testbed") -> str:
    """cpu when the TCP server and the application share a node (smp), else work."""
    hosts = tb.topology.by_role("host")
    same = any(tb.topology.node(f).netns_key == h.netns_key for h in hosts for f in fronts_of(tb, h.name))
    return "cpu" if same else "work"


def start_balancer(tb: "Testbed", spec: str, app_common: list[str], timeout: float,
                   knob: str | None = None) -> None:
    """One controller per front node; for the work knob, hosts also serve on kernel TCP;
    for the place knob, the TCP server already runs with --serve-static and a control file."""
    from .balance.policy import parse_policy
    if tb.mode == "regular":
        raise TestbedError("--balance needs an offloaded mode: in regular mode the TCP server "
                           "does no TCP work to balance (e.g. --mode eager-accept)")
    knob = knob or balance_knob(tb)
    policy = parse_policy(spec, knob)  # a clear error before anything starts
    vip = tb.plan.service_address
    by_front: dict[str, list[str]] = {}
    for h in tb.topology.by_role("host"):
        by_front.setdefault(fronts_of(tb, h.name)[0], []).append(h.name)
    for front, hosts in by_front.items():
        argv = ["--knob", knob, "--policy", spec, "--net-cgroup", tb.cgroup(front),
                "--state-dir", str(tb.store.dir)]
        for h in hosts:
            argv += ["--app-cgroup", tb.cgroup(h)]
        if knob == "place":
            argv += ["--placement-file", str(tb.store.dir / "placement.json")]
        elif knob == "work":
            for h in hosts:  # the pass-through path: the same app on the host's kernel TCP
                tb.popen(h, python_module("testbed.app.server", *app_common,
                                          "--listen", f"0.0.0.0:{SERVICE_PORT}"),
                         log_name="app-direct", supervise=True)
            direct = [tb.address(h, _shared_link(tb, front, h)) for h in hosts]
            for addr in direct:  # pass-through must find the host's kernel-TCP app listening
                _wait_listening(tb, front, addr, SERVICE_PORT, timeout)
            argv += ["--vip", vip, "--port", str(SERVICE_PORT), "--hosts", ",".join(direct)]
        else:
            budgets = [tb.topology.node(n).cpu for n in [front, *hosts]]
            if any(b is None for b in budgets):
                raise TestbedError("the CPU split shares a fixed total: give the TCP server and the "
                                   "hosts CPU budgets (-p tcpserver_cpu=... -p host_cpu=...)")
            argv += ["--total-cpu", f"{sum(budgets):g}"]  # type: ignore[arg-type]
        tb.popen(front, python_module("testbed.balance.controller", *argv), log_name="balance", supervise=True)
    _wait_for_path(tb.store.dir / "balance.json", timeout)
    tb.extra["balance"] = {"knob": knob, "policy": policy.describe()}


def _any_host(tb: "Testbed") -> str:
    return tb.topology.by_role("host")[0].name


def _shared_link(tb: "Testbed", a: str, b: str) -> str:
    ka, kb = tb.topology.node(a).netns_key, tb.topology.node(b).netns_key
    for lp in tb.plan.links:
        if ka in lp.addresses and kb in lp.addresses:
            return lp.link.name
    raise TestbedError(f"nodes {a} and {b} share no link")


def _san_endpoint(tb: "Testbed", front: str, host: str, channel: str) -> str:
    same_ns = tb.topology.node(front).netns_key == tb.topology.node(host).netns_key
    if channel == "unix" or (same_ns and channel == "tcp"):
        return f"unix:{tb.store.dir / f'san-{front}.sock'}"
    if channel == "shm":
        return f"shm:tcps-{tb.name}-{front}"
    return f"tcp:{tb.address(front, _shared_link(tb, front, host))}:{SAN_PORT}"


def _wait_listening(tb: "Testbed", node: str, addr: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with in_netns(tb.netns(node)):
            sock = socket.socket()
        sock.settimeout(1.0)
        try:
            sock.connect((addr, port))
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise TestbedError(f"nothing listens on {addr}:{port} seen from {node} after "
                                   f"{timeout:.0f} s ({e}); logs are in {tb.store.logs}") from None
            time.sleep(0.05)
        finally:
            sock.close()


def _wait_for_path(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TestbedError(f"{path} did not appear within {timeout:.0f} s")
        time.sleep(0.02)


def http_get(tb: "Testbed", node: str, url_path: str = "/manifest.json",
             timeout: float = 2.0) -> tuple[int, bytes]:
    """GET the service from inside ``node`` (the socket is opened in its namespace)."""
    with in_netns(tb.netns(node)):
        conn = http.client.HTTPConnection(tb.plan.service_address, SERVICE_PORT, timeout=timeout)
        conn.connect()
    try:
        conn.request("GET", url_path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(tb: "Testbed", timeout: float) -> None:
    """Until the service answers through the client, or a clear error with the logs' tail."""
    client = tb.topology.by_role("client")[0].name
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for p in tb.processes:
            if not pid_alive(p.pid, p.start_time):
                raise TestbedError(f"{p.name} in {p.node} exited at start; its log "
                                   f"({p.log}) ends:\n{_tail(Path(p.log))}")
        try:
            status, _ = http_get(tb, client)
            if status == 200:
                return
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as e:
            last = e
        time.sleep(0.1)
    raise TestbedError(f"the service at {tb.service_url} did not answer within {timeout:.0f} s "
                       f"({last}); logs are in {tb.store.logs}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"

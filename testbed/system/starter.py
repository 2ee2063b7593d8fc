"""Carry out a service plan (services.py) on a running testbed, step by step.

The starter knows the testbed only through ``RunningTestbed``, the few things it uses
(run and start processes in a node, the backend's address and route operations, the
state directory), so it does not import lifecycle, which imports it. Each process's
readiness is waited for before the next step: a Unix socket the next process connects
to, a port the balancer forwards to, the status file a controller writes; the last
wait is the service answering HTTP through the client, with the tail of the log of any
process that exited meanwhile.
"""

from __future__ import annotations

import http.client
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

from .backends.base import Backend
from ..errors import TestbedError
from .kernel import in_netns, pid_alive
from .processes import ProcessRecord
from ..describe.services import (LocalAddress, PathAppears, PortListens, Process, Readiness, Route, RunToEnd,
                       ServiceAnswers, ServicePlan)
from ..describe.topology import SERVICE_PORT, AddressPlan
from .state import StateStore


class RunningTestbed(Protocol):
    """What the starter needs of a testbed (lifecycle.Testbed is one). ``run``, ``popen``,
    ``add_local_address`` and ``set_route`` reach a node on whichever machine holds it."""
    network: Backend
    addresses: AddressPlan
    store: StateStore
    processes: list[ProcessRecord]
    recorded: dict[str, Any]

    @property
    def service_url(self) -> str: ...

    def netns(self, node: str) -> str: ...

    def remote_of(self, node: str) -> Any: ...

    def popen(self, node: str, argv: Sequence[str], log_name: str | None = None,
              supervise: bool = False, **popen_kw: Any) -> subprocess.Popen | None: ...

    def run(self, node: str, argv: Sequence[str], timeout: float | None = 60,
            check: bool = False, **kw: Any) -> subprocess.CompletedProcess: ...

    def add_local_address(self, node: str, address: str) -> None: ...

    def set_route(self, node: str, dst: str, gateways: Sequence[str]) -> None: ...

    def share_secret(self, path: Path) -> None: ...


def start(tb: RunningTestbed, plan: ServicePlan) -> None:
    """Write the token, then every step in order; raises TestbedError naming what failed
    (the caller tears the testbed down)."""
    write_secret(plan.token_file)
    tb.share_secret(plan.token_file)
    tb.recorded.update(plan.state)
    for step in plan.steps:
        match step:
            case RunToEnd(node, argv, timeout):
                res = tb.run(node, argv, timeout=timeout)
                if res.returncode != 0:
                    raise TestbedError(f"{' '.join(argv[:3])}... in {node} exited with {res.returncode}: "
                                       f"{res.stderr.decode(errors='replace')[-800:]}")
            case LocalAddress(node, address):
                tb.add_local_address(node, address)
            case Route(node, dst, gateways):
                tb.set_route(node, dst, gateways)
            case Process(node, name, argv, env, waits_for):
                # only the step's own variables: the popen of the node's machine adds its environment
                tb.popen(node, argv, log_name=name, supervise=True, env=dict(env) if env else None)
                if waits_for is not None:
                    wait_until(tb, waits_for, plan.ready_timeout)
            case ServiceAnswers(client):
                wait_ready(tb, client, plan.ready_timeout)
            case _:
                raise TypeError(f"unknown plan step {step!r}")


def write_secret(path: Path) -> None:
    """A fresh token, created 0600 (not chmod'ed afterwards): never readable by others."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(16))


def wait_until(tb: RunningTestbed, ready: Readiness, timeout: float) -> None:
    if isinstance(ready, PathAppears):
        _wait_for_path(ready.path, timeout)
        return
    remote = tb.remote_of(ready.node)
    if remote is not None:
        remote.call("wait-port", {"testbed": tb.store.name, "node": ready.node, "address": ready.address,
                                  "port": ready.port, "timeout": timeout}, timeout=timeout + 60)
    else:
        wait_listening(tb, ready.node, ready.address, ready.port, timeout)


def wait_listening(tb: RunningTestbed, node: str, address: str, port: int, timeout: float) -> None:
    """Until a connection from inside ``node`` to address:port succeeds (this machine's node)."""
    deadline = time.monotonic() + timeout
    while True:
        with in_netns(tb.netns(node)):
            sock = socket.socket()
        sock.settimeout(1.0)
        try:
            sock.connect((address, port))
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise TestbedError(f"nothing listens on {address}:{port} seen from {node} "
                                   f"after {timeout:.0f} s ({e}); logs are in {tb.store.logs}") from None
            time.sleep(0.05)
        finally:
            sock.close()


def _wait_for_path(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TestbedError(f"{path} did not appear within {timeout:.0f} s")
        time.sleep(0.02)


def http_get(tb: RunningTestbed, node: str, url_path: str = "/manifest.json",
             timeout: float = 2.0) -> tuple[int, bytes]:
    """GET the service from inside ``node`` (the socket is opened in its namespace)."""
    with in_netns(tb.netns(node)):
        conn = http.client.HTTPConnection(tb.addresses.service_address, SERVICE_PORT, timeout=timeout)
        conn.connect()
    try:
        conn.request("GET", url_path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(tb: RunningTestbed, client: str, timeout: float) -> None:
    """Until the service answers through ``client``, or a clear error with the logs' tail."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for p in tb.processes:
            if p.machine is None and not pid_alive(p.pid, p.start_time):
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

"""The offload engine in real namespaces, as the testbed core starts it (services.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import time

import pytest
import uvloop

try:
    from testbed.system.kernel import in_netns
    from testbed.system.lifecycle import Testbed
    from testbed.describe.topology import load_topology
except ImportError as e:  # the core lands separately; say so instead of failing obscurely
    pytest.skip(f"testbed core not importable ({e})", allow_module_level=True)

from testbed.offload import protocol
from testbed.offload.modes import MODES

from .offload_helpers import SERVICE, fetch_every_file, service_get

pytestmark = pytest.mark.needs_root
SVC_OPTS = {"docroot_dirs": 1, "dynamic_cost_us": 100}


def in_client(tb: Testbed, coro_fn, *args):
    with in_netns(tb.netns("client")):
        return uvloop.run(coro_fn(*args))


def _stats(tb: Testbed) -> dict:
    return json.loads((tb.store.dir / "stats-tcpserver.json").read_text())


def _wait(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("mode", list(MODES))
def test_every_file_byte_exact_through_every_mode(mode: str, tb_name: str) -> None:
    with Testbed(load_topology("cluster"), tb_name, mode=mode, start_services=True,
                 service_options=SVC_OPTS) as tb:
        n = in_client(tb, fetch_every_file)
        assert n == 36
        if MODES[mode].offloaded:
            assert _wait(lambda: _stats(tb)["connections_total"] >= 2 * n)
            st = _stats(tb)
            assert st["protocol_errors"] == 0 and st["hosts_attached"] == 1 and st["mode"] == mode


def test_polling_tcp_server_from_the_service_options(tb_name: str) -> None:
    """``poll_us`` (up --poll-us, experiments' service:) reaches the daemon, which polls."""
    with Testbed(load_topology("cluster"), tb_name, mode="setup-with-accept", start_services=True,
                 service_options={**SVC_OPTS, "poll_us": 1000}) as tb:
        assert in_client(tb, fetch_every_file, 40, 1) == 36
        assert _wait(lambda: _stats(tb)["polls"] > 100)
        st = _stats(tb)
        assert st["poll_us"] == 1000 and st["protocol_errors"] == 0


def test_smp_unix_channel(tb_name: str) -> None:
    with Testbed(load_topology("smp"), tb_name, mode="setup-with-accept", start_services=True,
                 service_options=SVC_OPTS) as tb:
        assert in_client(tb, fetch_every_file, 40, 1) == 36


def test_multihost_host_killed_and_restarted(tb_name: str) -> None:
    topo = load_topology("multihost", {"hosts": "3", "host_cpu": "0.2"})
    with Testbed(topo, tb_name, mode="eager-accept", start_services=True, service_options=SVC_OPTS) as tb:
        assert _wait(lambda: _stats(tb)["hosts_attached"] == 3)

        async def scenario() -> tuple[int, int]:
            # idle keep-alive connections, spread over the three hosts
            conns = []
            for _ in range(9):
                r, w = await asyncio.open_connection(*SERVICE)
                w.write(b"GET /dir0/class0_0 HTTP/1.1\r\nHost: x\r\n\r\n")
                await r.readuntil(b"\r\n\r\n")
                await r.readexactly(102)
                conns.append((r, w))
            victim = next(p for p in tb.processes if p.node == "host2" and p.name == "app")
            os.kill(victim.pid, signal.SIGKILL)
            t0 = time.monotonic()
            closed = 0
            for r, w in conns:
                try:
                    rest = await asyncio.wait_for(r.read(), 0.3)
                    closed += rest == b""
                except (asyncio.TimeoutError, ConnectionError):
                    pass
            assert time.monotonic() - t0 < 3
            for r, w in conns:
                w.close()
            # the others keep serving
            for _ in range(30):
                await service_get("/dir0/class1_0")
            return closed, 0

        closed, _ = in_client(tb, scenario)
        assert closed == 3  # exactly the dead host's clients were closed, promptly
        assert _wait(lambda: _stats(tb)["hosts_attached"] == 2)
        # restart the host app: it re-attaches by itself
        victim = next(p for p in tb.processes if p.node == "host2" and p.name == "app")
        tb.popen("host2", victim.argv, log_name="app-restarted")
        assert _wait(lambda: _stats(tb)["hosts_attached"] == 3, 10)
        assert in_client(tb, fetch_every_file, 30, 1) == 36


def test_garbage_and_wrong_token_on_the_san(tb_name: str) -> None:
    with Testbed(load_topology("cluster"), tb_name, mode="async-send", start_services=True,
                 service_options=SVC_OPTS) as tb:
        san = (tb.address("tcpserver", "san"), 7000)
        with in_netns(tb.netns("host1")):
            for junk in (os.urandom(300), b"\x00" * 16,
                         protocol.pack(protocol.HELLO, 0, 0, protocol.encode_hello(
                             protocol.Hello("not-the-token", "intruder", "async-send"))),
                         struct.pack("<IBBHII", 1 << 30, protocol.PROTOCOL_VERSION, protocol.SEND, 0, 1, 0)):
                s = socket.create_connection(san, timeout=5)
                s.sendall(junk)
                try:
                    while s.recv(4096):
                        pass
                except ConnectionResetError:
                    pass
                s.close()
        st = _stats(tb) if _wait(lambda: _stats(tb)["protocol_errors"] >= 2) else _stats(tb)
        assert st["protocol_errors"] >= 2 and st["auth_failures"] == 1 and st["hosts_attached"] == 1
        # the SAN listener is on the SAN address only, not on the public side
        with in_netns(tb.netns("client")):
            with pytest.raises(OSError):
                socket.create_connection((tb.address("tcpserver", "public"), 7000), timeout=1)
        assert in_client(tb, fetch_every_file, 30, 1) == 36

"""Hostile clients against a running testbed, in Regular TCP and behind the TCP server:
memory stays bounded in the application and the TCP server, a slow client is closed, and
the testbed still serves. Resident memory is read from /proc, as `top` shows it."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from testbed.kernel import in_netns
from testbed.lifecycle import Testbed
from testbed.spec import load_topology

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

PATH = b"/dir0/class0_0"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def pids(tb: Testbed) -> dict[str, int]:
    return {p.name: p.pid for p in tb.processes if p.name in ("app", "tcpserver")}


def spellings(n: int) -> list[bytes]:
    out = [b"/" * (k % 50 + 1) + b"./" * (k // 50) + PATH[1:] for k in range(n)]
    assert len(set(out)) == n
    return out


async def attack(vip: str) -> tuple[float, int]:
    """3,000 spellings of one file, 4 MB of pipelined requests never read (left open), and
    a byte-a-second client; returns (seconds until the slow client was closed, spellings
    answered 200)."""
    loop = asyncio.get_running_loop()

    async def slow() -> float:
        t0 = loop.time()
        r, w = await asyncio.open_connection(vip, 80)
        try:
            for ch in b"GET /dir0/class0_0 HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 60:
                w.write(bytes([ch]))
                await asyncio.sleep(1.0)
                if r.at_eof() or w.is_closing():
                    break
                if loop.time() - t0 > 40:
                    break
            await asyncio.wait_for(r.read(), 5)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        return loop.time() - t0

    slow_task = loop.create_task(slow())
    ok = 0
    for s in spellings(3000):
        r, w = await asyncio.open_connection(vip, 80)
        w.write(b"GET " + s + b" HTTP/1.0\r\n\r\n")
        ok += (await r.read()).startswith(b"HTTP/1.1 200")
        w.close()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (vip, 80))
    blob = b"GET /dir0/class1_3 HTTP/1.1\r\nHost: x\r\n\r\n" * 100_000  # 4 MB
    sent = 0
    while sent < len(blob):
        try:
            await asyncio.wait_for(loop.sock_sendall(sock, blob[sent:sent + 65536]), 2)
            sent += 65536
        except asyncio.TimeoutError:
            break
    await asyncio.sleep(3)
    took = await slow_task
    sock.close()
    return took, ok


@pytest.mark.parametrize("mode", ["regular", "split"])
def test_hostile_clients_leave_memory_bounded_and_service_up(mode: str, tb_name: str) -> None:
    topo = load_topology("cluster", {"host_cpu": "0.5", "tcpserver_cpu": "0.5"})
    with Testbed(topo, tb_name, mode=mode, start_services=True,
                 service_options={"docroot_dirs": 1, "dynamic_cost_us": 0}) as tb:
        procs = pids(tb)
        vip = tb.plan.service_address
        with in_netns(tb.netns("client")):
            before = {n: rss_mb(p) for n, p in procs.items()}
            took, ok = asyncio.run(attack(vip))
            grown = {n: rss_mb(p) - before[n] for n, p in procs.items()}
            r = asyncio.run(_get(vip))
    assert ok == 3000, ok
    assert grown["app"] < 16 + 48, grown  # spellings (<= 16 MB) and pipelining (<= 48 MB)
    if mode != "regular":
        assert grown["tcpserver"] < 48, grown
    assert took < 30, f"the byte-a-second client stayed {took:.0f} s"
    assert r.startswith(b"HTTP/1.1 200"), r[:60]


async def _get(vip: str) -> bytes:
    r, w = await asyncio.open_connection(vip, 80)
    w.write(b"GET " + PATH + b" HTTP/1.0\r\n\r\n")
    data = await asyncio.wait_for(r.read(), 10)
    w.close()
    return data

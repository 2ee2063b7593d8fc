"""Hostile clients against a running testbed, in Regular TCP and behind the TCP server:
memory stays bounded in the application and the TCP server, a slow client is closed, and
the testbed still serves. Resident memory is read from /proc, as `top` shows it: what the
process holds, malloc's free lists included (tracemalloc sees Python objects only)."""

from __future__ import annotations

import asyncio
import collections
import random
import socket
from pathlib import Path

import pytest

from testbed.system.kernel import in_netns
from testbed.system.lifecycle import Testbed
from testbed.describe.topology import load_topology

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

PATH = b"/dir0/class0_0"
FILE = b"/dir0/class1_5"  # 6 KiB
REQUEST_LINE = 8 * 1024  # the app's bound (server.MAX_REQUEST_LINE): past it, 414


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


def long_spellings(batch: int, lo: int, hi: int) -> list[bytes]:
    """3,000 spellings of FILE with lo..hi leading slashes, none in an earlier batch."""
    ks = random.Random(batch).sample(range(lo, hi), 3000)
    return [b"/" * k + b"./" * batch + FILE[1:] for k in ks]


def expected(path: bytes) -> int:
    return 200 if len(b"GET  HTTP/1.0\r\n") + len(path) <= REQUEST_LINE else 414


async def fetch(vip: str, paths: list[bytes], statuses: collections.Counter, clients: int = 8) -> None:
    """GET each path over a new HTTP/1.0 connection, ``clients`` at a time; counts
    (expected status, status) in ``statuses``."""
    todo = iter(paths)

    async def client() -> None:
        for p in todo:
            r, w = await asyncio.open_connection(vip, 80)
            w.write(b"GET " + p + b" HTTP/1.0\r\n\r\n")
            reply = await asyncio.wait_for(r.read(), 20)
            w.close()
            statuses[expected(p), int(reply[9:12]) if reply[:9] == b"HTTP/1.1 " else 0] += 1

    await asyncio.gather(*(client() for _ in range(clients)))


async def attack(vip: str, app_pid: int) -> dict:
    """While a byte-a-second client dribbles: 3,000 requests for one file spelled with
    2,000-23,000 slashes (those with a request line past 8 KiB get 414), five times 3,000
    more with 2,000-8,000 (served), 3,000 short spellings (kept as cache aliases), then
    4 MB of pipelined requests never read (left open). Returns the app's RSS after each
    stage, the statuses, and the slow client's answer and the seconds until the app ended
    its side."""
    loop = asyncio.get_running_loop()

    async def slow() -> tuple[float, bytes]:
        t0 = loop.time()
        r, w = await asyncio.open_connection(vip, 80)
        reply = b""
        try:
            for ch in b"GET /dir0/class0_0 HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 60:
                w.write(bytes([ch]))
                try:  # a second between bytes, unless the app answers or closes
                    reply = await asyncio.wait_for(r.read(1), 1.0)
                    break
                except asyncio.TimeoutError:
                    pass
                if loop.time() - t0 > 40:
                    break
            reply += await asyncio.wait_for(r.read(), 5)  # until the app's FIN
        except (ConnectionError, asyncio.TimeoutError):
            pass
        took = loop.time() - t0
        w.close()
        return took, reply

    slow_task = loop.create_task(slow())
    out: dict = {"rss": [rss_mb(app_pid)], "long": collections.Counter(), "short": collections.Counter()}
    for batch in range(6):
        await fetch(vip, long_spellings(batch, 2000, 23000 if batch == 0 else 8000), out["long"])
        await asyncio.sleep(0.2)  # the last connections' connection_lost
        out["rss"].append(rss_mb(app_pid))
    await fetch(vip, spellings(3000), out["short"])
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
    out["took"], out["slow_reply"] = await slow_task
    sock.close()
    return out


@pytest.mark.parametrize("mode", ["regular", "split"])
def test_hostile_clients_leave_memory_bounded_and_service_up(mode: str, tb_name: str) -> None:
    topo = load_topology("cluster", {"host_cpu": "0.5", "tcpserver_cpu": "0.5"})
    with Testbed(topo, tb_name, mode=mode, start_services=True,
                 service_options={"docroot_dirs": 1, "dynamic_cost_us": 0}) as tb:
        procs = pids(tb)
        vip = tb.addresses.service_address
        with in_netns(tb.netns("client")):
            before = {n: rss_mb(p) for n, p in procs.items()}
            out = asyncio.run(attack(vip, procs["app"]))
            grown = {n: rss_mb(p) - before[n] for n, p in procs.items()}
            r = asyncio.run(_get(vip))
    long, rss = out["long"], out["rss"]
    # before connections were freed at close: +40 MB after the first 3,000, +64 MB after 18,000
    # (they waited for the garbage collector, and what it freed stayed with malloc)
    assert rss[1] - rss[0] <= 16 and max(rss) - rss[0] <= 16, \
        f"app RSS (MB) from the start and after each 3,000 long spellings: {[round(x, 1) for x in rss]}"
    assert sum(long.values()) == 18_000 and all(e == s for e, s in long), long
    assert long[200, 200] and long[414, 414], long  # both sides of the 8 KiB request line
    assert out["short"] == {(200, 200): 3000}, out["short"]
    assert grown["app"] < 16 + 48, grown  # spellings (<= 16 MB) and pipelining (<= 48 MB)
    if mode != "regular":
        assert grown["tcpserver"] < 48, grown
    assert out["took"] < 30, f"the byte-a-second client stayed {out['took']:.0f} s"
    assert out["slow_reply"].startswith(b"HTTP/1.1 408"), out["slow_reply"][:60]
    assert r.startswith(b"HTTP/1.1 200"), r[:60]


async def _get(vip: str) -> bytes:
    r, w = await asyncio.open_connection(vip, 80)
    w.write(b"GET " + PATH + b" HTTP/1.0\r\n\r\n")
    data = await asyncio.wait_for(r.read(), 10)
    w.close()
    return data

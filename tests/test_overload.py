"""Overload (docs/limits.md, "Overload"): goodput holds past saturation in every mode, on a small budget.

Two 0.05-CPU nodes (capacity about 650-950 static requests/s here), a new connection
per request, offered open loop by a small generator in the client node whose clients give
up (reset) after 2 s. Per mode, in a fresh testbed each: a step at 300/s (under capacity),
then one at 3,000/s (three to four times it; at 0.1 CPU each the native relay put the
capacity at 2,100-2,200/s, too near 3,000/s for the uncontrolled daemon to collapse). With
the TCP server's overload control (its defaults) goodput at 3,000/s must stay at or above
the 300/s step's; in the modes where hosts pull connections (split, async-send,
eager-receive), the same step without the control (``overload_control: false``: the daemon
before its overload control, which accepted everything, queued up to 4,096 and reset the
rest) collapses, and the test checks that it does, against the controlled run right before
it. The push modes and Regular TCP did not collapse before either (``python -m
bench.overload``); for them only the holding is checked. Thresholds are ratios with wide
margins, not absolute rates (measured here in two runs: controlled 796-946/s at 3,000/s,
Regular TCP 657-678/s; uncontrolled pull modes 38-64/s, 0.05-0.08x the controlled run
before them).
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import struct

import pytest
import uvloop

try:
    from testbed.system.kernel import in_netns
    from testbed.system.lifecycle import Testbed
    from testbed.describe.topology import load_topology
except ImportError as e:  # the core lands separately; say so instead of failing obscurely
    pytest.skip(f"testbed core not importable ({e})", allow_module_level=True)

from .offload_helpers import SERVICE

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

BUDGET = {"host_cpu": "0.05", "tcpserver_cpu": "0.05"}
CALM, OVER = 300, 3000  # offered requests/s: under capacity, three to four times it
TIMEOUT = 2.0  # a client gives up (and resets) after this
NO_CONTROL = {"overload_control": False, "backlog": 4096, "listen_backlog": 4096}
PULL = ("split", "async-send", "eager-receive")
REQ = b"GET /dir0/class1_3 HTTP/1.0\r\nHost: x\r\n\r\n"
_RST = struct.pack("ii", 1, 0)


async def offer(rate: int, seconds: float, skip: float) -> float:
    """Open loop: ``rate`` new connections per second for ``seconds``, each reading one
    reply until the server closes; goodput = 200 replies completed per second after
    ``skip`` seconds (the queues' transient)."""
    loop = asyncio.get_running_loop()
    done: list[float] = []
    start = loop.time()

    class Req(asyncio.Protocol):
        def __init__(self) -> None:
            self.tr = None
            self.ok = False
            self.first = True
            self.expired = False

        def connection_made(self, tr) -> None:  # type: ignore[override]
            self.tr = tr
            tr.write(REQ)

        def data_received(self, data: bytes) -> None:
            if self.first:
                self.first = False
                self.ok = data.startswith(b"HTTP/1.1 200")

        def connection_lost(self, exc) -> None:
            if self.ok and exc is None and not self.expired:
                done.append(loop.time())

    def expire(task: asyncio.Task, p: Req) -> None:
        p.expired = True
        if p.tr is not None:
            if not p.tr.is_closing():
                sock = p.tr.get_extra_info("socket")
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
                except (OSError, AttributeError):
                    pass
                p.tr.abort()
        else:
            task.cancel()  # still connecting (SYN dropped, retrying)

    async def one(p: Req) -> None:
        try:
            await loop.create_connection(lambda: p, *SERVICE)
        except (OSError, asyncio.CancelledError):
            pass

    n = int(rate * seconds)
    sent = 0
    tasks = set()
    while sent < n:
        due = min(n, int((loop.time() - start) * rate) + 1)
        while sent < due:
            p = Req()
            t = loop.create_task(one(p))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            loop.call_later(TIMEOUT, expire, t, p)
            sent += 1
        await asyncio.sleep(0.001)
    await asyncio.sleep(TIMEOUT + 0.3)  # every request finished or given up
    lo, hi = start + skip, start + seconds
    return sum(1 for t in done if lo <= t <= hi) / (hi - lo)


def measure(tb: Testbed, steps: list[tuple[int, float, float]]) -> list[float]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    out = []
    with in_netns(tb.netns("client")):
        for rate, seconds, skip in steps:
            out.append(uvloop.run(offer(rate, seconds, skip)))
    return out


def stats(tb: Testbed) -> dict:
    return json.loads((tb.store.dir / "stats-tcpserver.json").read_text())


def make_testbed(mode: str, name: str, opts: dict | None = None, budget: dict | None = None) -> Testbed:
    return Testbed(load_topology("cluster", budget or BUDGET), name, mode=mode, start_services=True,
                   service_options={"docroot_dirs": 1, "dynamic_cost_us": 0, **(opts or {})})


@pytest.mark.parametrize("mode", ["regular", "split", "async-send", "eager-receive", "eager-accept",
                                  "setup-with-accept"])
def test_goodput_holds_past_saturation(mode: str, tb_name: str) -> None:
    with make_testbed(mode, tb_name) as tb:
        calm, over = measure(tb, [(CALM, 2.0, 0.5), (OVER, 4.0, 1.5)])
        st = stats(tb) if mode != "regular" else {}
    # the calm step is served in full; at 3,000/s the controlled daemon keeps its capacity
    # (2-3x the calm step here); a collapse keeps a tenth of it or less
    assert calm > 0.8 * CALM, (mode, calm)
    assert over > 1.2 * calm, f"{mode}: goodput {over:.0f}/s at {OVER}/s offered against {calm:.0f}/s at {CALM}/s"
    print(f"{mode}: {calm:.0f}/s at {CALM}/s, {over:.0f}/s at {OVER}/s", end="")
    if mode in PULL:
        assert st["listener_pauses"] > 0 and st["queued_total"] > 0, st
        with make_testbed(mode, tb_name, NO_CONTROL) as tb:
            (without,) = measure(tb, [(OVER, 4.0, 1.5)])
            st0 = stats(tb)
        print(f"; without the control {without:.0f}/s")
        assert st0["backlog"] == 4096 and not st0["overload_control"], st0  # the options got there
        # the collapse the control prevents: measured 0.05-0.08x of the controlled goodput
        assert without < 0.6 * over, (f"{mode}: without overload control {without:.0f}/s at {OVER}/s, "
                                      f"with it {over:.0f}/s: no collapse to prevent?")


# the TCP server is the bottleneck: a twentieth of a CPU (about 300-500 static requests/s)
# in front of a host with six times as much
SMALL_TCP_SERVER = {"host_cpu": "0.3", "tcpserver_cpu": "0.05"}


@pytest.mark.parametrize("mode", ["eager-accept", "setup-with-accept"])
def test_push_modes_hold_when_the_tcp_server_saturates(mode: str, tb_name: str) -> None:
    """In the push modes no ACCEPT_REQ sets the pace: the daemon gives each host at most
    ``host_conns`` unfinished connections and queues the rest, so a saturated TCP server
    keeps serving at several times its capacity. (Measured here against ``host_conns: 0``
    on this cluster: 826 against 781/s and 663 against 564/s at 3,000/s, so the bound is
    not what prevents a collapse in this setting; it is checked to act and to hold.)"""
    calm_rate = 200
    with make_testbed(mode, tb_name, budget=SMALL_TCP_SERVER) as tb:
        calm, over = measure(tb, [(calm_rate, 2.0, 0.5), (OVER, 4.0, 1.5)])
        st = stats(tb)
    print(f"{mode}: {calm:.0f}/s at {calm_rate}/s, {over:.0f}/s at {OVER}/s", end="")
    assert calm > 0.8 * calm_rate, (mode, calm)
    assert st["host_conns"] == 128 and st["queued_total"] > 0 and st["listener_pauses"] > 0, st  # it acted
    assert over > 1.2 * calm, f"{mode}: goodput {over:.0f}/s at {OVER}/s against {calm:.0f}/s at {calm_rate}/s"

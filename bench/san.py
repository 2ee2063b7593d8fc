"""The SAN's own cost: CPU per SAN message on each side, for the tcp, unix and shm channels,
woken per event and polling, measured side by side in one run.

Two processes on the ``cluster`` topology stand in for the TCP server (node ``tcpserver``)
and the host (node ``host1``), sharing one core as the engine's do, and speak the real
SAN: ``channels.serve``/``connect``, the batched ``writer.FrameWriter`` and
``protocol.FrameDecoder`` (native or pure, as the engine would pick), on uvloop and
SCHED_BATCH (``runtime.install_loop``). The server side offers requests open loop at
``--rate`` per second: each is a DATA frame (a request's ``--request`` bytes), answered by
the host with one SEND_CLOSE of ``--reply`` bytes, as static load's frames are in
eager-accept. Nothing else runs in either process, so the CPU each one spends
(``time.process_time``: user and system, including the kernel's socket work done in its context) per
frame it sent or received is the channel's cost plus the framing's.

Rounds alternate every configuration (tcp, unix, shm; each woken per event and polling
every ``--poll-us`` on both sides; ``none``, both ends in one process with no SAN, the
floor of framing and handlers) so that a shared machine's drift spreads over all alike;
the report gives each configuration's median [min-max] over the rounds and its ratio to
tcp woken per event, paired by round. Measured (docs/performance.md, round three): the
framing's floor is most of a message's cost once the SAN is polled, which is why the shm
SAN's own cost (0.14x the TCP SAN's) shows as 0.4-0.6x per side.

Run (root): ``python -m bench.san [--rate 3000] [--seconds 3] [--repeat 3] [--poll-us 2000]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = ("tcp", "unix", "shm")
SAN_PORT = 7100


# --- the two sides (run inside the nodes) -------------------------------------------------


def _side_class(loop: asyncio.AbstractEventLoop, role: str, a: argparse.Namespace, ready: asyncio.Future):
    from testbed.offload import channels
    from testbed.offload.protocol import DATA, PING, SEND_CLOSE, FrameDecoder
    from testbed.offload.writer import FrameWriter

    reply = b"r" * a.reply

    class Side(FrameWriter, asyncio.Protocol):
        def __init__(self) -> None:
            self.init_writer(loop)
            self.decoder = FrameDecoder()
            self.replies = 0
            self.marks: dict[int, tuple[float, int, int, int, int]] = {}
            self.lost = loop.create_future()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            self.transport = transport
            channels.tune_accepted(transport)
            if not ready.done():
                ready.set_result(self)

        def mark(self, n: int) -> None:
            tr = self.transport
            self.marks[n] = (time.process_time(), self.decoder.frames_in, self.frames_out,
                             getattr(tr, "bells_sent", 0), getattr(tr, "bells_received", 0))

        def data_received(self, data: bytes) -> None:
            for ftype, cid, arg, _payload in self.decoder.feed(data):
                if ftype == DATA:  # the host: answer each request with its reply and close
                    self.emit_send(cid, reply)
                    self.emit_close(cid)
                elif ftype == SEND_CLOSE:
                    self.replies += 1
                elif ftype == PING:  # the server marks the measured window's ends
                    self.mark(arg)
                    if arg == 2:
                        self.flush()

        def connection_lost(self, exc: Exception | None) -> None:
            self.dead = True
            if not self.lost.done():
                self.lost.set_result(None)

    return Side


def _pacer(loop: asyncio.AbstractEventLoop, a: argparse.Namespace, side_ref: list) -> Any:
    if not a.poll_us:
        return None
    from testbed.offload.polling import PollingPacer

    def flush() -> None:
        if side_ref and side_ref[0].out:
            side_ref[0].flush()
    return PollingPacer(loop, a.poll_us / 1e6, flush, sleep_when_idle=a.san.startswith("shm:")).start()


def _result(side: Any, pacer: Any) -> dict:
    (c0, fi0, fo0, bs0, br0), (c1, fi1, fo1, bs1, br1) = side.marks[1], side.marks[2]
    return {"cpu_s": c1 - c0, "frames_in": fi1 - fi0, "frames_out": fo1 - fo0,
            "bells_sent": bs1 - bs0, "bells_received": br1 - br0,
            "polls": pacer.polls if pacer else 0, "native": _native_name()}


def _native_name() -> str:
    from testbed.offload import protocol
    return "native" if getattr(protocol, "NATIVE", False) else "python"


class _Handoff(asyncio.Transport):
    """The ``none`` channel: both ends in one process, bytes handed over at the next loop
    iteration: what the framing and the handlers cost with no SAN at all."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.peer: Any = None

    def write(self, data: Any) -> None:
        self.loop.call_soon(self.peer.data_received, bytes(data))

    def close(self) -> None:
        self.loop.call_soon(self.peer.connection_lost, None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _in_process(loop: asyncio.AbstractEventLoop, a: argparse.Namespace, ready: asyncio.Future) -> Any:
    server = _side_class(loop, "server", a, ready)()
    host = _side_class(loop, "host", a, loop.create_future())()
    to_host, to_server = _Handoff(loop), _Handoff(loop)
    to_host.peer, to_server.peer = host, server
    server.connection_made(to_host)
    host.connection_made(to_server)

    class NoServer:
        def close(self) -> None:
            pass
    return NoServer()


async def _serve(a: argparse.Namespace) -> dict:
    from testbed.offload import channels
    from testbed.offload.protocol import DATA, PING

    loop = asyncio.get_running_loop()
    ready: asyncio.Future = loop.create_future()
    Side = _side_class(loop, "server", a, ready)
    if a.san == "none:":
        srv = _in_process(loop, a, ready)
    else:
        srv = await channels.serve(channels.parse(a.san), Side)
    ref: list = []
    pacer = _pacer(loop, a, ref)
    print("ready", flush=True)
    side = await asyncio.wait_for(ready, 20)
    ref.append(side)
    request = b"q" * a.request
    start = time.monotonic()
    sent = 0
    total = a.warmup + a.seconds
    marked = False
    while True:  # open loop: every millisecond, the requests due by now
        now = time.monotonic() - start
        if not marked and now >= a.warmup:
            marked = True
            side.mark(1)
            side.emit(PING, 0, 1)
        if now >= total:
            break
        due = int(now * a.rate)
        while sent < due:
            sent += 1
            side.emit(DATA, sent, 0, request)
        await asyncio.sleep(0.001)
    side.mark(2)
    side.emit(PING, 0, 2)
    side.flush()
    await asyncio.sleep(0.3)
    res = _result(side, pacer)
    res["replies"] = side.replies
    res["offered"] = sent
    side.transport.close()
    srv.close()
    return res


async def _attach(a: argparse.Namespace) -> dict:
    from testbed.offload import channels

    loop = asyncio.get_running_loop()
    ready: asyncio.Future = loop.create_future()
    Side = _side_class(loop, "host", a, ready)
    ref: list = []
    pacer = _pacer(loop, a, ref)
    _, side = await channels.connect(channels.parse(a.san), Side)
    ref.append(side)
    await asyncio.wait_for(side.lost, a.warmup + a.seconds + 30)
    return _result(side, pacer)


def _side_main(a: argparse.Namespace) -> int:
    from testbed.offload.runtime import install_loop

    install_loop()
    res = asyncio.run(_serve(a) if a.role == "server" else _attach(a))
    print(json.dumps(res), flush=True)
    return 0


# --- the controller ----------------------------------------------------------------------


def _configs(a: argparse.Namespace) -> list[tuple[str, int, str]]:
    natives = ("1", "0") if a.ab_native else ("1",)
    return [(ch, p, nat) for nat in natives for p in (0, a.poll_us) for ch in CHANNELS] + [("none", 0, "1")]


def _label(ch: str, poll: int, native: str = "1") -> str:
    return f"{ch}/{'event' if not poll else f'poll={poll}'}{'' if native == '1' else '/py'}"


def _one(tb: Any, ch: str, poll: int, native: str, a: argparse.Namespace) -> dict:
    if ch == "tcp":
        san = f"tcp:{tb.address('tcpserver', 'san')}:{SAN_PORT}"
    elif ch == "none":
        san = "none:"
    elif ch == "unix":
        san = f"unix:{tb.store.dir / 'san-bench.sock'}"
    else:
        san = f"shm:{tb.name}-sanbench"
    common = ["--san", san, "--rate", str(a.rate), "--seconds", str(a.seconds), "--warmup", str(a.warmup),
              "--request", str(a.request), "--reply", str(a.reply), "--poll-us", str(poll)]
    py = sys.executable
    kw = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "cwd": str(ROOT),
          "env": {**os.environ, "TCPS_NATIVE": native}}
    server = tb.popen("tcpserver", [py, "-m", "bench.san", "_side", "--role", "server", *common],
                      log_name="san-server", **kw)
    line = server.stdout.readline()
    if line.strip() != "ready":
        server.kill()
        raise RuntimeError(f"bench.san server did not start: {line} {server.stderr.read()}")
    timeout = a.warmup + a.seconds + 60
    if ch == "none":  # both ends are in the server's process
        out_s, err_s = server.communicate(timeout=timeout)
        if server.returncode:
            raise RuntimeError(f"bench.san none failed: {err_s[-400:]}")
        return {"server": json.loads(out_s.strip().splitlines()[-1]), "host": None}
    host = tb.popen("host1", [py, "-m", "bench.san", "_side", "--role", "host", *common],
                    log_name="san-host", **kw)
    out_s, err_s = server.communicate(timeout=timeout)
    out_h, err_h = host.communicate(timeout=timeout)
    if server.returncode or host.returncode:
        raise RuntimeError(f"bench.san {_label(ch, poll, native)} failed: {err_s[-400:]} {err_h[-400:]}")
    return {"server": json.loads(out_s.strip().splitlines()[-1]),
            "host": json.loads(out_h.strip().splitlines()[-1])}


def run(a: argparse.Namespace) -> dict[str, list[dict]]:
    from testbed.system.lifecycle import Testbed
    from testbed.describe.topology import load_topology

    params = {"host_cpu": str(a.cpu), "tcpserver_cpu": str(a.cpu)}
    res: dict[str, list[dict]] = {_label(*c): [] for c in _configs(a)}
    with Testbed(load_topology("cluster", params), name=f"s{os.getpid() % 100000}", mode="regular",
                 start_services=False) as tb:
        for rnd in range(a.repeat):
            for ch, poll, native in _configs(a):
                print(f"[round {rnd + 1}/{a.repeat}] {_label(ch, poll, native)} ...", file=sys.stderr, flush=True)
                res[_label(ch, poll, native)].append(_one(tb, ch, poll, native, a))
    return res


def _us_per_msg(side: dict) -> float:
    return side["cpu_s"] / max(1, side["frames_in"] + side["frames_out"]) * 1e6


def _both(r: dict) -> float:
    """A message's cost at both ends: what its sender and its receiver spend."""
    return _us_per_msg(r["server"]) + _us_per_msg(r["host"])


def _spread(vals: list[float], fmt: str = "{:.2f}") -> str:
    if not vals:
        return "-"
    s = sorted(vals)
    med = s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2
    return f"{fmt.format(med)} [{fmt.format(s[0])}-{fmt.format(s[-1])}]"


def report(res: dict[str, list[dict]], a: argparse.Namespace) -> str:
    base = _label("tcp", 0)
    native = res[base][0]["server"].get("native", "?") if res[base] else "?"
    if a.ab_native:
        native += " (/py: pure Python, TCPS_NATIVE=0)"
    lines = [f"SAN cost, cluster topology (tcpserver and host1 share one core, {a.cpu} CPU each): "
             f"{a.rate} requests/s open loop, DATA {a.request} B -> SEND_CLOSE {a.reply} B, "
             f"{a.seconds} s after {a.warmup} s warm-up; codec {native}; {a.repeat} round(s), "
             f"median [min-max]; ratios to {base}, paired by round; 'both': sender's and receiver's "
             f"us per message added; 'none': both ends in one process, no SAN (the framing's floor)",
             f"{'channel':19} {'side':7} {'CPU us/msg':>20} {'ratio':>20} {'bells/msg':>10} {'replies':>8}"]
    for label, rounds in res.items():
        if label.startswith("none"):
            both = [_us_per_msg(r["server"]) for r in rounds]
            lines.append(f"{'none (one process)':19} {'both':7} {_spread(both):>20} "
                         f"{_spread([u / _both(b) for u, b in zip(both, res[base])]):>20}")
            continue
        both = [_both(r) for r in rounds]
        lines.append(f"{label:19} {'both':7} {_spread(both):>20} "
                     f"{_spread([u / _both(b) for u, b in zip(both, res[base])]):>20}")
        for side in ("server", "host"):
            us = [_us_per_msg(r[side]) for r in rounds]
            ratios = [u / _us_per_msg(b[side]) for u, b in zip(us, res[base])]
            bells = [(r[side]["bells_sent"]) / max(1, r[side]["frames_out"]) for r in rounds]
            replies = min(r["server"]["replies"] / max(1, r["server"]["offered"]) for r in rounds)
            lines.append(f"{label:19} {side:7} {_spread(us):>20} {_spread(ratios):>20} "
                         f"{_spread(bells, '{:.3f}'):>10} {replies:>8.0%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m bench.san", description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=3000, help="requests per second (two SAN messages each)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--poll-us", type=int, default=2000, help="the polling configurations' period")
    ap.add_argument("--request", type=int, default=100, help="bytes of a request (DATA payload)")
    ap.add_argument("--reply", type=int, default=6144 + 250, help="bytes of a reply (6 KiB file and headers)")
    ap.add_argument("--cpu", type=float, default=0.5, help="each node's CPU budget")
    ap.add_argument("--ab-native", action="store_true", help="also every configuration in pure Python")
    if argv[:1] == ["_side"]:
        ap.add_argument("--role", choices=("server", "host"), required=True)
        ap.add_argument("--san", required=True)
        return _side_main(ap.parse_args(argv[1:]))
    a = ap.parse_args(argv)
    print(report(run(a), a))
    return 0


if __name__ == "__main__":
    sys.exit(main())

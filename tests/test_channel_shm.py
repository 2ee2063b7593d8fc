"""The shm:NAME SAN channel: shared-memory rings with a Unix-socket doorbell.

Loopback (the TCP server and host library in one process, as in test_offload_loopback),
the transport alone under backpressure with a tiny ring, garbage and dead peers, and the
smp topology as ``up --channel shm`` starts it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import uvloop

from testbed.app.docroot import generate
from testbed.offload import channels, protocol, shmring

from .offload_helpers import TOKEN, fetch_every_file, http_get, offload_stack

ROOT = Path(__file__).resolve().parent.parent


def _name(tag: str) -> str:
    return f"tcps-test-{os.getpid()}-{tag}"


def _ring_files(name: str) -> list[str]:
    return sorted(f for f in os.listdir("/dev/shm") if f.startswith(f"{name}-"))


def _eventfds() -> int:
    return sum("eventfd" in os.readlink(f"/proc/self/fd/{f}") for f in os.listdir("/proc/self/fd")
               if os.path.lexists(f"/proc/self/fd/{f}"))


@pytest.fixture(scope="module")
def docroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tcps-docroot")
    generate(root, seed=11, dirs=1)
    return root


def test_parse_and_names() -> None:
    cs = channels.parse("shm:abc")
    assert cs.path == "/dev/shm/tcps-abc.sock" and cs.name == "tcps-abc" and str(cs) == "shm:tcps-abc"
    with pytest.raises(ValueError):
        channels.parse("shm:../x")


@pytest.mark.parametrize("mode", ["split", "eager-accept", "setup-with-accept"])
def test_loopback_every_file_byte_exact(mode: str, docroot: Path) -> None:
    files = json.loads((docroot / "manifest.json").read_text())["files"]
    name = _name(mode)

    async def main() -> None:
        fds = _eventfds()
        async with offload_stack(mode, docroot, hosts=2, san=f"shm:{name}") as (srv, tunnels, port):
            assert _ring_files(name) == []  # unlinked as soon as both ends hold them
            assert all(t.transport._bell_in >= 0 and t.transport._bell_out >= 0 for t in tunnels)
            sem = asyncio.Semaphore(100)

            async def one(f: dict) -> None:
                async with sem:
                    status, _, body = await http_get(port, f["path"], timeout=30)
                assert status == 200 and body == (docroot / f["path"][1:]).read_bytes(), f["path"]

            biggest = max(files, key=lambda f: f["size"])
            await asyncio.gather(*(one(f) for f in files * 4 + [biggest] * 30))
            st = srv.stats()
            assert st["connections_total"] == len(files) * 4 + 30
            assert st["protocol_errors"] == 0 and st["hosts_attached"] == 2
            assert all(t.transport.get_extra_info("shm_ring", "").startswith(name) for t in tunnels)
            # woken per event: the doorbells (eventfds) rang, each side's
            assert sum(t.transport.bells_sent for t in tunnels) > 0
            assert sum(h.transport.bells_sent for h in srv.hosts) > 0
        await asyncio.sleep(0.05)
        assert not os.path.exists(f"/dev/shm/{name}.sock") and _ring_files(name) == []
        assert _eventfds() == fds  # the doorbells closed with their channels

    uvloop.run(main())


class _Sink(asyncio.Protocol):
    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.buf = bytearray()
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pauses = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        if self.echo:
            transport.set_write_buffer_limits(high=1024)

    def data_received(self, data: bytes) -> None:
        if self.echo:
            self.transport.write(data)  # type: ignore[union-attr]
        else:
            self.buf += data

    def pause_writing(self) -> None:
        self.pauses += 1

    def resume_writing(self) -> None:
        pass

    def connection_lost(self, exc) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def _cleanup(name: str) -> None:
    """Leftovers of a failed test of ours (exact names only)."""
    for f in [f"{name}.sock", *_ring_files(name)]:
        try:
            os.unlink(f"/dev/shm/{f}")
        except FileNotFoundError:
            pass


@pytest.fixture(autouse=True)
def _no_leftovers(request: pytest.FixtureRequest):
    yield
    for tag in ("tiny", "close", "srvgone", "garbage", "kill"):
        _cleanup(_name(tag))
    for mode in ("split", "eager-accept", "setup-with-accept"):
        _cleanup(_name(mode))


def test_tiny_ring_wraps_and_applies_backpressure() -> None:
    """A 4 KiB ring, 8 MiB each way at once: wrap-around, full ring, pause/resume, echo."""
    name = _name("tiny")

    async def main() -> None:
        servers: list[_Sink] = []

        def factory() -> _Sink:
            servers.append(_Sink(echo=True))
            return servers[-1]

        srv = await shmring.serve(f"/dev/shm/{name}.sock", name, factory, ring_bytes=4096)
        tr, cl = await shmring.connect(f"/dev/shm/{name}.sock", _Sink)
        data = os.urandom(8 << 20)
        tr.pause_reading()  # the echo backs up in the server's ring, then its write buffer
        for i in range(0, len(data), 100_003):  # odd sizes, so writes straddle the wrap point
            tr.write(data[i:i + 100_003])
        await asyncio.sleep(0.2)
        assert not cl.buf and servers[0].pauses == 1
        tr.resume_reading()
        deadline = time.monotonic() + 20
        while len(cl.buf) < len(data) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert bytes(cl.buf) == data
        assert cl.pauses >= 1 and servers[0].pauses >= 1  # both ends hit the high-water mark
        tr.close()
        assert await asyncio.wait_for(servers[0].lost, 5) is None
        srv.close()

    uvloop.run(main())


@pytest.mark.slow
def test_a_quarter_million_random_frames_cross_the_ring_in_order_in_bounded_memory() -> None:
    """A quarter of a million generated SAN frames (every type, random ids, payloads of
    0-1,460 bytes; about 69 MB, more than the memory bound), written in random batches
    through a 64 KiB ring: the other end decodes exactly them, in order, while the ring
    wraps and fills; memory stays bounded (frames are consumed as they arrive)."""
    import random
    import tracemalloc
    name = _name("fuzz")
    rng = random.Random(16)

    class Decoding(asyncio.Protocol):
        def __init__(self) -> None:
            self.dec = protocol.FrameDecoder()
            self.count = 0
            self.checksum = 0
            self.lost = asyncio.get_running_loop().create_future()

        def data_received(self, data: bytes) -> None:
            for ftype, conn, arg, payload in self.dec.feed(data):
                self.count += 1
                self.checksum = (self.checksum * 31 + ftype + conn + arg + len(payload)) & 0xFFFFFFFF

        def connection_lost(self, exc) -> None:
            if not self.lost.done():
                self.lost.set_result(exc)

    async def main() -> None:
        got: list[Decoding] = []
        srv = await shmring.serve(f"/dev/shm/{name}.sock", name, lambda: got.append(Decoding()) or got[-1],
                                  ring_bytes=65536)
        tr, _ = await shmring.connect(f"/dev/shm/{name}.sock", _Sink)
        sizes = (0, 0, 3, 17, 64, 300, 1460)
        expect, sent = 0, 0
        tracemalloc.start()
        while sent < 250_000:
            batch = []
            for _ in range(rng.choice((1, 2, 5, 40, 200))):
                f = (rng.randint(1, protocol.MAX_TYPE), rng.getrandbits(32), rng.getrandbits(32),
                     rng.randbytes(rng.choice(sizes)))
                expect = (expect * 31 + f[0] + f[1] + f[2] + len(f[3])) & 0xFFFFFFFF
                batch.append(protocol.pack(*f))
            tr.write(b"".join(batch))
            sent += len(batch)
            if tr.get_write_buffer_size() > 1 << 20:
                await asyncio.sleep(0)  # let the reader drain: the writer's backlog stays small
        tr.close()
        assert await asyncio.wait_for(got[0].lost, 60) is None
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert got[0].count == sent and got[0].checksum == expect
        assert got[0].dec.buffered == 0
        assert peak < 48 * 1024 * 1024, peak
        srv.close()

    uvloop.run(main())


def test_close_delivers_what_was_written_first() -> None:
    name = _name("close")

    async def main() -> None:
        got: list[_Sink] = []
        srv = await shmring.serve(f"/dev/shm/{name}.sock", name, lambda: got.append(_Sink()) or got[-1],
                                  ring_bytes=8192)
        tr, _ = await shmring.connect(f"/dev/shm/{name}.sock", _Sink)
        data = os.urandom(300_000)  # mostly in the write backlog when close() is called
        tr.write(data)
        tr.close()
        assert tr.is_closing()
        await asyncio.wait_for(got[0].lost, 5)
        assert bytes(got[0].buf) == data
        srv.close()

    uvloop.run(main())


def _raw_attach(name: str) -> tuple[socket.socket, object, int]:
    """Attach to a shm SAN as a hand-made host: the socket, the mapped ring, its capacity."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(f"/dev/shm/{name}.sock")
    msg, fds, _, _ = socket.recv_fds(s, 4096, 1)
    mm, cap, _, _ = shmring._map_ring(fds[0], msg, name)
    os.close(fds[0])
    return s, mm, cap


def _write_ring(mm, cap: int, payload: bytes, head: int | None = None, tail0: int | None = None,
                at: int = 0) -> None:
    """Put ``payload`` at offset ``at`` of ring 1 (host -> server) and publish ``head``."""
    base = shmring.HEADER + cap  # ring 1: host -> server
    mm[base + at:base + at + len(payload)] = payload
    w = memoryview(mm)[:shmring.HEADER].cast("Q")
    if tail0 is not None:  # ring 0's tail (ours to write): beyond anything the server wrote
        w[shmring.CONTROL[0] // 8 + shmring.TAIL] = tail0
    w[shmring.CONTROL[1] // 8 + shmring.HEAD] = at + len(payload) if head is None else head
    w.release()


async def _until_dropped(s: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    s.settimeout(5)
    try:
        while await loop.run_in_executor(None, s.recv, 64):
            pass  # the server closes its end: EOF
    except ConnectionResetError:
        pass


def test_garbage_drops_only_that_channel(docroot: Path) -> None:
    name = _name("garbage")

    def raw_attach() -> tuple[socket.socket, object, int]:
        return _raw_attach(name)

    write_ring = _write_ring

    async def main() -> None:
        async with offload_stack("eager-accept", docroot, san=f"shm:{name}") as (srv, tunnels, port):
            loop = asyncio.get_running_loop()
            cases = [
                os.urandom(300),  # not frames
                struct.pack("<IBBHII", 1 << 30, protocol.PROTOCOL_VERSION, protocol.SEND, 0, 1, 0),  # over-long frame
                protocol.pack(protocol.HELLO, 0, 0, protocol.encode_hello(
                    protocol.Hello("not-the-token", "intruder", "eager-accept"))),
                None,  # corrupt counters: head far beyond the ring
                b"tail",  # corrupt counters: the server's send ring "consumed" past its head
            ]
            bad_hello = cases[2]
            for payload in cases:
                s, mm, cap = await loop.run_in_executor(None, raw_attach)
                if payload is None:
                    write_ring(mm, cap, b"", head=cap * 5)
                elif payload == b"tail":  # the server's ERROR reply then meets the bad tail
                    write_ring(mm, cap, bad_hello, tail0=cap * 3)
                else:
                    write_ring(mm, cap, payload)
                s.send(b"\x01")  # doorbell
                await _until_dropped(s)
                s.close()
                mm.close()
            st = srv.stats()
            assert st["protocol_errors"] >= 2 and st["auth_failures"] == 2, st
            assert st["hosts_attached"] == 1
            for _ in range(20):
                status, _, _ = await http_get(port, "/dir0/class1_0")
                assert status == 200
            assert _ring_files(name) == []

    uvloop.run(main())


def test_a_head_behind_the_tail_is_corruption_not_a_replay(docroot: Path) -> None:
    """A host that moves its ring's head back below what the server already read would have
    it deliver those bytes again: the channel is dropped instead."""
    name = _name("rewind")

    async def main() -> None:
        async with offload_stack("eager-accept", docroot, san=f"shm:{name}") as (srv, tunnels, port):
            loop = asyncio.get_running_loop()
            s, mm, cap = await loop.run_in_executor(None, _raw_attach, name)
            hello = protocol.pack(protocol.HELLO, 0, 0, protocol.encode_hello(
                protocol.Hello(TOKEN, "rewinder", "eager-accept")))
            _write_ring(mm, cap, hello)
            s.send(b"\x01")
            for _ in range(50):
                if any(h.host_id == "rewinder" for h in srv.hosts):
                    break
                await asyncio.sleep(0.05)
            assert any(h.host_id == "rewinder" for h in srv.hosts)
            _write_ring(mm, cap, b"", head=len(hello) - 8)  # behind the server's tail
            s.send(b"\x01")
            await _until_dropped(s)
            s.close()
            mm.close()
            assert not any(h.host_id == "rewinder" for h in srv.hosts)
            status, _, _ = await http_get(port, "/dir0/class1_0")
            assert status == 200

    uvloop.run(main())


_HOST = """
import asyncio, sys
from testbed.offload import hostsock
async def main():
    t = await hostsock.open_tunnel(sys.argv[1], sys.argv[2], "eager-accept", "victim")
    await t.create_server(asyncio.Protocol, int(sys.argv[3]))
    print("attached", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def test_killed_peer_drops_the_channel_and_leaves_no_ring(docroot: Path) -> None:
    name = _name("kill")

    async def main() -> None:
        async with offload_stack("eager-accept", docroot, san=f"shm:{name}") as (srv, tunnels, port):
            proc = subprocess.Popen([sys.executable, "-c", _HOST, f"shm:{name}", TOKEN, str(port)],
                                    cwd=ROOT, stdout=subprocess.PIPE, text=True)
            try:
                line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
                assert line.strip() == "attached"
                assert srv.stats()["hosts_attached"] == 2
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
                for _ in range(100):
                    if srv.stats()["hosts_attached"] == 1:
                        break
                    await asyncio.sleep(0.02)
                assert srv.stats()["hosts_attached"] == 1
                assert _ring_files(name) == []
                for _ in range(20):  # the surviving host keeps serving
                    status, _, _ = await http_get(port, "/dir0/class1_0")
                    assert status == 200
            finally:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(5)

    uvloop.run(main())


def test_server_gone_reaches_the_host() -> None:
    name = _name("srvgone")

    async def main() -> None:
        got: list[_Sink] = []
        srv = await shmring.serve(f"/dev/shm/{name}.sock", name, lambda: got.append(_Sink()) or got[-1])
        tr, cl = await shmring.connect(f"/dev/shm/{name}.sock", _Sink)
        await asyncio.sleep(0.01)
        got[0].transport.write(b"last words")
        got[0].transport.abort()
        assert await asyncio.wait_for(cl.lost, 5) is None
        assert bytes(cl.buf) == b"last words"
        srv.close()
        with pytest.raises(OSError):
            await shmring.connect(f"/dev/shm/{name}.sock", _Sink)

    uvloop.run(main())


def test_polled_rings_cross_without_doorbells_sleep_when_idle_and_wake_on_one(docroot: Path) -> None:
    """Both ends polled (one process, one pacer): byte-exact, no doorbell while busy; idle,
    the pacer arms the doorbells and sleeps, and the next request's doorbell wakes it."""
    files = json.loads((docroot / "manifest.json").read_text())["files"]
    name = _name("polled")

    async def main() -> None:
        async with offload_stack("eager-accept", docroot, hosts=1, san=f"shm:{name}",
                                 poll_us=500) as (srv, tunnels, port):
            tr = tunnels[0].transport
            assert srv.pacer is not None and srv.pacer.sleep_when_idle and len(srv.pacer.rings) == 2

            async def one(f: dict) -> None:
                status, _, body = await http_get(port, f["path"], timeout=30)
                assert status == 200 and body == (docroot / f["path"][1:]).read_bytes(), f["path"]

            async def busy() -> tuple[int, int]:
                """Bells rung during a burst of requests, and the frames it took."""
                bells = tr.bells_sent + srv.hosts[0].transport.bells_sent
                frames = srv.stats()["frames_in"] + srv.stats()["frames_out"]
                await asyncio.gather(*(one(f) for f in files * 3))
                return (tr.bells_sent + srv.hosts[0].transport.bells_sent - bells,
                        srv.stats()["frames_in"] + srv.stats()["frames_out"] - frames)

            bells, frames = await busy()
            assert frames > 5 * len(files) and bells <= 4, (bells, frames)
            await asyncio.sleep(0.2)  # idle: both rings armed, the pacer asleep
            assert srv.pacer.sleeping and srv.pacer.sleeps >= 1
            polls = srv.pacer.polls
            await asyncio.sleep(0.1)
            assert srv.pacer.polls == polls  # asleep costs no period
            await one(files[0])  # the client's event wakes it (rawio), the reply crosses
            assert srv.pacer.polls > polls
            assert srv.stats()["protocol_errors"] == 0

    uvloop.run(main())


# --- the smp topology, as `up smp --channel shm` starts it ---------------------------------

try:
    from testbed.system.kernel import in_netns
    from testbed.system.lifecycle import Testbed
    from testbed.describe.topology import load_topology
except ImportError:  # pragma: no cover
    Testbed = None  # type: ignore[assignment,misc]



def _wait(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.needs_root
@pytest.mark.parametrize("mode", ["split", "eager-accept"])
def test_smp_shm_channel_every_file_byte_exact(mode: str, tb_name: str) -> None:
    if Testbed is None:
        pytest.skip("testbed core not importable")
    with Testbed(load_topology("smp"), tb_name, mode=mode, start_services=True,
                 service_options={"docroot_dirs": 1, "dynamic_cost_us": 100, "channel": "shm"}) as tb:
        assert tb.recorded["channel"] == "shm"
        name = f"tcps-{tb_name}-tcpserver"
        assert os.path.exists(f"/dev/shm/{name}.sock")
        with in_netns(tb.netns("client")):
            n = uvloop.run(fetch_every_file(keepalive=False))
        assert n == 36
        stats = lambda: json.loads((tb.store.dir / "stats-tcpserver.json").read_text())  # noqa: E731
        assert _wait(lambda: stats()["connections_total"] >= 2 * n)
        st = stats()
        assert st["protocol_errors"] == 0 and st["hosts_attached"] == 1 and st["mode"] == mode
        assert _ring_files(name) == []
        if mode == "eager-accept":  # the host app killed: dropped; restarted: re-attaches
            victim = next(p for p in tb.processes if p.node == "host1" and p.name == "app")
            os.kill(victim.pid, signal.SIGKILL)
            assert _wait(lambda: stats()["hosts_attached"] == 0)
            assert _ring_files(name) == []
            tb.popen("host1", victim.argv, log_name="app-restarted")
            assert _wait(lambda: stats()["hosts_attached"] == 1, 10)
            with in_netns(tb.netns("client")):
                assert uvloop.run(fetch_every_file(rounds=1, keepalive=False)) == 36
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"tcps-{tb_name}-")]


@pytest.mark.needs_root
@pytest.mark.parametrize("topology", ["cluster", "multihost", "smp", "inic"])
def test_every_topology_over_polled_shm_every_file_byte_exact(topology: str, tb_name: str) -> None:
    """``channel: shm`` with ``poll_us`` and ``host_poll_us`` (experiment files' ``service:``)
    on every shipped topology: every file byte-exact, and both sides poll."""
    if Testbed is None:
        pytest.skip("testbed core not importable")
    params = {"hosts": "2"} if topology == "multihost" else {}
    with Testbed(load_topology(topology, params), tb_name, mode="eager-accept", start_services=True,
                 service_options={"docroot_dirs": 1, "dynamic_cost_us": 100, "channel": "shm",
                                  "poll_us": 1000, "host_poll_us": 1000}) as tb:
        assert tb.recorded["channel"] == "shm"
        front = "nic1" if topology == "inic" else "tcpserver"
        hosts = [n.name for n in tb.topology.by_role("host")]
        with in_netns(tb.netns("client")):
            assert uvloop.run(fetch_every_file(rounds=1, keepalive=False)) == 36
        stats = lambda f: json.loads((tb.store.dir / f"stats-{f}.json").read_text())  # noqa: E731
        # (a second host may attach a retry later than the first answered the service)
        assert _wait(lambda: stats(front)["connections_total"] >= 37 and
                     stats(front)["hosts_attached"] == len(hosts) and
                     all(stats(h).get("polls", 0) > 10 for h in hosts))
        st = stats(front)
        assert st["protocol_errors"] == 0 and st["host_losses"] == 0 and st["polls"] > 10
        assert all(h["bells_sent"] + h["bells_received"] < st["frames_in"] for h in st["hosts"].values())
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"tcps-{tb_name}-")]

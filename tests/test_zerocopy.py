"""No Data Copying: the host's send area, MSG_ZEROCOPY sends from it, completion notices
giving regions back, and the testbed's ``--zero-copy`` end to end."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import uvloop

from testbed.app.docroot import generate
from testbed.errors import TestbedError
from testbed.offload import channels, zerocopy
from testbed.offload.config import ServerConfig
from testbed.offload.modes import MODES
from testbed.offload.zerocopy import Completions, SendArea

from .offload_helpers import http_get, offload_stack

ASYNC_MODES = [n for n, m in MODES.items() if m.offloaded and not m.sync_send]
needs_zerocopy = pytest.mark.skipif(zerocopy.kernel_refusal() is not None,
                                    reason=str(zerocopy.kernel_refusal()))


# -- the host's send area ---------------------------------------------------------------------

def test_the_send_area_gives_regions_back_in_any_order_and_never_wraps_one() -> None:
    mem = bytearray(1000)
    area = SendArea(memoryview(mem))
    a = area.put(b"a" * 400)
    b = area.put(b"b" * 400)
    assert (a, b) == (0, 400) and mem[:400] == b"a" * 400
    assert area.put(b"c" * 300) == -1 and area.full == 1  # 200 left, and a region is one run
    area.free(b)  # out of order: a still holds the start, so nothing is reusable yet
    assert area.in_use == 800
    area.free(a)
    assert area.in_use == 0
    c = area.put(b"c" * 300)  # 800 + 300 > 1000: placed at the start, the end skipped
    assert c == 0 and mem[:300] == b"c" * 300 and area.in_use == 300
    assert area.put(b"d" * 701) == -1
    d = area.put(b"d" * 700)  # exactly the rest
    assert d == 300 and area.in_use == 1000
    with pytest.raises(ValueError, match="holds no send"):
        area.free(999)
    area.free(c)
    area.free(d)
    assert area.in_use == 0 and not area.at


def test_completions_give_a_region_back_only_when_every_send_before_it_is_reported() -> None:
    freed: list[int] = []
    zc = Completions()
    for off in (10, 20, 30):
        zc.owe(zc.sent(), freed.append, off)
    zc._reported(1, 2)  # out of order: id 0 not reported yet
    zc._give_back(zc.done_below - 1)
    assert freed == []
    zc._reported(0, 0)
    zc._give_back(zc.done_below - 1)
    assert freed == [10, 20, 30] and zc.done_below == 3 and not zc.ahead


@needs_zerocopy
def test_a_real_zero_copy_send_on_loopback_is_reported_and_arrives_intact() -> None:
    lst = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(lst.getsockname())
    b, _ = lst.accept()
    got = bytearray()
    reader = threading.Thread(target=lambda: [got.extend(c) for c in iter(lambda: b.recv(1 << 20), b"")])
    reader.start()
    try:
        assert zerocopy.enable(a)
        mem = bytearray(os.urandom(600_000))
        view = memoryview(mem)
        zc = Completions()
        freed: list[int] = []
        sent = 0
        while sent < len(mem):
            n = a.send(view[sent:sent + 100_000], zerocopy.MSG_ZEROCOPY)
            zc.owe(zc.sent(), freed.append, sent)
            sent += n
        a.shutdown(socket.SHUT_WR)
        reader.join(10)
        assert bytes(got) == bytes(mem)
        end = time.monotonic() + 5
        while zc.outstanding and time.monotonic() < end:
            zc.reap(a)
            time.sleep(0.01)
        assert not zc.outstanding and len(freed) == zc.next_id  # the kernel let go of every send
    finally:
        for s in (a, b, lst):
            s.close()


# -- the settings ----------------------------------------------------------------------------

@pytest.mark.parametrize("san, mode, io, message", [
    ("tcp:127.0.0.1:7000", "async-send", "epoll", "needs the shm channel, not tcp"),
    ("shm:x", "split", "epoll", "zero_copy needs an asynchronous send"),
    ("shm:x", "eager-accept", "asyncio", "needs --client-io epoll"),
])
def test_the_daemon_refuses_zero_copy_where_it_cannot_work(san: str, mode: str, io: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerConfig("127.0.0.1", 80, channels.parse(san), MODES[mode], zero_copy=True, client_io=io)


def test_the_daemons_zero_copy_flag_round_trips() -> None:
    cfg = ServerConfig("10.0.0.1", 80, channels.parse("shm:x"), MODES["async-send"], token_file=Path("/t"),
                       zero_copy=True)
    argv = cfg.to_argv()
    assert argv[argv.index("--zero-copy") + 1] == "on"
    assert ServerConfig.from_argv(argv)[0] == cfg


def _plan(mode: str, **opts):
    from testbed.describe.options import ServiceOptions
    from testbed.describe.services import plan_services
    from testbed.describe.topology import load_topology, plan_addresses
    topo = load_topology("cluster")
    return plan_services("p1", topo, plan_addresses(topo, "10.77.0.0/16"), MODES[mode],
                         ServiceOptions(**opts), Path("/run/tcps/p1"), python="py")


@pytest.mark.parametrize("mode, opts, message", [
    ("regular", {"channel": "shm"}, "there is no TCP server"),
    ("async-send", {}, "needs the shm channel, not tcp"),
    ("split", {"channel": "shm"}, "asynchronous send"),
])
def test_up_refuses_zero_copy_in_one_line_before_anything_is_built(mode: str, opts: dict, message: str) -> None:
    with pytest.raises(TestbedError, match=message) as e:
        _plan(mode, zero_copy=True, **opts)
    assert "\n" not in str(e.value)


def test_the_plan_passes_zero_copy_to_the_daemon() -> None:
    p = _plan("eager-accept", zero_copy=True, channel="shm")
    daemon = next(s for s in p.processes() if s.name == "tcpserver")
    assert ServerConfig.from_argv(list(daemon.argv[3:]))[0].zero_copy


# -- on loopback: the daemon and the host app in this process, over shm ------------------------

@pytest.fixture(scope="module")
def docroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tcps-zc-docroot")
    generate(root, seed=11, dirs=1)
    return root


def _ring(tag: str) -> str:
    return f"shm:tcps-test-{os.getpid()}-zc{tag}"


async def _pipelined(port: int, paths: list[str]) -> list[bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in paths))
    out = []
    for _ in paths:
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 20)
        n = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        out.append(await asyncio.wait_for(r.readexactly(n), 20))
    w.close()
    return out


async def _area_empty(tunnel, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if tunnel.zc.in_use == 0:
            return True
        await asyncio.sleep(0.02)
    return False


@needs_zerocopy
@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_every_file_byte_exact_closing_and_pipelined(mode: str, docroot: Path) -> None:
    files = json.loads((docroot / "manifest.json").read_text())["files"]

    async def main() -> None:
        async with offload_stack(mode, docroot, san=_ring(mode[:5]), zero_copy=True) as (srv, tunnels, port):
            assert tunnels[0].zc is not None
            sem = asyncio.Semaphore(40)

            async def closing(f: dict) -> None:  # HTTP/1.0: the daemon closes right after the body
                async with sem:
                    status, _, body = await http_get(port, f["path"], timeout=30)
                assert status == 200 and body == (docroot / f["path"][1:]).read_bytes(), f["path"]

            await asyncio.gather(*(closing(f) for f in files * 2))
            paths = [f["path"] for f in files]
            for i, bodies in enumerate(await asyncio.gather(*(_pipelined(port, paths[i::4]) for i in range(4)))):
                for path, body in zip(paths[i::4], bodies):
                    assert body == (docroot / path[1:]).read_bytes(), path
            st = srv.stats()
            assert st["protocol_errors"] == 0 and st["zero_copy"]
            big = sum(1 for f in files if f["size"] >= zerocopy.MIN_BYTES)
            assert st["zero_copy_sends"] >= 3 * big  # every large reply left without a copy
            assert await _area_empty(tunnels[0])  # and every region came back
            assert tunnels[0].zc.full == 0

    uvloop.run(main())


@needs_zerocopy
def test_a_slow_reader_holds_regions_until_it_reads_and_a_reset_gives_them_back(docroot: Path) -> None:
    big = (docroot / "dir0" / "class3_8").read_bytes()
    n = 6

    async def main() -> None:
        async with offload_stack("async-send", docroot, san=_ring("slow"), zero_copy=True) as (srv, tunnels, port):
            area = tunnels[0].zc
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow reader
            s.connect(("127.0.0.1", port))
            s.setblocking(False)
            r, w = await asyncio.open_connection(sock=s)
            w.write(b"GET /dir0/class3_8 HTTP/1.1\r\nHost: x\r\n\r\n" * n)
            await asyncio.sleep(0.5)
            assert area.in_use > 0  # the kernel holds what the client has not acknowledged
            for _ in range(n):
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 200")
                got = bytearray()
                while len(got) < len(big):
                    got += await asyncio.wait_for(r.readexactly(min(65536, len(big) - len(got))), 10)
                    await asyncio.sleep(0.001)
                assert got == big
            w.close()
            assert await _area_empty(tunnels[0])

            # a client that resets with sends in flight: the regions come back all the same
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /dir0/class3_8 HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
            await asyncio.sleep(0.3)
            assert area.in_use > 0
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
            assert await _area_empty(tunnels[0])
            status, _, body = await http_get(port, "/dir0/class3_8", timeout=10)  # still serving
            assert status == 200 and body == big
            assert srv.stats()["protocol_errors"] == 0

    uvloop.run(main())


# -- in namespaces, as `up` builds it: the TCP server's system calls -------------------------------

@needs_zerocopy
@pytest.mark.needs_root
def test_up_zero_copy_sends_a_900k_body_without_writing_it_through_user_space(tb_name: str) -> None:
    from testbed.describe.topology import load_topology
    from testbed.system.lifecycle import Testbed

    with Testbed(load_topology("cluster"), tb_name, mode="async-send", start_services=True,
                 service_options={"docroot_dirs": 1, "channel": "shm", "zero_copy": True}) as tb:
        daemon = next(p for p in tb.processes if p.name == "tcpserver")
        trace = tb.store.dir / "strace.txt"
        tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=write,writev,send,sendto,sendmsg",
                                   "-e", "signal=none", "-o", str(trace), "-p", str(daemon.pid)])
        try:
            time.sleep(1.0)  # attached
            out = tb.store.dir / "got"
            url = f"http://{tb.addresses.service_address}/dir0/class3_8"
            tb.run("client", ["curl", "-sf", "-o", str(out), url], check=True, timeout=30)
            time.sleep(0.5)
        finally:
            tracer.terminate()
            tracer.wait(10)
        body = (Path(tb.store.dir) / "docroot" / "dir0" / "class3_8").read_bytes()
        assert len(body) == 900 * 1024 and out.read_bytes() == body
        zero_copy, copied = 0, []
        for line in trace.read_text().splitlines():
            m = re.search(r"^\d+\s+(write|writev|send|sendto|sendmsg)\(.*\)\s+=\s+(\d+)$", line)
            if not m:
                continue
            if "MSG_ZEROCOPY" in line:
                zero_copy += int(m.group(2))
            else:
                copied.append(int(m.group(2)))
        assert zero_copy >= len(body), trace.read_text()[-2000:]
        # what else it wrote: doorbells, its stats file, the head at most; not the body
        assert max(copied, default=0) < 8192 and sum(copied) < 64 * 1024, copied

        # every file of the document root with curl, over one keep-alive connection
        docroot = Path(tb.store.dir) / "docroot"
        files = json.loads((docroot / "manifest.json").read_text())["files"]
        got = tb.store.dir / "curl"
        got.mkdir()
        base = f"http://{tb.addresses.service_address}"
        args = [a for i, f in enumerate(files) for a in ("-o", str(got / str(i)), base + f["path"])]
        tb.run("client", ["curl", "-sf", *args], check=True, timeout=60)
        for i, f in enumerate(files):
            assert (got / str(i)).read_bytes() == (docroot / f["path"][1:]).read_bytes(), f["path"]

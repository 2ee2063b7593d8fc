"""The host web application on kernel sockets (regular mode) and the document root."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import uvloop

from testbed.app import server as app_server
from testbed.app.docroot import CLASS_BASE, generate
from testbed.app.server import App, HttpProtocol, burn_cpu, serve_regular
from testbed.offload.modes import OFFLOADED_MODES

from .offload_helpers import free_port, http_get, offload_stack


@pytest.fixture(scope="module")
def docroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tcps-app")
    generate(root, seed=3, dirs=1)
    return root


def test_docroot_deterministic_and_specweb_sizes(tmp_path: Path, docroot: Path) -> None:
    m1 = generate(tmp_path / "a", seed=3, dirs=1)
    m2 = json.loads((docroot / "manifest.json").read_text())
    assert m1 == m2 and m1["seed"] == 3 and len(m1["files"]) == 36
    sizes = {f["path"]: f["size"] for f in m1["files"]}
    assert sizes["/dir0/class0_0"] == CLASS_BASE[0] and sizes["/dir0/class3_8"] == 9 * CLASS_BASE[3]
    for f in m1["files"]:
        data = (docroot / f["path"][1:]).read_bytes()
        assert len(data) == f["size"] and hashlib.sha256(data).hexdigest() == f["sha256"]
    other = generate(tmp_path / "b", seed=4, dirs=1)
    assert other["files"][0]["sha256"] != m1["files"][0]["sha256"]


def test_docroot_cli(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "testbed.app.docroot", str(tmp_path / "d"), "--seed", "5",
                        "--dirs", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "d/manifest.json").read_text())["seed"] == 5


def test_regular_mode_http(docroot: Path) -> None:
    async def main() -> None:
        port = free_port()
        app = App(docroot)
        srv = await serve_regular(app, "127.0.0.1", port)
        try:
            manifest = json.loads((docroot / "manifest.json").read_text())
            res = await asyncio.gather(*(http_get(port, f["path"]) for f in manifest["files"]))
            for f, (status, headers, body) in zip(manifest["files"], res):
                assert status == 200 and body == (docroot / f["path"][1:]).read_bytes()
                assert headers["connection"] == "close"
            status, headers, body = await http_get(port, "/manifest.json")
            assert headers["content-type"] == "application/json" and json.loads(body) == manifest
            status, headers, body = await http_get(port, "/dir0/class1_0", method="HEAD")
            assert status == 200 and body == b"" and headers["content-length"] == "1024"
            for path in ("/nope", "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/dir0/../../x", "/"):
                assert (await http_get(port, path))[0] == 404, path
            assert (await http_get(port, "/x", method="POST"))[0] == 405
            assert (await http_get(port, "/dynamic?cost_us=abc"))[0] == 400
            status, _, body = await http_get(port, "/dynamic?cost_us=500")
            assert status == 200 and b"cost_us=500" in body
            # keep-alive by default in HTTP/1.1; malformed request -> 400 and close
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /dir0/class0_0 HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await r.readuntil(b"\r\n\r\n")
            assert b"keep-alive" in head
            await r.readexactly(102)
            w.write(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
            assert (await asyncio.wait_for(r.read(), 5)).startswith(b"HTTP/1.1 400")
            w.close()
        finally:
            srv.close()

    uvloop.run(main())


def test_burn_cpu_costs_cpu_time() -> None:
    t0 = time.thread_time()
    burn_cpu(20_000)
    assert 0.019 <= time.thread_time() - t0 < 0.2


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "testbed.app.server", "--docroot", str(tmp_path / "none"),
                        "--listen", "127.0.0.1:1"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "not a directory" in r.stderr
    r = subprocess.run([sys.executable, "-m", "testbed.app.server", "--docroot", str(tmp_path),
                        "--mode", "split"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--tunnel" in r.stderr


def test_many_spellings_of_one_file_are_cached_once(docroot: Path) -> None:
    """3,000 spellings of one path ("//dir0/./class1_3", "%64ir0/...") share one entry:
    the file is read and charged once (a copy per spelling was 55 kB each), and the request
    paths that point at it are capped in number and length. What the process holds is
    measured in tests/test_hostile_clients.py (its RSS)."""
    app = App(docroot)
    full = app.lookup(b"/dir0/class1_3")
    left = app.cache_left
    spellings = [b"/" * (k % 200 + 1) + b"./" * (k // 200) + b"dir0/class1_3" for k in range(2_000)]
    spellings += [b"/%64ir0" + b"/." * k + b"/class1_3" for k in range(1_000)]
    assert len(set(spellings)) == 3_000
    for s in spellings:
        assert app.lookup(s) is full
    assert len(app.files) == 1 and app.cache_left == left  # one copy, charged once
    assert 0 < len(app.cache) <= app_server.MAX_ALIASES
    assert all(len(k) <= app_server.MAX_ALIAS_BYTES for k in app.cache)


def _live_protocols() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is HttpProtocol)


async def _exchange(port: int, request: bytes) -> bytes:
    """One request on a new connection: everything the app sends until its FIN."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(request)
        return await asyncio.wait_for(r.read(), 10)
    finally:
        w.close()


@pytest.mark.parametrize("mode", ["regular", *OFFLOADED_MODES])
def test_request_line_past_8_kib_gets_414_and_connections_are_freed_at_once(mode: str, docroot: Path) -> None:
    """A request line of 8 KiB is served and one byte more gets 414, at once or in pieces,
    in every mode; the app ends its side after the answer. And a closed connection is freed
    by reference counting, with the garbage collector off: it once waited for the
    collector (parser and protocol hold each other), and 3,000 long request lines then
    held 40 MB of the process."""
    def line(url_len: int) -> bytes:
        url = b"/" * (url_len - len(b"dir0/class0_0")) + b"dir0/class0_0"
        return b"GET " + url + b" HTTP/1.1\r\n"

    assert len(line(8192 - 15)) == 8192  # server.MAX_REQUEST_LINE

    async def check(port: int) -> None:
        reply = await _exchange(port, line(8192 - 15) + b"Connection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200") and len(reply) > 102, reply[:40]
        reply = await _exchange(port, line(8192 - 14) + b"Connection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 414 URI Too Long\r\n"), reply[:40]
        reply = await _exchange(port, line(23_000) + b"Host: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 414"), reply[:40]
        long = line(12_000)  # in 1 KiB pieces: 414 once past the bound, the rest dropped
        reply = await _dribble(port, [long[i:i + 1024] for i in range(0, len(long), 1024)] + [b"\r\n"], 0.005)
        assert reply.startswith(b"HTTP/1.1 414") and reply.count(b"HTTP/1.1") == 1, reply[:40]
        # long spellings, eight connections at a time, with the collector off
        base = _live_protocols()
        for k in range(0, 200, 8):
            replies = await asyncio.gather(*(
                _exchange(port, line(2_000 + 30 * (k + i)) + b"Connection: close\r\n\r\n") for i in range(8)))
            assert all(r.startswith(b"HTTP/1.1 200") for r in replies)
        for _ in range(100):  # the last connection_lost calls (split: after CLOSE_DONE)
            if _live_protocols() <= base:
                break
            await asyncio.sleep(0.02)
        assert _live_protocols() <= base, f"{_live_protocols() - base} closed connections not freed"

    async def main() -> None:
        if mode == "regular":
            port = free_port()
            srv = await serve_regular(App(docroot), "127.0.0.1", port)
            try:
                await check(port)
            finally:
                srv.close()
        else:
            async with offload_stack(mode, docroot) as (_, _, port):
                await check(port)

    gc.collect()
    gc.disable()
    try:
        uvloop.run(main())
    finally:
        gc.enable()


async def _dribble(port: int, pieces: list[bytes], gap: float) -> bytes:
    """Send ``pieces`` with ``gap`` seconds between them, as a slow client, stopping when the
    server closes; everything the server sent until its EOF."""
    import socket
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.setblocking(False)
    await loop.sock_connect(s, ("127.0.0.1", port))
    got = b""
    try:
        for piece in pieces:
            try:
                await loop.sock_sendall(s, piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            await asyncio.sleep(gap)
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            got += chunk
            if not chunk:
                break
        while True:  # the rest, until the server closes
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(s, 65536), 10)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        s.close()
    return got


def test_slow_oversized_and_pipelining_clients_are_bounded(docroot: Path) -> None:
    """A request not finished within the header deadline gets 408; one whose headers grow
    past 32 KiB gets 431 (24 KiB are served); a client pipelining 4 MB of requests without
    reading costs the application a bounded amount of memory (it stops reading that
    client), and others are still served."""
    import resource
    import socket

    async def main() -> None:
        loop = asyncio.get_running_loop()
        port = free_port()
        app = App(docroot, header_timeout=2.0)
        loop.call_later(1.0, app.sweep, loop)
        srv = await serve_regular(app, "127.0.0.1", port)
        try:
            # a byte every 0.3 s: 408 within the deadline plus the sweep's second
            t0 = loop.time()
            reply = await _dribble(port, [bytes([c]) for c in b"GET /dir0/cl"], 0.3)
            assert reply.startswith(b"HTTP/1.1 408"), reply[:40]
            assert loop.time() - t0 < 6
            # headers past 32 KiB, in pieces: 431 and close
            reply = await _dribble(port, [b"GET /dir0/class0_0 HTTP/1.1\r\nHost: x\r\n"]
                                   + [b"X-Pad: " + b"a" * 8000 + b"\r\n"] * 20, 0.01)
            assert reply.startswith(b"HTTP/1.1 431") and reply.count(b"HTTP/1.1") == 1, reply[:40]
            reply = await _dribble(port, [b"GET /dir0/class0_0 HTTP/1.1\r\nConnection: close\r\n"]
                                   + [b"X-Pad: " + b"a" * 8000 + b"\r\n"] * 3 + [b"\r\n"], 0.01)
            assert reply.startswith(b"HTTP/1.1 200"), reply[:40]
            # 4 MB of pipelined requests, replies never read
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.setblocking(False)
            req = b"GET /dir0/class1_3 HTTP/1.1\r\nHost: x\r\n\r\n"
            blob = req * (4 * 1024 * 1024 // len(req))
            sent = 0
            while sent < len(blob):
                try:
                    await asyncio.wait_for(loop.sock_sendall(s, blob[sent:sent + 65536]), 2)
                    sent += 65536
                except asyncio.TimeoutError:
                    break  # the application stopped reading us: the bound
            await asyncio.sleep(1)
            grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
            assert grown_mb < 48, grown_mb  # unbounded: a 4 KiB reply per request, ~400 MB
            status, _, body = await http_get(port, "/dir0/class0_0")
            assert status == 200 and body == (docroot / "dir0/class0_0").read_bytes()
            s.close()
        finally:
            srv.close()

    uvloop.run(main())

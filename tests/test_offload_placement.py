"""Function placement in the TCP server, on loopback: the same bytes as the host app."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
import uvloop

from testbed.app.docroot import generate
from testbed.offload.modes import OFFLOADED_MODES
from testbed.offload.placement import parse_head

from .offload_helpers import http_get, offload_stack


@pytest.fixture(scope="module")
def docroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tcps-docroot-place")
    generate(root, seed=5, dirs=1)
    return root


def run(coro):
    return uvloop.run(coro)


async def raw(port: int, data: bytes, timeout: float = 5.0, half_close: bool = False) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(data)
        if half_close:
            w.write_eof()
        out = b""
        while True:
            chunk = await asyncio.wait_for(r.read(65536), timeout)
            if not chunk:
                return out
            out += chunk
    finally:
        w.close()


def host_requests(tunnels) -> int:
    return sum(t.counters()["frames_received"].get("CONN_NEW", 0) + t.counters()["frames_received"].get("ACCEPTED", 0)
               for t in tunnels)


@pytest.mark.parametrize("mode", OFFLOADED_MODES)
def test_share_one_answers_every_file_itself_byte_exact(mode: str, docroot: Path) -> None:
    files = json.loads((docroot / "manifest.json").read_text())["files"]

    async def main() -> None:
        async with offload_stack(mode, docroot, serve_static=str(docroot), placement_share=1.0) as (srv, tunnels, port):
            for f in files:
                status, headers, body = await http_get(port, f["path"])
                assert status == 200 and body == (docroot / f["path"][1:]).read_bytes(), f["path"]
                assert headers["server"] == "tcps-app" and headers["connection"] == "close"
                assert headers["content-length"] == str(f["size"])
            st = srv.stats()
            assert st["placed_requests"] == len(files)
            assert st["placed_bytes"] > sum(f["size"] for f in files)
            assert st["eager_accepts"] == 0 and host_requests(tunnels) == 0, "no connection reached the host"
            # not cached: the connection goes to the host, bytes read so far included
            status, _, body = await http_get(port, "/dynamic?cost_us=10")
            assert status == 200 and body.startswith(b"dynamic")
            status, _, _ = await http_get(port, "/nope")
            assert status == 404
            assert srv.stats()["placement_handoffs"] == 2

    run(main())


def test_responses_identical_to_the_host_app(docroot: Path) -> None:
    """HTTP/1.0 and 1.1, GET and HEAD, query strings: byte-for-byte the host's answer."""
    requests = [b"GET /dir0/class1_2 HTTP/1.0\r\n\r\n",
                b"GET /dir0/class3_0?x=1 HTTP/1.0\r\nHost: a\r\n\r\n",
                b"HEAD /dir0/class0_1 HTTP/1.0\r\n\r\n",
                b"GET /dir0/class2_4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"]

    async def answers(share: float) -> list[bytes]:
        async with offload_stack("eager-accept", docroot, serve_static=str(docroot),
                                 placement_share=share) as (srv, tunnels, port):
            out = [await raw(port, r) for r in requests]
            assert srv.stats()["placed_requests"] == (len(requests) if share else 0)
            return out

    assert run(answers(1.0)) == run(answers(0.0))


def test_keepalive_pipelined_then_dynamic_hands_the_rest_to_the_host(docroot: Path) -> None:
    body0 = (docroot / "dir0/class0_0").read_bytes()
    body1 = (docroot / "dir0/class1_0").read_bytes()

    async def main() -> None:
        async with offload_stack("eager-accept", docroot, serve_static=str(docroot),
                                 placement_share=1.0) as (srv, tunnels, port):
            data = (b"GET /dir0/class0_0 HTTP/1.1\r\nHost: a\r\n\r\n"
                    b"HEAD /dir0/class1_0 HTTP/1.1\r\nHost: a\r\n\r\n"
                    b"GET /dynamic?cost_us=5 HTTP/1.1\r\nHost: a\r\n\r\n"
                    b"GET /dir0/class1_0 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            out = await raw(port, data)
            assert out.count(b"HTTP/1.1 200 OK") == 4
            assert out.index(body0) < out.index(b"dynamic cost_us=5") < out.index(body1)
            assert out.count(b"Connection: keep-alive") == 3
            st = srv.stats()
            assert st["placed_requests"] == 2 and st["placement_handoffs"] == 1
            assert host_requests(tunnels) == 1

    run(main())


def test_partial_requests_timeouts_and_eof(docroot: Path) -> None:
    async def main() -> None:
        async with offload_stack("eager-accept", docroot, serve_static=str(docroot),
                                 placement_share=1.0) as (srv, tunnels, port):
            # a request in pieces is still answered here
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /dir0/cla")
            await asyncio.sleep(0.01)
            w.write(b"ss0_1 HTTP/1.0\r\n\r\n")
            out = await asyncio.wait_for(r.read(), 5)
            w.close()
            assert out.endswith((docroot / "dir0/class0_1").read_bytes())
            # POST (a body) and a silent client that half-closes go to the host
            out = await raw(port, b"POST /dir0/class0_1 HTTP/1.0\r\nContent-Length: 2\r\n\r\nab")
            assert out.startswith(b"HTTP/1.1 405")
            out = await raw(port, b"", half_close=True)
            assert out == b""
            # a silent client is handed over after the hold (setup_wait), then served by the host
            r, w = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(0.2)
            w.write(b"GET /dir0/class0_2 HTTP/1.0\r\n\r\n")
            out = await asyncio.wait_for(r.read(), 5)
            w.close()
            assert out.endswith((docroot / "dir0/class0_2").read_bytes())
            st = srv.stats()
            assert st["placed_requests"] == 1 and st["placement_handoffs"] == 3

    run(main())


def test_share_from_the_control_file_and_half_share(docroot: Path, tmp_path: Path) -> None:
    ctl = tmp_path / "placement.json"
    ctl.write_text(json.dumps({"share": 0.0}))

    async def main() -> None:
        async with offload_stack("setup-with-accept", docroot, serve_static=str(docroot),
                                 placement_file=ctl) as (srv, tunnels, port):
            await asyncio.sleep(0.15)
            assert srv.place.share == 0.0
            for _ in range(20):
                await http_get(port, "/dir0/class0_0")
            assert srv.stats()["placed_requests"] == 0
            tmp = ctl.with_name("p.tmp")
            tmp.write_text(json.dumps({"share": 0.5}))
            os.replace(tmp, ctl)
            await asyncio.sleep(0.25)
            assert srv.place.share == 0.5
            for _ in range(200):
                status, _, _ = await http_get(port, "/dir0/class0_0")
                assert status == 200
            placed = srv.stats()["placed_requests"]
            assert 60 < placed < 140, placed
            ctl.write_text("not json")
            await asyncio.sleep(0.25)
            assert srv.place.share == 0.5 and srv.place.errors == 1

    run(main())


@pytest.mark.parametrize("head, expect", [
    (b"GET /a HTTP/1.0", (False, b"/a", False)),
    (b"GET /a?b HTTP/1.1\r\nHost: x", (False, b"/a", True)),
    (b"HEAD /a HTTP/1.1\r\nConnection: close", (True, b"/a", False)),
    (b"GET /a HTTP/1.0\r\nConnection: Keep-Alive", (False, b"/a", True)),
    (b"GET /a HTTP/1.1\r\nContent-Length: 0", (False, b"/a", True)),
    (b"POST /a HTTP/1.0", None), (b"GET /a HTTP/1.1\r\nContent-Length: 3", None),
    (b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked", None), (b"GET /a HTTP/2.0", None),
    (b"GET  /a HTTP/1.0", None), (b"GET http://x/a HTTP/1.0", None), (b"GET /a HTTP/1.0\r\nbad", None),
    (b"GET /a HTTP/1.1\r\nExpect: 100-continue", None), (b"GET /a HTTP/1.1\r\nConnection: Upgrade", None),
])
def test_parse_head(head: bytes, expect) -> None:
    assert parse_head(head) == expect

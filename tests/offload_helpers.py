"""Shared helpers for the offload tests: an in-process TCP server + host app on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
from pathlib import Path
from typing import AsyncIterator

from testbed.app.server import App, HttpProtocol
from testbed.offload import channels, hostsock
from testbed.offload.modes import get_mode
from testbed.offload.config import ServerConfig
from testbed.offload.daemon import TcpServer

TOKEN = "test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def offload_stack(mode: str, docroot: Path | None, hosts: int = 1, san: str | None = None,
                        app_kw: dict | None = None,
                        **cfg_kw) -> AsyncIterator[tuple[TcpServer, list[hostsock.Tunnel], int]]:
    port = free_port()
    san = san or f"tcp:127.0.0.1:{free_port()}"
    cfg = ServerConfig("127.0.0.1", port, channels.parse(san), get_mode(mode), TOKEN, **cfg_kw)
    srv = TcpServer(cfg)
    await srv.start()
    tunnels = []
    try:
        for i in range(hosts):
            app = App(docroot, **(app_kw or {}))
            t = await hostsock.open_tunnel(san, TOKEN, mode, f"h{i}")
            await t.create_server(lambda app=app: HttpProtocol(app), port)
            tunnels.append(t)
        yield srv, tunnels, port
    finally:
        for t in tunnels:
            t.close()
        await srv.close()
        await asyncio.sleep(0)


async def http_get(port: int, path: str, version: str = "1.0", timeout: float = 10.0,
                   method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(f"{method} {path} HTTP/{version}\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(r.read(), timeout)
    finally:
        w.close()
    return parse_response(data)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


# --- through a testbed's service address, from inside its client node --------------------

SERVICE = ("10.77.255.1", 80)


async def service_get(path: str) -> bytes:
    """GET one file over a new HTTP/1.0 connection; the body, after checking for 200."""
    r, w = await asyncio.open_connection(*SERVICE)
    try:
        w.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = await asyncio.wait_for(r.read(), 20)
    finally:
        w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), (path, head[:60])
    return body


async def fetch_every_file(concurrency: int = 60, rounds: int = 2, keepalive: bool = True) -> int:
    """Every file of the served manifest, byte-exact (size and sha256), ``rounds`` times over
    concurrent new connections, plus (with ``keepalive``) once over six persistent ones."""
    manifest = json.loads(await service_get("/manifest.json"))
    sem = asyncio.Semaphore(concurrency)

    async def one(f: dict) -> None:
        async with sem:
            body = await service_get(f["path"])
        assert len(body) == f["size"] and hashlib.sha256(body).hexdigest() == f["sha256"], f["path"]

    async def persistent(files: list[dict]) -> None:
        r, w = await asyncio.open_connection(*SERVICE)
        for f in files:
            w.write(f"GET {f['path']} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 20)
            n = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            body = await r.readexactly(n)
            assert hashlib.sha256(body).hexdigest() == f["sha256"], f["path"]
        w.close()

    files = manifest["files"]
    await asyncio.gather(*(one(f) for f in files * rounds),
                         *((persistent(files[i::6]) for i in range(6)) if keepalive else ()))
    return len(files)

"""Shared helpers for the offload tests: an in-process TCP server + host app on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import AsyncIterator

from testbed.app.server import App, HttpProtocol
from testbed.offload import channels, hostsock
from testbed.offload.modes import get_mode
from testbed.offload.server import ServerConfig, TcpServer

TOKEN = "test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def offload_stack(mode: str, docroot: Path, hosts: int = 1, san: str | None = None,
                        **cfg_kw) -> AsyncIterator[tuple[TcpServer, list[hostsock.Tunnel], int]]:
    port = free_port()
    san = san or f"tcp:127.0.0.1:{free_port()}"
    cfg = ServerConfig("127.0.0.1", port, channels.parse(san), get_mode(mode), TOKEN, **cfg_kw)
    srv = TcpServer(cfg)
    await srv.start()
    tunnels = []
    try:
        for i in range(hosts):
            app = App(docroot)
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

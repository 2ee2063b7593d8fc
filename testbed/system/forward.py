"""A TCP port of a node made reachable from the machine: ``127.0.0.1:LOCAL`` -> ``NODE:PORT``.

The machine's browser lives in the root network namespace and cannot reach a node's
addresses (nothing routes a testbed subnet through the machine, by design). Each accepted
connection gets a socket created *inside* the node's namespace (``kernel.in_netns``: a
socket stays in the namespace it was made in) connected to the node's own loopback, and
bytes are relayed both ways. Listens on loopback only: nothing outside the machine sees it.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from .kernel import in_netns

log = logging.getLogger(__name__)
_CHUNK = 65536


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, OSError):
            pass


def _connect_inside(netns: str, port: int) -> socket.socket:
    with in_netns(netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(5)
        s.connect(("127.0.0.1", port))  # the node's own loopback: the socket stays in its namespace
        s.setblocking(False)
        return s
    except OSError:
        s.close()
        raise


async def serve_forward(netns: str, port: int, local_port: int, ready: asyncio.Event | None = None) -> None:
    """Relay 127.0.0.1:local_port (root namespace) to port ``port`` on the node's loopback,
    until cancelled."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            inner = await asyncio.get_running_loop().run_in_executor(None, _connect_inside, netns, port)
        except OSError as e:
            log.warning("forward to %s:%d: %s", netns, port, e)
            writer.close()
            return
        r2, w2 = await asyncio.open_connection(sock=inner)
        await asyncio.gather(_pipe(reader, w2), _pipe(r2, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", local_port, reuse_address=True)
    if ready is not None:
        ready.set()
    async with server:
        await server.serve_forever()

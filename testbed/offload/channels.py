"""SAN channel transports between the TCP server and its hosts.

A channel spec is one of

- ``tcp:ADDR:PORT``  TCP over the SAN link (cluster, inic, multihost topologies);
- ``unix:PATH``      a filesystem Unix socket (smp: both processes in one node; filesystem
                     sockets are shared across network namespaces, abstract ones are not);
- ``shm:NAME``       beyond the paper (its memory-mapped channel): two single-producer,
                     single-consumer byte rings in a shared-memory file
                     ``/dev/shm/tcps-NAME-<pid>-<n>`` per channel, with a Unix socket
                     ``/dev/shm/tcps-NAME.sock`` for the handshake, wake-ups and liveness
                     (see ``testbed/offload/shmring.py`` and docs/protocol.md).

Both ends speak asyncio's Protocol interface over any of them, so the TCP server and the
host library do not know which one they use.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from typing import Callable

from .sockfiles import unlink_stale

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"


@dataclass(frozen=True)
class ChannelSpec:
    kind: str  # "tcp" | "unix" | "shm"
    host: str = ""
    port: int = 0
    path: str = ""  # unix socket path; for shm, the rendezvous socket

    def __str__(self) -> str:
        if self.kind == "tcp":
            return f"tcp:{self.host}:{self.port}"
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"shm:{self.name}"

    @property
    def name(self) -> str:
        """The shm channel's name, i.e. the part after ``shm:``."""
        return os.path.basename(self.path)[: -len(".sock")]


def parse(spec: str) -> ChannelSpec:
    """Parse ``tcp:ADDR:PORT``, ``unix:PATH`` or ``shm:NAME``; ValueError says what is wrong."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"channel {spec!r}: expected tcp:ADDR:PORT, unix:PATH or shm:NAME")
    if kind == "tcp":
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(f"channel {spec!r}: expected tcp:ADDR:PORT, e.g. tcp:10.77.1.1:7000")
        return ChannelSpec("tcp", host=host.strip("[]"), port=int(port))
    if kind == "unix":
        return ChannelSpec("unix", path=rest)
    if kind == "shm":
        if "/" in rest or not rest.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"channel {spec!r}: shm names are letters, digits, - and _ only")
        name = rest if rest.startswith("tcps-") else f"tcps-{rest}"
        return ChannelSpec("shm", path=os.path.join(SHM_DIR, f"{name}.sock"))
    raise ValueError(f"channel {spec!r}: unknown kind {kind!r}; use tcp, unix or shm")


def _tune(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        # Frames are batched per loop iteration already; Nagle would only add delay.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def serve(spec: ChannelSpec, factory: Callable[[], asyncio.Protocol],
                area_bytes: int = 0) -> asyncio.AbstractServer:
    """Listen for hosts on ``spec``; each accepted channel gets ``factory()``; over shm,
    ``area_bytes`` of send area per host for zero-copy sends (zerocopy.py)."""
    loop = asyncio.get_running_loop()
    if spec.kind == "tcp":
        return await loop.create_server(factory, spec.host, spec.port, reuse_address=True, backlog=128)
    if spec.kind == "unix":
        unlink_stale(spec.path)
        srv = await loop.create_unix_server(factory, spec.path, backlog=128)
        os.chmod(spec.path, 0o600)  # only root (the testbed) may attach
        return srv
    from . import shmring
    return await shmring.serve(spec.path, spec.name, factory, area_bytes=area_bytes)


async def connect(spec: ChannelSpec, factory: Callable[[], asyncio.Protocol]) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
    loop = asyncio.get_running_loop()
    if spec.kind == "tcp":
        tr, pr = await loop.create_connection(factory, spec.host, spec.port)
        _tune(tr)
        return tr, pr
    if spec.kind == "unix":
        return await loop.create_unix_connection(factory, spec.path)
    from . import shmring
    return await shmring.connect(spec.path, factory)


def tune_accepted(transport: asyncio.BaseTransport) -> None:
    _tune(transport)

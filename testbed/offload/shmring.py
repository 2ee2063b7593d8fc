"""The ``shm:NAME`` SAN channel: shared-memory byte rings, eventfd doorbells, a Unix socket
for the handshake and liveness.

Beyond the paper's SAN, this is its "memory-mapped" channel for the smp architecture:
the TCP server and the host application are two processes on one machine, so the frame
stream need not pass through the kernel's socket buffers at all.

How it works (docs/protocol.md has the layout):

- The server listens on a ``SOCK_SEQPACKET`` Unix socket ``/dev/shm/tcps-NAME.sock``
  (0600: only root, i.e. the testbed, attaches; filesystem sockets and /dev/shm are shared
  across network namespaces).
- Per accepted host it creates ``/dev/shm/tcps-NAME-<pid>-<n>``: a 4 KiB header page and
  two single-producer/single-consumer rings of ``cap`` bytes (a power of two, 4 MiB by
  default), one per direction, and, when the TCP server sends without copying
  (``--zero-copy``), the host's send area after them (``zerocopy.py``). It passes the open file to the host with SCM_RIGHTS and
  unlinks it at once: the mapping lives while either side has it, and no file is left
  behind even if both processes are killed (``testbed clean`` removes ``/dev/shm/tcps-*``
  for the case of a crash inside the handshake).
- The server also makes two eventfds, one per direction, and passes them with the file:
  the doorbells (``shmtransport.py`` moves the bytes and rings them).
- Frames go through the rings. A writer rings only when the reader said it is going to sleep (a ``data_wanted`` flag it sets
  after finding its ring empty, and re-checks after, so no wake-up is lost), and a reader
  rings when the writer said it waits for space (``space_wanted``). Under load both sides
  are awake and no doorbell crosses. A process that polls (``polling.PollingPacer``,
  ``--poll-us``) reads its rings at every tick instead: it sets neither flag while it
  polls, so its peer never rings it, and it arms ``data_wanted`` only before its pacer
  sleeps (``arm_doorbell``). With both sides polling, frames cross with no system call
  at all. The socket's EOF is the liveness signal: the peer's
  process is gone (or closed the channel) and the channel is dropped after the ring's
  remaining bytes are delivered.

Memory ordering and the native copies: ``shmtransport.py``.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import socket
import stat
import struct
from typing import Callable

from .shmtransport import (  # noqa: F401  (the channel's layout, for its users and tests)
    CONTROL,
    DATA_WANTED,
    HEAD,
    HEADER,
    SPACE_WANTED,
    TAIL,
    ShmTransport,
    check_arch,
)
from .sockfiles import unlink_stale

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
MAGIC = b"TCPSRING"
VERSION = 2  # 2: the send area
DEFAULT_RING_BYTES = 4 << 20
_HELLO = struct.Struct("<8sIIQ")  # magic, version, send area bytes, capacity (then the file name)
HANDSHAKE_TIMEOUT = 5.0
_EFD_FLAGS = os.EFD_NONBLOCK | os.EFD_CLOEXEC


class ShmServer(asyncio.AbstractServer):
    """The rendezvous socket; each accepted host gets its own ring file and transport."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str, name: str,
                 factory: Callable[[], asyncio.BaseProtocol], ring_bytes: int, area_bytes: int) -> None:
        self._loop = loop
        self.path = path
        self.name = name
        self._factory = factory
        self.ring_bytes = ring_bytes
        self.area_bytes = area_bytes
        self._n = 0
        self._lsock: socket.socket | None = None
        self._ino = 0

    def _listen(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            s.bind(self.path)
            os.chmod(self.path, 0o600)  # only root (the testbed) may attach
            s.listen(128)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self._ino = os.stat(self.path).st_ino
        self._lsock = s
        self._loop.add_reader(s.fileno(), self._on_accept)

    def _on_accept(self) -> None:
        assert self._lsock is not None
        for _ in range(16):
            try:
                conn, _ = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("shm channel %s: accept failed: %s", self.name, e)
                return
            try:
                mm, area, ring, bells = self._make_ring(conn)
            except OSError as e:
                log.warning("shm channel %s: ring setup failed: %s; connection dropped", self.name, e)
                conn.close()
                continue
            tr = ShmTransport(self._loop, conn, mm, self.ring_bytes, "server", self._factory(), ring, bells, area)
            tr._start()

    def _make_ring(self, conn: socket.socket) -> tuple[mmap.mmap, mmap.mmap | None, str, tuple[int, int]]:
        self._n += 1
        ring = f"{self.name}-{os.getpid()}-{self._n}"
        path = os.path.join(SHM_DIR, ring)
        size = HEADER + 2 * self.ring_bytes + self.area_bytes
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size - self.area_bytes)
            area = _map_area(fd, self.ring_bytes, self.area_bytes)
            try:
                hello = _HELLO.pack(MAGIC, VERSION, self.area_bytes, self.ring_bytes)
                mm[:_HELLO.size] = hello
                conn.setblocking(False)
                to_host, to_server = os.eventfd(0, _EFD_FLAGS), os.eventfd(0, _EFD_FLAGS)
                try:
                    socket.send_fds(conn, [hello + ring.encode()], [fd, to_host, to_server])
                except BaseException:
                    os.close(to_host)
                    os.close(to_server)
                    raise
            except BaseException:
                mm.close()
                if area is not None:
                    area.close()
                raise
        finally:
            os.unlink(path)  # both ends hold it now (the fd in flight counts): nothing to leak
            os.close(fd)
        return mm, area, ring, (to_host, to_server)

    # asyncio.AbstractServer
    def close(self) -> None:
        if self._lsock is None:
            return
        self._loop.remove_reader(self._lsock.fileno())
        self._lsock.close()
        self._lsock = None
        try:
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except OSError:
            pass

    async def wait_closed(self) -> None:
        return None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._lsock is not None

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._lsock,) if self._lsock is not None else ()

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        while self._lsock is not None:
            await asyncio.sleep(3600)


async def serve(path: str, name: str, factory: Callable[[], asyncio.BaseProtocol],
                ring_bytes: int = DEFAULT_RING_BYTES, area_bytes: int = 0) -> ShmServer:
    """Listen on ``path`` (``/dev/shm/tcps-NAME.sock``); ring files are ``/dev/shm/NAME-*``.
    ``area_bytes``: each host's send area for zero-copy sends (0: none)."""
    check_arch()
    for what, n in (("ring", ring_bytes), ("send area", area_bytes)):
        if (n < 4096 or n & (n - 1)) and (n or what == "ring"):
            raise ValueError(f"shm {what} size {n}: a power of two of at least 4096 bytes")
    unlink_stale(path, socket.SOCK_SEQPACKET)
    srv = ShmServer(asyncio.get_running_loop(), path, name, factory, ring_bytes, area_bytes)
    srv._listen()
    return srv


async def connect(path: str, factory: Callable[[], asyncio.BaseProtocol],
                  timeout: float = HANDSHAKE_TIMEOUT) -> tuple[ShmTransport, asyncio.BaseProtocol]:
    """Attach to the server at ``path``: get the ring file, map it, wrap it as a Transport."""
    check_arch()
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, path), timeout)
        ready = loop.create_future()
        loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, timeout)
        finally:
            loop.remove_reader(sock.fileno())
        msg, fds, _, _ = socket.recv_fds(sock, 4096, 4)
        ring_fd, bells = _take_fds(fds, path)
        try:
            if not msg:
                raise ConnectionError(f"shm channel {path}: the server closed during the handshake")
            mm, cap, ring, area = _map_ring(ring_fd, msg, path)
        except BaseException:
            for fd in {*bells} - {-1}:
                os.close(fd)
            raise
        finally:
            os.close(ring_fd)
    except BaseException:
        sock.close()
        raise
    protocol = factory()
    tr = ShmTransport(loop, sock, mm, cap, "host", protocol, ring, bells, area)
    tr._start()
    return tr, protocol


def _take_fds(fds: list[int], path: str) -> tuple[int, tuple[int, int]]:
    """The ring file and the doorbells (we ring, the server rings; -1 without eventfds)."""
    if not fds:
        raise OSError(f"shm channel {path}: the server sent no ring file")
    if len(fds) != 3:
        for extra in fds[1:]:
            os.close(extra)
        return fds[0], (-1, -1)
    return fds[0], (fds[2], fds[1])


def _map_area(fd: int, cap: int, area_bytes: int) -> mmap.mmap | None:
    """The send area, a mapping of its own: views of it may outlive the rings' mapping (a
    client socket's queued zero-copy send), and an mmap with views cannot be closed."""
    return mmap.mmap(fd, area_bytes, offset=HEADER + 2 * cap) if area_bytes else None


def _map_ring(fd: int, msg: bytes, path: str) -> tuple[mmap.mmap, int, str, mmap.mmap | None]:
    if len(msg) < _HELLO.size:
        raise OSError(f"shm channel {path}: short handshake ({len(msg)} bytes)")
    magic, version, area_bytes, cap = _HELLO.unpack_from(msg)
    if magic != MAGIC or version != VERSION:
        raise OSError(f"shm channel {path}: not a version-{VERSION} TCP-server ring ({magic!r} v{version})")
    if cap < 4096 or cap & (cap - 1) or cap > 1 << 30:
        raise OSError(f"shm channel {path}: bad ring capacity {cap}")
    if area_bytes & (area_bytes - 1) or area_bytes > 1 << 30:
        raise OSError(f"shm channel {path}: bad send area size {area_bytes}")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != HEADER + 2 * cap + area_bytes:
        raise OSError(f"shm channel {path}: the ring file has {st.st_size} bytes, expected "
                      f"{HEADER + 2 * cap + area_bytes}")
    mm = mmap.mmap(fd, HEADER + 2 * cap)
    if mm[:_HELLO.size] != msg[:_HELLO.size]:
        mm.close()
        raise OSError(f"shm channel {path}: the ring file's header does not match the handshake")
    return mm, cap, msg[_HELLO.size:].decode(errors="replace"), _map_area(fd, cap, area_bytes)

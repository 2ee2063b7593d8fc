"""The ``shm:NAME`` SAN channel: shared-memory byte rings with a Unix socket as doorbell.

Beyond the paper's SAN, this is its "memory-mapped" channel for the smp architecture:
the TCP server and the host application are two processes on one machine, so the frame
stream need not pass through the kernel's socket buffers at all.

How it works (docs/protocol.md has the layout):

- The server listens on a ``SOCK_SEQPACKET`` Unix socket ``/dev/shm/tcps-NAME.sock``
  (0600: only root, i.e. the testbed, attaches; filesystem sockets and /dev/shm are shared
  across network namespaces).
- Per accepted host it creates ``/dev/shm/tcps-NAME-<pid>-<n>``: a 4 KiB header page and
  two single-producer/single-consumer rings of ``cap`` bytes (a power of two, 4 MiB by
  default), one per direction. It passes the open file to the host with SCM_RIGHTS and
  unlinks it at once: the mapping lives while either side has it, and no file is left
  behind even if both processes are killed (``testbed clean`` removes ``/dev/shm/tcps-*``
  for the case of a crash inside the handshake).
- Frames go through the rings. The socket carries only one-byte doorbells: a writer
  rings only when the reader said it is going to sleep (a ``data_wanted`` flag it sets
  after finding its ring empty, and re-checks after, so no wake-up is lost), and a reader
  rings when the writer said it waits for space (``space_wanted``). Under load both sides
  are awake and no doorbell crosses. A process that polls (``polling.PollingPacer``,
  ``--poll-us``) reads its rings at every tick instead: it sets neither flag while it
  polls, so its peer never rings it, and it arms ``data_wanted`` only before its pacer
  sleeps (``arm_doorbell``). With both sides polling, frames cross with no system call
  at all. The socket's EOF is the liveness signal: the peer's
  process is gone (or closed the channel) and the channel is dropped after the ring's
  remaining bytes are delivered.

Memory ordering: counters are aligned 8-byte words written with single stores (through
``memoryview.cast("Q")``); data is copied before the counter that publishes it. On
x86-64 (TSO) that orders data against counters; the flag/counter hand-off (Dekker's
pattern) additionally needs a full fence, which a lock acquire/release gives (a locked
instruction). Other architectures are refused with a clear error: use ``unix:PATH``.

With the native module (``native.py``) the copies in and out of a ring, their counter
updates and the fence are one C call each (``_native.put``/``take``/``fence``, atomic
acquire/release and a sequentially consistent fence); the Python code below stays the
reference, and both leave the same bytes in the ring (tests/test_native.py).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import mmap
import os
import platform
import socket
import stat
import struct
import threading
from typing import Any, Callable

from .native import NATIVE
from .polling import pacer_of
from .sockfiles import unlink_stale
from .transport import StreamTransport

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
MAGIC = b"TCPSRING"
VERSION = 1
DEFAULT_RING_BYTES = 4 << 20
HEADER = 4096  # header page: magic, version, capacity, the two rings' control blocks
CONTROL = (128, 384)  # control block of ring 0 (server -> host) and ring 1 (host -> server)
# 8-byte words inside a control block; producer-written words share one cache line,
# consumer-written words another.
HEAD, SPACE_WANTED, TAIL, DATA_WANTED = 0, 1, 8, 9
_HELLO = struct.Struct("<8sIIQ")  # magic, version, reserved, capacity (then the file name)
HANDSHAKE_TIMEOUT = 5.0

_fence_lock = threading.Lock()


def _fence_python() -> None:
    """A full memory barrier: an uncontended lock is a locked instruction on x86-64."""
    _fence_lock.acquire()
    _fence_lock.release()


_fence = NATIVE.fence if NATIVE is not None else _fence_python
_put_native = NATIVE.put if NATIVE is not None else None
_take_native = NATIVE.take if NATIVE is not None else None


class _Corrupt(ValueError):
    """Ring counters that no well-behaved peer writes."""


def _check_arch() -> None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise OSError(f"the shm channel relies on x86-64 memory ordering; this machine is "
                      f"{platform.machine()}: use a unix:PATH channel")


class ShmTransport(StreamTransport):
    """An asyncio Transport over a pair of shared-memory rings and a doorbell socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, mm: mmap.mmap,
                 cap: int, side: str, protocol: asyncio.BaseProtocol, ring_name: str) -> None:
        super().__init__({"peername": ring_name, "sockname": ring_name, "shm_ring": ring_name,
                          "shm_ring_bytes": cap})
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._mm = mm
        self._mv = memoryview(mm)
        self._w = self._mv[:HEADER].cast("Q")
        self._cap = cap
        self._mask = cap - 1
        tx = 0 if side == "server" else 1
        rx = 1 - tx
        self._tx_base = HEADER + tx * cap
        self._rx_base = HEADER + rx * cap
        t, r = CONTROL[tx] // 8, CONTROL[rx] // 8
        self._tx_head_i, self._tx_space_i = t + HEAD, t + SPACE_WANTED  # ours
        self._tx_tail_i, self._tx_wait_i = t + TAIL, t + DATA_WANTED  # the peer's
        self._rx_head_i, self._rx_space_i = r + HEAD, r + SPACE_WANTED  # the peer's
        self._rx_tail_i, self._rx_wait_i = r + TAIL, r + DATA_WANTED  # ours
        self._tx_head = self._w[self._tx_head_i]
        self._rx_tail = self._w[self._rx_tail_i]
        self._init_stream(protocol)
        self._backlog: collections.deque[memoryview] = collections.deque()
        self._blen = 0
        self._reading = True
        self._closing = False
        self._dead = False
        self._scheduled = False
        self._pacer = pacer_of(loop)  # set: this process polls its rings (no doorbell asked)
        self.bells_sent = 0
        self.bells_received = 0

    def _start(self) -> None:
        self._protocol.connection_made(self)
        if not self._dead:
            self._loop.add_reader(self._fd, self._on_bell)
            if self._pacer is not None:
                self._pacer.add_ring(self)
            self._schedule()

    # --- the rings --------------------------------------------------------------------
    def _put(self, data: memoryview) -> int:
        """Copy as much of ``data`` as fits into the send ring and publish it."""
        if _put_native is not None:
            n = _put_native(self._mm, self._tx_head_i * 8, self._tx_tail_i * 8, self._tx_base, self._cap,
                            self._tx_head, data)
            if n < 0:
                raise _Corrupt(f"send ring: tail {self._w[self._tx_tail_i]} against head {self._tx_head}")
            self._tx_head += n
            return n
        return self._put_python(data)

    def _put_python(self, data: memoryview) -> int:
        w = self._w
        head = self._tx_head
        used = head - w[self._tx_tail_i]
        if not 0 <= used <= self._cap:  # the peer wrote a tail we never reached
            raise _Corrupt(f"send ring: tail {w[self._tx_tail_i]} against head {head}")
        n = min(self._cap - used, len(data))
        if n <= 0:
            return 0
        pos = head & self._mask
        first = min(n, self._cap - pos)
        b = self._tx_base + pos
        mm = self._mm
        mm[b:b + first] = data[:first]
        if n > first:
            mm[self._tx_base:self._tx_base + n - first] = data[first:n]
        self._tx_head = head + n
        w[self._tx_head_i] = head + n
        return n

    def _published(self) -> None:
        """New data is in the send ring: ring the peer if it went to sleep."""
        _fence()
        w = self._w
        if w[self._tx_wait_i]:
            w[self._tx_wait_i] = 0
            self._bell()

    def _want_space(self) -> None:
        p = self._pacer
        if p is not None and not p.sleeping:
            return  # the next tick pushes the backlog again
        w = self._w
        w[self._tx_space_i] = 1
        _fence()
        if self._cap - (self._tx_head - w[self._tx_tail_i]) != 0:
            self._schedule()  # the reader freed space between our attempt and the flag

    def _drain(self) -> None:
        """Deliver what the peer wrote; sleep (data_wanted) only once the ring is empty."""
        w, cap = self._w, self._cap
        for _ in range(8):
            if not self._reading or self._closing or self._dead:
                return
            tail = self._rx_tail
            if _take_native is not None:
                data = _take_native(self._mm, self._rx_head_i * 8, self._rx_tail_i * 8, self._rx_base, cap, tail)
                if data:
                    self._rx_tail = tail + len(data)
                    if w[self._rx_space_i]:
                        w[self._rx_space_i] = 0
                        self._bell()
                    self._protocol.data_received(data)  # type: ignore[attr-defined]
                    continue
                if data is None:
                    head = w[self._rx_head_i]
                    self._fatal(OSError(f"shm ring {self.get_extra_info('shm_ring')}: corrupt counters "
                                        f"(head {head}, tail {tail}, capacity {cap})"))
                    return
            head = w[self._rx_head_i]
            if head == tail:
                p = self._pacer
                if p is not None and not p.sleeping:
                    return  # polled: the next tick looks again, the peer need not ring
                w[self._rx_wait_i] = 1
                _fence()
                head = w[self._rx_head_i]
                if head == tail:
                    return
                w[self._rx_wait_i] = 0
            n = head - tail
            if not 0 < n <= cap:  # a head behind our tail would deliver bytes twice
                self._fatal(OSError(f"shm ring {self.get_extra_info('shm_ring')}: corrupt counters "
                                    f"(head {head}, tail {tail}, capacity {cap})"))
                return
            pos = tail & self._mask
            first = min(n, cap - pos)
            b = self._rx_base + pos
            mm = self._mm
            if first == n:
                data = mm[b:b + n]
            else:
                data = mm[b:b + first] + mm[self._rx_base:self._rx_base + n - first]
            self._rx_tail = head
            w[self._rx_tail_i] = head
            _fence()
            if w[self._rx_space_i]:
                w[self._rx_space_i] = 0
                self._bell()
            self._protocol.data_received(data)  # type: ignore[attr-defined]
        self._schedule()  # more may be waiting: let the rest of the loop run first

    def _push_backlog(self) -> None:
        if self._dead:
            return
        self._w[self._tx_space_i] = 0
        pushed = False
        bl = self._backlog
        while bl:
            item = bl[0]
            n = self._put(item)
            if n:
                pushed = True
                self._blen -= n
            if n == len(item):
                bl.popleft()
            else:
                bl[0] = item[n:]
                break
        if pushed:
            self._published()
        if bl:
            self._want_space()
        elif self._closing:
            self._finish(None)
            return
        if self._wpaused and self._blen <= self._low:
            self._resume_writing()

    # --- polled by the pacer (polling.PolledRing) ------------------------------------------
    def poll(self) -> bool:
        if self._dead:
            return False
        w = self._w
        if w[self._rx_wait_i]:
            w[self._rx_wait_i] = 0  # awake again: the peer need not ring
        if w[self._rx_head_i] != self._rx_tail or self._backlog:
            self._service()
            return True
        return False

    def arm_doorbell(self) -> bool:
        if self._dead:
            return False
        w = self._w
        if self._backlog:
            w[self._tx_space_i] = 1
        w[self._rx_wait_i] = 1
        _fence()
        if w[self._rx_head_i] != self._rx_tail:
            return True
        return bool(self._backlog) and self._cap - (self._tx_head - w[self._tx_tail_i]) != 0

    def _schedule(self) -> None:
        if not self._scheduled and not self._dead:
            self._scheduled = True
            self._loop.call_soon(self._service)

    def _service(self) -> None:
        self._scheduled = False
        if self._dead:
            return
        try:
            self._drain()
            if self._backlog and not self._dead:
                self._push_backlog()
        except (ValueError, IndexError, TypeError) as e:  # a mapping closed under us, bad counters
            self._fatal(e)

    # --- the doorbell socket ------------------------------------------------------------
    def _bell(self) -> None:
        try:
            self._sock.send(b"\x01")
            self.bells_sent += 1
        except (BlockingIOError, InterruptedError):
            pass  # bells already queued: the peer will wake anyway
        except OSError as e:
            self._loop.call_soon(self._peer_gone, e)

    def _on_bell(self) -> None:
        try:
            b = self._sock.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionResetError:  # the peer closed with our doorbells unread: gone, no error
            self._peer_gone(None)
            return
        except OSError as e:
            self._peer_gone(e)
            return
        if not b:
            self._peer_gone(None)
            return
        self.bells_received += 1
        if self._pacer is not None:
            self._pacer.wake()
        self._service()

    def _peer_gone(self, exc: Exception | None) -> None:
        """EOF on the doorbell socket: deliver what is left in the ring, then drop."""
        if self._dead:
            return
        try:
            while not self._dead and self._reading and not self._closing:
                if self._w[self._rx_head_i] == self._rx_tail:
                    break
                self._drain()
        except (ValueError, IndexError, TypeError):
            pass
        self._finish(exc)

    def _fatal(self, exc: Exception) -> None:
        log.warning("shm channel %s dropped: %s", self.get_extra_info("shm_ring"), exc)
        self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        if self._dead:
            return
        self._dead = True
        self._closing = True
        if self._pacer is not None:
            self._pacer.remove_ring(self)
        self._backlog.clear()
        self._blen = 0
        try:
            self._loop.remove_reader(self._fd)
        except (ValueError, OSError):
            pass
        self._sock.close()
        self._w.release()
        self._mv.release()
        self._mm.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)

    # --- asyncio.Transport -------------------------------------------------------------
    def write(self, data: Any) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._closing or self._dead:
            return
        mv = memoryview(data).cast("B")
        if not mv:
            return
        if self._backlog:
            self._backlog.append(memoryview(bytes(mv)))
            self._blen += len(mv)
        else:
            try:
                n = self._put(mv)
            except _Corrupt as e:
                self._fatal(e)
                return
            if n:
                self._published()
            if n == len(mv):
                return
            self._backlog.append(memoryview(bytes(mv[n:])))  # the caller may reuse its buffer
            self._blen += len(mv) - n
            self._want_space()
        if not self._wpaused and self._blen > self._high:
            self._pause_writing()

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("the shm channel has no half-close; use close()")

    def get_write_buffer_size(self) -> int:
        return self._blen

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if not self._backlog:
            self._finish(None)  # the ring's bytes stay readable: the peer drains them on EOF

    def abort(self) -> None:
        self._finish(None)

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._schedule()

    def is_reading(self) -> bool:
        return self._reading and not self._closing


class ShmServer(asyncio.AbstractServer):
    """The rendezvous socket; each accepted host gets its own ring file and transport."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str, name: str,
                 factory: Callable[[], asyncio.BaseProtocol], ring_bytes: int) -> None:
        self._loop = loop
        self.path = path
        self.name = name
        self._factory = factory
        self.ring_bytes = ring_bytes
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
                mm, ring = self._make_ring(conn)
            except OSError as e:
                log.warning("shm channel %s: ring setup failed: %s; connection dropped", self.name, e)
                conn.close()
                continue
            tr = ShmTransport(self._loop, conn, mm, self.ring_bytes, "server", self._factory(), ring)
            tr._start()

    def _make_ring(self, conn: socket.socket) -> tuple[mmap.mmap, str]:
        self._n += 1
        ring = f"{self.name}-{os.getpid()}-{self._n}"
        path = os.path.join(SHM_DIR, ring)
        size = HEADER + 2 * self.ring_bytes
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
            try:
                hello = _HELLO.pack(MAGIC, VERSION, 0, self.ring_bytes)
                mm[:_HELLO.size] = hello
                conn.setblocking(False)
                socket.send_fds(conn, [hello + ring.encode()], [fd])
            except BaseException:
                mm.close()
                raise
        finally:
            os.unlink(path)  # both ends hold it now (the fd in flight counts): nothing to leak
            os.close(fd)
        return mm, ring

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
                ring_bytes: int = DEFAULT_RING_BYTES) -> ShmServer:
    """Listen on ``path`` (``/dev/shm/tcps-NAME.sock``); ring files are ``/dev/shm/NAME-*``."""
    _check_arch()
    if ring_bytes < 4096 or ring_bytes & (ring_bytes - 1):
        raise ValueError(f"shm ring size {ring_bytes}: a power of two of at least 4096 bytes")
    unlink_stale(path, socket.SOCK_SEQPACKET)
    srv = ShmServer(asyncio.get_running_loop(), path, name, factory, ring_bytes)
    srv._listen()
    return srv


async def connect(path: str, factory: Callable[[], asyncio.BaseProtocol],
                  timeout: float = HANDSHAKE_TIMEOUT) -> tuple[ShmTransport, asyncio.BaseProtocol]:
    """Attach to the server at ``path``: get the ring file, map it, wrap it as a Transport."""
    _check_arch()
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
        if not msg:
            raise ConnectionError(f"shm channel {path}: the server closed during the handshake")
        for extra in fds[1:]:
            os.close(extra)
        if not fds:
            raise OSError(f"shm channel {path}: the server sent no ring file")
        fd = fds[0]
        try:
            mm, cap, ring = _map_ring(fd, msg, path)
        finally:
            os.close(fd)
    except BaseException:
        sock.close()
        raise
    protocol = factory()
    tr = ShmTransport(loop, sock, mm, cap, "host", protocol, ring)
    tr._start()
    return tr, protocol


def _map_ring(fd: int, msg: bytes, path: str) -> tuple[mmap.mmap, int, str]:
    if len(msg) < _HELLO.size:
        raise OSError(f"shm channel {path}: short handshake ({len(msg)} bytes)")
    magic, version, _, cap = _HELLO.unpack_from(msg)
    if magic != MAGIC or version != VERSION:
        raise OSError(f"shm channel {path}: not a version-{VERSION} TCP-server ring ({magic!r} v{version})")
    if cap < 4096 or cap & (cap - 1) or cap > 1 << 30:
        raise OSError(f"shm channel {path}: bad ring capacity {cap}")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != HEADER + 2 * cap:
        raise OSError(f"shm channel {path}: the ring file has {st.st_size} bytes, expected {HEADER + 2 * cap}")
    mm = mmap.mmap(fd, st.st_size)
    if mm[:_HELLO.size] != msg[:_HELLO.size]:
        mm.close()
        raise OSError(f"shm channel {path}: the ring file's header does not match the handshake")
    return mm, cap, msg[_HELLO.size:].decode(errors="replace")

"""The shm SAN channel's rings as an asyncio Transport (``ShmTransport``), for both ends.

The layout, the flags and why (docs/protocol.md, "The shared-memory channel"): a header
page, then two single-producer/single-consumer byte rings, one per direction, with
monotonic ``head``/``tail`` counters and the ``data_wanted``/``space_wanted`` flags that
say a side sleeps. ``shmring.py`` makes the ring file and hands it over; this module moves
the bytes.

Doorbells are eventfds (one per direction, passed with the ring file): a bell is an
8-byte write and an 8-byte read, no socket buffer. The Unix socket of the handshake stays
as the liveness signal (its EOF: the peer is gone) and still takes a byte as a bell, from
peers that have no eventfd.

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
import threading
from typing import Any

from .native import NATIVE
from .polling import pacer_of
from .transport import StreamTransport

log = logging.getLogger("testbed.offload.shmring")

HEADER = 4096  # header page: magic, version, capacity, the two rings' control blocks
CONTROL = (128, 384)  # control block of ring 0 (server -> host) and ring 1 (host -> server)
# 8-byte words inside a control block; producer-written words share one cache line,
# consumer-written words another.
HEAD, SPACE_WANTED, TAIL, DATA_WANTED = 0, 1, 8, 9

_fence_lock = threading.Lock()


def _fence_python() -> None:
    """A full memory barrier: an uncontended lock is a locked instruction on x86-64."""
    _fence_lock.acquire()
    _fence_lock.release()


_fence = NATIVE.fence if NATIVE is not None else _fence_python
_put_native = NATIVE.put if NATIVE is not None else None
_take_native = NATIVE.take if NATIVE is not None else None


class Corrupt(ValueError):
    """Ring counters that no well-behaved peer writes."""


def check_arch() -> None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise OSError(f"the shm channel relies on x86-64 memory ordering; this machine is "
                      f"{platform.machine()}: use a unix:PATH channel")


class ShmTransport(StreamTransport):
    """An asyncio Transport over a pair of shared-memory rings and a doorbell socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, mm: mmap.mmap,
                 cap: int, side: str, protocol: asyncio.BaseProtocol, ring_name: str,
                 bells: tuple[int, int] = (-1, -1), area: mmap.mmap | None = None) -> None:
        """``bells``: the eventfds (rung by us, rung by the peer), or -1: the socket rings;
        ``area``: the host's send area for zero-copy sends (zerocopy.py), if the ring has one."""
        super().__init__({"peername": ring_name, "sockname": ring_name, "shm_ring": ring_name,
                          "shm_ring_bytes": cap,
                          "shm_send_area": memoryview(area) if area is not None else None})
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._bell_out, self._bell_in = bells
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
            if self._bell_in >= 0:
                self._loop.add_reader(self._bell_in, self._on_eventfd)
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
                raise Corrupt(f"send ring: tail {self._w[self._tx_tail_i]} against head {self._tx_head}")
            self._tx_head += n
            return n
        return self._put_python(data)

    def _put_python(self, data: memoryview) -> int:
        w = self._w
        head = self._tx_head
        used = head - w[self._tx_tail_i]
        if not 0 <= used <= self._cap:  # the peer wrote a tail we never reached
            raise Corrupt(f"send ring: tail {w[self._tx_tail_i]} against head {head}")
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

    # --- the doorbells and the liveness socket ---------------------------------------------
    def _bell(self) -> None:
        if self._bell_out >= 0:
            os.eventfd_write(self._bell_out, 1)
            self.bells_sent += 1
            return
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

    def _on_eventfd(self) -> None:
        try:
            os.eventfd_read(self._bell_in)
        except (BlockingIOError, InterruptedError):
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
        for fd in (self._fd, self._bell_in):
            try:
                if fd >= 0:
                    self._loop.remove_reader(fd)
            except (ValueError, OSError):
                pass
        self._sock.close()
        for fd in {self._bell_in, self._bell_out} - {-1}:
            os.close(fd)
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
            except Corrupt as e:
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

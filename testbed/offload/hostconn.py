"""One tunneled connection at the host: the asyncio Transport, and socket calls on it.

``TunnelTransport`` is what an application's asyncio ``Protocol`` gets for a connection
the TCP server tunnels to this host: write, writelines, write_eof, close, abort,
pause/resume_reading, get_extra_info, write-buffer limits (``transport.StreamTransport``).
A write becomes SEND frames within the send window (``flow.HostWindows``; in split one
SEND at a time, each awaiting SEND_DONE); reading is DATA frames pushed ahead (push
modes, credit returned as the application consumes) or asked for by RECV_REQ (pull
modes). ``TunnelSocket`` offers the same connection as socket calls one by one (``await
recv``, ``send``, ``close``), each crossing the SAN the way the mode says.

The channel these connections share (frames in and out, listeners, the handshake) is
``hostsock.Tunnel``; a connection reaches it only through its ``_ch`` attribute.
"""

from __future__ import annotations

import asyncio
import collections
import errno
from typing import Any

from .flow import HostWindows
from .protocol import (
    CLOSE,
    CREDIT,
    FETCH,
    RECV_REQ,
    RECV_WINDOW,
    SEND,
    SEND_CHUNK,
    SEND_WINDOW,
    SHUTDOWN,
    decode_peer,
)
from .transport import DEFAULT_HIGH, DEFAULT_LOW, StreamTransport


class _FileRef(bytes):
    """A FETCH waiting in a connection's send queue behind the bytes written before it: an
    empty bytes (it adds nothing to the queue's length) that names the file."""

    path: bytes
    size: int


class TunnelError(ConnectionError):
    """The SAN channel to the TCP server is gone, or the TCP server refused this host."""


class TunnelTransport(HostWindows, StreamTransport):
    """One client connection as seen by the host; the Transport API over the tunnel."""

    __slots__ = (
        "_ch", "cid", "_peer", "_port", "_credit", "_queue", "_qlen", "_inflight", "_closing",
        "_closed", "_eof_pending", "_rpaused", "_rbuf", "_consumed", "_recv_out", "_got_eof",
    )

    def __init__(self, ch: "Tunnel", cid: int, peer: Any, port: int) -> None:
        self._ch = ch
        self.cid = cid
        self._peer = peer
        self._port = port
        self._protocol: asyncio.BaseProtocol = None  # type: ignore[assignment]
        self._high = DEFAULT_HIGH  # the StreamTransport fields, inline (per connection)
        self._low = DEFAULT_LOW
        self._wpaused = False
        self._credit = SEND_WINDOW
        self._queue: collections.deque[bytes] = collections.deque()
        self._qlen = 0
        self._inflight = 0  # split: bytes of the SEND awaiting SEND_DONE
        self._closing = False
        self._closed = False
        self._eof_pending = False
        self._rpaused = False
        self._rbuf: list[bytes] = []
        self._consumed = 0
        self._recv_out = False  # pull: a RECV_REQ is outstanding
        self._got_eof = False

    # --- Transport API -------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            if type(self._peer) is bytes:  # decoded on first use: most apps never ask
                self._peer = decode_peer(self._peer)[0]
            return self._peer
        if name == "sockname":
            return ("0.0.0.0", self._port)
        if name == "tunnel":
            return self._ch
        return default

    def is_closing(self) -> bool:
        return self._closing or self._closed

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._closed:
            return
        n = len(data)
        if not n:
            return
        ch = self._ch
        # HostWindows.take_credit's rule inlined (the per-write fast path): a write that fits
        # the credit and one frame goes at once
        if not ch.sync_send and not self._queue and n <= self._credit and n <= SEND_CHUNK:
            self._credit -= n
            if n < ch.zc_min or not ch.send_zc(self.cid, data):  # (zero-copy: zerocopy.py)
                ch.emit_send(self.cid, data if type(data) is bytes else bytes(data))
            return
        self._queue.append(bytes(data))
        self._qlen += n
        self._pump()
        if self._qlen > self._high and not self._wpaused:
            self._pause_writing()

    def send_file(self, path: bytes, size: int) -> None:
        """Have the TCP server send the file server's ``path`` (``size`` bytes) to the client
        after what was written so far: the body never crosses this host (FETCH,
        docs/protocol.md). Only with a TCP server started with a file server."""
        if self._closing or self._closed:
            return
        if not self._queue:  # what was written is on its way already (even split's SEND in flight)
            self._ch.emit(FETCH, self.cid, size, path)
            return
        ref = _FileRef()
        ref.path, ref.size = path, size
        self._queue.append(ref)
        self._pump()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._closed:
            return
        self._eof_pending = True
        self._pump()

    def close(self) -> None:
        if self._closing or self._closed:
            return
        self._closing = True
        self._pump()

    def abort(self) -> None:
        if self._closed:
            return
        self._queue.clear()
        self._qlen = 0
        self._closing = True
        self._ch.emit(CLOSE, self.cid, 0)
        self._lost(None)

    def pause_reading(self) -> None:
        self._rpaused = True

    def resume_reading(self) -> None:
        if not self._rpaused:
            return
        self._rpaused = False
        buf, self._rbuf = self._rbuf, []
        for data in buf:
            if self._closed or self._rpaused:
                self._rbuf[:0] = [data]
                return
            self._deliver(data)
        if self._got_eof and not self._rbuf and not self._closed:
            self._deliver_eof()
        elif not self._ch.push_data and not self._closing:
            self._want_read()

    def is_reading(self) -> bool:
        return not self._rpaused

    def get_write_buffer_size(self) -> int:
        return self._qlen + self._inflight

    # --- sending -------------------------------------------------------------------
    def _pump(self) -> None:
        """Send queued bytes as the window (or split's one-at-a-time rule) allows."""
        ch = self._ch
        q = self._queue
        if ch.sync_send:
            if self._inflight:
                return
            while q and type(q[0]) is _FileRef:
                ref = q.popleft()
                ch.emit(FETCH, self.cid, ref.size, ref.path)
            if q:
                # one SEND at a time; writes made meanwhile ride together in the next one
                # (up to a FETCH, which waits for that SEND's turn)
                if len(q) == 1:  # the common case: no scan
                    data = q.popleft()
                else:
                    n = next((i for i, d in enumerate(q) if type(d) is _FileRef), len(q))
                    data = b"".join([q.popleft() for _ in range(n)]) if n > 1 else q.popleft()
                chunk, rest = data[:SEND_CHUNK], data[SEND_CHUNK:]
                if rest:
                    q.appendleft(rest)
                self._qlen -= len(chunk)
                self._inflight = len(chunk)
                ch.emit(SEND, self.cid, 0, chunk)
                return
        else:
            while q and (self._credit > 0 or type(q[0]) is _FileRef):
                data = q.popleft()
                if type(data) is _FileRef:
                    ch.emit(FETCH, self.cid, data.size, data.path)
                    continue
                n = self.take_credit(len(data))
                if n < len(data):
                    q.appendleft(data[n:])
                    data = data[:n]
                self._qlen -= n
                if n < ch.zc_min or not ch.send_zc(self.cid, data):
                    ch.emit_send(self.cid, data)
            if q:
                return
        if self._wpaused and self._qlen <= self._low:
            self._resume_writing()
        if self._eof_pending and not q:
            self._eof_pending = False
            ch.emit(SHUTDOWN, self.cid, 0)
        if self._closing and not q and not self._closed:
            if ch.sync_send:
                if not self._inflight:
                    self._closed = True
                    ch.emit(CLOSE, self.cid, 1)  # CLOSE_DONE ends it
            else:
                ch.emit_close(self.cid)
                self._lost(None)

    def _send_done(self, n: int) -> None:
        self._inflight = 0
        self._pump()

    def _credit_back(self, n: int) -> None:
        self.credit_back(n)
        if self._queue:
            self._pump()

    # --- receiving -----------------------------------------------------------------
    def _want_read(self) -> None:
        if not self._recv_out and not self._rpaused and not self._closing and not self._closed:
            self._recv_out = True
            self._ch.emit(RECV_REQ, self.cid, RECV_WINDOW)

    def _deliver(self, data: bytes) -> None:
        if self._rpaused:
            self._rbuf.append(data)
            return
        self._protocol.data_received(data)  # type: ignore[attr-defined]
        if self._ch.push_data:  # the application took the bytes: window back by halves
            credit = self.consumed(len(data))
            if credit:
                self._ch.emit(CREDIT, self.cid, credit)

    def _on_data(self, data: bytes) -> None:
        self._recv_out = False
        self._deliver(data)
        if not self._ch.push_data:
            self._want_read()

    def _on_eof(self) -> None:
        self._recv_out = False
        self._got_eof = True
        if self._rpaused:
            return
        self._deliver_eof()

    def _deliver_eof(self) -> None:
        self._got_eof = False
        keep = self._protocol.eof_received()  # type: ignore[attr-defined]
        if not keep:
            self.close()

    def _lost(self, exc: Exception | None) -> None:
        if self._closed and self.cid not in self._ch.conns:
            return
        self._closed = True
        self._closing = True
        ch = self._ch
        ch.conns.pop(self.cid, None)
        # connection_lost comes later, as in asyncio; one callback for all of a batch
        if not ch.lost:
            ch.loop.call_soon(ch.report_lost)
        ch.lost.append((self, exc))



class _SockProtocol(asyncio.Protocol):
    """Buffers one connection's bytes for TunnelSocket's recv()."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.eof = False
        self.exc: Exception | None = None
        self.waiter: asyncio.Future | None = None
        self.lost: asyncio.Future | None = None

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.exc = exc
        self._wake()
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)


class TunnelSocket:
    """Socket calls on one tunneled connection (asyncio)."""

    def __init__(self, tr: TunnelTransport) -> None:
        self.tr = tr
        self._proto = _SockProtocol()
        tr._protocol = self._proto
        tr._rpaused = True  # pull modes: a RECV_REQ goes out only when recv() asks

    @property
    def peer(self) -> Any:
        return self.tr.get_extra_info("peername")

    async def recv(self, n: int = 65536) -> bytes:
        p = self._proto
        tr = self.tr
        if not p.buf and tr._rbuf:  # pushed ahead (eager receive): no wait at all
            tr.resume_reading()
            tr._rpaused = True
        while not p.buf and not p.eof:
            if tr._closed:
                break
            p.waiter = tr._ch.loop.create_future()
            tr.resume_reading()
            try:
                await p.waiter
            finally:
                p.waiter = None
                if not tr._closed:
                    tr._rpaused = True
        if p.buf:
            data = bytes(p.buf[:n])
            del p.buf[:n]
            return data
        if p.exc is not None and not isinstance(p.exc, TunnelError):
            raise p.exc
        return b""

    async def send(self, data: bytes) -> int:
        """AsyncSend and later: returns at once (completion arrives later as credit);
        split: returns when the TCP server has written the bytes (SEND_DONE)."""
        tr = self.tr
        if tr._closed or tr._closing:
            raise BrokenPipeError(errno.EPIPE, "connection closed")
        tr.write(data)
        ch = tr._ch
        if ch.sync_send or tr._qlen:
            while (tr._inflight or tr._qlen) and not tr._closed:
                fut = ch.loop.create_future()
                ch.drain_waiters.setdefault(tr.cid, []).append(fut)
                await fut
        return len(data)

    sendall = send

    def shutdown(self) -> None:
        self.tr.write_eof()

    async def close(self) -> None:
        tr = self.tr
        if tr._closed:
            return
        self._proto.lost = tr._ch.loop.create_future()
        tr.close()
        await self._proto.lost


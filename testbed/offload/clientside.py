"""The daemon's client side: one protocol object per client TCP connection.

``ClientConn`` turns a client's bytes into DATA frames for the host that owns the
connection (pushed ahead within the host's window in the push modes, held until a
RECV_REQ asks in the pull modes) and the host's SEND frames into client bytes, giving
window back as the client's kernel socket takes them. ``PlacedConn`` holds a connection
drawn for function placement until its first request shows whether the daemon answers it
itself (``placement.py``); ``OutboundConn`` is a connection a host asked the daemon to
open (CONNECT). These objects are the hot path: ``__slots__``, plain ints, and a frame
goes out through the host channel's batched ``emit`` (``hostside.HostChannel``).

Who owns what: the daemon (``daemon.TcpServer``) counts and hands out connections
(``scheduler.py``), a ``HostChannel`` dispatches the host's frames to these objects.
"""

from __future__ import annotations

import asyncio
import errno
from typing import TYPE_CHECKING

from . import placement as _placement
from .flow import CLIENT_READ_PAUSE, CLIENT_READ_RESUME, DaemonWindows
from .protocol import (
    CLOSE,
    CLOSE_DONE,
    CONNECTED,
    CREDIT,
    DATA,
    EOF,
    FETCH,
    MAX_PAYLOAD,
    RECV_WINDOW,
    RESET,
    SEND,
    SEND_DONE,
    SEND_ZC,
    SHUTDOWN,
    encode_peer,
)

if TYPE_CHECKING:
    from .fetch import FileFetch



class ClientConn(DaemonWindows, asyncio.Protocol):
    """One client TCP connection, owned by at most one host channel."""

    __slots__ = (
        "srv", "port", "host", "cid", "transport", "rbuf", "rlen", "rwin", "want", "eof",
        "eof_sent", "unacked", "wpaused", "host_closed", "done_on_close", "last", "rpaused",
        "wait_since", "announced", "queued_at", "fetching", "after",
    )

    def __init__(self, srv: "TcpServer", port: "PortState") -> None:
        self.srv = srv
        self.port = port
        self.host: "HostChannel | None" = None
        self.cid = 0
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.rbuf: list[bytes] = []  # client bytes not yet sent to the host
        self.rlen = 0
        self.rwin = RECV_WINDOW  # push modes: bytes the host still accepts
        self.want = 0  # pull modes: size of the host's outstanding RECV_REQ
        self.eof = False
        self.eof_sent = False
        self.unacked = 0  # bytes from SENDs not yet credited back to the host
        self.wpaused = False  # the client transport has unwritten bytes
        self.host_closed = False
        self.done_on_close = False
        self.last = 0
        self.rpaused = False
        self.wait_since = 0.0
        self.announced = False
        self.queued_at = 0.0
        self.fetching: "FileFetch | None" = None  # a body on its way from the file server
        self.after: "list[tuple[int, object]] | None" = None  # the host's frames behind it

    # --- client side ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        # high=0: pause_writing fires whenever bytes stay buffered, so resume_writing
        # tells exactly when the client's kernel socket took everything (credit back).
        transport.set_write_buffer_limits(high=0, low=0)
        srv = self.srv
        if srv.poller is None:
            srv.client_connected(self)
        else:  # rawio reads first and calls connection_ready: stale ones never reach a host
            srv.admit(self)

    def connection_ready(self) -> None:
        if self.cid:
            self.srv.dispatch(self)

    def data_received(self, data: bytes) -> None:
        self.last = self.srv.tick
        self.srv.c_client_in += len(data)
        if self.host_closed:  # the host closed this connection: nobody reads these bytes
            return
        host = self.host
        if host is None or not self.announced:
            if self.wait_since and self.host is not None:  # setup-with-accept: first data
                self.rbuf.append(data)
                self.rlen += len(data)
                self.srv.announce(self)
                return
            self._buffer(data)
            return
        if self.srv.push:
            if not self.rbuf and len(data) <= self.rwin and not host.paused:
                self.rwin -= len(data)
                host.emit(DATA, self.cid, 0, data)
                self.srv.c_eager_data += 1
                return
            self._buffer(data)
            self.push_buffered()
        else:
            if self.want and not self.rbuf:
                n = len(data)
                if n <= self.want:
                    self.want = 0
                    host.emit(DATA, self.cid, 0, data)
                    return
            self._buffer(data)
            if self.want:
                self.serve_recv(self.want)

    def _buffer(self, data: bytes) -> None:
        self.rbuf.append(data)
        self.rlen += len(data)
        if self.rlen >= CLIENT_READ_PAUSE and not self.rpaused:
            self.rpaused = True
            self.transport.pause_reading()

    def _take(self, n: int) -> bytes:
        buf = b"".join(self.rbuf) if len(self.rbuf) > 1 else self.rbuf[0]
        if n >= len(buf):
            self.rbuf = []
            self.rlen = 0
            return buf
        self.rbuf = [buf[n:]]
        self.rlen = len(buf) - n
        return buf[:n]

    def _maybe_resume(self) -> None:
        if self.rpaused and self.rlen < CLIENT_READ_RESUME and not self.eof:
            self.rpaused = False
            self.transport.resume_reading()

    def push_buffered(self) -> None:
        """Push modes: send buffered client bytes as far as the host's window allows."""
        host = self.host
        if host is None or host.paused:
            if host is not None and self not in host.blocked:
                host.blocked.append(self)
            return
        while self.rlen and self.rwin > 0:
            chunk = self._take(min(self.rwin, MAX_PAYLOAD))
            self.rwin -= len(chunk)
            host.emit(DATA, self.cid, 0, chunk)
        if not self.rlen and self.eof and not self.eof_sent:
            self.eof_sent = True
            host.emit(EOF, self.cid, 0)
        self._maybe_resume()

    def serve_recv(self, maxbytes: int) -> None:
        """Pull modes: answer a RECV_REQ from buffered data, EOF, or remember it."""
        host = self.host
        if self.rlen:
            self.want = 0
            host.emit(DATA, self.cid, 0, self._take(min(maxbytes, MAX_PAYLOAD)))  # type: ignore[union-attr]
            self._maybe_resume()
        elif self.eof:
            self.want = 0
            if not self.eof_sent:
                self.eof_sent = True
                host.emit(EOF, self.cid, 0)  # type: ignore[union-attr]
        else:
            self.want = maxbytes

    def eof_received(self) -> bool:
        self.eof = True
        if self.host_closed:  # the usual end of an HTTP/1.0 exchange: no EOF frame needed
            return True
        host = self.host
        if host is not None and self.announced:
            if self.srv.push:
                self.push_buffered()
            elif self.want and not self.rlen:
                self.want = 0
                self.eof_sent = True
                host.emit(EOF, self.cid, 0)
        elif self.wait_since and host is not None:
            self.srv.announce(self)
        return True  # keep our write side open: the host decides when to close

    def pause_writing(self) -> None:
        self.wpaused = True

    def resume_writing(self) -> None:
        self.wpaused = False
        if self.unacked:
            self.release()
        if self.fetching is not None:
            self.fetching.resume()

    def release(self) -> None:
        """Bytes the host sent are now in the kernel: give the window back (batched)."""
        host = self.host
        if host is None or self.host_closed:
            self.unacked = 0
            return
        sync = self.srv.sync_send
        due = self.client_took(0, True, sync)
        if due is not None:
            host.emit(SEND_DONE if sync else CREDIT, self.cid, due)

    def connection_lost(self, exc: Exception | None) -> None:
        srv = self.srv
        if self.fetching is not None:
            self.fetching.abandon()
            self._drop_after()
        if not self.cid:  # refused before it was counted
            return
        srv.conns.pop(self.cid, None)
        srv.c_open -= 1
        host = self.host
        if host is not None:
            if host.conns.pop(self.cid, None) is not None and srv.push_accept:
                srv.host_finished(host)
            if self.host_closed:
                if self.done_on_close:
                    host.emit(CLOSE_DONE, self.cid, 0)
            elif self.announced:
                code = getattr(exc, "errno", None) or (errno.ECONNRESET if exc else 0)
                host.emit(RESET, self.cid, code)
        self.host = None
        self.rbuf = []

    # --- host side -----------------------------------------------------------------
    def host_send(self, payload: bytes) -> None:
        if self.fetching is not None:  # after the body on its way (fetch.py)
            self._after(SEND, payload)
            return
        srv = self.srv
        self.last = srv.tick
        n = len(payload)
        srv.c_client_out += n
        self.transport.write(payload)
        due = self.client_took(n, not self.wpaused, srv.sync_send)  # the window's rule (flow.py)
        if due is not None:
            host = self.host
            if host is not None:  # (None: the write found the client gone)
                host.emit(SEND_DONE if srv.sync_send else CREDIT, self.cid, due)

    def host_send_zc(self, off: int, n: int) -> None:
        """SEND_ZC: ``n`` bytes at ``off`` in the host's send area, sent without a copy
        (zerocopy.py); the region goes back to the host once the kernel let go of it."""
        host = self.host
        if self.fetching is not None:
            self._after(SEND_ZC, (off, n))
            return
        if host is None or host.zc_area is None:
            return
        srv = self.srv
        self.last = srv.tick
        srv.c_client_out += n
        srv.c_zc_sends += 1
        view = host.zc_area[off:off + n]
        write_zc = getattr(self.transport, "write_zc", None)
        if write_zc is not None:
            write_zc(view, host.zc_done, off)
        else:  # a transport of the event loop's (an outbound connection): copied
            self.transport.write(bytes(view))
            host.zc_done(off)
        due = self.client_took(n, not self.wpaused, srv.sync_send)
        if due is not None and self.host is not None:
            host.emit(SEND_DONE if srv.sync_send else CREDIT, self.cid, due)

    def host_close(self, want_done: bool) -> None:
        self.host_closed = True
        self.done_on_close = want_done
        if self.fetching is not None:
            self._after(CLOSE, want_done)
            return
        self.transport.close()

    def host_shutdown(self) -> None:
        if self.fetching is not None:
            self._after(SHUTDOWN, None)
        elif self.transport.can_write_eof():
            self.transport.write_eof()

    # --- direct communication with the file server (fetch.py) ---------------------------
    def host_fetch(self, path: bytes, size: int) -> None:
        """FETCH: the body of ``path`` (``size`` bytes) from the file server to the client."""
        if self.fetching is not None:
            self._after(FETCH, (path, size))
        elif size == 0:
            return
        else:
            self.fetching = self.srv.files.fetch(self, path, size)  # type: ignore[union-attr]

    def _after(self, ftype: int, arg: object) -> None:
        if self.after is None:
            self.after = []
        self.after.append((ftype, arg))

    def fetch_wrote(self, data: bytes) -> None:
        self.last = self.srv.tick
        self.srv.c_client_out += len(data)
        self.transport.write(data)

    def fetch_done(self) -> None:
        """The body is written: the host's frames that waited behind it, in order, until
        one starts another fetch."""
        self.fetching = None
        after, self.after = self.after, None
        while after:
            ftype, arg = after.pop(0)
            if ftype == SEND:
                self.host_send(arg)  # type: ignore[arg-type]
            elif ftype == SEND_ZC:
                self.host_send_zc(*arg)  # type: ignore[misc]
            elif ftype == FETCH:
                self.host_fetch(*arg)  # type: ignore[misc]
            elif ftype == SHUTDOWN:
                self.host_shutdown()
            else:
                self.host_close(bool(arg))
            if self.fetching is not None:  # another body: the rest waits again
                self.after = after + (self.after or [])
                return

    def fetch_failed(self) -> None:
        """The file server did not deliver: the client's head is out, so only a reset is left."""
        self._drop_after()
        self.transport.abort()

    def _drop_after(self) -> None:
        """No more fetch: the frames behind it will not be sent (send-area regions go back)."""
        after, self.fetching, self.after = self.after, None, None
        host = self.host
        for ftype, arg in after or ():
            if ftype == SEND_ZC and host is not None:
                host.zc_done(arg[0])  # type: ignore[index]



class PlacedConn(ClientConn):
    """A new connection drawn for placement: held until its first request is in.

    Eligible requests (``placement.parse_head``: GET/HEAD, no body, a cached path) are
    answered here with the host app's own response bytes; keep-alive connections go on
    being served here while their requests stay eligible. At the first one that is not
    (or no complete request within ``setup_wait``, or EOF first), the connection is handed
    to a host as if it had just arrived, carrying the bytes read so far.
    """

    __slots__ = ("pbuf", "handed", "served", "timer")

    def __init__(self, srv: "TcpServer", port: "PortState") -> None:
        super().__init__(srv, port)
        self.pbuf = b""
        self.handed = False
        self.served = 0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.set_write_buffer_limits(high=0, low=0)
        srv = self.srv
        if not srv.admit(self):
            self.handed = True
            return
        srv.c_placed_conns += 1
        self.timer = srv.loop.call_later(srv.cfg.setup_wait, self._no_request)

    def connection_ready(self) -> None:
        pass  # held: dispatched at the hand-off, if any

    def _no_request(self) -> None:
        self.timer = None
        if not self.handed and not self.served and not self.transport.is_closing():
            self.hand_off()

    def data_received(self, data: bytes) -> None:
        if self.handed:
            ClientConn.data_received(self, data)
            return
        srv = self.srv
        self.last = srv.tick
        srv.c_client_in += len(data)
        if self.host_closed:
            return
        buf = self.pbuf + data if self.pbuf else data
        cache = srv.cache
        t = self.transport
        while buf:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _placement.MAX_HEAD or b"\n\n" in buf:
                    break  # not a request we answer: the host decides
                self.pbuf = buf
                return
            req = _placement.parse_head(buf[:end])
            e = cache.get(req[1]) if req is not None else None  # type: ignore[union-attr]
            if e is None:
                break
            is_head, _, ka = req  # type: ignore[misc]
            if is_head:
                out = e.heads[ka]
                t.write(out)
                n = len(out)
            elif e.full is not None:
                out = e.full[ka]
                t.write(out)
                n = len(out)
            else:
                t.write(e.heads[ka])
                t.write(e.body)
                n = len(e.heads[ka]) + len(e.body)
            self.served += 1
            srv.c_placed_requests += 1
            srv.c_placed_bytes += n
            srv.c_client_out += n
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            buf = buf[end + 4:]
            if not ka:
                self.pbuf = b""
                self.host_closed = True  # nobody reads further bytes
                t.close()
                return
        self.pbuf = buf
        if buf:
            self.hand_off()

    def hand_off(self) -> None:
        """From here on a host serves this connection, starting with the bytes held."""
        self.handed = True
        srv = self.srv
        srv.c_place_handoffs += 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pbuf:
            self.rbuf = [self.pbuf]
            self.rlen = len(self.pbuf)
            self.pbuf = b""
        srv.dispatch(self)

    def eof_received(self) -> bool:
        if self.handed:
            return ClientConn.eof_received(self)
        self.eof = True
        if self.pbuf or not self.served:
            self.hand_off()  # a host sees the partial request (or none) and the EOF
        else:
            self.host_closed = True
            self.transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        ClientConn.connection_lost(self, exc)



class OutboundConn(ClientConn):
    """A connection the host asked for (CONNECT): same data path as an accepted one."""

    def __init__(self, srv: "TcpServer", port: "PortState", host: "HostChannel", req: int) -> None:
        super().__init__(srv, port)
        self.host = host
        self.wait_since = 0.0
        self._req = req

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.set_write_buffer_limits(high=0, low=0)
        srv = self.srv
        srv.next_cid += 1
        self.cid = srv.next_cid
        srv.conns[self.cid] = self
        srv.c_open += 1
        srv.c_total += 1
        self.last = srv.tick
        self.announced = True
        host = self.host
        if host is None or host.dead:
            transport.abort()
            return
        host.conns[self.cid] = self
        host.emit(CONNECTED, self.cid, self._req, encode_peer(transport.get_extra_info("peername")))

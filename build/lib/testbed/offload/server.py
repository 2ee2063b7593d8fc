"""The TCP-server daemon: terminates client TCP and tunnels socket calls to the hosts.

Clients connect to the public address; hosts attach over a SAN channel (one persistent
connection per host) and say which ports they listen on. Client bytes become DATA frames,
the hosts' SEND frames become client bytes. Frames for all connections of a host are
batched into one write per event-loop iteration.

Run: ``python -m testbed.offload.server --listen ADDR:PORT --san tcp:ADDR:PORT --mode MODE
--token-file F --stats-file PATH``.

Client sockets live on the daemon's own epoll set (``rawio``; ``--client-io asyncio`` puts
them on the event loop's transports instead); ``--poll-us`` makes the daemon poll in fixed
periods rather than wake per event (``polling``, the paper's "No Interrupts").

Bounds (so thousands of idle or slow clients cannot grow memory without limit):
``--max-conns`` client connections, ``--backlog`` connections waiting for a host's accept,
per-connection windows (``protocol.SEND_WINDOW``/``RECV_WINDOW``), ``--idle-timeout``.

Overload control, as a kernel's listen queue behaves. Measured before it (issue 14: two
0.1-CPU nodes, static load, a new connection per request, 2.5x capacity), the modes in
which hosts pull connections (split, async-send, eager-receive) kept a sixth to two
fifths of their goodput: the daemon accepted every connection the kernel had, read it,
queued it for a host (up to 4,096, then accepted-and-reset the rest), so it spent its CPU
on connections it would serve seconds later, after their clients had given up. Now:

- at most ``--backlog`` connections are accepted and not yet given to a host (per port);
  at the bound the daemon stops accepting (the listener leaves the epoll set) and the
  rest wait in the kernel's listen backlog (``--listen-backlog``), whose overflow drops
  SYNs, which clients see as retries; accepting resumes when the queue is half empty;
- a connection whose client reset it, or closed it before sending anything, is not given
  to a host (``stale``), also one reset while it waited in the kernel's backlog (the first
  read comes before the hand-off);
- a connection queued longer than ``--queue-deadline`` seconds is reset (``shed``): a
  host would serve it late, if at all;
- in the push modes (eager-accept, setup-with-accept) the daemon gives one host at most
  ``--host-conns`` connections it has not finished; beyond, new connections queue as in the
  pull modes (where a host's ACCEPT_REQs set the pace), and a host that finishes one gets
  the oldest queued, so a saturated TCP server holds a bounded number of connections, as
  in the pull modes. (Measured on cluster, a 0.05-CPU TCP server at 7.5x its capacity:
  goodput 0.95x and 0.85x without the bound, not a collapse; paper-overload measures it
  with interleaved rounds.)

Counters in the stats file: ``queued`` (now), ``queued_total``, ``shed``, ``stale``,
``listener_pauses``. ``--client-io asyncio`` cannot pause its listener: beyond the bound
connections are reset there (``connections_refused``).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import hmac
import json
import logging
import os
import random
import signal
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from . import channels
from . import placement as _placement
from .runtime import install_loop, read_token
from . import rawio
from .polling import PollingPacer, check_period_us
from .modes import Mode, get_mode
from .protocol import (
    ACCEPT_REQ,
    ACCEPTED,
    CLOSE,
    CLOSE_DONE,
    CONN_NEW,
    CONNECT,
    CONNECTED,
    CREDIT,
    DATA,
    EOF,
    ERROR,
    HDR,
    HELLO,
    LISTEN,
    LISTEN_OK,
    MAX_PAYLOAD,
    PING,
    PONG,
    PROTOCOL_VERSION,
    RECV_REQ,
    RECV_WINDOW,
    RESET,
    SEND,
    SEND_CLOSE,
    SEND_DONE,
    SEND_WINDOW,
    SHUTDOWN,
    TYPE_NAMES,
    WELCOME,
    FrameDecoder,
    ProtocolError,
    decode_hello,
    encode_peer,
)

log = logging.getLogger("testbed.offload.server")

_pack = HDR.pack
_V = PROTOCOL_VERSION
_HALF_SEND = SEND_WINDOW // 2
_SAN_HIGH_WATER = 8 * 1024 * 1024
_NO_PEER = encode_peer(None)  # above this, stop reading clients of that host
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


@dataclass
class ServerConfig:
    listen_host: str
    listen_port: int
    san: channels.ChannelSpec
    mode: Mode
    token: str
    stats_file: Path | None = None
    max_conns: int = 20000
    # overload control (module docstring): connections accepted but not yet given to a
    # host, per port; beyond it the listener pauses and the kernel's backlog holds the rest
    backlog: int = 64
    listen_backlog: int = 1024  # the kernel's listen backlog (SYNs beyond it are dropped)
    queue_deadline: float = 1.0  # a connection queued longer is reset (0 = never)
    # push modes: connections given to one host and not yet finished by it (0 = no bound)
    host_conns: int = 128
    # False: the daemon before issue 14, for A/B (accept everything, reset beyond backlog)
    overload_control: bool = True
    idle_timeout: float = 60.0
    hello_timeout: float = 5.0
    setup_wait: float = 0.05  # setup-with-accept: announce without data after this
    accept_ahead: int = 0  # unused by the server; the host decides how many it asks for
    # TCP_DEFER_ACCEPT seconds on the public listener (0 = off; None = on, 1 s, only in
    # setup-with-accept, where a connection is not announced before its first bytes anyway)
    defer_accept: float | None = None
    # function placement (placement.py): answer cached static requests here, for a share
    # of new connections read from placement_file (or placement_share when there is none)
    serve_static: str | None = None
    placement_file: Path | None = None
    placement_share: float = 0.0
    # client sockets: "epoll" = rawio's fast path (our own epoll set, no per-connection
    # transport machinery); "asyncio" = the event loop's transports (the A/B reference)
    client_io: str = "epoll"
    # the paper's "No Interrupts": poll every poll_us microseconds (0 = wake per event)
    poll_us: int = 0


class ClientConn(asyncio.Protocol):
    """One client TCP connection, owned by at most one host channel."""

    __slots__ = (
        "srv", "port", "host", "cid", "transport", "rbuf", "rlen", "rwin", "want", "eof",
        "eof_sent", "unacked", "wpaused", "host_closed", "done_on_close", "last", "rpaused",
        "wait_since", "announced", "queued_at",
    )

    def __init__(self, srv: "TcpServer", port: "PortState") -> None:
        self.srv = srv
        self.port = port
        self.host: HostChannel | None = None
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
        if self.rlen >= RECV_WINDOW and not self.rpaused:
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
        if self.rpaused and self.rlen < RECV_WINDOW // 2 and not self.eof:
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

    def release(self) -> None:
        """Bytes the host sent are now in the kernel: give the window back (batched)."""
        host = self.host
        if host is None or self.host_closed:
            self.unacked = 0
            return
        if self.srv.sync_send:
            host.emit(SEND_DONE, self.cid, self.unacked)
            self.unacked = 0
        elif self.unacked >= _HALF_SEND:
            host.emit(CREDIT, self.cid, self.unacked)
            self.unacked = 0

    def connection_lost(self, exc: Exception | None) -> None:
        srv = self.srv
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
        self.last = self.srv.tick
        n = len(payload)
        self.srv.c_client_out += n
        self.transport.write(payload)
        self.unacked += n
        if self.unacked > SEND_WINDOW:  # a host ignoring its credit would grow us without bound
            raise ProtocolError(f"connection {self.cid}: {self.unacked} bytes sent beyond the "
                                f"send window ({SEND_WINDOW})")
        if not self.wpaused:
            self.release()

    def host_close(self, want_done: bool) -> None:
        self.host_closed = True
        self.done_on_close = want_done
        self.transport.close()


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


class PortState:
    """One public listening port: the hosts serving it and the accept queues."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: asyncio.AbstractServer | rawio.RawListener | None = None
        self.hosts: list[HostChannel] = []
        self.pending: deque[ClientConn] = deque()  # pull accept: waiting for an ACCEPT_REQ
        self.waiters: dict[HostChannel, int] = {}  # pull accept: outstanding ACCEPT_REQs per host
        self.rr = 0
        self.paused = False  # not accepting: pending is at the bound


class HostChannel(asyncio.Protocol):
    """One attached host: a persistent SAN connection carrying all its client connections."""

    def __init__(self, srv: "TcpServer") -> None:
        self.srv = srv
        self.loop = srv.loop
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder()
        self.host_id = "?"
        self.authed = False
        self.out: list[bytes] = []
        self.flush_pending = False
        self.conns: dict[int, ClientConn] = {}
        self.ports: list[PortState] = []
        self.paused = False
        self.blocked: list[ClientConn] = []
        self.frames_out = 0
        self.bytes_out = 0
        self.hello_timer: asyncio.TimerHandle | None = None
        self.peer = None
        self.dead = False
        self.want_peer = False

    # --- output: batched per loop iteration -----------------------------------------
    def emit(self, ftype: int, conn: int, arg: int, payload: bytes = b"") -> None:
        out = self.out
        out.append(_pack(len(payload), _V, ftype, 0, conn, arg))
        if payload:
            out.append(payload)
        self.frames_out += 1
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_pending = False
        out = self.out
        if not out or self.dead:
            out.clear()
            return
        data = b"".join(out)
        out.clear()
        self.bytes_out += len(data)
        self.transport.write(data)  # type: ignore[union-attr]

    # --- channel lifecycle ---------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        channels.tune_accepted(transport)
        transport.set_write_buffer_limits(high=_SAN_HIGH_WATER)
        self.peer = transport.get_extra_info("peername")
        self.hello_timer = self.loop.call_later(self.srv.cfg.hello_timeout, self._hello_timeout)

    def _hello_timeout(self) -> None:
        if not self.authed:
            log.warning("SAN channel from %s sent no valid HELLO in time; dropped", self.peer)
            self.transport.abort()  # type: ignore[union-attr]

    def pause_writing(self) -> None:
        # the host does not read what we send it: stop reading it too, or a host that
        # only sends (PINGs whose PONGs pile up) grows this daemon without bound
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None and not self.dead:
            self.transport.resume_reading()
        blocked, self.blocked = self.blocked, []
        for c in blocked:
            if c.host is self:
                c.push_buffered()

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        if self.hello_timer:
            self.hello_timer.cancel()
        self.srv.host_detached(self)

    def fail(self, why: str) -> None:
        log.warning("SAN channel from %s (host %s): %s; channel dropped", self.peer, self.host_id, why)
        self.srv.c_protocol_errors += 1
        self.out.clear()
        if self.transport is not None:
            self.transport.abort()

    # --- input ---------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except ProtocolError as e:
            self.fail(str(e))
            return
        if not self.authed:
            if not frames:
                return
            ftype, _, _, payload = frames[0]
            if ftype != HELLO:
                self.fail(f"first frame is {TYPE_NAMES.get(ftype)}, expected HELLO")
                return
            try:
                self.hello(payload)
            except ProtocolError as e:
                self.fail(str(e))
                return
            if not self.authed:
                return
            frames = frames[1:]
        conns = self.conns
        srv = self.srv
        push_accept = srv.push_accept
        try:
            for ftype, cid, arg, payload in frames:
                if ftype == SEND:
                    c = conns.get(cid)
                    if c is not None:
                        c.host_send(payload)
                elif ftype == SEND_CLOSE:
                    c = conns.pop(cid, None)
                    if c is not None:
                        c.host_send(payload)
                        c.host_close(False)
                        if push_accept:
                            srv.host_finished(self)
                elif ftype == RECV_REQ:
                    c = conns.get(cid)
                    if c is not None:
                        c.serve_recv(arg)
                elif ftype == CLOSE:
                    c = conns.pop(cid, None)
                    if c is not None:
                        c.host_close(bool(arg))
                        if push_accept:
                            srv.host_finished(self)
                    elif arg:
                        self.emit(CLOSE_DONE, cid, 0)
                elif ftype == ACCEPT_REQ:
                    self.srv.accept_request(self, arg)
                elif ftype == CREDIT:
                    c = conns.get(cid)
                    if c is not None:
                        c.rwin += arg
                        if c.rwin > RECV_WINDOW:
                            raise ProtocolError(f"credit overflow on connection {cid}")
                        if c.rlen or (c.eof and not c.eof_sent):
                            c.push_buffered()
                elif ftype == SHUTDOWN:
                    c = conns.get(cid)
                    if c is not None and c.transport.can_write_eof():
                        c.transport.write_eof()
                elif ftype == LISTEN:
                    self.want_peer = self.want_peer or payload[:1] == b"\x01"
                    self.srv.listen_request(self, cid, arg)
                elif ftype == CONNECT:
                    self.srv.connect_request(self, cid, arg, payload)
                elif ftype == PING:
                    self.emit(PONG, 0, arg)
                elif ftype == ERROR:
                    log.warning("host %s reports error %d on connection %d: %s",
                                self.host_id, arg, cid, bytes(payload).decode(errors="replace"))
                else:
                    raise ProtocolError(f"host may not send {TYPE_NAMES.get(ftype)} frames")
        except ProtocolError as e:
            self.fail(str(e))

    def hello(self, payload: bytes) -> None:
        h = decode_hello(payload)
        cfg = self.srv.cfg
        if not hmac.compare_digest(h.token.encode(), cfg.token.encode()):
            self.emit(ERROR, 0, errno.EACCES, b"bad token: this SAN belongs to another testbed")
            self.flush()
            log.warning("SAN channel from %s presented a wrong token; refused", self.peer)
            self.srv.c_auth_failures += 1
            self.transport.close()  # type: ignore[union-attr]
            return
        if h.mode != cfg.mode.name:
            msg = f"host runs mode {h.mode!r} but this TCP server runs {cfg.mode.name!r}"
            self.emit(ERROR, 0, errno.EINVAL, msg.encode())
            self.flush()
            log.warning("host %s: %s; refused", h.host, msg)
            self.transport.close()  # type: ignore[union-attr]
            return
        self.authed = True
        self.host_id = h.host
        if self.hello_timer:
            self.hello_timer.cancel()
        payload = json.dumps({"version": PROTOCOL_VERSION, "mode": cfg.mode.name, "server": os.uname().nodename}).encode()
        self.emit(WELCOME, 0, 0, payload)
        self.srv.host_attached(self)


class _OutboundConn(ClientConn):
    """A connection the host asked for (CONNECT): same data path as an accepted one."""

    def __init__(self, srv: "TcpServer", port: PortState, host: HostChannel, req: int) -> None:
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


class TcpServer:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        mode = cfg.mode
        self.push = mode.push_data
        self.push_accept = mode.push_accept
        self.setup_with_accept = mode.setup_with_accept
        self.sync_send = mode.sync_send
        self.ports: dict[int, PortState] = {}
        self.hosts: list[HostChannel] = []
        self.conns: dict[int, ClientConn] = {}
        self.next_cid = 0
        self.tick = 0
        self.waiting: list[ClientConn] = []  # setup-with-accept: no first data yet
        self.wait_timer: asyncio.TimerHandle | None = None
        self.san_server: asyncio.AbstractServer | None = None
        self.started = time.time()
        # counters (the stats file)
        self.c_open = 0
        self.c_total = 0
        self.c_refused = 0
        self.c_client_in = 0
        self.c_client_out = 0
        self.c_eager_data = 0
        self.c_eager_accepts = 0
        self.c_idle_closed = 0
        self.c_protocol_errors = 0
        self.c_auth_failures = 0
        self.c_host_losses = 0
        self.c_placed_requests = 0
        self.c_placed_bytes = 0
        self.c_placed_conns = 0
        self.c_place_handoffs = 0
        self.c_queued_total = 0
        self.c_shed = 0
        self.c_stale = 0
        self.c_listener_pauses = 0
        self.cache: dict | None = None
        self.place: _placement.Control | None = None
        self.poller = rawio.Poller(self.loop) if cfg.client_io == "epoll" else None
        self.pacer: PollingPacer | None = None
        self._frames_out_gone = 0
        self._frames_in_gone = 0
        self._bytes_out_gone = 0
        self._bytes_in_gone = 0

    async def start(self) -> None:
        cfg = self.cfg
        if cfg.poll_us and self.poller is None:
            # uvloop's listener accepts about one connection per loop iteration, so with a
            # polling period its accept queue would grow without bound
            raise ValueError("polling (--poll-us) needs --client-io epoll")
        if cfg.serve_static:
            self.cache = _placement.load_cache(cfg.serve_static)
            self.place = _placement.Control(self.loop, cfg.placement_file, cfg.placement_share)
            self.place.start()
            log.info("function placement: %d cached files from %s, share %.3f%s", len(self.cache),
                     cfg.serve_static, self.place.share,
                     f" (control file {cfg.placement_file})" if cfg.placement_file else "")
        await self.open_port(cfg.listen_port)
        self.san_server = await channels.serve(cfg.san, lambda: HostChannel(self))
        self.loop.call_later(1.0, self._sweep)
        if cfg.queue_deadline > 0 and cfg.overload_control:
            self.loop.call_later(self._queue_period(), self._sweep_queue)
        if cfg.poll_us:
            self.pacer = PollingPacer(self.loop, cfg.poll_us / 1e6, self.flush_hosts).start()
        if cfg.stats_file:
            self.loop.call_soon(self._write_stats)
        log.info("TCP server: clients on %s:%d, hosts on %s, mode %s",
                 cfg.listen_host, cfg.listen_port, cfg.san, cfg.mode.name)

    async def open_port(self, port: int) -> PortState:
        ps = self.ports.get(port)
        if ps is None:
            ps = PortState(port)
            place = self.place
            if place is None:
                def factory() -> ClientConn:
                    return ClientConn(self, ps)
            else:
                rnd = random.random

                def factory() -> ClientConn:
                    share = place.share  # one draw per new connection; none at share 0
                    if share > 0.0 and (share >= 1.0 or rnd() < share):
                        return PlacedConn(self, ps)
                    return ClientConn(self, ps)
            if self.poller is not None:
                ps.server = rawio.RawListener(self.poller, self.cfg.listen_host, port, factory,
                                             backlog=self.cfg.listen_backlog)
            else:
                ps.server = await self.loop.create_server(
                    factory, self.cfg.listen_host, port, reuse_address=True,
                    backlog=self.cfg.listen_backlog)
            defer = self.cfg.defer_accept
            if defer is None:
                defer = 1.0 if self.setup_with_accept else 0.0
            if defer > 0:
                # the kernel completes the accept only once the client's first bytes are
                # in: connection and request arrive in one wakeup, not two
                for sock in ps.server.sockets:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT,
                                    max(1, round(defer)))
            self.ports[port] = ps
        return ps

    async def close(self) -> None:
        for ps in self.ports.values():
            if ps.server:
                ps.server.close()
        if self.san_server:
            self.san_server.close()
        for h in list(self.hosts):
            if h.transport:
                h.transport.abort()
        for c in list(self.conns.values()):
            c.transport.abort()
        if self.poller is not None:
            self.poller.close()
        if self.pacer is not None:
            self.pacer.stop()

    # --- hosts ---------------------------------------------------------------------
    def flush_hosts(self) -> None:
        for h in self.hosts:
            if h.out:
                h.flush()

    def host_attached(self, h: HostChannel) -> None:
        self.hosts.append(h)
        log.info("host %s attached from %s", h.host_id, h.peer)

    def host_detached(self, h: HostChannel) -> None:
        if h in self.hosts:
            self.hosts.remove(h)
            self.c_host_losses += 1
            log.warning("host %s detached; closing its %d client connections", h.host_id, len(h.conns))
        self._frames_out_gone += h.frames_out
        self._frames_in_gone += h.decoder.frames_in
        self._bytes_out_gone += h.bytes_out
        self._bytes_in_gone += h.decoder.bytes_in
        for ps in h.ports:
            if h in ps.hosts:
                ps.hosts.remove(h)
            ps.waiters.pop(h, None)
        for c in list(h.conns.values()):
            c.host = None
            c.transport.abort()  # its clients see a prompt reset, not a hang
        h.conns.clear()
        h.out.clear()

    def listen_request(self, h: HostChannel, req: int, port: int) -> None:
        if not 1 <= port <= 65535:
            h.emit(ERROR, req, errno.EINVAL, f"LISTEN on port {port}: ports are 1-65535".encode())
            return

        async def go() -> None:
            try:
                if port != self.cfg.listen_port and port not in self.ports:
                    await self.open_port(port)
            except OSError as e:
                h.emit(ERROR, req, e.errno or errno.EADDRINUSE, f"listen on port {port}: {e}".encode())
                return
            ps = self.ports[port]
            if h not in ps.hosts and not h.dead:
                ps.hosts.append(h)
                h.ports.append(ps)
            h.emit(LISTEN_OK, req, port)
            # connections that arrived while no host listened
            if self.push_accept:
                while ps.hosts and ps.pending:
                    to = self.pick_host(ps)
                    if not self.has_room(to):
                        break
                    c = self.next_pending(ps)
                    if c is None:
                        break
                    self.assign(c, to)

        self.loop.create_task(go())

    def connect_request(self, h: HostChannel, req: int, port: int, payload: bytes) -> None:
        if not 1 <= port <= 65535:
            h.emit(ERROR, req, errno.EINVAL, f"CONNECT to port {port}: ports are 1-65535".encode())
            return
        addr = bytes(payload).decode(errors="replace")
        ps = self.ports.get(0) or PortState(0)

        async def go() -> None:
            try:
                await self.loop.create_connection(lambda: _OutboundConn(self, ps, h, req), addr, port)
            except OSError as e:
                h.emit(ERROR, req, e.errno or errno.ECONNREFUSED, f"connect {addr}:{port}: {e}".encode())

        self.loop.create_task(go())

    def pick_host(self, ps: PortState) -> HostChannel:
        hosts = ps.hosts
        if len(hosts) == 1:
            return hosts[0]
        # least open connections, round-robin among equals
        ps.rr = (ps.rr + 1) % len(hosts)
        best = hosts[ps.rr]
        for h in hosts:
            if len(h.conns) < len(best.conns):
                best = h
        return best

    # --- clients -------------------------------------------------------------------
    def client_connected(self, c: ClientConn) -> None:
        if self.admit(c):
            self.dispatch(c)

    def admit(self, c: ClientConn) -> bool:
        """Count a new client connection; False (and aborted) beyond --max-conns."""
        if self.c_open >= self.cfg.max_conns:
            self.c_refused += 1
            c.transport.abort()
            return False
        self.next_cid += 1
        c.cid = cid = self.next_cid
        self.conns[cid] = c
        self.c_open += 1
        self.c_total += 1
        c.last = self.tick
        return True

    def dispatch(self, c: ClientConn) -> None:
        """Give an admitted connection to a host (push accept, or a host's ACCEPT_REQ is
        waiting) or queue it."""
        if c.eof and not c.rlen:  # closed before it asked for anything: nothing to serve
            self.c_stale += 1
            c.transport.abort()
            return
        ps = c.port
        if self.push_accept:
            if ps.hosts and not ps.pending:
                h = self.pick_host(ps)
                if self.has_room(h):
                    self.assign(c, h)
                    return
        elif ps.waiters:
            self.assign(c, self.pick_waiter(ps))
            return
        if not self.hosts:  # nobody to serve it: fail fast rather than hang
            self.c_refused += 1
            c.transport.abort()
            return
        self.enqueue(c, ps)

    # --- overload control (module docstring) ---------------------------------------
    def has_room(self, h: HostChannel) -> bool:
        """Push modes: may ``h`` be given one more connection (``--host-conns``)?"""
        bound = self.cfg.host_conns
        return not bound or not self.cfg.overload_control or len(h.conns) < bound

    def host_finished(self, h: HostChannel) -> None:
        """Push modes: ``h`` finished a connection; give it the oldest queued ones it has
        room for."""
        if not self.push_accept or h.dead:
            return
        for ps in h.ports:
            while ps.pending and self.has_room(h):
                c = self.next_pending(ps)
                if c is None:
                    break
                self.assign(c, h)

    def enqueue(self, c: ClientConn, ps: PortState) -> None:
        pending = ps.pending
        pausable = isinstance(ps.server, rawio.RawListener) and self.cfg.overload_control
        if len(pending) >= self.cfg.backlog and not pausable:
            self.c_refused += 1  # the event loop's listener cannot wait: refuse, as before
            self.reset(c)
            return
        c.queued_at = self.loop.time()
        pending.append(c)
        self.c_queued_total += 1
        if len(pending) >= self.cfg.backlog and pausable and not ps.paused:
            # (a held placed connection handed off meanwhile may still join: a few over)
            ps.paused = True
            self.c_listener_pauses += 1
            ps.server.pause()  # type: ignore[union-attr]

    def next_pending(self, ps: PortState) -> ClientConn | None:
        """The oldest queued connection still worth a host's time, or None."""
        pending = ps.pending
        c = None
        deadline = self.cfg.queue_deadline if self.cfg.overload_control else 0.0
        limit = self.loop.time() - deadline if deadline > 0 else 0.0
        while pending:
            q = pending.popleft()
            if q.transport.is_closing() or (q.eof and not q.rlen):
                self.c_stale += 1  # its client reset or closed while it waited
                if not q.transport.is_closing():
                    q.transport.abort()
                continue
            if q.queued_at < limit:
                self.c_shed += 1
                self.reset(q)
                continue
            c = q
            break
        if ps.paused and len(pending) <= self.cfg.backlog // 2:
            self._resume_port(ps)
        return c

    def _resume_port(self, ps: PortState) -> None:
        ps.paused = False
        if isinstance(ps.server, rawio.RawListener):
            ps.server.resume()

    def reset(self, c: ClientConn) -> None:
        """Close with a reset (SO_LINGER 0), not a FIN: the client learns at once that this
        attempt failed, and no TIME_WAIT is left here."""
        sock = c.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        c.transport.abort()

    def _queue_period(self) -> float:
        return min(1.0, max(0.02, self.cfg.queue_deadline / 4))

    def _sweep_queue(self) -> None:
        """Shed what outlived the deadline even when no host asks (a stalled host): the
        queue then frees up and the listener resumes, as a kernel's would."""
        limit = self.loop.time() - self.cfg.queue_deadline
        for ps in self.ports.values():
            pending = ps.pending
            while pending and (pending[0].queued_at < limit or pending[0].transport.is_closing()):
                q = pending.popleft()
                if q.transport.is_closing():
                    self.c_stale += 1
                else:
                    self.c_shed += 1
                    self.reset(q)
            if ps.paused and len(pending) <= self.cfg.backlog // 2:
                self._resume_port(ps)
        self.loop.call_later(self._queue_period(), self._sweep_queue)

    def assign(self, c: ClientConn, h: HostChannel) -> None:
        c.host = h
        h.conns[c.cid] = c
        if self.setup_with_accept and not c.rlen and not c.eof:
            c.wait_since = self.loop.time()
            self.waiting.append(c)
            if self.wait_timer is None:
                self.wait_timer = self.loop.call_later(self.cfg.setup_wait, self._setup_timeout)
            return
        self.announce(c)

    def announce(self, c: ClientConn) -> None:
        h = c.host
        if h is None or c.announced:
            return
        c.announced = True
        c.wait_since = 0.0
        # getpeername is a syscall: only for hosts that asked for addresses in LISTEN
        peer = encode_peer(c.transport.get_extra_info("peername")) if h.want_peer else _NO_PEER
        if self.push_accept:
            self.c_eager_accepts += 1
            if self.setup_with_accept and c.rlen:
                first = c._take(min(c.rwin, MAX_PAYLOAD - len(peer)))
                c.rwin -= len(first)
                h.emit(CONN_NEW, c.cid, c.port.port, peer + first)
                self.c_eager_data += 1
                c._maybe_resume()  # a first read that filled the window paused reading
            else:
                h.emit(CONN_NEW, c.cid, c.port.port, peer)
            if c.rlen or c.eof:
                c.push_buffered()
        else:
            h.emit(ACCEPTED, c.cid, c.port.port, peer)
            if self.push and (c.rlen or c.eof):
                c.push_buffered()

    def _setup_timeout(self) -> None:
        self.wait_timer = None
        limit = self.loop.time() - self.cfg.setup_wait
        keep = []
        for c in self.waiting:
            if c.announced or c.host is None:
                continue
            if c.wait_since <= limit:
                self.announce(c)
            else:
                keep.append(c)
        self.waiting = keep
        if keep:
            self.wait_timer = self.loop.call_later(self.cfg.setup_wait, self._setup_timeout)

    def accept_request(self, h: HostChannel, port: int) -> None:
        ps = self.ports.get(port)
        if ps is None or h not in ps.hosts:
            h.emit(ERROR, 0, errno.EINVAL, f"ACCEPT_REQ for port {port} without LISTEN".encode())
            return
        c = self.next_pending(ps) if ps.pending else None
        if c is not None:
            self.assign(c, h)
            return
        ps.waiters[h] = ps.waiters.get(h, 0) + 1

    def pick_waiter(self, ps: PortState) -> HostChannel:
        """Pull accept: among hosts with an ACCEPT_REQ outstanding, the least loaded."""
        w = ps.waiters
        if len(w) == 1:
            h = next(iter(w))
        else:
            h = min(w, key=lambda x: len(x.conns))
        n = w[h] - 1
        if n:
            w[h] = n
        else:
            del w[h]
        return h

    # --- housekeeping --------------------------------------------------------------
    def _sweep(self) -> None:
        self.tick += 1
        limit = self.tick - max(1, int(self.cfg.idle_timeout))
        idle = [c for c in self.conns.values() if c.last < limit]
        for c in idle:
            self.c_idle_closed += 1
            c.transport.abort()
        for ps in self.ports.values():
            while ps.pending and ps.pending[0].transport.is_closing():
                ps.pending.popleft()
                self.c_stale += 1
            if ps.paused and len(ps.pending) <= self.cfg.backlog // 2:
                self._resume_port(ps)
        self.loop.call_later(1.0, self._sweep)

    def stats(self) -> dict:
        hosts = {}
        for h in self.hosts:
            hosts[h.host_id if h.host_id not in hosts else f"{h.host_id}@{id(h):x}"] = {
                "peer": str(h.peer),
                "connections": len(h.conns),
                "frames_in": h.decoder.frames_in,
                "frames_out": h.frames_out,
                "bytes_in": h.decoder.bytes_in,
                "bytes_out": h.bytes_out,
                "san_write_buffer": h.transport.get_write_buffer_size() if h.transport else 0,
                "paused": h.paused,
            }
        return {
            "time": time.time(),
            "uptime_s": time.time() - self.started,
            "mode": self.cfg.mode.name,
            "pid": os.getpid(),
            "connections_open": self.c_open,
            "connections_total": self.c_total,
            "connections_refused": self.c_refused,
            "idle_closed": self.c_idle_closed,
            "frames_in": self._frames_in_gone + sum(h.decoder.frames_in for h in self.hosts),
            "frames_out": self._frames_out_gone + sum(h.frames_out for h in self.hosts),
            "san_bytes_in": self._bytes_in_gone + sum(h.decoder.bytes_in for h in self.hosts),
            "san_bytes_out": self._bytes_out_gone + sum(h.bytes_out for h in self.hosts),
            "client_bytes_in": self.c_client_in,
            "client_bytes_out": self.c_client_out,
            "accept_queue": sum(len(p.pending) for p in self.ports.values()),
            "queued": sum(len(p.pending) for p in self.ports.values()),
            "queued_total": self.c_queued_total,
            "shed": self.c_shed,
            "stale": self.c_stale,
            "listener_pauses": self.c_listener_pauses,
            "listener_paused": any(p.paused for p in self.ports.values()),
            "backlog": self.cfg.backlog,
            "host_conns": self.cfg.host_conns,
            "queue_deadline": self.cfg.queue_deadline,
            "overload_control": self.cfg.overload_control,
            "accept_waiters": sum(sum(p.waiters.values()) for p in self.ports.values()),
            "setup_waiting": len(self.waiting),
            "client_buffered_bytes": sum(c.rlen for c in self.conns.values()),
            "eager_hits": self.c_eager_data + self.c_eager_accepts,
            "eager_data_frames": self.c_eager_data,
            "eager_accepts": self.c_eager_accepts,
            "pending_async_sends": sum(1 for c in self.conns.values() if c.wpaused),
            "unacked_send_bytes": sum(c.unacked for c in self.conns.values()),
            "protocol_errors": self.c_protocol_errors,
            "auth_failures": self.c_auth_failures,
            "host_losses": self.c_host_losses,
            "placed_requests": self.c_placed_requests,
            "placed_bytes": self.c_placed_bytes,
            "placed_connections": self.c_placed_conns,
            "placement_handoffs": self.c_place_handoffs,
            "placement_share": self.place.share if self.place is not None else None,
            "poll_us": self.cfg.poll_us,
            "polls": self.pacer.polls if self.pacer is not None else 0,
            "poll_overruns": self.pacer.overruns if self.pacer is not None else 0,
            "hosts_attached": len(self.hosts),
            "hosts": hosts,
        }

    def _write_stats(self) -> None:
        path = self.cfg.stats_file
        assert path is not None
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.stats()))
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot write stats file %s: %s", path, e)
        self.loop.call_later(0.5, self._write_stats)


# --- command line --------------------------------------------------------------------------


def _addr_port(s: str) -> tuple[str, int]:
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{s!r}: expected ADDR:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def check_overload(backlog: object, listen_backlog: object, queue_deadline: object,
                   host_conns: object = ServerConfig.host_conns) -> None:
    """The overload-control bounds as given by a user, or ValueError (one rule for the
    daemon's options and the service options of ``up`` and experiment files)."""
    for name, v in (("backlog", backlog), ("listen_backlog", listen_backlog)):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65535:
            raise ValueError(f"{name} must be a whole number in [1, 65535], not {v!r}")
    if not isinstance(host_conns, int) or isinstance(host_conns, bool) or not 0 <= host_conns <= 65535:
        raise ValueError(f"host_conns must be a whole number in [0, 65535] (0 = no bound), not {host_conns!r}")
    if (not isinstance(queue_deadline, (int, float)) or isinstance(queue_deadline, bool)
            or not 0 <= queue_deadline <= 3600):
        raise ValueError(f"queue_deadline must be seconds in [0, 3600] (0 = no limit), not {queue_deadline!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.offload.server", description=__doc__.split("\n")[0])
    ap.add_argument("--listen", required=True, type=_addr_port, help="public ADDR:PORT for clients")
    ap.add_argument("--san", required=True, help="tcp:ADDR:PORT, unix:PATH or shm:NAME")
    ap.add_argument("--mode", required=True, help="split, async-send, eager-receive, eager-accept, setup-with-accept")
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--stats-file", type=Path)
    ap.add_argument("--max-conns", type=int, default=20000)
    ap.add_argument("--backlog", type=int, default=ServerConfig.backlog,
                    help="connections accepted but not yet given to a host, per port; at this "
                         "bound the daemon stops accepting (the rest wait in the kernel's backlog)")
    ap.add_argument("--listen-backlog", type=int, default=ServerConfig.listen_backlog,
                    help="the kernel's listen backlog on the public port (SYNs beyond it are dropped)")
    ap.add_argument("--overload-control", choices=("on", "off"), default="on",
                    help="off: the daemon before it (accept everything, queue up to --backlog, "
                         "reset beyond; no deadline), for comparisons")
    ap.add_argument("--host-conns", type=int, default=ServerConfig.host_conns,
                    help="push modes: connections given to one host and not yet finished by it; "
                         "beyond, new ones queue as in the pull modes (0 = no bound)")
    ap.add_argument("--queue-deadline", type=float, default=ServerConfig.queue_deadline,
                    help="seconds a connection may wait for a host before it is reset (0 = no limit)")
    ap.add_argument("--idle-timeout", type=float, default=60.0)
    ap.add_argument("--defer-accept", type=float, default=None,
                    help="TCP_DEFER_ACCEPT seconds on the public port (0 = off; default: 1 in "
                         "setup-with-accept, off otherwise, so silent clients are announced at once)")
    ap.add_argument("--client-io", choices=("epoll", "asyncio"), default="epoll",
                    help="client sockets on our own epoll fast path (default) or on the event "
                         "loop's transports (for A/B comparisons)")
    ap.add_argument("--poll-us", type=int, default=0,
                    help="poll every N microseconds instead of waking up per event (the paper's "
                         "'No Interrupts'; adds up to two periods of latency; 0 = off)")
    ap.add_argument("--serve-static", metavar="DOCROOT",
                    help="function placement: cache DOCROOT's manifest files and answer eligible "
                         "static requests here for a share of new connections")
    ap.add_argument("--placement-file", type=Path, metavar="PATH",
                    help='the share as JSON {"share": x}, re-read when it changes (every 100 ms; SIGHUP: now)')
    ap.add_argument("--placement-share", type=float, default=0.0,
                    help="the share until the placement file says otherwise (default 0)")
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if (a.placement_file or a.placement_share) and not a.serve_static:
            raise ValueError("--placement-file/--placement-share need --serve-static DOCROOT")
        check_period_us(a.poll_us)
        check_overload(a.backlog, a.listen_backlog, a.queue_deadline, a.host_conns)
        if not 0.0 <= a.placement_share <= 1.0:
            raise ValueError("--placement-share must be in [0, 1]")
        if a.serve_static and not (Path(a.serve_static) / "manifest.json").is_file():
            raise ValueError(f"--serve-static {a.serve_static}: no manifest.json there")
        mode = get_mode(a.mode)
        if not mode.offloaded:
            raise ValueError("mode 'regular' has no TCP server: the tcpserver node only routes IP")
        cfg = ServerConfig(
            listen_host=a.listen[0], listen_port=a.listen[1], san=channels.parse(a.san), mode=mode,
            token=read_token(a.token_file), stats_file=a.stats_file, max_conns=a.max_conns,
            backlog=a.backlog, listen_backlog=a.listen_backlog, queue_deadline=a.queue_deadline,
            host_conns=a.host_conns,
            overload_control=a.overload_control == "on",
            idle_timeout=a.idle_timeout, defer_accept=a.defer_accept,
            serve_static=a.serve_static, placement_file=a.placement_file, placement_share=a.placement_share,
            client_io=a.client_io, poll_us=a.poll_us,
        )
    except (ValueError, OSError) as e:
        print(f"offload.server: {e}", file=sys.stderr)
        return 2
    loop_name = install_loop()

    async def run() -> None:
        srv = TcpServer(cfg)
        try:
            await srv.start()
        except OSError as e:
            print(f"offload.server: cannot listen: {e}", file=sys.stderr)
            raise SystemExit(1)
        except ValueError as e:  # a bad --serve-static document root
            print(f"offload.server: {e}", file=sys.stderr)
            raise SystemExit(2)
        if srv.place is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, srv.place.check, True)
        log.info("event loop: %s", loop_name)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await srv.close()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())

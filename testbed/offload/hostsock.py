"""Host socket library: socket calls tunneled to the TCP server over one SAN channel.

Three ways in, all over the same frames:

- ``Tunnel.create_server(protocol_factory, port)``: like ``loop.create_server``; every
  connection gets an asyncio ``Protocol`` and a ``TunnelTransport`` with the Transport
  methods an application uses (write, writelines, write_eof, close, abort, pause_reading,
  get_extra_info...). An application written as an asyncio Protocol therefore runs
  unchanged on kernel sockets (regular mode) or tunneled sockets (offloaded modes).
- ``Tunnel.listen(port)`` -> ``TunnelListener`` whose ``await accept()`` gives a
  ``TunnelSocket`` with ``await recv(n)``, ``await send(b)``, ``await sendall(b)``,
  ``shutdown()``, ``await close()``: socket calls one by one, each crossing the SAN the way
  the mode says (``modes.py``).
- ``BlockingTunnel``: the same socket calls from ordinary threads (the tunnel runs in a
  background event-loop thread).

This module is the channel (``Tunnel``: frames in and out through ``writer.FrameWriter``,
listeners, the handshake); one connection's transport and socket calls are
``hostconn.py``, its windows ``flow.py``.

The mode decides what crosses the SAN (see docs/modes.md): in ``split`` each send waits for
SEND_DONE and close for CLOSE_DONE; in pull modes each recv is a RECV_REQ round trip; in
push modes the TCP server sends data ahead and the host returns window credit.

Under overload (docs/limits.md, "Overload") the host does no work for a client that has
given up: a connection whose RESET is in the same batch of frames as its announcement or
its data is never shown to the application (counted as ``stale_skipped``); a socket-API listener
holds at most ``max_backlog`` unaccepted connections (beyond, they are closed, counted as
``backlog_refused``) and ``accept()`` skips the ones reset while they waited. The TCP
server bounds the rest (``scheduler.py``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import struct
import threading
from typing import Any, Callable

from . import channels
from .hostconn import TunnelError, TunnelSocket, TunnelTransport
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
    HELLO,
    LISTEN,
    LISTEN_OK,
    MAX_TYPE,
    PING,
    PONG,
    RESET,
    SEND_DONE,
    SEND_ZC,
    TYPE_NAMES,
    WELCOME,
    ZC_DONE,
    FrameDecoder,
    Hello,
    ProtocolError,
    decode_peer,
    encode_hello,
)
from .transport import GONE
from .writer import FrameWriter
from .zerocopy import MIN_BYTES, OFFSET, SendArea

log = logging.getLogger("testbed.offload.hostsock")

MAX_BACKLOG = 1024  # a socket-API listener's unaccepted connections (push accept)

__all__ = ["BlockingTunnel", "Tunnel", "TunnelError", "TunnelListener", "TunnelSocket", "TunnelTransport",
           "open_tunnel", "serve_forever"]


class TunnelListener:
    """A LISTEN on the TCP server: auto-accepts into a protocol factory, or queues for accept()."""

    def __init__(self, ch: "Tunnel", port: int, factory: Callable[[], asyncio.BaseProtocol] | None,
                 accept_ahead: int) -> None:
        self.ch = ch
        self.port = port
        self.factory = factory
        self.accept_ahead = accept_ahead  # pull accept: ACCEPT_REQs kept outstanding
        self.outstanding = 0
        self.backlog: collections.deque[TunnelSocket] = collections.deque()
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.closed = False
        self.max_backlog = MAX_BACKLOG  # socket API: unaccepted connections held at most

    def _refill(self) -> None:
        if self.ch.push_accept or self.closed or not self.ch.attached:
            return
        while self.outstanding < self.accept_ahead:
            self.outstanding += 1
            self.ch.emit(ACCEPT_REQ, 0, self.port)

    def _on_conn(self, tr: TunnelTransport, first: bytes) -> None:
        ch = self.ch
        if self.factory is not None:
            proto = self.factory()
            tr._protocol = proto
            ch.conns[tr.cid] = tr
            proto.connection_made(tr)
            if first:
                tr._deliver(first)
            elif not ch.push_data:
                tr._want_read()
        else:
            sock = TunnelSocket(tr)
            ch.conns[tr.cid] = tr
            if first:
                sock._proto.data_received(first)
                credit = tr.consumed(len(first))
                if credit:
                    ch.emit(CREDIT, tr.cid, credit)
            while self.waiters:
                w = self.waiters.popleft()
                if not w.done():
                    w.set_result(sock)
                    return
            if len(self.backlog) >= self.max_backlog:  # nobody accepts: do not pile them up
                ch.backlog_refused += 1
                tr.abort()
                return
            self.backlog.append(sock)

    async def accept(self) -> "TunnelSocket":
        """One connection; in pull-accept modes this is the ACCEPT_REQ round trip."""
        while self.backlog:
            sock = self.backlog.popleft()
            if not sock.tr._closed:
                return sock
            self.ch.stale_skipped += 1  # reset while it waited: its client is gone
        fut = self.ch.loop.create_future()
        self.waiters.append(fut)
        if not self.ch.push_accept and self.outstanding < len(self.waiters):
            self.outstanding += 1
            self.ch.emit(ACCEPT_REQ, 0, self.port)
        return await fut

    def close(self) -> None:
        self.closed = True
        self.ch.listeners.pop(self.port, None)



class Tunnel(FrameWriter, asyncio.Protocol):
    """The host's end of one SAN channel: frames in, frames out (``writer.FrameWriter``)."""

    def __init__(self, mode: Mode, token: str, host_id: str) -> None:
        self.mode = mode
        self.sync_send = mode.sync_send
        self.push_data = mode.push_data
        self.push_accept = mode.push_accept
        self.token = token
        self.host_id = host_id
        self.init_writer(asyncio.get_running_loop())
        self.decoder = FrameDecoder()
        self.conns: dict[int, TunnelTransport] = {}
        self.listeners: dict[int, TunnelListener] = {}
        self.attached = False
        self.welcome: asyncio.Future = self.loop.create_future()
        self.closed: asyncio.Future = self.loop.create_future()
        self.requests: dict[int, asyncio.Future] = {}
        self.next_req = 0
        self.drain_waiters: dict[int, list[asyncio.Future]] = {}
        self.lost: list[tuple[TunnelTransport, Exception | None]] = []  # connection_lost due
        # SAN messages received by frame type (``sent``: the writer's): what the modes change
        self.received = [0] * (MAX_TYPE + 1)
        self.stale_skipped = 0  # connections (or their data) dropped: reset in the same batch
        self.backlog_refused = 0
        # zero-copy sends (zerocopy.py): the send area when the TCP server offers one, and the
        # smallest write that goes through it (no area: none does)
        self.zc: SendArea | None = None
        self.zc_min = 1 << 62

    # --- channel -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        area = transport.get_extra_info("shm_send_area")
        if area is not None:
            self.zc = SendArea(area)
            self.zc_min = MIN_BYTES
        self.emit(HELLO, 0, 0, encode_hello(Hello(self.token, self.host_id, self.mode.name)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.attached = False
        self.dead = True
        err = TunnelError(f"SAN channel to the TCP server lost: {exc or 'closed'}")
        for tr in list(self.conns.values()):
            tr._lost(err)
        self.conns.clear()
        for fut in list(self.requests.values()):
            if not fut.done():
                fut.set_exception(err)
        for ws in self.drain_waiters.values():
            for w in ws:
                if not w.done():
                    w.set_result(None)
        self.drain_waiters.clear()
        for ls in self.listeners.values():
            ls.outstanding = 0
            for w in ls.waiters:
                if not w.done():
                    w.set_exception(err)
            ls.waiters.clear()
        if not self.welcome.done():
            self.welcome.set_exception(err)
        if not self.closed.done():
            self.closed.set_result(exc)

    def report_lost(self) -> None:
        lost, self.lost = self.lost, []
        for tr, exc in lost:
            proto = tr._protocol
            tr._protocol = GONE  # no transport <-> protocol cycle left for the collector
            try:
                proto.connection_lost(exc)
            except Exception:  # the application's bug, as in asyncio
                log.exception("connection_lost of %r failed", proto)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except ProtocolError as e:
            log.error("TCP server sent an invalid frame stream (%s); dropping the channel", e)
            self.abort_channel()
            return
        conns = self.conns
        received = self.received
        # connections reset further on in this batch: their clients are gone, so neither
        # their announcement nor their bytes reach the application (one set per batch)
        resets = {f[1] for f in frames if f[0] == RESET} if len(frames) > 1 else None
        for ftype, cid, arg, payload in frames:
            received[ftype] += 1
            if ftype == DATA:
                tr = conns.get(cid)
                if tr is not None:
                    if resets and cid in resets:
                        continue
                    tr._on_data(payload)
            elif ftype == CONN_NEW or ftype == ACCEPTED:
                if resets and cid in resets:
                    self._skip_new(arg, ftype)
                    continue
                self._new_conn(cid, arg, payload, ftype)
            elif ftype == CREDIT:
                tr = conns.get(cid)
                if tr is not None:
                    tr._credit_back(arg)
                    self._wake_drain(cid, tr)
            elif ftype == SEND_DONE:
                tr = conns.get(cid)
                if tr is not None:
                    tr._send_done(arg)
                    self._wake_drain(cid, tr)
            elif ftype == ZC_DONE:
                try:
                    for (off,) in OFFSET.iter_unpack(payload):
                        self.zc.free(off)  # type: ignore[union-attr]
                except (ValueError, AttributeError, struct.error) as e:
                    log.error("TCP server sent a bad ZC_DONE (%s); dropping the channel", e)
                    self.abort_channel()
                    return
            elif ftype == EOF:
                tr = conns.get(cid)
                if tr is not None:
                    tr._on_eof()
            elif ftype == RESET:
                tr = conns.get(cid)
                if tr is not None:
                    tr._lost(None if arg == 0 else ConnectionResetError(arg, "client connection reset"))
                    self._wake_drain(cid, tr)
            elif ftype == CLOSE_DONE:
                tr = conns.get(cid)
                if tr is not None:
                    tr._lost(None)
            elif ftype == WELCOME:
                self.attached = True
                if not self.welcome.done():
                    self.welcome.set_result(payload)
            elif ftype in (LISTEN_OK, CONNECTED):
                req = cid if ftype == LISTEN_OK else arg
                fut = self.requests.pop(req, None)
                if fut is not None and not fut.done():
                    fut.set_result((cid, payload))
            elif ftype == ERROR:
                msg = bytes(payload).decode(errors="replace")
                fut = self.requests.pop(cid, None) if cid else None
                if fut is not None and not fut.done():
                    fut.set_exception(OSError(arg, msg))
                else:
                    log.error("TCP server error %d: %s", arg, msg)
                    if not self.welcome.done():
                        self.welcome.set_exception(TunnelError(f"TCP server refused this host: {msg}"))
            elif ftype == PING:
                self.emit(PONG, 0, arg)
            elif ftype == PONG:
                pass
            else:
                log.error("TCP server sent a %s frame, which hosts never get; dropping the channel",
                          TYPE_NAMES.get(ftype))
                self.abort_channel()
                return

    def _wake_drain(self, cid: int, tr: TunnelTransport) -> None:
        ws = self.drain_waiters.get(cid)
        if ws and (tr._closed or (not tr._inflight and not tr._qlen)):
            del self.drain_waiters[cid]
            for w in ws:
                if not w.done():
                    w.set_result(None)

    def _skip_new(self, port: int, ftype: int) -> None:
        """A connection announced and reset in one batch: only the accept bookkeeping."""
        self.stale_skipped += 1
        ls = self.listeners.get(port)
        if ls is None or ftype != ACCEPTED:
            return
        if ls.outstanding:
            ls.outstanding -= 1
        if ls.factory is not None:
            ls._refill()
        elif ls.outstanding < len(ls.waiters):  # accept() still waits: ask again
            ls.outstanding += 1
            self.emit(ACCEPT_REQ, 0, port)

    def _new_conn(self, cid: int, port: int, payload: bytes, ftype: int) -> None:
        off = 3 + payload[0] if payload else 0
        if off < 3 or len(payload) < off:
            log.error("bad connection announcement for connection %d", cid)
            self.emit(CLOSE, cid, 0)
            return
        peer = payload[:off]
        ls = self.listeners.get(port)
        if ls is None:
            self.emit(CLOSE, cid, 0)
            return
        if ftype == ACCEPTED and ls.outstanding:
            ls.outstanding -= 1
        tr = TunnelTransport(self, cid, peer, port)
        ls._on_conn(tr, payload[off:] if len(payload) > off else b"")
        if ls.factory is not None:
            ls._refill()

    # --- calls ---------------------------------------------------------------------
    def _request(self, ftype: int, arg: int, payload: bytes = b"") -> asyncio.Future:
        self.next_req += 1
        fut = self.loop.create_future()
        self.requests[self.next_req] = fut
        self.emit(ftype, self.next_req, arg, payload)
        return fut

    async def create_server(self, factory: Callable[[], asyncio.BaseProtocol], port: int,
                            accept_ahead: int = 32, peer_addresses: bool = False) -> TunnelListener:
        """Like loop.create_server. Without ``peer_addresses`` get_extra_info("peername")
        is None: the TCP server then saves a getpeername call per connection."""
        ls = TunnelListener(self, port, factory, accept_ahead)
        self.listeners[port] = ls
        await self._request(LISTEN, port, b"\x01" if peer_addresses else b"")
        ls._refill()
        return ls

    async def listen(self, port: int) -> TunnelListener:
        ls = TunnelListener(self, port, None, 0)
        self.listeners[port] = ls
        await self._request(LISTEN, port, b"\x01")
        return ls

    async def connect(self, host: str, port: int) -> TunnelSocket:
        """Ask the TCP server to open a connection (e.g. to a file server) for this host."""
        cid, payload = await self._request(CONNECT, port, host.encode())
        peer, _ = decode_peer(payload)
        tr = TunnelTransport(self, cid, peer, 0)
        self.conns[cid] = tr
        return TunnelSocket(tr)

    def send_zc(self, cid: int, data: bytes | bytearray | memoryview) -> bool:
        """Put ``data`` in the send area and send its place (SEND_ZC), or False: no room."""
        off = self.zc.put(data)  # type: ignore[union-attr]
        if off < 0:
            return False
        self.emit(SEND_ZC, cid, len(data), OFFSET.pack(off))
        return True

    def counters(self) -> dict[str, Any]:
        zc = {} if self.zc is None else {"send_area_full": self.zc.full}
        return {
            **zc,
            "frames_sent": {TYPE_NAMES[i]: n for i, n in enumerate(self.sent) if n},
            "frames_received": {TYPE_NAMES[i]: n for i, n in enumerate(self.received) if n},
            "connections_open": len(self.conns),
            "stale_skipped": self.stale_skipped,
            "backlog_refused": self.backlog_refused,
        }

    def abort_channel(self) -> None:
        self.dead = True  # nothing more goes out on a stream the peer cannot parse
        self.transport.abort()  # type: ignore[union-attr]

    def close(self) -> None:
        if self.transport is not None:
            self.flush()
            self.dead = True
            self.transport.close()


async def open_tunnel(spec: str | channels.ChannelSpec, token: str, mode: str | Mode,
                      host_id: str = "host", timeout: float = 5.0) -> Tunnel:
    """Attach to a TCP server once: connect, HELLO, wait for WELCOME (or its refusal)."""
    cs = channels.parse(spec) if isinstance(spec, str) else spec
    m = get_mode(mode) if isinstance(mode, str) else mode
    if not m.offloaded:
        raise ValueError("mode 'regular' does not use a tunnel")
    _, tun = await channels.connect(cs, lambda: Tunnel(m, token, host_id))
    assert isinstance(tun, Tunnel)
    try:
        await asyncio.wait_for(asyncio.shield(tun.welcome), timeout)
    except BaseException:
        tun.close()
        raise
    return tun


async def serve_forever(spec: str, token: str, mode: str, host_id: str, port: int,
                        factory: Callable[[], asyncio.BaseProtocol],
                        on_attach: Callable[[Tunnel], None] | None = None,
                        retry_max: float = 1.0) -> None:
    """Serve ``port`` through the TCP server; re-attach after it (or the SAN) goes away."""
    delay = 0.05
    while True:
        try:
            tun = await open_tunnel(spec, token, mode, host_id)
            await tun.create_server(factory, port)
        except (OSError, asyncio.TimeoutError, TunnelError) as e:
            if isinstance(e, TunnelError) and "refused" in str(e):
                raise
            log.info("TCP server at %s not reachable (%s); retrying in %.2fs", spec, e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, retry_max)
            continue
        delay = 0.05
        log.info("attached to the TCP server at %s as %s (mode %s, port %d)", spec, host_id, mode, port)
        if on_attach:
            on_attach(tun)
        await tun.closed
        log.warning("lost the TCP server at %s; re-attaching", spec)


class BlockingTunnel:
    """Socket calls from ordinary threads; the tunnel lives in a background loop thread."""

    def __init__(self, spec: str, token: str, mode: str, host_id: str = "host") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcps-tunnel", daemon=True)
        self._thread.start()
        self.tunnel: Tunnel = self._call(open_tunnel(spec, token, mode, host_id))

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        fut: concurrent.futures.Future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def listen(self, port: int) -> "BlockingListener":
        return BlockingListener(self, self._call(self.tunnel.listen(port)))

    def connect(self, host: str, port: int) -> "BlockingSocket":
        return BlockingSocket(self, self._call(self.tunnel.connect(host, port)))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self.tunnel.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(2)


class BlockingListener:
    def __init__(self, bt: BlockingTunnel, ls: TunnelListener) -> None:
        self._bt = bt
        self._ls = ls

    def accept(self, timeout: float | None = None) -> "BlockingSocket":
        return BlockingSocket(self._bt, self._bt._call(self._ls.accept(), timeout))


class BlockingSocket:
    def __init__(self, bt: BlockingTunnel, s: TunnelSocket) -> None:
        self._bt = bt
        self._s = s

    def recv(self, n: int = 65536, timeout: float | None = None) -> bytes:
        return self._bt._call(self._s.recv(n), timeout)

    def send(self, data: bytes) -> int:
        return self._bt._call(self._s.send(data))

    sendall = send

    def shutdown(self) -> None:
        self._bt._loop.call_soon_threadsafe(self._s.shutdown)

    def close(self) -> None:
        self._bt._call(self._s.close())


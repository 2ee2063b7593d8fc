"""The daemon's host side: one ``HostChannel`` per attached host (a SAN connection).

A host attaches with HELLO (token and mode checked, WELCOME back) and then carries all
its client connections on this one channel: ``data_received`` decodes a batch of frames
and dispatches each to its ``clientside.ClientConn`` (an if-chain on plain ints, most
frequent types first; not measured against a table of bound methods); frames back
to the host are batched into one write per event-loop iteration (``writer.FrameWriter``).

When the host stops reading (the SAN's write buffer passes ``flow.SAN_HIGH_WATER``) the
channel stops reading the host too and holds the clients that have bytes for it
(``blocked``) until the buffer drains.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import logging
import os

from . import channels
from .clientside import ClientConn
from .flow import SAN_HIGH_WATER
from .protocol import (
    ACCEPT_REQ,
    CLOSE,
    CLOSE_DONE,
    CONNECT,
    CREDIT,
    ERROR,
    FETCH,
    HELLO,
    LISTEN,
    PING,
    PONG,
    PROTOCOL_VERSION,
    RECV_REQ,
    SEND,
    SEND_CLOSE,
    SEND_ZC,
    SHUTDOWN,
    TYPE_NAMES,
    WELCOME,
    ZC_DONE,
    FrameDecoder,
    ProtocolError,
    decode_hello,
)
from .writer import FrameWriter
from .zerocopy import OFFSET

log = logging.getLogger("testbed.offload.server")


class HostChannel(FrameWriter, asyncio.Protocol):
    """One attached host: a persistent SAN connection carrying all its client connections."""

    def __init__(self, srv: "TcpServer") -> None:
        self.srv = srv
        self.init_writer(srv.loop)  # emit/flush: frames to the host, one write per iteration
        self.decoder = FrameDecoder()
        self.host_id = "?"
        self.authed = False
        self.conns: dict[int, ClientConn] = {}
        self.ports: "list[PortState]" = []
        self.paused = False
        self.blocked: list[ClientConn] = []
        self.hello_timer: asyncio.TimerHandle | None = None
        self.peer = None
        self.want_peer = False
        self.zc_area: memoryview | None = None  # the host's send area (zero-copy, shm only)
        self.zc_freed: list[int] = []  # its regions the kernel let go of, for the next ZC_DONE

    # --- channel lifecycle ---------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        channels.tune_accepted(transport)
        transport.set_write_buffer_limits(high=SAN_HIGH_WATER)
        self.peer = transport.get_extra_info("peername")
        self.zc_area = transport.get_extra_info("shm_send_area")
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
                elif ftype == SEND_ZC:
                    area = self.zc_area
                    off = OFFSET.unpack(payload)[0] if len(payload) == 4 else -1
                    if area is None or off < 0 or off + arg > len(area) or not arg:
                        raise ProtocolError(f"SEND_ZC of {arg} bytes at {off}: outside the send area")
                    c = conns.get(cid)
                    if c is not None:
                        c.host_send_zc(off, arg)
                    else:
                        self.zc_done(off)
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
                        c.host_credit(arg)
                        if c.rlen or (c.eof and not c.eof_sent):
                            c.push_buffered()
                elif ftype == SHUTDOWN:
                    c = conns.get(cid)
                    if c is not None:
                        c.host_shutdown()
                elif ftype == FETCH:
                    if srv.files is None:
                        raise ProtocolError("FETCH, but this TCP server has no file server (--file-server)")
                    c = conns.get(cid)
                    if c is not None:
                        c.host_fetch(bytes(payload), arg)
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

    def zc_done(self, off: int) -> None:
        """The kernel let go of the send area's region at ``off``: tell the host (one
        ZC_DONE per loop iteration carries every region freed in it)."""
        if self.dead:
            return
        if not self.zc_freed:
            self.loop.call_soon(self._send_zc_done)
        self.zc_freed.append(off)

    def _send_zc_done(self) -> None:
        freed, self.zc_freed = self.zc_freed, []
        if freed and not self.dead:
            self.emit(ZC_DONE, 0, len(freed), b"".join(map(OFFSET.pack, freed)))

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

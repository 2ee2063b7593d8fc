"""Frames out on one SAN channel, for both ends: one write per event-loop iteration.

The daemon's ``hostside.HostChannel`` and the host library's ``hostsock.Tunnel`` both
inherit ``FrameWriter``. ``emit`` appends a frame's header (and payload) to a list and
schedules one ``flush`` for the end of the loop iteration, which joins the list into a
single ``transport.write``: all connections of a channel share one system call (or one
ring copy) per iteration however many frames they produced. ``emit_send``/``emit_close``
merge a CLOSE right behind the same connection's SEND into one SEND_CLOSE frame (an
asynchronous close's last write, a frame fewer per request).

This is the hot path of both processes: plain list appends and int compares, no call
beyond ``emit`` itself; counters are per frame type (``sent``) and per flush
(``bytes_out``), so the stats cost nothing more than an index increment per frame.
"""

from __future__ import annotations

import asyncio

from .protocol import CLOSE, HDR, MAX_TYPE, PROTOCOL_VERSION, SEND, SEND_CLOSE

_pack = HDR.pack
_V = PROTOCOL_VERSION


class FrameWriter:
    """Batched frame output; a base of the protocol objects at each end of a SAN channel.

    The subclass sets ``transport`` in ``connection_made`` and ``dead`` once nothing may
    be written any more (the channel is lost or being closed).
    """

    def init_writer(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.out: list[bytes] = []
        self.flush_pending = False
        self.dead = False
        self.sent = [0] * (MAX_TYPE + 1)  # frames emitted, by type
        self.bytes_out = 0
        # where in ``out`` the last SEND's header is, and for which connection: a CLOSE
        # right behind it turns it into one SEND_CLOSE frame
        self.last_send_at = -1
        self.last_send_cid = 0

    @property
    def frames_out(self) -> int:
        return sum(self.sent)

    def emit(self, ftype: int, conn: int, arg: int, payload: bytes = b"") -> None:
        out = self.out
        out.append(_pack(len(payload), _V, ftype, 0, conn, arg))
        if payload:
            out.append(payload)
        self.sent[ftype] += 1
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush)

    def emit_send(self, cid: int, data: bytes) -> None:
        """SEND, remembered so that a CLOSE right behind it can merge into it."""
        self.last_send_at = len(self.out)
        self.last_send_cid = cid
        self.emit(SEND, cid, 0, data)

    def emit_close(self, cid: int) -> None:
        """CLOSE without CLOSE_DONE; merged into the SEND before it when that is the last frame."""
        out = self.out
        at = self.last_send_at
        if self.last_send_cid == cid and at + 2 == len(out) and at >= 0:
            out[at] = _pack(len(out[at + 1]), _V, SEND_CLOSE, 0, cid, 0)
            self.sent[SEND] -= 1
            self.sent[SEND_CLOSE] += 1
            self.last_send_cid = 0
            return
        self.emit(CLOSE, cid, 0)

    def flush(self) -> None:
        self.flush_pending = False
        self.last_send_cid = 0
        out = self.out
        if not out or self.dead:
            out.clear()
            return
        data = b"".join(out)
        out.clear()  # before the write: a pause_writing it calls may emit again
        self.bytes_out += len(data)
        self.transport.write(data)  # type: ignore[union-attr]

"""The tunnel protocol between the TCP server and its hosts: a pure, binary frame codec.

Every frame is a fixed 16-byte header followed by ``length`` payload bytes::

    offset size field
    0      4    length   payload bytes that follow (<= MAX_PAYLOAD)
    4      1    version  PROTOCOL_VERSION; anything else is a ProtocolError
    5      1    type     one of the frame types below
    6      2    flags    per-type bits (none defined yet; must be 0)
    8      4    conn     connection id chosen by the TCP server (0 = the channel itself)
    12     4    arg      per-type integer (byte counts, credits, ports, errno)

All integers are little endian. No I/O happens here: the TCP server and the host library
feed received bytes to a ``FrameDecoder`` and build frames with ``HDR.pack``. The page
``docs/protocol.md`` describes each type and the flow control rules.

``FrameDecoder.feed`` splits a batch into frames with the native decoder (``native.py``)
when it is built: the per-frame loop is the largest single item of both processes' SAN
work in the profile (docs/performance.md); ``_split_python`` is the reference, the same
frames byte for byte (tests/test_native.py).
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass

from .native import NATIVE

PROTOCOL_VERSION = 4  # 2: SEND_CLOSE; 3: FETCH; 4: SEND_ZC, ZC_DONE
HDR = struct.Struct("<IBBHII")
HDR_SIZE = HDR.size  # 16
MAX_PAYLOAD = 256 * 1024 - HDR_SIZE  # a frame never exceeds 256 KiB on the wire
SEND_CHUNK = 128 * 1024  # the host splits larger writes into frames of this size

# Flow control: the host may have at most SEND_WINDOW bytes of one connection buffered at
# the TCP server (not yet written to the client's kernel socket); the TCP server may push
# at most RECV_WINDOW bytes of one connection the host has not consumed yet. Credits
# come back in CREDIT frames once half a window has been consumed.
SEND_WINDOW = 256 * 1024
RECV_WINDOW = 64 * 1024

# Frame types. Plain ints (not an Enum) because the hot paths compare them per frame.
HELLO = 1  # host -> server: payload JSON {version, token, host, mode}
WELCOME = 2  # server -> host: payload JSON {version, mode, server}
ERROR = 3  # either way: arg errno, payload UTF-8 message; conn 0 = channel-level
LISTEN = 4  # host -> server: arg port, conn = request id; payload b"\x01" = send peer addresses
LISTEN_OK = 5  # server -> host: arg port, conn = request id
ACCEPT_REQ = 6  # host -> server: arg port; ask for one connection (pull accept)
ACCEPTED = 7  # server -> host: conn; payload peer address (see encode_peer)
CONN_NEW = 8  # server -> host: conn announced ahead; payload peer address + first data
RECV_REQ = 9  # host -> server: arg max bytes (pull receive)
DATA = 10  # server -> host: client bytes
SEND = 11  # host -> server: bytes for the client
SEND_DONE = 12  # server -> host: arg bytes now in the client's kernel socket (split mode)
CREDIT = 13  # either way: arg bytes of window given back
SHUTDOWN = 14  # host -> server: shut down the write side (FIN after queued data)
CLOSE = 15  # host -> server: close after queued data; arg 1 = wants CLOSE_DONE
CLOSE_DONE = 16  # server -> host: the close is complete
EOF = 17  # server -> host: the client shut down its write side
RESET = 18  # server -> host: the client connection is gone; arg errno (0 = closed)
CONNECT = 19  # host -> server: conn = request id, arg port, payload address (text)
CONNECTED = 20  # server -> host: conn = new connection id, arg = request id
PING = 21  # either way: liveness; answered by PONG with the same arg
PONG = 22
SEND_CLOSE = 23  # host -> server: SEND, then CLOSE (no CLOSE_DONE): an async close's last write
FETCH = 24  # host -> server: arg size; payload a path: that file's body from the file server (fetch.py)
SEND_ZC = 25  # host -> server: arg length; payload u32 offset: bytes in the send area (zerocopy.py)
ZC_DONE = 26  # server -> host: arg count; payload u32 offsets: those send-area regions are free

TYPE_NAMES = {i + 1: n for i, n in enumerate(
    "HELLO WELCOME ERROR LISTEN LISTEN_OK ACCEPT_REQ ACCEPTED CONN_NEW RECV_REQ DATA SEND SEND_DONE"
    " CREDIT SHUTDOWN CLOSE CLOSE_DONE EOF RESET CONNECT CONNECTED PING PONG SEND_CLOSE FETCH SEND_ZC"
    " ZC_DONE".split()
)}
MAX_TYPE = 26


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame stream; drop the channel."""


def pack(ftype: int, conn: int = 0, arg: int = 0, payload: bytes = b"") -> bytes:
    """One whole frame as bytes (convenient, not the hot path)."""
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds MAX_PAYLOAD {MAX_PAYLOAD}")
    return HDR.pack(len(payload), PROTOCOL_VERSION, ftype, 0, conn, arg) + payload


def _split_python(data: bytes, version: int, max_type: int,
                  max_payload: int) -> tuple[list[tuple[int, int, int, bytes]], int, bool]:
    """The complete frames from the start of ``data``, where the first incomplete or bad
    frame starts, and whether its header is bad: ``_native.decode`` in pure Python, the
    reference it is tested against (tests/test_native.py)."""
    out: list[tuple[int, int, int, bytes]] = []
    end = len(data)
    off = 0
    unpack = HDR.unpack_from
    while end - off >= HDR_SIZE:
        length, v, ftype, flags, conn, arg = unpack(data, off)
        if v != version or not 1 <= ftype <= max_type or flags or length > max_payload:
            return out, off, True
        stop = off + HDR_SIZE + length
        if stop > end:
            break
        out.append((ftype, conn, arg, data[off + HDR_SIZE : stop]))
        off = stop
    return out, off, False


_decode = NATIVE.decode if NATIVE is not None else None
_split = _decode or _split_python  # chosen once, at import


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns the complete frames seen so far.

    Each frame is a tuple ``(type, conn, arg, payload: bytes)``. Partial frames wait in a
    buffer bounded by one maximal frame; anything malformed raises ProtocolError and the
    decoder must not be used again.
    """

    __slots__ = ("_rest", "_need", "frames_in", "bytes_in")

    def __init__(self) -> None:
        self._rest = bytearray()
        self._need = 0
        self.frames_in = 0
        self.bytes_in = 0

    @property
    def buffered(self) -> int:
        return len(self._rest)

    def feed(self, data: bytes, split=_split) -> list[tuple[int, int, int, bytes]]:
        """``split``: the frame splitter, native when built (bound as a default: no lookup
        per batch); ``_feed_python`` passes the pure-Python one."""
        self.bytes_in += len(data)
        rest = self._rest
        if rest:
            rest += data
            if len(rest) < self._need:
                return []
            data = bytes(rest)
            rest.clear()
        out, off, bad = split(data, PROTOCOL_VERSION, MAX_TYPE, MAX_PAYLOAD)
        if bad:
            _check_header(data, off)
        end = len(data)
        if off < end:
            self._rest += data[off:]
            if end - off >= HDR_SIZE:
                self._need = HDR_SIZE + HDR.unpack_from(data, off)[0]
            else:
                self._need = HDR_SIZE
        self.frames_in += len(out)
        return out

    def _feed_python(self, data: bytes) -> list[tuple[int, int, int, bytes]]:
        """``feed`` through the pure-Python splitter, whatever is built (for the tests)."""
        return self.feed(data, _split_python)


def _check_header(data: bytes, off: int) -> None:
    """The ProtocolError for the bad header at ``off``, where either splitter stopped."""
    length, version, ftype, flags, _, _ = HDR.unpack_from(data, off)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"frame version {version}, expected {PROTOCOL_VERSION}")
    if not 1 <= ftype <= MAX_TYPE or flags:
        raise ProtocolError(f"unknown frame type {ftype} or flags {flags:#x}")
    raise ProtocolError(f"frame payload {length} exceeds MAX_PAYLOAD {MAX_PAYLOAD}")


# --- payload helpers (handshake and addresses): rare frames, so clarity over speed ----------


@dataclass(frozen=True)
class Hello:
    token: str
    host: str
    mode: str
    version: int = PROTOCOL_VERSION


def encode_hello(h: Hello) -> bytes:
    return json.dumps({"version": h.version, "token": h.token, "host": h.host, "mode": h.mode}).encode()


def decode_hello(payload: bytes) -> Hello:
    try:
        d = json.loads(bytes(payload).decode())
        h = Hello(token=str(d["token"]), host=str(d["host"]), mode=str(d["mode"]), version=int(d["version"]))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError, RecursionError) as e:
        # (RecursionError: deeply nested JSON; OverflowError: a version like 1e400)
        raise ProtocolError(f"malformed HELLO payload: {type(e).__name__}: {e}") from None
    if h.version != PROTOCOL_VERSION:
        raise ProtocolError(f"host speaks protocol version {h.version}, this server {PROTOCOL_VERSION}")
    return h


def encode_peer(peer: tuple | None) -> bytes:
    """Peer address as [len][addr bytes][port u16]; len 0 means unknown."""
    if not peer:
        return b"\x00\x00\x00"
    host, port = peer[0], peer[1]
    try:
        raw = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except (OSError, TypeError):
        return b"\x00\x00\x00"
    return bytes((len(raw),)) + raw + struct.pack("<H", port)


def decode_peer(payload: bytes) -> tuple[tuple[str, int] | None, int]:
    """Returns (peer or None, offset of the bytes that follow the address)."""
    if len(payload) < 3:
        raise ProtocolError("connection announcement too short for a peer address")
    n = payload[0]
    if n not in (0, 4, 16) or len(payload) < 3 + n:
        raise ProtocolError(f"bad peer address length {n}")
    port = struct.unpack_from("<H", payload, 1 + n)[0]
    if n == 0:
        return None, 3
    fam = socket.AF_INET if n == 4 else socket.AF_INET6
    return (socket.inet_ntop(fam, bytes(payload[1 : 1 + n])), port), 3 + n

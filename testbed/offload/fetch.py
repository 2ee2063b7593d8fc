"""Direct communication with the file server: the TCP server sends a file's body to a client
straight from the file server, so that the body never crosses the host.

The host answers a request by writing the response head (SEND) and then a FETCH frame
naming the file's path on the file server and its size (docs/protocol.md). The daemon
takes an idle keep-alive connection to the file server from ``FilePool`` (or opens one),
asks ``GET PATH`` and writes the body into the client's connection as it arrives, reading
the file server only while the client's socket takes what it is given. Frames the host
sends for that client meanwhile (the next pipelined answer, a close) wait behind the body
(``ClientConn.after``) and run once it is written, so the client's bytes stay in order.

The file server is any HTTP/1.1 server of the document root (the testbed runs nginx).
A reply that is not ``200`` with the size the host announced, a file server that is down,
slow to connect (``CONNECT_TIMEOUT``) or gone mid-body, ends the client's connection at
once with a reset (its head is already sent, so no other answer is possible), counts it
(``fetch_failures``), and leaves the daemon and its other clients alone.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Protocol

log = logging.getLogger("testbed.offload.fetch")

CONNECT_TIMEOUT = 2.0  # seconds to reach the file server before the client is reset
MAX_HEAD = 16 * 1024  # a file server's response head past this is refused
MAX_IDLE = 64  # idle keep-alive connections kept per file server
# a path the host may name: absolute, printable, no spaces (it goes into a request line)
SAFE_PATH = re.compile(rb"/[\x21-\x7e]*\Z")
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)[ \t]*\r\n", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close[ \t]*\r\n", re.IGNORECASE)


def parse_head(head: bytes) -> tuple[bytes, int | None, bool]:
    """A file server's response head (status line and headers, up to the blank line): its
    status code, its Content-Length (None: none given) and whether the connection may be
    kept (no ``Connection: close``). The host's reader (app/remote_files.py) uses it too."""
    m = _LENGTH.search(head)
    return head[9:12], int(m.group(1)) if m else None, _CLOSE.search(head) is None


class ClientConn(Protocol):
    """What a fetch needs of the client's connection (``clientside.ClientConn``)."""
    cid: int
    wpaused: bool
    fetching: "FileFetch | None"

    def fetch_wrote(self, data: bytes) -> None: ...
    def fetch_done(self) -> None: ...
    def fetch_failed(self) -> None: ...


class FilePool:
    """Keep-alive connections from the TCP server to one file server."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.loop, self.host, self.port = loop, host, port
        self.idle: list[FileFetch] = []
        self.fetches = 0
        self.failures = 0
        self.bytes = 0
        self.connects = 0

    def fetch(self, conn: ClientConn, path: bytes, size: int) -> "FileFetch | None":
        """Start sending ``path`` (``size`` bytes) to ``conn``'s client; None when ``path``
        cannot go into a request line (the client is reset)."""
        if not SAFE_PATH.match(path):
            self.failed(conn, f"unsafe path {path[:80]!r}")
            return None
        self.fetches += 1
        while self.idle:
            f = self.idle.pop()
            if not f.lost:
                f.start(conn, path, size, reused=True)
                return f
        return self._fresh(conn, path, size)

    def _fresh(self, conn: ClientConn, path: bytes, size: int) -> "FileFetch":
        f = FileFetch(self)
        f.start(conn, path, size, reused=False)
        self.connects += 1
        self.loop.create_task(self._connect(f))
        return f

    async def _connect(self, f: "FileFetch") -> None:
        try:
            await asyncio.wait_for(self.loop.create_connection(lambda: f, self.host, self.port),
                                   CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as e:
            f.fail(f"file server {self.host}:{self.port}: {e or 'connect timed out'}")

    def failed(self, conn: ClientConn, why: str) -> None:
        self.failures += 1
        log.warning("direct send to connection %d failed: %s; client reset", conn.cid, why)
        conn.fetch_failed()

    def counters(self) -> dict[str, int]:
        return {"fetches": self.fetches, "fetch_failures": self.failures, "fetch_bytes": self.bytes,
                "fetch_connects": self.connects, "fetch_idle": len(self.idle)}


class FileFetch(asyncio.Protocol):
    """One keep-alive connection to the file server, sending one body at a time."""

    __slots__ = ("pool", "transport", "conn", "path", "head", "left", "size", "lost", "reusable", "reused")

    def __init__(self, pool: FilePool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.conn: ClientConn | None = None
        self.path = b""
        self.head = bytearray()
        self.left = -1  # body bytes still to come; -1 while the head is read
        self.size = 0
        self.lost = False
        self.reusable = True
        self.reused = False

    def start(self, conn: ClientConn, path: bytes, size: int, reused: bool) -> None:
        self.conn, self.path, self.size, self.reused = conn, path, size, reused
        self.head, self.left, self.reusable = bytearray(), -1, True
        if self.transport is not None:
            self._ask()

    def _ask(self) -> None:
        self.transport.write(b"GET %s HTTP/1.1\r\nHost: fileserver\r\n\r\n" % self.path)  # type: ignore[union-attr]

    # --- the file server's side -----------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        if self.conn is None:  # its client went while we connected
            transport.close()
            return
        self._ask()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:  # bytes of a body whose client is gone: this connection is spent
            self._drop()
            return
        if self.left < 0:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > MAX_HEAD:
                    self.fail("response head too long")
                return
            head, data = bytes(self.head[:end + 2]), bytes(self.head[end + 4:])
            status, length, self.reusable = parse_head(head)
            if status != b"200" or length != self.size:
                self.fail(f"status {status.decode(errors='replace')}, length {length} for {self.size} announced")
                return
            self.left = self.size
            if not data and self.left:
                return
        if len(data) > self.left:
            self.fail("more body than announced")
            return
        self.left -= len(data)
        self.pool.bytes += len(data)
        if data:
            conn.fetch_wrote(data)
        if self.left == 0:
            self._done()
        elif conn.wpaused and self.transport is not None:
            self.transport.pause_reading()  # the client reads slower than the file server sends

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        conn = self.conn
        if conn is None:
            return
        if self.reused and self.left < 0 and not self.head:
            # a kept-alive connection the file server had closed as we asked: once more, fresh
            self.conn = None
            conn.fetching = self.pool._fresh(conn, self.path, self.size)
            return
        self.fail(f"file server closed the connection{f': {exc}' if exc else ''} mid-reply")

    # --- the client's side ------------------------------------------------------------
    def resume(self) -> None:
        """The client's socket took everything: read the file server again."""
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()

    def abandon(self) -> None:
        """The client is gone mid-body: this connection cannot be reused."""
        self.conn = None
        self._drop()

    def fail(self, why: str) -> None:
        conn, self.conn = self.conn, None
        self._drop()
        if conn is not None:
            self.pool.failed(conn, why)

    def _done(self) -> None:
        conn, self.conn = self.conn, None
        if self.reusable and not self.lost and len(self.pool.idle) < MAX_IDLE and self.transport is not None:
            self.transport.resume_reading()
            self.pool.idle.append(self)
        else:
            self._drop()
        if conn is not None:
            conn.fetch_done()

    def _drop(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()

"""The open-loop hot path: one process sending HTTP requests at scheduled instants.

Lean on purpose (docs/design.md, "Facts": Locust's HttpUser and per-request stats cost ~1.6x a bare
socket loop, and the prototype scheduler user reached ~3,000 req/s on a core):

- raw non-blocking ``_socket`` sockets driven by callbacks on gevent's event loop
  (io watchers), so no greenlet is spawned per request and Locust's own greenlets
  (heartbeats, messages) keep running in the same process;
- a minimal request (``GET path HTTP/1.0`` + ``Connection: close`` by default) and
  response parsing limited to the status code and the header block's Content-Length;
- results go into preallocated numpy arrays indexed by request number, never dicts;
- timeouts are checked from a deque in send order (deadline = send + constant), O(1).

A request is never waited for before sending the next: when ``max_inflight`` requests
are outstanding, a due request is *counted* as overflow and skipped, so the schedule
stays open-loop and the overflow marks the step as generator-bound. The sweep sizes
``max_inflight`` from rate x timeout, so a server that stops answering makes requests
time out (its failure) long before the generator overflows.
"""

from __future__ import annotations

import _socket
import collections
import errno
import logging
import time
from dataclasses import dataclass
from typing import Callable

import gevent
import numpy as np

log = logging.getLogger(__name__)

READ, WRITE = 1, 2
RECV_SIZE = 256 * 1024
READ_TO_EOF = 1 << 62

# error codes stored per request (int8); 0 is success (any HTTP status)
ERROR_KINDS: tuple[str, ...] = (
    "", "overflow", "timeout", "refused", "reset", "truncated", "bad_response",
    "addr_unavailable", "too_many_files", "unreachable", "other",
    "unsent",  # still unsent when its step ended: the generator fell that far behind
)
ERR = {name: i for i, name in enumerate(ERROR_KINDS)}
_ERRNO_KIND = {
    errno.ECONNREFUSED: ERR["refused"], errno.ECONNRESET: ERR["reset"], errno.EPIPE: ERR["reset"],
    errno.ECONNABORTED: ERR["reset"], errno.EADDRNOTAVAIL: ERR["addr_unavailable"],
    errno.EMFILE: ERR["too_many_files"], errno.ENFILE: ERR["too_many_files"],
    errno.ENETUNREACH: ERR["unreachable"], errno.EHOSTUNREACH: ERR["unreachable"],
    errno.ETIMEDOUT: ERR["timeout"],
}
_AGAIN = (errno.EAGAIN, errno.EINPROGRESS)


def error_kind(exc_errno: int | None) -> int:
    return _ERRNO_KIND.get(exc_errno or 0, ERR["other"])


@dataclass
class StepArrays:
    """Per-request results of one process for one step (monotonic times, NaN = never)."""

    intended: np.ndarray   # float64
    sent: np.ndarray       # float64
    done: np.ndarray       # float64
    status: np.ndarray     # int16, 0 when no response
    nbytes: np.ndarray     # int64, bytes received (headers + body)
    error: np.ndarray      # int8, index into ERROR_KINDS
    item: np.ndarray       # int32, which request of the workload table

    @classmethod
    def empty(cls, intended: np.ndarray, item: np.ndarray) -> "StepArrays":
        n = len(intended)
        return cls(intended=intended, sent=np.full(n, np.nan), done=np.full(n, np.nan),
                   status=np.zeros(n, np.int16), nbytes=np.zeros(n, np.int64),
                   error=np.zeros(n, np.int8), item=item.astype(np.int32, copy=False))


class _Conn:
    __slots__ = ("sock", "fd", "idx", "watcher", "got", "head", "need", "deadline", "done",
                 "reused", "req", "status", "keep", "arr")

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.idx = -1
        self.watcher = None
        self.got = 0
        self.head: bytearray | None = None
        self.need = -1       # total bytes expected once headers are parsed (-1: until EOF)
        self.deadline = 0.0
        self.done = False
        self.reused = False
        self.req = b""
        self.status = 0
        self.keep = False
        self.arr: StepArrays | None = None  # the step this request belongs to


def parse_head(head: bytes) -> tuple[int, int, int, bool] | None:
    """(status, header length, content length or -1, server wants close) or None if incomplete.

    Raises ValueError on a reply that is not HTTP."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        if len(head) > 65536 or (len(head) >= 5 and not head.startswith(b"HTTP/")):
            raise ValueError("not an HTTP reply")
        return None
    if not head.startswith(b"HTTP/"):
        raise ValueError("not an HTTP reply")
    status = int(head[9:12])
    lower = head[:end].lower()
    clen = -1
    pos = lower.find(b"\r\ncontent-length:")
    if pos >= 0:
        stop = lower.find(b"\r\n", pos + 2)
        clen = int(lower[pos + 17:stop if stop >= 0 else end])
    close = b"\r\nconnection: close" in lower or head.startswith(b"HTTP/1.0")
    if status in (204, 304) or 100 <= status < 200:
        clen = 0
    return status, end + 4, clen, close


class Engine:
    """Sends scheduled requests to one address from the current process's gevent loop.

    ``on_done(item, sent, done, status, nbytes, error)``, when given, is called for every
    request that finishes or fails to start (used to fire Locust's ``events.request``);
    overflowed requests are only counted in the arrays."""

    def __init__(self, addr: tuple[str, int], *, keepalive: bool = False, max_inflight: int = 4096,
                 timeout: float = 5.0,
                 on_done: Callable[[int, float, float, int, int, int], None] | None = None) -> None:
        self.addr = addr
        self.keepalive = keepalive
        self.max_inflight = max_inflight
        self.timeout = timeout
        self.on_done = on_done
        self.loop = gevent.get_hub().loop
        self.inflight = 0
        self.idle: list[_Conn] = []
        self._pending: collections.deque[_Conn] = collections.deque()
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)
        self.arrays: StepArrays | None = None
        self.connections_opened = 0
        self.inflight_max = 0  # the most requests outstanding at once since the last run()
        self._checker: gevent.Greenlet | None = None

    # -- scheduling ----------------------------------------------------------------------

    def run(self, intended: np.ndarray, item: np.ndarray, requests: list[bytes],
            drain: bool = True, should_stop: Callable[[], bool] | None = None,
            stop_at: float | None = None) -> StepArrays:
        """Send request ``requests[item[i]]`` at monotonic instant ``intended[i]`` for all i.

        Past ``stop_at`` the rest are marked ``unsent`` instead: a generator starved of CPU
        would otherwise spend minutes catching up on a step that is long over."""
        arrays = StepArrays.empty(intended, item)
        self.arrays = arrays
        self.inflight_max = self.inflight
        self._ensure_checker()
        n = len(intended)
        launch = self._launch
        monotonic = time.monotonic
        sleep = gevent.sleep
        tl = intended.tolist()  # python floats: faster to compare than numpy scalars
        il = arrays.item.tolist()
        i = 0
        late = float("inf") if stop_at is None else stop_at
        while i < n:
            now = monotonic()
            if now > late:
                arrays.error[i:] = ERR["unsent"]
                break
            while i < n and tl[i] <= now:
                launch(i, requests[il[i]])
                i += 1
                if not i & 63 and monotonic() > late:
                    break
            if i < n:
                if should_stop is not None and should_stop():
                    break
                # gevent's timers have ~1 ms granularity: wake early, then send all due
                sleep(max(0.0, tl[i] - monotonic()))
        if drain:
            self.wait_idle(self.timeout + 1.0)
        return arrays

    def wait_idle(self, limit: float) -> None:
        end = time.monotonic() + limit
        while self.inflight > 0 and time.monotonic() < end:
            gevent.sleep(0.005)

    def close(self) -> None:
        for c in self.idle:
            c.sock.close()
        self.idle.clear()
        if self._checker is not None:
            self._checker.kill(block=False)
            self._checker = None

    # -- one request ---------------------------------------------------------------------

    def _launch(self, idx: int, req: bytes) -> None:
        a = self.arrays
        if self.inflight >= self.max_inflight:
            a.error[idx] = 1  # overflow: counted, never waited for
            return
        now = time.monotonic()
        a.sent[idx] = now
        if self.idle:
            c = self.idle.pop()
            c.idx, c.req, c.got, c.head, c.need, c.done, c.reused = idx, req, 0, None, -1, False, True
            c.status, c.keep, c.arr = 0, False, a
            c.deadline = now + self.timeout
            self.inflight += 1
            if self.inflight > self.inflight_max:
                self.inflight_max = self.inflight
            self._pending.append(c)
            try:
                c.sock.send(req)
            except OSError:
                # the server closed the idle connection: retry once on a fresh one
                c.done = True
                c.sock.close()
                self.inflight -= 1
                self._open(idx, req, now, a)
                return
            w = self.loop.io(c.fd, READ)
            c.watcher = w
            w.start(self._on_read, c)
            return
        self._open(idx, req, now, a)

    def _open(self, idx: int, req: bytes, now: float, a: StepArrays) -> None:
        try:
            s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        except OSError as e:
            self._fail_early(a, idx, e.errno, now)
            return
        s.setblocking(False)
        err = s.connect_ex(self.addr)
        if err and err not in _AGAIN:
            s.close()
            self._fail_early(a, idx, err, now)
            return
        self.connections_opened += 1
        c = _Conn(s)
        c.idx, c.req, c.deadline, c.arr = idx, req, now + self.timeout, a
        self.inflight += 1
        if self.inflight > self.inflight_max:
            self.inflight_max = self.inflight
        self._pending.append(c)
        w = self.loop.io(c.fd, WRITE)
        c.watcher = w
        w.start(self._on_connected, c)

    def _fail_early(self, a: StepArrays, idx: int, err: int | None, now: float) -> None:
        a.done[idx] = now
        a.error[idx] = kind = error_kind(err)
        if self.on_done is not None:
            self.on_done(int(a.item[idx]), now, now, 0, 0, kind)

    def _on_connected(self, c: _Conn) -> None:
        c.watcher.stop()
        if c.done:
            return
        err = c.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        if err:
            self._finish(c, 0, error_kind(err))
            return
        try:
            c.sock.send(c.req)
        except OSError as e:
            self._finish(c, 0, error_kind(e.errno))
            return
        w = self.loop.io(c.fd, READ)
        c.watcher = w
        w.start(self._on_read, c)

    def _on_read(self, c: _Conn) -> None:
        if c.done:
            c.watcher.stop()
            return
        sock = c.sock
        buf = self._buf
        while True:
            try:
                n = sock.recv_into(self._view)
            except BlockingIOError:
                return
            except OSError as e:
                self._finish(c, 0, error_kind(e.errno))
                return
            if n == 0:  # EOF
                if c.reused and c.got == 0:
                    self._retry_fresh(c)
                elif c.need < 0:  # no complete header block
                    self._finish(c, 0, ERR["bad_response"] if c.got else ERR["reset"])
                elif c.got >= c.need or c.need == READ_TO_EOF:
                    self._finish(c, c.status, 0)
                else:
                    self._finish(c, c.status, ERR["truncated"])
                return
            c.got += n
            if c.need < 0:
                if c.head is None:
                    c.head = bytearray(buf[:min(n, 4096)])
                else:
                    c.head += buf[:min(n, 4096)]
                try:
                    parsed = parse_head(bytes(c.head))
                except ValueError:
                    self._finish(c, 0, ERR["bad_response"])
                    return
                if parsed is None:
                    continue
                status, hlen, clen, close = parsed
                c.head = None
                c.status = status
                if clen >= 0:
                    c.need = hlen + clen
                elif self.keepalive and not close:
                    self._finish(c, status, ERR["bad_response"])  # no length: cannot reuse
                    return
                else:
                    c.need = READ_TO_EOF
                c.reused = False  # a reply began: no silent retry from here on
                c.keep = self.keepalive and not close
            if c.got >= c.need:
                if c.got > c.need:
                    self._finish(c, c.status, ERR["bad_response"])  # more bytes than announced
                    return
                if c.keep:
                    self._finish(c, c.status, 0, reuse=True)
                    return
                # Connection: close: the reply is complete; read on to see the server's FIN, so
                # the server closes first and TIME_WAIT stays on its side, as for HTTP/1.0

    def _retry_fresh(self, c: _Conn) -> None:
        c.watcher.stop()
        c.done = True
        c.sock.close()
        self.inflight -= 1
        self._open(c.idx, c.req, time.monotonic(), c.arr)

    def _finish(self, c: _Conn, status: int, err: int, reuse: bool = False) -> None:
        now = time.monotonic()
        c.watcher.stop()
        c.done = True
        self.inflight -= 1
        a = c.arr
        idx = c.idx
        a.done[idx] = now
        a.status[idx] = status
        a.nbytes[idx] = c.got
        a.error[idx] = err
        if self.on_done is not None:
            self.on_done(int(a.item[idx]), float(a.sent[idx]), now, status, c.got, err)
        if reuse and err == 0:
            nc = _Conn.__new__(_Conn)  # a fresh record: the old one stays in the deadline deque
            nc.sock, nc.fd, nc.watcher, nc.reused = c.sock, c.fd, None, True
            nc.idx, nc.got, nc.head, nc.need, nc.deadline, nc.done, nc.req = -1, 0, None, -1, 0.0, True, b""
            nc.status, nc.keep, nc.arr = 0, False, None
            self.idle.append(nc)
        else:
            c.sock.close()

    # -- timeouts ------------------------------------------------------------------------

    def _ensure_checker(self) -> None:
        if self._checker is None or self._checker.dead:
            self._checker = gevent.spawn(self._check_timeouts)

    def _check_timeouts(self) -> None:
        pending = self._pending
        while True:
            gevent.sleep(0.05)
            now = time.monotonic()
            while pending and (pending[0].done or pending[0].deadline <= now):
                c = pending.popleft()
                if not c.done:
                    # abortive close: a timed-out connection must not linger in TIME_WAIT
                    try:
                        c.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    except OSError:
                        pass
                    self._finish(c, c.status, ERR["timeout"])

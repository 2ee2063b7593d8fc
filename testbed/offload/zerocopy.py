"""No Data Copying: reply bodies sent to clients straight from the host's memory.

The slides: "the TCP server can avoid the double copying performed in the traditional TCP
kernel implementation of the send operation. The application must tolerate the wait for
completion of the send. For retransmission, the TCP server can read the data again from
the application send buffer." Over the shm SAN (``shmring.py``) that is, here:

- The ring file has a third region, the **send area** (``AREA_BYTES``), written only by
  the host. The host copies a large write once into it (``SendArea.put``: the one copy
  every send makes, from the application's buffer to memory the TCP server can reach) and
  sends a SEND_ZC frame naming the offset and length, instead of the bytes.
- The TCP server hands that memory to the kernel with ``MSG_ZEROCOPY`` (no copy through
  its own user space) and keeps it owed (``Completions``) until the kernel's completion
  notice for that send arrives on the socket's error queue: the kernel holds the pages
  until the client has acknowledged the bytes, so a retransmission reads them from the
  same place. Then it returns the region to the host in a ZC_DONE frame; only then does
  the host reuse it (``SendArea.free``): the application "tolerates the wait".
- A socket closed with sends still owed stays open (``Linger``) until they complete, or
  is reset after ``LINGER_S`` without progress (a reset frees the pages at once).

Where this is not possible (a write below ``MIN_BYTES``, a full area, a connection on
the event loop's transports) the bytes take the ordinary path, copied; nothing is lost.
``kernel_refusal`` says why a kernel cannot do it. The kernel's own documentation
(msg_zerocopy.rst) warns that a packet looped to a local socket is copied later in the
kernel (the "deferred copy"): here every client is local, so the bench
(bench/zerocopy.py) measures what this saves rather than assuming it.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import select
import socket
import struct
from typing import Callable

log = logging.getLogger("testbed.offload.zerocopy")

SO_ZEROCOPY = getattr(socket, "SO_ZEROCOPY", 60)
MSG_ZEROCOPY = getattr(socket, "MSG_ZEROCOPY", 0x4000000)
_SO_EE_ORIGIN_ZEROCOPY = 5
_SO_EE_CODE_ZEROCOPY_COPIED = 1
_RECVERR = {(socket.IPPROTO_IP, 11), (socket.IPPROTO_IPV6, 25)}  # IP_RECVERR, IPV6_RECVERR
_EXT_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err
_ERRQUEUE = socket.MSG_ERRQUEUE if hasattr(socket, "MSG_ERRQUEUE") else 0x2000

AREA_BYTES = 16 << 20  # the send area of one shm channel (64 connections' send windows)
MIN_BYTES = 4096  # smaller writes are copied through the ring (bench/zerocopy.py measures both)
LINGER_S = 60.0  # a closed socket waits this long without a completion before it is reset
OFFSET = struct.Struct("<I")  # SEND_ZC's payload: the region's offset in the send area

Done = Callable[[int], None]  # the owner's "this region is free again" (its offset)


def kernel_refusal() -> str | None:
    """Why this kernel cannot send TCP with MSG_ZEROCOPY, or None when it can."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    except OSError as e:
        return f"this kernel has no MSG_ZEROCOPY for TCP (SO_ZEROCOPY: {e.strerror}; Linux 4.14 or later)"
    finally:
        s.close()
    return None


class SendArea:
    """The host's side of the send area: regions taken in order, given back in any order.

    Positions grow without bound (like the rings' counters); a region never wraps: one
    that would is placed at the start and the end of the area is skipped. ``put`` copies
    the bytes in and returns the offset, or -1 when the area has no room (the caller sends
    them the ordinary way)."""

    def __init__(self, area: memoryview) -> None:
        self.mv = area
        self.size = len(area)
        self.head = 0
        self.tail = 0
        self.live: collections.deque[list] = collections.deque()  # [start, end, freed]
        self.at: dict[int, list] = {}  # offset -> its live entry
        self.full = 0  # writes that found no room (sent copied)

    def put(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        size = self.size
        head = self.head
        off = head % size
        if off + n > size:  # skip the end: a region is one contiguous run
            skip_to = head + size - off
            if skip_to + n - self.tail > size:
                self.full += 1
                return -1
            self.live.append([head, skip_to, True])
            self._advance()
            head, off = skip_to, 0
        elif head + n - self.tail > size:
            self.full += 1
            return -1
        self.mv[off:off + n] = data
        entry = [head, head + n, False]
        self.live.append(entry)
        self.at[off] = entry
        self.head = head + n
        return off

    def free(self, off: int) -> None:
        """ZC_DONE for ``off``: the kernel let go of that region."""
        entry = self.at.pop(off, None)
        if entry is None:
            raise ValueError(f"ZC_DONE for offset {off}, which holds no send")
        entry[2] = True
        self._advance()

    def _advance(self) -> None:
        live = self.live
        while live and live[0][2]:
            self.tail = live.popleft()[1]

    @property
    def in_use(self) -> int:
        return self.head - self.tail


class Completions:
    """One client socket's zero-copy sends the kernel still holds.

    Each ``send`` with MSG_ZEROCOPY that moved bytes takes the socket's next notification
    id; the kernel reports ranges of ids whose pages it released (normally in order, but
    not promised). A region is given back once every id up to its last send's is
    reported."""

    __slots__ = ("next_id", "done_below", "ahead", "owed")
    notices_total = 0  # this process's completion notices (the daemon's stats)
    copied_total = 0  # ...saying the kernel copied after all (a packet looped to a local socket)

    def __init__(self) -> None:
        self.next_id = 0
        self.done_below = 0  # every id below this is reported
        self.ahead: set[int] = set()  # reported ids above done_below
        self.owed: collections.deque[tuple[int, Done, int]] = collections.deque()  # (last id, done, offset)

    def sent(self) -> int:
        i = self.next_id
        self.next_id = i + 1
        return i

    def owe(self, last_id: int, done: Done, off: int) -> None:
        """``off`` is free once every send up to ``last_id`` is reported (at once if they are)."""
        if last_id < self.done_below:
            done(off)
        else:
            self.owed.append((last_id, done, off))

    def reap(self, sock: socket.socket) -> bool:
        """Read the socket's error queue; give back what is complete. True if a notice came."""
        got = False
        while True:
            try:
                _, anc, _, _ = sock.recvmsg(0, 256, _ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            for level, kind, data in anc:
                if (level, kind) not in _RECVERR or len(data) < _EXT_ERR.size:
                    continue
                ee_errno, origin, _, code, _, lo, hi = _EXT_ERR.unpack_from(data)
                if origin != _SO_EE_ORIGIN_ZEROCOPY or ee_errno:
                    continue
                got = True
                Completions.notices_total += 1
                if code & _SO_EE_CODE_ZEROCOPY_COPIED:
                    Completions.copied_total += 1
                self._reported(lo, hi)
        if got:
            self._give_back(self.done_below - 1)
        return got

    def _reported(self, lo: int, hi: int) -> None:
        if lo <= self.done_below <= hi:
            self.done_below = hi + 1
        else:
            self.ahead.update(range(lo, hi + 1))
        ahead = self.ahead
        while self.done_below in ahead:
            ahead.discard(self.done_below)
            self.done_below += 1

    def _give_back(self, upto: int) -> None:
        owed = self.owed
        while owed and owed[0][0] <= upto:
            _, done, off = owed.popleft()
            done(off)

    def release_all(self) -> None:
        """The kernel dropped the socket's queues (a reset): every region is free."""
        self._give_back(1 << 62)

    @property
    def outstanding(self) -> bool:
        return bool(self.owed)


class Linger:
    """A client socket closed by the daemon while the kernel still holds zero-copy sends:
    shut for writing (the client gets its FIN after the data), read and discarded, kept
    until the last completion, then closed; reset after ``LINGER_S`` without progress.
    Registered in the daemon's epoll set in place of the transport (edge-triggered: a
    socket shut both ways reports a hang-up for as long as it stays open)."""

    def __init__(self, poller, sock: socket.socket, fd: int, zc: Completions, registered: bool) -> None:
        self.poller = poller
        self.sock = sock
        self.fd = fd
        self.zc = zc
        self.timer: asyncio.TimerHandle | None = None
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        mask = select.EPOLLIN | select.EPOLLET
        if registered:
            poller.handlers[fd] = self
            poller.modify(fd, mask)
        else:
            poller.register(fd, mask, self)
        self._arm()
        self._event(select.EPOLLIN)  # completions may be queued already

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.poller.loop.call_later(LINGER_S, self._give_up)

    def _event(self, ev: int) -> None:
        if self.zc.reap(self.sock):
            self._arm()
        while True:  # whatever the client still sends is read and dropped (no reset for it)
            try:
                if not self.sock.recv(65536, socket.MSG_DONTWAIT):
                    break
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
        if not self.zc.outstanding:
            self._close()

    def _give_up(self) -> None:
        log.warning("client socket %d: zero-copy sends unfinished after %.0f s; reset", self.fd, LINGER_S)
        abort_socket(self.sock)
        self.zc.release_all()
        self._close()

    def _close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.poller.handlers.get(self.fd) is self:
            self.poller.forget(self.fd)
        self.sock.close()


def abort_socket(sock: socket.socket) -> None:
    """Close with a reset: the kernel drops the socket's send queues (and their pages) now."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def enable(sock: socket.socket) -> bool:
    """SO_ZEROCOPY on one socket (a kernel that refuses it: False, the caller copies)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        return True
    except OSError as e:
        if e.errno not in (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP):
            log.warning("SO_ZEROCOPY: %s", e)
        return False

"""Flow control on the SAN as rules on plain ints: no sockets, frames or event loop.

Each tunneled connection has two windows (docs/protocol.md, "Flow control"):

- the **send window** (host -> client): the host may have at most ``SEND_WINDOW`` bytes
  of one connection at the TCP server that the client's kernel socket has not taken yet.
  The host spends credit per SEND; the daemon gives it back once the client's socket took
  the bytes: every SEND at once in split (SEND_DONE, the paper's synchronous send), by
  ``SEND_CREDIT_BATCH`` (half a window) otherwise (CREDIT), so a small response costs no
  frame back. A host that sends beyond its window is broken: the channel is dropped.
- the **receive window** (client -> host, push modes): the daemon pushes at most
  ``RECV_WINDOW`` bytes the host has not consumed; the host gives credit back by
  ``RECV_CREDIT_BATCH`` (half a window) as its application consumes them. More credit
  than a window is broken too. (Pull modes need no window: each RECV_REQ names its size.)

Two more bounds keep memory finite at the daemon: it stops reading a client holding
``CLIENT_READ_PAUSE`` bytes no host took yet and resumes below ``CLIENT_READ_RESUME``, and
it stops reading a host whose SAN write buffer passes ``SAN_HIGH_WATER``.

The rules live here, apart from the I/O, the way h11 keeps its state machine apart from
its readers and writers: ``DaemonWindows`` is a base of the daemon's
``clientside.ClientConn`` and ``HostWindows`` of the host library's ``TunnelTransport``.
They are bases (fields declared by the subclass's ``__slots__``), not objects of their
own, so that the hot path stays one method call on the connection where it was one
before, and compares plain ints (tests/test_offload_flow.py exercises them alone).
"""

from __future__ import annotations

from .protocol import RECV_WINDOW, SEND_CHUNK, SEND_WINDOW, ProtocolError

SEND_CREDIT_BATCH = SEND_WINDOW // 2  # the daemon returns send credit by halves of the window
RECV_CREDIT_BATCH = RECV_WINDOW // 2  # the host returns receive credit by halves of the window
CLIENT_READ_PAUSE = RECV_WINDOW  # the daemon stops reading a client holding this many bytes
CLIENT_READ_RESUME = RECV_WINDOW // 2  # ...and reads it again below this
SAN_HIGH_WATER = 8 * 1024 * 1024  # the daemon stops reading a host this far behind reading us


class DaemonWindows:
    """The daemon's side of one connection's windows.

    Fields (the subclass's slots): ``cid``; ``rwin``, bytes the host still accepts (push
    modes; starts at ``RECV_WINDOW``); ``unacked``, bytes from SENDs not yet credited back
    (starts at 0).
    """

    __slots__ = ()
    cid: int
    rwin: int
    unacked: int

    def host_credit(self, n: int) -> None:
        """CREDIT from the host: ``n`` more bytes may be pushed to it."""
        self.rwin += n
        if self.rwin > RECV_WINDOW:
            raise ProtocolError(f"credit overflow on connection {self.cid}")

    def client_took(self, n: int, drained: bool, sync: bool) -> int | None:
        """``n`` more bytes from the host's SENDs went to the client's socket (``drained``:
        its kernel took everything so far). Returns the bytes to acknowledge now (SEND_DONE
        if ``sync``: every SEND, even an empty one; else CREDIT), or None."""
        unacked = self.unacked + n
        if unacked > SEND_WINDOW:  # a host ignoring its credit would grow us without bound
            raise ProtocolError(f"connection {self.cid}: {unacked} bytes sent beyond the "
                                f"send window ({SEND_WINDOW})")
        if drained and (sync or unacked >= SEND_CREDIT_BATCH):
            self.unacked = 0
            return unacked
        self.unacked = unacked
        return None


class HostWindows:
    """The host's side of one connection's windows.

    Fields (the subclass's slots): ``_credit``, bytes it may still send (starts at
    ``SEND_WINDOW``); ``_consumed``, pushed bytes consumed and not yet credited back
    (starts at 0); ``_closed``.
    """

    __slots__ = ()
    _credit: int
    _consumed: int
    _closed: bool

    def take_credit(self, n: int) -> int:
        """How many of ``n`` queued bytes go in the next SEND (at most a frame's
        ``SEND_CHUNK``); spends that much credit. (``TunnelTransport.write`` inlines the
        case of a whole write that fits: the per-write fast path.)"""
        m = min(n, self._credit, SEND_CHUNK)
        self._credit -= m
        return m

    def credit_back(self, n: int) -> None:
        """CREDIT from the daemon: the client's socket took ``n`` of our bytes."""
        self._credit += n

    def consumed(self, n: int) -> int:
        """The application took ``n`` pushed bytes. Returns the credit to give back now, or 0."""
        c = self._consumed + n
        if c >= RECV_CREDIT_BATCH and not self._closed:
            self._consumed = 0
            return c
        self._consumed = c
        return 0

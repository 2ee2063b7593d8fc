"""The daemon's scheduler: which host gets a client connection, and when, under overload.

``PortState`` is one public port (the hosts listening on it, the accept queue, the
outstanding ACCEPT_REQs); ``Scheduler`` is the part of ``daemon.TcpServer`` that admits
new connections (``--max-conns``), gives them to a host (pushed, or on a host's
ACCEPT_REQ), queues the rest and sheds what waited too long. It is a base class of
``TcpServer`` rather than an object of its own so that the per-connection calls stay one
method look-up, as before the daemon was split into modules.

Overload control, as a kernel's listen queue behaves. Measured before it (two
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

import asyncio
import errno
import socket
import struct
from collections import deque

from . import rawio
from .clientside import ClientConn
from .config import ServerConfig
from .hostside import HostChannel
from .protocol import ACCEPTED, CONN_NEW, ERROR, MAX_PAYLOAD, encode_peer

_NO_PEER = encode_peer(None)
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


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



class Scheduler:
    """Admission, hand-out to hosts, the accept queues and their sweeps (``TcpServer``'s)."""

    # state owned by TcpServer.__init__
    cfg: ServerConfig
    loop: asyncio.AbstractEventLoop
    ports: dict[int, PortState]
    hosts: list[HostChannel]
    conns: dict[int, ClientConn]
    waiting: list[ClientConn]
    wait_timer: asyncio.TimerHandle | None

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

"""The TCP-server daemon: terminates client TCP and tunnels socket calls to the hosts.

Clients connect to the public address; hosts attach over a SAN channel (one persistent
connection per host) and say which ports they listen on. Client bytes become DATA frames,
the hosts' SEND frames become client bytes. Frames for all connections of a host are
batched into one write per event-loop iteration.

Run: ``python -m testbed.offload --listen ADDR:PORT --san tcp:ADDR:PORT --mode MODE
--token-file F --stats-file PATH``.

Client sockets live on the daemon's own epoll set (``rawio``; ``--client-io asyncio`` puts
them on the event loop's transports instead); ``--poll-us`` makes the daemon poll in fixed
periods rather than wake per event (``polling``, the paper's "No Interrupts").

Bounds (so thousands of idle or slow clients cannot grow memory without limit):
``--max-conns`` client connections, ``--backlog`` connections waiting for a host's accept,
per-connection windows (``flow.py``), ``--idle-timeout``.

Where the rest lives: ``clientside.py`` (client connections), ``hostside.py`` (host
channels: HELLO, frame dispatch), ``scheduler.py`` (admission, hand-out to hosts and the
overload control), ``stats.py`` (the stats file), ``config.py`` (``ServerConfig``) and
``__main__.py`` (the command line).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
import time

from . import channels
from . import placement as _placement
from . import rawio, zerocopy
from .clientside import ClientConn, OutboundConn, PlacedConn
from .config import ServerConfig
from .fetch import FilePool
from .hostside import HostChannel
from .polling import PollingPacer
from .protocol import ERROR, LISTEN_OK
from .scheduler import PortState, Scheduler
from .stats import StatsReport

log = logging.getLogger("testbed.offload.server")


class TcpServer(Scheduler, StatsReport):
    """The daemon: public ports, the SAN listener, and the hosts attached to it."""

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
        self.c_zc_sends = 0
        self.cache: dict | None = None
        self.place: _placement.Control | None = None
        # direct communication with the file server (fetch.py): FETCH frames send its bodies
        self.files = FilePool(self.loop, *cfg.file_server) if cfg.file_server else None
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
        if cfg.zero_copy:
            why = zerocopy.kernel_refusal()
            if why:
                raise ValueError(f"--zero-copy: {why}")
        await self.open_port(cfg.listen_port)
        self.san_server = await channels.serve(cfg.san, lambda: HostChannel(self),
                                               area_bytes=zerocopy.AREA_BYTES if cfg.zero_copy else 0)
        self.loop.call_later(1.0, self._sweep)
        if cfg.queue_deadline > 0 and cfg.overload_control:
            self.loop.call_later(self._queue_period(), self._sweep_queue)
        if cfg.poll_us:
            # over shm rings the pacer may sleep when idle: the rings' doorbells and the
            # client sockets' epoll set (on_events) wake it
            self.pacer = PollingPacer(self.loop, cfg.poll_us / 1e6, self.flush_hosts,
                                      sleep_when_idle=cfg.san.kind == "shm").start()
            if self.poller is not None:
                self.poller.on_events = self.pacer.wake
        if cfg.stats_file:
            self.loop.call_soon(self._write_stats)
        log.info("TCP server: clients on %s:%d, hosts on %s, mode %s%s",
                 cfg.listen_host, cfg.listen_port, cfg.san, cfg.mode.name,
                 f", file server {cfg.file_server[0]}:{cfg.file_server[1]}" if cfg.file_server else "")

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
                await self.loop.create_connection(lambda: OutboundConn(self, ps, h, req), addr, port)
            except OSError as e:
                h.emit(ERROR, req, e.errno or errno.ECONNREFUSED, f"connect {addr}:{port}: {e}".encode())

        self.loop.create_task(go())

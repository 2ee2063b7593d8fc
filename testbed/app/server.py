"""The host web application: static files and a CPU-burning dynamic endpoint.

One asyncio Protocol (``HttpProtocol``) serves HTTP/1.1 keep-alive and HTTP/1.0 close,
GET and HEAD, 404, 405 and 400 on malformed requests (parsed by httptools). The same class
runs on kernel sockets (``regular`` mode: ``loop.create_server`` on uvloop) or on tunneled
sockets (offloaded modes: ``hostsock``), so the comparison is the socket layer alone.

Limits, as nginx's defaults where it has one. Each answer ends the connection: the app
shuts its side after it and drops what the client still sends until the client closes,
``LINGER`` (5 s) at most, as nginx's lingering close.

- a request line past 8 KiB (``MAX_REQUEST_LINE``, nginx's ``large_client_header_buffers``)
  gets ``414 URI Too Long``; the URL is the only part of a request the application keeps,
  so it holds at most that much per connection;
- headers past 32 KiB in all (``MAX_HEADER_BYTES``, nginx's four such buffers) get
  ``431 Request Header Fields Too Large``. nginx answers 400 there ("Request Header Or
  Cookie Too Large"); 431 (RFC 6585) says the same with its own code. A single header line
  is not bounded apart: that would take a parser callback per header on every request;
  header bytes are counted as they arrive and never kept;
- a request not finished within ``--header-timeout`` (20 s) gets 408.

Memory as the process sees it: the parser holds the protocol's callbacks, so a connection
is a reference cycle that ``connection_lost`` breaks. Without that break every closed
connection (protocol, parser, transport, URL) waited for the garbage collector, whose
young generation runs only every 50,000 allocations here (``runtime.install_loop``), about
8,000 connections: 3,000 requests spelled with 2,000-23,000 slashes held 40 MB, and what
the collector then freed stayed with malloc (RSS 26 -> 66 MB, 120 MB after six such
batches; tracemalloc saw none of it). Now each connection's memory is freed when it
closes, and the RSS stays where it started (tests/test_hostile_clients.py).

Run, regular:   python -m testbed.app.server --docroot DIR --listen ADDR:PORT
Run, offloaded: python -m testbed.app.server --docroot DIR --mode MODE --tunnel SPEC
                    --token-file F --listen-port 80 [--host-id NAME]
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools

from ..system.files import write_json
from .config import HEADER_TIMEOUT, LISTEN_BACKLOG, AppConfig
from .remote_files import RemoteFile, RemoteFiles

log = logging.getLogger("testbed.app.server")

MAX_COST_US = 1_000_000  # a dynamic request burns at most one second
MAX_REQUEST_LINE = 8 * 1024  # past it, 414 (nginx: large_client_header_buffers 4 8k)
# the longest URL within it after the shortest method and version: "GET " URL " HTTP/1.1\r\n"
MAX_URL_BYTES = MAX_REQUEST_LINE - len(b"GET  HTTP/1.1\r\n")
MAX_HEADER_BYTES = 32 * 1024  # the whole request head (nginx: four 8 KiB buffers); past it, 431
PRECOMPOSE_LIMIT = 64 * 1024  # files up to this size are served as one pre-built buffer
# The cache holds each file once, keyed on its resolved path; request paths (spellings such
# as "//a/./b" or "%61") only point at entries, and only so many, each short: a client
# sending many spellings of one file cannot grow the application (it once kept 55 MB for
# 1,000 spellings of one 12-byte file, a copy each).
MAX_ALIASES = 10_000
MAX_ALIAS_BYTES = 256
STATUS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
          408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large",
          502: b"Bad Gateway"}
# Requests read while our replies wait unread (the transport paused our writing) are
# answered when it resumes. Past DEFER_PAUSE of them reading pauses too (a client that
# pipelines without reading); MAX_DEFERRED bounds what one read already holds. Reading is
# not paused at the first full buffer: a large reply fills it without any abuse, and
# pausing would cost two epoll_ctl calls per such reply.
DEFER_PAUSE = 32
MAX_DEFERRED = 10_000
# A rejected request's connection is shut for writing after the answer, and what the client
# still sends is read and dropped until it closes, LINGER seconds at most (nginx's lingering
# close): closing with unread bytes would send a reset, and a client's stack may then drop
# the answer (a 414 for a 23 KB request line that arrives in several reads did).
LINGER = 5


def _head(status: int, ctype: bytes, length: int, keep_alive: bool, extra: bytes = b"") -> bytes:
    return b"".join((
        b"HTTP/1.1 %d %s\r\nServer: tcps-app\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        % (status, STATUS[status], ctype, length),
        extra,
        b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n",
    ))


class Entry:
    """A cached file: the body and, for small files, whole responses ready to write."""

    __slots__ = ("body", "ctype", "full", "heads")

    def __init__(self, body: bytes, ctype: bytes) -> None:
        self.body = body
        self.ctype = ctype
        # index: keep_alive (0/1); heads serve HEAD and large GETs
        self.heads = (_head(200, ctype, len(body), False), _head(200, ctype, len(body), True))
        self.full = (self.heads[0] + body, self.heads[1] + body) if len(body) <= PRECOMPOSE_LIMIT else None


class App:
    """Everything the connections share: the document root and its cache."""

    def __init__(self, docroot: str | os.PathLike | None, dynamic_cost_us: int = 0,
                 cache_bytes: int = 512 * 1024 * 1024, idle_timeout: float = 30.0,
                 header_timeout: float = HEADER_TIMEOUT, remote: RemoteFiles | None = None,
                 direct_files: bool = False) -> None:
        # a local document root, or one on a file server (``remote``; nothing read from disk)
        self.root = Path(docroot).resolve() if docroot is not None else None
        self.remote = remote
        self.direct_files = direct_files  # remote bodies go client-ward from the TCP server
        self.relays: set[asyncio.Task] = set()  # bodies being read from the file server
        self.dynamic_cost_us = dynamic_cost_us
        self.files: dict[Path, Entry] = {}  # resolved file -> its entry (charged once)
        self.cache: dict[bytes, Entry] = {}  # request path -> entry (MAX_ALIASES at most)
        self.cache_left = cache_bytes
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.conns: set[HttpProtocol] = set()
        self.tick = 0
        self.requests = 0
        self.bad_requests = 0

    def lookup(self, path: bytes) -> Entry | None:
        e = self.cache.get(path)
        if e is not None:
            return e
        if self.root is None:
            return None
        if b"%" in path:
            path_d = unquote_to_bytes(path)
        else:
            path_d = path
        try:
            rel = path_d.decode("utf-8").lstrip("/")
        except UnicodeDecodeError:
            return None
        if rel == "" or "\x00" in rel:
            return None
        target = (self.root / rel).resolve()
        if self.root not in target.parents:
            return None  # outside the document root (.. or symlinks): not found
        e = self.files.get(target)
        if e is None:
            try:
                body = target.read_bytes()
            except (OSError, ValueError):
                return None
            ctype = b"application/json" if target.suffix == ".json" else (
                b"text/html" if target.suffix in (".html", ".htm") else b"application/octet-stream")
            e = Entry(body, ctype)
            cost = len(body) * (3 if e.full else 1)
            if cost > self.cache_left:
                return e  # served, not kept
            self.cache_left -= cost
            self.files[target] = e
        if len(path) <= MAX_ALIAS_BYTES and len(self.cache) < MAX_ALIASES:
            self.cache[path] = e
        return e

    def sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Once a second: close connections idle for longer than idle_timeout (aborted when
        replies are still unsent: a client that stopped reading would hold them forever),
        and answer 408 to requests not finished within header_timeout; rejected connections
        are closed LINGER seconds after their answer."""
        self.tick += 1
        limit = self.tick - max(1, int(self.idle_timeout))
        late = self.tick - max(1, int(self.header_timeout))
        linger = self.tick - LINGER
        for c in list(self.conns):
            if c.last < limit or (c.closing and c.last < linger):
                t = c.transport
                if t.get_write_buffer_size():
                    t.abort()
                else:
                    t.close()
            elif 0 <= c.began <= late and not c.closing:
                c.reject(408, b"request timeout\n")
        loop.call_later(1.0, self.sweep, loop)


def burn_cpu(cost_us: int) -> int:
    """Spend ``cost_us`` microseconds of this thread's CPU (not wall) time: stands in for CGI."""
    end = time.thread_time_ns() + cost_us * 1000
    n = 0
    clock = time.thread_time_ns
    while clock() < end:
        for _ in range(50):
            n += 1
    return n


class HttpProtocol(asyncio.Protocol):
    """One HTTP connection; works on any asyncio Transport (kernel or tunneled)."""

    __slots__ = ("app", "transport", "parser", "url", "last", "closing", "began", "pending", "wpaused",
                 "rpaused", "deferred", "busy")

    def __init__(self, app: App) -> None:
        self.app = app
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.last = app.tick
        self.closing = False
        self.began = -1  # the app's tick when the request being read began; -1: none
        self.pending = 0  # bytes read into that request past its first read
        self.wpaused = False  # the transport's buffer is full: the client does not read
        self.rpaused = False  # we paused reading (DEFER_PAUSE requests deferred)
        self.deferred: collections.deque[tuple[bytes, bytes, bool]] | None = None  # read while wpaused
        self.busy = False  # a body is on its way from the file server: later requests wait

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.app.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.conns.discard(self)
        self.deferred = None
        # the parser holds our bound callbacks: drop it, and the connection (protocol,
        # parser, transport, URL) is freed now by reference counting instead of at the
        # collector's next young generation, thousands of connections later (module doc)
        self.parser = None
        self.closing = True

    def pause_writing(self) -> None:
        self.wpaused = True

    def resume_writing(self) -> None:
        self.wpaused = False
        self._serve_deferred()

    def _serve_deferred(self) -> None:
        deferred = self.deferred
        while deferred and not self.wpaused and not self.busy and not self.closing:
            self.serve(*deferred.popleft())
        if self.rpaused and not self.wpaused and not self.busy and not self.closing:
            self.rpaused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:  # rejected: dropped while we linger (LINGER)
            return
        self.last = self.app.tick
        # header size: count the reads that arrive while a request is unfinished (the one
        # that began it is not counted, so the cap is MAX_HEADER_BYTES plus one read)
        if self.began >= 0:
            self.pending += len(data)
            if self.pending > MAX_HEADER_BYTES:
                self.reject(431, b"request header fields too large\n")
                return
        else:
            self.pending = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.error(400)
        except httptools.HttpParserError:
            if not self.closing:  # else answered already (414 from on_url)
                self.error(400)

    def eof_received(self) -> bool:
        return False  # the client is done: close our side too

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.began = self.app.tick

    def on_url(self, url: bytes) -> None:
        self.url += url  # one call per request unless the URL spans reads
        if len(self.url) > MAX_URL_BYTES:
            self.reject(414, b"request line too long\n")
            raise httptools.HttpParserError("URL too long")  # stops the parser

    def on_message_complete(self) -> None:
        self.began = -1
        if self.closing:
            return
        p = self.parser
        if self.wpaused or self.busy:  # answered once the client reads (or the file server sent) the last
            deferred = self.deferred
            if deferred is None:
                deferred = self.deferred = collections.deque()
            if len(deferred) >= MAX_DEFERRED:
                self.closing = True
                self.transport.abort()
                return
            deferred.append((p.get_method(), self.url, p.should_keep_alive()))
            if len(deferred) >= DEFER_PAUSE and not self.rpaused:
                self.rpaused = True
                self.transport.pause_reading()
            return
        self.serve(p.get_method(), self.url, p.should_keep_alive())

    def serve(self, method: bytes, url: bytes, ka: bool) -> None:
        app = self.app
        app.requests += 1
        head = method == b"HEAD"
        if method != b"GET" and not head:
            self.respond(405, b"method not allowed\n", ka, extra=b"Allow: GET, HEAD\r\n")
            return
        q = url.find(b"?")
        path = url if q < 0 else url[:q]
        if app.remote is not None:
            f = app.remote.lookup(path)
            if f is not None:
                self.serve_remote(f, head, ka)
                return
        e = app.cache.get(path) or app.lookup(path)
        t = self.transport
        if e is not None:
            if head:
                t.write(e.heads[ka])
            elif e.full is not None:
                t.write(e.full[ka])
            else:
                t.write(e.heads[ka])
                t.write(e.body)
        elif path == b"/dynamic":
            cost = app.dynamic_cost_us
            if q >= 0:
                try:
                    qs = httptools.parse_url(url).query or b""
                    for part in qs.split(b"&"):
                        k, _, v = part.partition(b"=")
                        if k == b"cost_us":
                            cost = min(int(v), MAX_COST_US)
                except (ValueError, httptools.HttpParserInvalidURLError):
                    self.respond(400, b"bad cost_us\n", False)
                    return
            n = burn_cpu(cost) if cost > 0 else 0
            self.respond(200, b"dynamic cost_us=%d work=%d\n" % (cost, n), ka, head=head)
            return
        else:
            self.respond(404, b"not found\n", ka, head=head)
            return
        if not ka:
            self.closing = True
            t.close()

    def serve_remote(self, f: RemoteFile, head: bool, ka: bool) -> None:
        """A file of the file server: its head from here; its body straight from the file
        server by the TCP server (``direct_files``), or read here and sent."""
        t = self.transport
        if head:
            t.write(_head(200, f.ctype, f.size, ka))
        elif self.app.direct_files:
            t.write(_head(200, f.ctype, f.size, ka))
            t.send_file(f.path, f.size)  # type: ignore[attr-defined]
        else:
            self.busy = True
            task = asyncio.get_running_loop().create_task(self._relay(f, ka))
            self.app.relays.add(task)  # the loop holds tasks weakly: kept until done
            task.add_done_callback(self.app.relays.discard)
            return
        if not ka:
            self.closing = True
            t.close()

    async def _relay(self, f: RemoteFile, ka: bool) -> None:
        try:
            body = await self.app.remote.get(f.path)  # type: ignore[union-attr]
        except Exception as e:  # down, slow, or not a file server's answer: 502, at once
            log.warning("file server: %s", e or type(e).__name__)
            self.busy = False
            if not self.closing:
                self.respond(502, b"file server unavailable\n", False)
            return
        self.busy = False
        if self.closing:  # the client left meanwhile
            return
        self.transport.write(_head(200, f.ctype, f.size, ka))
        self.transport.write(body)
        if not ka:
            self.closing = True
            self.transport.close()
        else:
            self._serve_deferred()

    def respond(self, status: int, body: bytes, ka: bool, extra: bytes = b"", head: bool = False) -> None:
        t = self.transport
        t.write(_head(status, b"text/plain", len(body), ka, extra) + (b"" if head else body))
        if not ka:
            self.closing = True
            t.close()

    def error(self, status: int) -> None:
        self.reject(status, b"bad request\n")

    def reject(self, status: int, body: bytes) -> None:
        """Answer ``status`` and end the connection (a malformed, too large or too slow
        request): our side is shut after the answer, the client's close (or the sweep,
        LINGER seconds on) closes it."""
        self.app.bad_requests += 1
        self.deferred = None
        self.url = b""
        self.closing = True
        self.last = self.app.tick
        t = self.transport
        t.write(_head(status, b"text/plain", len(body), False) + body)
        t.write_eof()


# --- running it -------------------------------------------------------------------------------


async def serve_regular(app: App, host: str, port: int, backlog: int = LISTEN_BACKLOG) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: HttpProtocol(app), host, port, reuse_address=True, backlog=backlog)


def _write_stats(path: Path, app: App, tunnels: list, pacer: Any = None) -> None:
    d = {"time": time.time(), "pid": os.getpid(), "requests": app.requests, "bad_requests": app.bad_requests,
         "connections_open": len(app.conns), "cache_files": len(app.files),
         "cache_paths": len(app.cache)}
    if tunnels and tunnels[-1] is not None:
        d["tunnel"] = tunnels[-1].counters()
    if pacer is not None:
        d["polls"], d["poll_sleeps"] = pacer.polls, pacer.sleeps
    if app.remote is not None:
        d.update(app.remote.counters())
    try:
        write_json(path, d)
    except OSError as e:
        log.warning("cannot write stats file %s: %s", path, e)


def main(argv: list[str] | None = None) -> int:
    from testbed.offload.polling import PollingPacer
    from testbed.offload.runtime import install_loop, read_token

    try:
        cfg, a = AppConfig.from_argv(argv)
        logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
        if cfg.docroot is not None and not cfg.docroot.is_dir():
            raise ValueError(f"document root {cfg.docroot} is not a directory "
                             "(make one: python -m testbed.app.docroot DIR)")
        token = read_token(str(cfg.token_file)) if cfg.mode.offloaded else ""
    except (ValueError, OSError) as e:
        print(f"app.server: {e}", file=sys.stderr)
        return 2
    mode, host_id = cfg.mode, cfg.host_id or socket.gethostname()
    loop_name = install_loop()
    app = App(cfg.docroot, cfg.dynamic_cost_us, idle_timeout=cfg.idle_timeout, header_timeout=cfg.header_timeout,
              direct_files=cfg.direct_files)

    async def run() -> None:
        from testbed.offload import hostsock

        loop = asyncio.get_running_loop()
        if cfg.file_server is not None:  # its index before the first client
            app.remote = RemoteFiles(*cfg.file_server)
            n = await app.remote.load_index()
            log.info("document root on the file server %s:%d: %d files%s", *cfg.file_server, n,
                     ", bodies sent by the TCP server" if cfg.direct_files else "")
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.call_later(1.0, app.sweep, loop)
        tunnels: list = [None]
        pacer = None
        if cfg.poll_us:
            def flush_tunnel() -> None:
                t = tunnels[-1]
                if t is not None and t.out:
                    t.flush()
            # over shm the pacer sleeps when idle, woken by the ring's doorbell
            pacer = PollingPacer(loop, cfg.poll_us / 1e6, flush_tunnel,
                                 sleep_when_idle=str(cfg.tunnel).startswith("shm:")).start()
        if cfg.stats_file:
            stats_file = cfg.stats_file

            def stats() -> None:
                _write_stats(stats_file, app, tunnels, pacer)
                loop.call_later(0.5, stats)
            loop.call_soon(stats)
        if mode.offloaded:
            task = loop.create_task(hostsock.serve_forever(
                str(cfg.tunnel), token, mode.name, host_id, cfg.listen_port, lambda: HttpProtocol(app),
                on_attach=lambda t: tunnels.append(t)))
            log.info("host app %s: mode %s via %s, loop %s", host_id, mode.name, cfg.tunnel, loop_name)
            done, _ = await asyncio.wait([task, loop.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
            if task in done and task.exception():
                raise task.exception()  # type: ignore[misc]
            task.cancel()
        else:
            assert cfg.listen is not None
            srv = await serve_regular(app, cfg.listen[0], cfg.listen[1], cfg.listen_backlog)
            log.info("host app: regular mode on %s:%d, loop %s", cfg.listen[0], cfg.listen[1], loop_name)
            await stop.wait()
            srv.close()

    try:
        asyncio.run(run())
    except OSError as e:
        print(f"app.server: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # e.g. the TCP server refused our token or mode
        print(f"app.server: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Client sockets without per-connection event-loop machinery: the TCP server's fast path.

Client connections are plain non-blocking sockets in one epoll set of our own, itself
watched by the asyncio loop, so the daemon decides when and how much it accepts and
reads. That is what polling (``polling.py``) needs: the event loop's own listener accepts
about one connection per loop iteration. Written to cut the per-transport setup of the
event loop (a transport object, TCP_NODELAY and address look-ups, an epoll registration,
a wake-up before the first read), it measured no cheaper than uvloop's C transports
(docs/performance.md, "The client fast path, polling, SEND_CLOSE, and the floor"); ``--client-io asyncio``
keeps those for comparison.
What it does:

- the listener is accepted in a loop; an accepted socket is read at once (with
  TCP_DEFER_ACCEPT its request is already there), before any epoll registration;
- TCP_NODELAY is set once on the listener (Linux copies it to accepted sockets);
- a response is written directly, and only a socket that could not take it all is
  watched for writability;
- closing the socket is the only clean-up (the kernel drops it from the epoll set).

The owner can ``pause()`` the listener (overload control: connections then wait in the
kernel's listen backlog, and SYNs beyond it are dropped, which clients see as retries),
and a protocol may define ``connection_ready()``, called once the first read is done (so
a connection its client already reset or closed can be told apart before it costs more).

``RawTransport`` implements the part of ``asyncio.Transport`` the daemon's protocols use
(write, write_eof, close, abort, pause/resume_reading, write-buffer limits with
pause/resume_writing), with asyncio's semantics: callbacks are never re-entered from the
method that caused them, except ``connection_lost``, which ``close``/``abort`` call
directly once the socket is gone (the daemon's protocols expect and allow that).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import select
import socket
from collections.abc import Callable
from typing import Any

from .transport import DEFAULT_HIGH, DEFAULT_LOW, GONE, StreamTransport
from .zerocopy import MSG_ZEROCOPY, Completions, Done, Linger, abort_socket, enable

log = logging.getLogger("testbed.offload.rawio")

_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_EPOLLERR = select.EPOLLERR
_EPOLLBAD = select.EPOLLERR | select.EPOLLHUP
_DONTWAIT = socket.MSG_DONTWAIT
_ZC_SEND = socket.MSG_DONTWAIT | MSG_ZEROCOPY
_READ_SIZE = 65536
_ACCEPTS_PER_WAKE = 128
_EVENTS_PER_WAKE = 512
# accept() errors that mean "resources are short, try again later" (as asyncio treats them)
_ACCEPT_RETRY = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Poller:
    """One epoll set for all client sockets, watched by the running asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ep = select.epoll()
        self.handlers: dict[int, Any] = {}  # fd -> object with _event(mask)
        self.on_events: Callable[[], None] | None = None  # a polling pacer's wake, if any
        loop.add_reader(self.ep.fileno(), self._poll)

    def _poll(self) -> None:
        handlers = self.handlers
        events = self.ep.poll(0, _EVENTS_PER_WAKE)
        if events and self.on_events is not None:
            self.on_events()
        for fd, ev in events:
            h = handlers.get(fd)
            if h is not None:
                try:
                    h._event(ev)
                except Exception:  # one connection's bug ends that connection, not the server
                    log.exception("error handling events %#x on fd %d; closing it", ev, fd)
                    if isinstance(h, RawTransport):
                        h.abort()

    def register(self, fd: int, mask: int, handler: Any) -> None:
        self.handlers[fd] = handler
        self.ep.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        self.ep.modify(fd, mask)

    def forget(self, fd: int) -> None:
        """Before closing a registered fd: closing alone drops it from the set, but not
        from our table, and the number may be reused at once."""
        self.handlers.pop(fd, None)

    def unregister(self, fd: int) -> None:
        self.handlers.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except OSError:
            pass

    def close(self) -> None:
        self.loop.remove_reader(self.ep.fileno())
        self.ep.close()


class RawListener:
    """A listening TCP socket whose connections become ``RawTransport``s.

    ``factory()`` returns the protocol for each connection; its ``connection_made`` runs
    first, then ``data_received`` with the bytes already waiting, if any.
    """

    def __init__(self, poller: Poller, host: str, port: int, factory: Callable[[], asyncio.Protocol],
                 backlog: int = 4096) -> None:
        self.poller = poller
        self.factory = factory
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
            sock.bind((host, port))
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.sockets = [sock]  # as asyncio.Server has
        self.family = family
        self.fd = sock.fileno()
        self.retry: asyncio.TimerHandle | None = None
        self.paused = False  # by the owner (pause/resume), apart from the retry timer
        poller.register(self.fd, _EPOLLIN, self)

    def _event(self, ev: int) -> None:
        accept = self.sock._accept  # (fd, address), no socket object: we make a cheaper one
        new = socket.socket
        family = self.family
        factory = self.factory
        poller = self.poller
        for _ in range(_ACCEPTS_PER_WAKE):
            if self.paused:  # a protocol's connection_made may pause us mid-loop
                return
            try:
                fd, addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                if e.errno in _ACCEPT_RETRY:
                    # out of descriptors or memory: stop accepting for a second rather than
                    # spin; connections wait in the kernel's backlog
                    log.warning("accept: %s; pausing the listener for 1 s", e)
                    self._pause(1.0)
                    return
                raise
            sock = new(family, socket.SOCK_STREAM, 0, fd)
            RawTransport(poller, sock, fd, addr, factory())

    def pause(self) -> None:
        """Stop accepting until ``resume()``: new connections wait in the kernel's backlog."""
        if self.paused or self.fd < 0:
            return
        self.paused = True
        if self.retry is None:
            self.poller.modify(self.fd, 0)

    def resume(self) -> None:
        if not self.paused or self.fd < 0:
            return
        self.paused = False
        if self.retry is None:
            self.poller.modify(self.fd, _EPOLLIN)

    def _pause(self, seconds: float) -> None:
        self.poller.modify(self.fd, 0)
        self.retry = self.poller.loop.call_later(seconds, self._resume)

    def _resume(self) -> None:
        self.retry = None
        if self.fd >= 0 and not self.paused:
            self.poller.modify(self.fd, _EPOLLIN)

    def close(self) -> None:
        if self.fd < 0:
            return
        if self.retry is not None:
            self.retry.cancel()
        self.poller.unregister(self.fd)
        self.sock.close()
        self.fd = -1


class _ZcChunk:
    """Bytes in the send area waiting in a write buffer: sent with MSG_ZEROCOPY, not copied."""

    __slots__ = ("view", "done", "off")

    def __init__(self, view: memoryview, done: Done, off: int) -> None:
        self.view = view
        self.done = done
        self.off = off

    def __len__(self) -> int:
        return len(self.view)


class RawTransport(StreamTransport):
    """One accepted client socket (see the module docstring for the contract)."""

    __slots__ = ("poller", "sock", "fd", "peer", "_mask", "_registered", "_wbuf", "_wlen",
                 "_closing", "_closed", "_eof_pending", "_reading", "_hup", "_zc")

    def __init__(self, poller: Poller, sock: socket.socket, fd: int, peer: Any,
                 protocol: asyncio.Protocol) -> None:
        self.poller = poller
        self.sock = sock
        self.fd = fd
        self.peer = peer
        self._protocol = protocol  # the StreamTransport fields, inline (per connection)
        self._high = DEFAULT_HIGH
        self._low = DEFAULT_LOW
        self._wpaused = False
        self._mask = 0
        self._registered = False
        self._wbuf: list[bytes] = []
        self._wlen = 0
        self._closing = False
        self._closed = False
        self._eof_pending = False  # write_eof after the buffered bytes
        self._reading = True
        self._hup = False  # error/hang-up seen while not reading
        self._zc: Completions | None = None  # zero-copy sends the kernel holds (write_zc)
        try:
            protocol.connection_made(self)
            # the request is usually in already (TCP_DEFER_ACCEPT, or a quick client): read
            # it before paying for a registration that would only report it
            if self._reading and not self._closed:
                self._read()
            if not self._closed:
                ready = getattr(protocol, "connection_ready", None)
                if ready is not None:
                    ready()
        except Exception:  # as in Poller._poll: this connection ends, the server goes on
            log.exception("error setting up the connection from %s; closing it", peer)
            self.abort()
            return
        if not self._closed and not self._registered:
            self._want()

    # --- epoll bookkeeping ---------------------------------------------------------------
    def _set_mask(self, mask: int) -> None:
        if self._registered:
            if mask != self._mask:
                self.poller.modify(self.fd, mask)
        else:
            self.poller.register(self.fd, mask, self)
            self._registered = True
        self._mask = mask

    def _want(self) -> None:
        mask = (_EPOLLIN if self._reading and not self._closing else 0) | (_EPOLLOUT if self._wlen else 0)
        if self._hup and not mask & _EPOLLIN and self._registered:
            # a hang-up is reported whatever the mask: leave the set until we read again
            self.poller.unregister(self.fd)
            self._registered = False
            self._mask = 0
            return
        self._set_mask(mask)

    def _event(self, ev: int) -> None:
        if ev & _EPOLLERR and self._zc is not None and self._zc.reap(self.sock):
            ev &= ~_EPOLLERR  # completion notices (a real error shows again once they are read)
            if not ev:
                return
        if ev & (_EPOLLOUT | _EPOLLBAD) and self._wlen:
            self._flush()  # after an error or reset the send fails and the transport ends
            if self._closed:
                return
        if ev & (_EPOLLIN | _EPOLLBAD):
            if self._reading and not self._closing:
                self._read()
            elif ev & _EPOLLBAD:
                self._hup = True
                self._want()

    # --- reading -------------------------------------------------------------------------
    def _read(self) -> None:
        try:
            data = self.sock.recv(_READ_SIZE, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # reset, broken pipe...: this connection ends
            self._fatal(e)
            return
        if data:
            self._protocol.data_received(data)
            return
        # EOF: stop reading; the protocol decides whether our side closes too
        self._reading = False
        keep_open = self._protocol.eof_received()
        if self._closed:
            return
        if not keep_open:
            self.close()
        elif not self._closing:
            self._want()

    def pause_reading(self) -> None:
        if self._reading and not self._closed:
            self._reading = False
            if self._registered:
                self._want()

    def resume_reading(self) -> None:
        if self._reading or self._closed or self._closing:
            return
        self._reading = True
        self._hup = False
        self._want()

    def is_reading(self) -> bool:
        return self._reading and not self._closed

    # --- writing -------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._closing or self._eof_pending or not data:
            return
        if not self._wlen:
            try:
                n = self.sock.send(data, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:  # reset, broken pipe...: this connection ends
                self._fatal(e)
                return
            if n == len(data):
                return
            data = data[n:]
        self._hold(bytes(data))

    def _hold(self, item: bytes | _ZcChunk) -> None:
        """Keep what the socket did not take, behind what it holds already."""
        self._wbuf.append(item)  # type: ignore[arg-type]
        self._wlen += len(item)
        self._want()  # adds EPOLLOUT (a syscall only when the mask changes)
        if not self._wpaused and self._wlen > self._high:
            self._pause_writing()

    def write_zc(self, view: memoryview, done: Done, off: int) -> None:
        """Send ``view`` (a region of a host's send area) without copying it: MSG_ZEROCOPY;
        ``done(off)`` once the kernel let go of it (zerocopy.py). Copied instead when the
        kernel refuses zero-copy on this socket."""
        if self._closed or self._closing or self._eof_pending:
            done(off)
            return
        zc = self._zc
        if zc is None:
            if not enable(self.sock):
                self.write(bytes(view))
                done(off)
                return
            zc = self._zc = Completions()
        if not self._wlen:
            try:
                n = self.sock.send(view, _ZC_SEND)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # no room for more notices now: copy this one
                    self.write(bytes(view))
                    done(off)
                    return
                done(off)
                self._fatal(e)
                return
            if n:
                last = zc.sent()
                if n == len(view):
                    zc.owe(last, done, off)
                    return
                view = view[n:]
        self._hold(_ZcChunk(view, done, off))

    def _send_chunk(self, item: _ZcChunk) -> int:
        try:
            n = self.sock.send(item.view, _ZC_SEND)
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            n = self.sock.send(bytes(item.view), _DONTWAIT)  # no room for notices: copied
            if n == len(item.view):  # free once the zero-copy sends of its start are
                self._zc.owe(self._zc.next_id - 1, item.done, item.off)  # type: ignore[union-attr]
            return n
        if n:
            last = self._zc.sent()  # type: ignore[union-attr]
            if n == len(item.view):
                self._zc.owe(last, item.done, item.off)  # type: ignore[union-attr]
        return n

    def _flush(self) -> None:
        buf = self._wbuf
        while buf:
            item = buf[0]
            try:
                n = self.sock.send(item, _DONTWAIT) if type(item) is not _ZcChunk else self._send_chunk(item)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # reset, broken pipe...: this connection ends
                self._fatal(e)
                return
            self._wlen -= n
            if n == len(item):
                buf.pop(0)
            elif type(item) is _ZcChunk:
                item.view = item.view[n:]
                break
            else:
                buf[0] = item[n:]
                break
        if self._wpaused and self._wlen <= self._low:
            self._resume_writing()
            if self._closed:
                return
        if self._wlen:
            return
        if self._closing:
            self._finish(None, True)
            return
        if self._eof_pending:
            self._eof_pending = False
            self._shutdown_write()
        self._want()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closed or self._closing or self._eof_pending:
            return
        if self._wlen:
            self._eof_pending = True
        else:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def get_write_buffer_size(self) -> int:
        return self._wlen

    # --- closing -------------------------------------------------------------------------
    def is_closing(self) -> bool:
        return self._closing or self._closed

    def close(self) -> None:
        if self._closing or self._closed:
            return
        if not self._wlen:
            self._finish(None, True)
            return
        self._closing = True  # the buffered bytes go out first, then the socket closes
        self._reading = False
        self._want()

    def abort(self) -> None:
        if not self._closed:
            self._finish(None)

    def _fatal(self, exc: BaseException) -> None:
        if not self._closed:
            self._finish(exc if isinstance(exc, Exception) else None)

    def _finish(self, exc: Exception | None, graceful: bool = False) -> None:
        self._closed = True
        self._closing = True
        zc = self._zc
        if zc is not None and (zc.outstanding or self._wbuf):
            self._close_zc(zc, graceful)
        else:
            if self._registered:
                self.poller.forget(self.fd)  # close() below drops it from the epoll set
            self.sock.close()
        self._wbuf = []
        self._wlen = 0
        self._registered = False
        protocol = self._protocol
        self._protocol = GONE
        try:
            protocol.connection_lost(exc)
        except Exception:  # one connection's bug must not end the server
            log.exception("connection_lost of %r failed", protocol)

    def _close_zc(self, zc: Completions, graceful: bool) -> None:
        """Close with zero-copy sends the kernel may still hold: a graceful close lingers
        until they complete; an abort or an error resets (freeing the pages at once). Bytes
        never handed to the kernel are given back now."""
        for item in self._wbuf:
            if type(item) is _ZcChunk:
                zc.owe(zc.next_id - 1, item.done, item.off)  # after the sends before it
        if graceful:  # everything was handed to the kernel: wait for it only if it still holds some
            if zc.outstanding:
                zc.reap(self.sock)  # usually the client acknowledged it all before it closed
            if zc.outstanding:
                Linger(self.poller, self.sock, self.fd, zc, self._registered)
                return
            if self._registered:
                self.poller.forget(self.fd)
            self.sock.close()
            return
        if self._registered:
            self.poller.forget(self.fd)
        abort_socket(self.sock)
        zc.release_all()

    # --- the rest of the Transport interface --------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.peer
        if name == "socket":
            return self.sock
        if name == "sockname":
            try:
                return self.sock.getsockname()
            except OSError:
                return default
        return default

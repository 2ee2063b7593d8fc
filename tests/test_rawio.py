"""The TCP server's client-socket fast path (rawio) against real loopback sockets."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from testbed.offload import rawio

from .offload_helpers import free_port


class Echo(asyncio.Protocol):
    """Echoes; ``boom`` raises; ``big N`` answers N bytes; records flow-control calls."""

    def __init__(self, log: list) -> None:
        self.log = log
        self.t: asyncio.Transport = None  # type: ignore[assignment]

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.t = transport
        self.log.append("made")

    def data_received(self, data: bytes) -> None:
        if data.startswith(b"boom"):
            raise RuntimeError("a bug in one connection's protocol")
        if data.startswith(b"big "):
            self.t.write(b"x" * int(data[4:]))
            self.t.close()  # after the buffered bytes are out
            return
        self.t.write(data)

    def eof_received(self) -> bool:
        self.log.append("eof")
        self.t.write(b"bye")
        self.t.write_eof()
        return True

    def pause_writing(self) -> None:
        self.log.append("pause")

    def resume_writing(self) -> None:
        self.log.append("resume")

    def connection_lost(self, exc) -> None:
        self.log.append("lost")


async def _serve(log: list) -> tuple[rawio.Poller, rawio.RawListener, int]:
    poller = rawio.Poller(asyncio.get_running_loop())
    port = free_port()
    return poller, rawio.RawListener(poller, "127.0.0.1", port, lambda: Echo(log)), port


async def _read_all(r: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(r.read(), 10)


def test_echo_half_close_and_a_failing_protocol_leaves_others_alone() -> None:
    async def main() -> None:
        log: list = []
        poller, ls, port = await _serve(log)
        bad_r, bad_w = await asyncio.open_connection("127.0.0.1", port)
        bad_w.write(b"boom")
        assert await _read_all(bad_r) == b""  # closed by the server, which keeps going
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"hello")
        assert await asyncio.wait_for(r.readexactly(5), 5) == b"hello"
        w.write_eof()  # half close: the protocol answers, then shuts its side
        assert await _read_all(r) == b"bye"
        assert log.count("eof") == 1
        w.close()
        ls.close()
        poller.close()

    uvloop.run(main())


def test_slow_reader_pauses_writing_and_close_waits_for_the_bytes() -> None:
    n = 8 * 1024 * 1024  # far more than the kernel's socket buffers

    async def main() -> None:
        log: list = []
        poller, ls, port = await _serve(log)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        s.send(b"big %d" % n)
        await asyncio.sleep(0.3)
        assert "pause" in log and "lost" not in log  # bytes wait in the transport
        loop = asyncio.get_running_loop()
        got = 0
        while True:
            chunk = await asyncio.wait_for(loop.sock_recv(s, 1 << 16), 10)
            if not chunk:
                break
            got += len(chunk)
        assert got == n and "resume" in log and log[-1] == "lost"
        s.close()
        ls.close()
        poller.close()

    uvloop.run(main())


def test_listener_in_use_is_a_clear_error() -> None:
    async def main() -> None:
        poller, ls, port = await _serve([])
        with pytest.raises(OSError):
            rawio.RawListener(poller, "127.0.0.1", port, lambda: Echo([]))
        ls.close()
        poller.close()

    uvloop.run(main())


def test_reset_with_bytes_still_buffered_ends_the_transport() -> None:
    """A client that resets while a reply waits in the transport: the transport ends at
    once (no epoll spin on the hang-up it can no longer read)."""

    async def main() -> None:
        log: list = []
        poller, ls, port = await _serve(log)
        polls = 0
        real_poll = poller._poll

        def counting_poll() -> None:
            nonlocal polls
            polls += 1
            real_poll()

        loop = asyncio.get_running_loop()
        loop.remove_reader(poller.ep.fileno())
        loop.add_reader(poller.ep.fileno(), counting_poll)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.send(b"big %d" % (8 * 1024 * 1024))
        await asyncio.sleep(0.2)
        assert "pause" in log and "lost" not in log
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # RST
        await asyncio.sleep(0.3)
        assert log[-1] == "lost"
        before = polls
        await asyncio.sleep(0.3)
        assert polls - before < 5, polls - before  # nothing left to report
        ls.close()
        poller.close()

    uvloop.run(main())

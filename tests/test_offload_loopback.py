"""The TCP server and the host library together on loopback, in every offloaded mode."""

from __future__ import annotations

import asyncio
import errno
import json
import random
import socket
import struct
from pathlib import Path

import pytest
import uvloop

from testbed.app.docroot import generate
from testbed.offload import hostsock, protocol
from testbed.offload.modes import MODES, OFFLOADED_MODES

from .offload_helpers import TOKEN, free_port, http_get, offload_stack, parse_response


@pytest.fixture(scope="module")
def docroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tcps-docroot")
    generate(root, seed=7, dirs=1)
    return root


def run(coro):
    return uvloop.run(coro)


def fetch_all_byte_exact(mode: str, docroot: Path, **cfg_kw) -> tuple[dict, dict]:
    """Every file three times over concurrent new connections: (host counters, server stats)."""
    files = json.loads((docroot / "manifest.json").read_text())["files"]

    async def main() -> tuple[dict, dict]:
        async with offload_stack(mode, docroot, **cfg_kw) as (srv, tunnels, port):
            sem = asyncio.Semaphore(64)

            async def one(f: dict) -> None:
                async with sem:
                    status, headers, body = await http_get(port, f["path"])
                assert status == 200 and body == (docroot / f["path"][1:]).read_bytes(), f["path"]

            await asyncio.gather(*(one(f) for f in files * 3))
            counts = tunnels[0].counters()
            st = srv.stats()
            assert st["connections_total"] == len(files) * 3
            assert st["protocol_errors"] == 0
            return counts, st

    return run(main())


@pytest.mark.parametrize("mode", OFFLOADED_MODES)
def test_every_file_byte_exact_concurrently(mode: str, docroot: Path) -> None:
    counts, _ = fetch_all_byte_exact(mode, docroot)
    sent = counts["frames_sent"]
    if MODES[mode].push_accept:
        assert "ACCEPT_REQ" not in sent or sent["ACCEPT_REQ"] == 0
    else:
        assert sent["ACCEPT_REQ"] >= len(json.loads((docroot / "manifest.json").read_text())["files"])
    if MODES[mode].push_data:
        assert "RECV_REQ" not in sent
    else:
        assert sent["RECV_REQ"] >= 1


@pytest.mark.parametrize("mode,cfg", [
    ("setup-with-accept", {"poll_us": 2000}),
    ("eager-receive", {"poll_us": 500}),
    ("split", {"client_io": "asyncio"}),
    ("eager-accept", {"client_io": "asyncio"}),
])
def test_polling_and_event_loop_client_io_byte_exact(mode: str, cfg: dict, docroot: Path) -> None:
    """The TCP server's variants serve the same bytes: polling ("No Interrupts") on the
    epoll fast path, and client sockets on the event loop's transports (the A/B reference)."""
    _, st = fetch_all_byte_exact(mode, docroot, **cfg)
    assert st["poll_us"] == cfg.get("poll_us", 0)
    assert (st["polls"] > 0) == bool(cfg.get("poll_us"))


def test_polling_runs_in_periods(docroot: Path) -> None:
    """With a 20 ms period the loop wakes about 50 times a second, busy or not, and a
    request waits for the next poll."""

    async def main() -> tuple[int, float]:
        async with offload_stack("setup-with-accept", docroot, poll_us=20_000) as (srv, tunnels, port):
            loop = asyncio.get_running_loop()
            p0, t0 = srv.stats()["polls"], loop.time()
            status, _, _ = await http_get(port, "/dir0/class1_0")
            assert status == 200
            await asyncio.sleep(0.5)
            return srv.stats()["polls"] - p0, loop.time() - t0

    polls, elapsed = run(main())
    assert 0.6 * elapsed / 0.02 <= polls <= 1.2 * elapsed / 0.02, (polls, elapsed)


def test_polling_needs_the_epoll_fast_path(docroot: Path) -> None:
    async def main() -> None:
        async with offload_stack("eager-accept", docroot, poll_us=1000, client_io="asyncio"):
            pass

    with pytest.raises(ValueError, match="epoll"):
        run(main())


@pytest.mark.parametrize("mode", OFFLOADED_MODES)
def test_frames_per_short_request_match_the_mode(mode: str, docroot: Path) -> None:
    """What crosses the SAN for one short HTTP/1.0 request, by mode (docs/modes.md)."""

    async def main() -> int:
        async with offload_stack(mode, docroot) as (srv, tunnels, port):
            await http_get(port, "/dir0/class1_0")
            await asyncio.sleep(0.05)
            t = tunnels[0]
            before = sum(t.sent) + sum(t.received)
            n = 20
            for _ in range(n):
                status, _, _ = await http_get(port, "/dir0/class1_0")
                assert status == 200
            await asyncio.sleep(0.05)
            return round((sum(t.sent) + sum(t.received) - before) / n)

    assert run(main()) == MODES[mode].san_frames_per_request


@pytest.mark.parametrize("mode", ["split", "eager-accept"])
def test_http11_keepalive_head_404_400(mode: str, docroot: Path) -> None:
    async def main() -> None:
        async with offload_stack(mode, docroot) as (srv, tunnels, port):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            body = (docroot / "dir0/class0_3").read_bytes()
            for _ in range(3):
                w.write(b"GET /dir0/class0_3 HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await r.readuntil(b"\r\n\r\n")
                assert b"200 OK" in head and b"keep-alive" in head
                assert await r.readexactly(len(body)) == body
            # pipelined HEAD + 404 in one segment
            w.write(b"HEAD /dir0/class0_3 HTTP/1.1\r\nHost: x\r\n\r\nGET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await r.readuntil(b"\r\n\r\n")
            assert b"200 OK" in head and b"Content-Length: %d" % len(body) in head
            head = await r.readuntil(b"\r\n\r\n")
            assert b"404" in head
            await r.readexactly(len(b"not found\n"))
            w.write(b"BLAH\x00 nonsense\r\n\r\n")
            rest = await asyncio.wait_for(r.read(), 5)
            assert rest.startswith(b"HTTP/1.1 400")
            w.close()
            status, _, body2 = await http_get(port, "/dynamic?cost_us=200")
            assert status == 200 and b"cost_us=200" in body2

    run(main())


@pytest.mark.parametrize("mode", ["split", "async-send", "eager-receive", "setup-with-accept"])
def test_socket_api_echo_large_and_half_close(mode: str, docroot: Path) -> None:
    """TunnelSocket calls one by one: recv/send of 1 MiB, client half-close, host close."""

    async def main() -> None:
        async with offload_stack(mode, docroot) as (srv, tunnels, port):
            t = await hostsock.open_tunnel(str(srv.cfg.san), TOKEN, mode, "sock")
            ls = await t.listen(port + 0)  # same port: both hosts serve it
            # detach the app tunnel so the socket-API tunnel gets the connection
            tunnels[0].close()
            await asyncio.sleep(0.05)
            payload = random.Random(1).randbytes(1 << 20)

            async def client() -> bytes:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(payload)
                await w.drain()
                w.write_eof()
                got = await asyncio.wait_for(r.read(), 20)
                w.close()
                return got

            ct = asyncio.ensure_future(client())
            s = await asyncio.wait_for(ls.accept(), 5)
            got = bytearray()
            while True:
                chunk = await asyncio.wait_for(s.recv(65536), 10)
                if not chunk:
                    break
                got += chunk
                await s.send(chunk)
            await s.close()
            assert bytes(got) == payload
            assert await ct == payload
            t.close()

    run(main())


def test_bad_token_and_wrong_mode_refused(docroot: Path) -> None:
    async def main() -> None:
        async with offload_stack("eager-accept", docroot) as (srv, tunnels, port):
            with pytest.raises(hostsock.TunnelError, match="token"):
                await hostsock.open_tunnel(str(srv.cfg.san), "wrong", "eager-accept", "bad")
            with pytest.raises(hostsock.TunnelError, match="mode"):
                await hostsock.open_tunnel(str(srv.cfg.san), TOKEN, "split", "bad")
            assert srv.stats()["auth_failures"] == 1
            status, _, _ = await http_get(port, "/dir0/class0_0")
            assert status == 200

    run(main())


def test_garbage_on_san_drops_only_that_channel(docroot: Path) -> None:
    async def main() -> None:
        async with offload_stack("eager-accept", docroot) as (srv, tunnels, port):
            san = srv.cfg.san
            for junk in (b"\x00" * 64, b"GET / HTTP/1.0\r\n\r\n",
                         protocol.pack(protocol.HELLO, 0, 0, protocol.encode_hello(
                             protocol.Hello(TOKEN, "x", "eager-accept"))) + b"\xff" * 40,
                         struct.pack("<IBBHII", 1 << 30, protocol.PROTOCOL_VERSION, protocol.SEND, 0, 1, 0)):
                r, w = await asyncio.open_connection(san.host, san.port)
                w.write(junk)
                await w.drain()
                rest = await asyncio.wait_for(r.read(), 5)  # dropped: EOF, not a hang
                w.close()
                assert b"\x00" * 64 not in rest
            assert srv.stats()["protocol_errors"] >= 3
            assert len(srv.hosts) == 1
            status, _, _ = await http_get(port, "/dir0/class0_0")
            assert status == 200

    run(main())


@pytest.mark.parametrize("mode", ["async-send", "eager-accept"])
def test_multihost_spread_and_host_death(mode: str, docroot: Path) -> None:
    async def main() -> None:
        async with offload_stack(mode, docroot, hosts=3) as (srv, tunnels, port):
            results = await asyncio.gather(*(http_get(port, "/dir0/class1_1") for _ in range(60)))
            assert all(s == 200 for s, _, _ in results)
            per_host = [t.received[protocol.ACCEPTED] + t.received[protocol.CONN_NEW] for t in tunnels]
            assert all(n > 5 for n in per_host), per_host
            # an idle keep-alive client on each host, then host 0 dies
            conns = []
            for _ in range(6):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(b"GET /dir0/class0_0 HTTP/1.1\r\nHost: x\r\n\r\n")
                await r.readuntil(b"\r\n\r\n")
                conns.append((r, w))
            await asyncio.sleep(0.05)
            doomed = len(tunnels[0].conns)
            tunnels[0].transport.abort()
            closed = 0
            for r, w in conns:
                try:
                    await r.readexactly(102)
                    rest = await asyncio.wait_for(r.read(), 0.5)
                    closed += rest == b""
                except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                    pass
                w.close()
            assert closed == doomed  # the dead host's clients got a prompt close
            results = await asyncio.gather(*(http_get(port, "/dir0/class0_2") for _ in range(30)))
            assert all(s == 200 for s, _, _ in results)
            assert srv.stats()["host_losses"] == 1

    run(main())


def test_no_host_means_prompt_close_and_reattach(docroot: Path) -> None:
    async def main() -> None:
        async with offload_stack("eager-accept", docroot, hosts=0) as (srv, tunnels, port):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET / HTTP/1.0\r\n\r\n")
            try:
                assert await asyncio.wait_for(r.read(), 2) == b""
            except ConnectionResetError:
                pass
            from testbed.app.server import App, HttpProtocol
            app = App(docroot)
            task = asyncio.ensure_future(hostsock.serve_forever(
                str(srv.cfg.san), TOKEN, "eager-accept", "late", port, lambda: HttpProtocol(app)))
            for _ in range(100):
                if srv.hosts:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.05)
            status, _, _ = await http_get(port, "/dir0/class0_0")
            assert status == 200
            # the server side of the SAN drops it: the host re-attaches by itself
            srv.hosts[0].transport.abort()
            for _ in range(100):
                await asyncio.sleep(0.02)
                if srv.hosts and srv.hosts[0].ports:
                    break
            status, _, _ = await http_get(port, "/dir0/class0_0")
            assert status == 200
            task.cancel()

    run(main())


def test_idle_and_slow_clients_bounded(docroot: Path) -> None:
    async def main() -> None:
        # host_conns=0: no per-host bound, so that --max-conns is what stops the 400
        # (with the bound the listener pauses first: tests/test_overload.py)
        async with offload_stack("eager-accept", docroot, max_conns=300, idle_timeout=1.0,
                                 host_conns=0) as (srv, tunnels, port):
            socks = []
            for _ in range(400):
                s = socket.socket()
                s.setblocking(False)
                try:
                    s.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                socks.append(s)
            await asyncio.sleep(0.3)
            st = srv.stats()
            assert st["connections_open"] <= 300 and st["connections_refused"] >= 100
            await asyncio.sleep(2.5)  # idle timeout sweeps them
            assert srv.stats()["connections_open"] == 0
            for s in socks:
                s.close()
            # a client that resets mid-request does not disturb others
            s = socket.socket()
            s.connect(("127.0.0.1", port))
            s.send(b"GET /dir0/cla")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            status, _, _ = await http_get(port, "/dir0/class3_8")
            assert status == 200

    run(main())


def test_slow_reader_bounds_server_buffer(docroot: Path) -> None:
    """A client that never reads a big response: the TCP server holds at most a window."""

    async def main() -> None:
        async with offload_stack("async-send", docroot) as (srv, tunnels, port):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            for _ in range(20):
                s.send(b"GET /dir0/class3_8 HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.sleep(0.5)
            c = next(iter(srv.conns.values()))
            assert c.transport.get_write_buffer_size() <= protocol.SEND_WINDOW + protocol.SEND_CHUNK
            s.close()

    run(main())


def test_a_host_that_never_reads_cannot_grow_the_daemon(docroot: Path) -> None:
    """An authenticated host sending three million PINGs and reading nothing: the daemon stops
    reading it once the PONGs back up (the channel's high-water mark), so its memory stays
    bounded, and it still serves through the well-behaved host."""
    import resource

    async def main() -> None:
        async with offload_stack("eager-accept", docroot) as (srv, tunnels, port):
            san = srv.cfg.san
            sock = socket.create_connection((san.host, san.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
            sock.setblocking(False)
            hello = protocol.pack(protocol.HELLO, 0, 0, protocol.encode_hello(
                protocol.Hello(TOKEN, "greedy", "eager-accept")))
            pings = protocol.pack(protocol.PING, 0, 7) * 10_000
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(sock, hello)
            sent = 0
            for _ in range(300):  # 3M PINGs (48 MB of PONGs), as far as the daemon takes them
                try:
                    await asyncio.wait_for(loop.sock_sendall(sock, pings), 2.0)
                except asyncio.TimeoutError:
                    break  # the daemon stopped reading us: the bound
                sent += 1
            grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
            greedy = [h for h in srv.hosts if h.host_id == "greedy"]
            assert greedy and greedy[0].paused, "the daemon should have stopped reading the greedy host"
            assert sent < 300, "3M PINGs taken without their PONGs being read"
            # (the kernel's socket buffers and the 8 MB high-water mark; unbounded was +22 MB)
            assert grown_kb < 24 * 1024, grown_kb
            status, _, _ = await http_get(port, "/dir0/class0_0")
            assert status == 200
            sock.close()

    run(main())


def test_a_host_sending_past_its_window_is_dropped(docroot: Path) -> None:
    """SEND beyond the send window (no CREDIT waited for) is a protocol error: that host's
    channel is dropped, the daemon's buffers do not grow with it."""
    async def main() -> None:
        async with offload_stack("eager-accept", docroot) as (srv, tunnels, port):
            r, w = await asyncio.open_connection("127.0.0.1", port)  # announced to a host
            san = srv.cfg.san
            rogue_r, rogue_w = await asyncio.open_connection(san.host, san.port)
            rogue_w.write(protocol.pack(protocol.HELLO, 0, 0, protocol.encode_hello(
                protocol.Hello(TOKEN, "rogue", "eager-accept")))
                + protocol.pack(protocol.LISTEN, 1, port, b"\x00"))
            await rogue_w.drain()
            await asyncio.sleep(0.2)
            rogue = [h for h in srv.hosts if h.host_id == "rogue"][0]
            # the next connection goes to the rogue host (the least loaded); its client
            # reads nothing, so what the rogue sends piles up once the kernel's buffers fill
            slow = socket.socket()
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            slow.connect(("127.0.0.1", port))
            slow.setblocking(False)
            r2, w2 = await asyncio.open_connection(sock=slow)
            w2.write(b"GET /dir0/class0_0 HTTP/1.0\r\n\r\n")
            await w2.drain()
            for _ in range(50):
                if rogue.conns:
                    break
                await asyncio.sleep(0.05)
            assert rogue.conns, "no connection was given to the rogue host"
            cid = next(iter(rogue.conns))
            # 8 MB without waiting for a CREDIT: past the kernel's buffers and the window
            chunk = protocol.pack(protocol.SEND, cid, 0, b"x" * 32768)
            try:
                for _ in range(256):
                    rogue_w.write(chunk)
                    await asyncio.wait_for(rogue_w.drain(), 5)
            except (ConnectionError, asyncio.TimeoutError):
                pass  # dropped while sending
            try:
                await asyncio.wait_for(rogue_r.read(), 5)  # dropped: EOF (a hang would time out)
            except ConnectionError:
                pass  # or a reset
            assert not any(h.host_id == "rogue" for h in srv.hosts)
            assert srv.stats()["protocol_errors"] >= 1
            w.close()
            w2.close()
            rogue_w.close()
            status, _, _ = await http_get(port, "/dir0/class0_0")
            assert status == 200

    run(main())


def test_listen_and_connect_outside_the_port_range_get_an_error(docroot: Path) -> None:
    async def main() -> None:
        async with offload_stack("eager-accept", docroot) as (srv, tunnels, port):
            san = srv.cfg.san
            r, w = await asyncio.open_connection(san.host, san.port)
            w.write(protocol.pack(protocol.HELLO, 0, 0, protocol.encode_hello(
                protocol.Hello(TOKEN, "ports", "eager-accept")))
                + protocol.pack(protocol.LISTEN, 1, 70000, b"")
                + protocol.pack(protocol.CONNECT, 2, 0, b"127.0.0.1"))
            await w.drain()
            dec = protocol.FrameDecoder()
            errors: dict[int, int] = {}
            while len(errors) < 2:
                for ftype, conn, arg, payload in dec.feed(await asyncio.wait_for(r.read(4096), 5)):
                    if ftype == protocol.ERROR:
                        errors[conn] = arg
            assert errors == {1: errno.EINVAL, 2: errno.EINVAL}
            assert 70000 not in srv.ports
            w.close()

    run(main())

"""Direct communication with the file server: the multi-tier topology's file server node
(nginx), the host reading its document root from it, and the TCP server sending bodies
straight from it (FETCH) so that they never cross the host."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import uvloop

from testbed.app.config import AppConfig
from testbed.app.docroot import generate
from testbed.app.remote_files import RemoteFile, RemoteFiles
from testbed.errors import TestbedError
from testbed.offload.modes import MODES

from .offload_helpers import free_port, offload_stack

ROOT = Path(__file__).resolve().parent.parent
DIRECT_MODES = ["split", "async-send", "eager-receive", "eager-accept", "setup-with-accept"]


# -- pure: the host's view of the file server's names, the settings, the plan ----------------

def _remote() -> RemoteFiles:
    r = RemoteFiles("192.0.2.1", 80)
    r.index = {"dir0/class0_0": RemoteFile(b"/dir0/class0_0", 102, b"application/octet-stream"),
               "manifest.json": RemoteFile(b"/manifest.json", 10, b"application/json")}
    return r


@pytest.mark.parametrize("path, found", [
    (b"/dir0/class0_0", True), (b"//dir0/./class0_0", True), (b"/%64ir0/class0_0", True),
    (b"/dir0/x/../class0_0", True), (b"/manifest.json", True),
    (b"/../dir0/class0_0", False), (b"/dir0/../../dir0/class0_0", False), (b"/dir0/class0_0%00", False),
    (b"/\xff", False), (b"/", False), (b"/dir0", False), (b"/dir0/class0_1", False),
])
def test_the_hosts_lookup_refuses_what_a_local_root_refuses(path: bytes, found: bool) -> None:
    assert (_remote().lookup(path) is not None) == found


def test_the_apps_file_server_settings_round_trip_and_are_checked() -> None:
    cfg = AppConfig(None, MODES["eager-accept"], tunnel="tcp:10.77.1.1:7000", token_file=Path("/t"),
                    file_server=("10.77.1.3", 80), direct_files=True)
    assert AppConfig.from_argv(cfg.to_argv())[0] == cfg
    with pytest.raises(ValueError, match="one document root"):
        AppConfig(Path("/d"), MODES["regular"], listen=("a", 1), file_server=("f", 80))
    with pytest.raises(ValueError, match="one document root"):
        AppConfig(None, MODES["regular"], listen=("a", 1))
    with pytest.raises(ValueError, match="--direct-files .* needs --file-server and an offloaded mode"):
        AppConfig(None, MODES["regular"], listen=("a", 1), file_server=("f", 80), direct_files=True)


def _plan(mode: str, topology: str = "multitier", **opts):
    from testbed.describe.options import ServiceOptions
    from testbed.describe.services import plan_services
    from testbed.describe.topology import load_topology, plan_addresses
    topo = load_topology(topology)
    return plan_services("p1", topo, plan_addresses(topo, "10.77.0.0/16"), MODES[mode],
                         ServiceOptions(**opts), Path("/run/tcps/p1"), python="py")


def test_the_plan_starts_the_file_server_before_the_apps_and_wires_the_direct_path() -> None:
    from testbed.describe.services import Process, RunToEnd
    from testbed.offload.config import ServerConfig
    p = _plan("eager-accept", direct_files=True)
    docroot, fileserver = p.steps[0], p.steps[1]
    assert isinstance(docroot, RunToEnd) and docroot.node == "files"
    assert isinstance(fileserver, Process) and fileserver.node == "files"
    daemon, app = [s for s in p.processes() if s.name in ("tcpserver", "app")]
    served = ServerConfig.from_argv(list(daemon.argv[3:]))[0].file_server
    app_cfg = AppConfig.from_argv(list(app.argv[3:]))[0]
    assert app_cfg.docroot is None and app_cfg.direct_files and app_cfg.file_server == served
    assert f"{served[0]}:{served[1]}" in fileserver.argv
    relayed = _plan("eager-accept")  # without direct_files the daemon knows no file server
    d2 = next(s for s in relayed.processes() if s.name == "tcpserver")
    assert ServerConfig.from_argv(list(d2.argv[3:]))[0].file_server is None


@pytest.mark.parametrize("mode, topology, message", [
    ("regular", "multitier", "no TCP server"),
    ("eager-accept", "cluster", "needs a file server node"),
])
def test_direct_files_where_it_cannot_work_is_refused(mode: str, topology: str, message: str) -> None:
    with pytest.raises(TestbedError, match=message):
        _plan(mode, topology, direct_files=True)


# -- on loopback: nginx as the file server, the daemon and the host app in this process --------

@pytest.fixture(scope="module")
def docroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tcps-fs-docroot")
    generate(root, seed=11, dirs=1)
    return root


class FileServer:
    def __init__(self, docroot: Path, workdir: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "testbed.app.fileserver", "--root", str(docroot),
                                      "--listen", f"127.0.0.1:{self.port}", "--workdir", str(workdir)],
                                     cwd=ROOT, stderr=subprocess.PIPE)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None, self.proc.stderr.read()  # type: ignore[union-attr]
                time.sleep(0.05)
        raise AssertionError("the file server did not listen")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


@pytest.fixture
def fileserver(docroot: Path, tmp_path: Path):
    fs = FileServer(docroot, tmp_path / "fs")
    yield fs
    fs.stop()


async def _stack(mode: str, fs: FileServer, direct: bool):
    remote = RemoteFiles("127.0.0.1", fs.port)
    await remote.load_index()
    cfg = {"file_server": ("127.0.0.1", fs.port)} if direct else {}
    return remote, offload_stack(mode, None, app_kw={"remote": remote, "direct_files": direct}, **cfg)


async def _pipelined(port: int, paths: list[str]) -> list[tuple[int, bytes]]:
    """All requests written at once on one connection; each answer's status and body."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in paths))
    out = []
    for _ in paths:
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 20)
        n = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        out.append((int(head[9:12]), await asyncio.wait_for(r.readexactly(n), 20)))
    w.close()
    return out


@pytest.mark.parametrize("direct", [False, True], ids=["relayed", "direct"])
@pytest.mark.parametrize("mode", DIRECT_MODES)
def test_every_file_byte_exact_pipelined_with_404s_between(mode: str, direct: bool, docroot: Path,
                                                          fileserver: FileServer) -> None:
    files = json.loads((docroot / "manifest.json").read_text())["files"]

    async def main() -> None:
        remote, stack = await _stack(mode, fileserver, direct)
        async with stack as (srv, tunnels, port):
            paths = [p for f in files for p in (f["path"], "/missing")]
            got = await asyncio.gather(*(_pipelined(port, paths[i::4]) for i in range(4)))
            for i, answers in enumerate(got):
                for path, (status, body) in zip(paths[i::4], answers):
                    if path == "/missing":
                        assert status == 404
                    else:
                        assert status == 200 and body == (docroot / path[1:]).read_bytes(), path
            st = srv.stats()
            assert st["protocol_errors"] == 0
            if direct:
                assert st["fetches"] == len(files) and st["fetch_failures"] == 0
                assert remote.gets == 0  # no body crossed the host
            else:
                assert "fetches" not in st and remote.gets == len(files)
        remote.close()

    uvloop.run(main())


def test_direct_900k_replies_cost_the_host_under_1_percent_and_a_slow_reader_bounds_the_daemon(
        docroot: Path, fileserver: FileServer) -> None:
    big = (docroot / "dir0" / "class3_8").read_bytes()
    small = (docroot / "dir0" / "class0_0").read_bytes()
    assert len(big) == 900 * 1024
    n = 8  # more than the sockets' buffers hold on loopback

    async def main() -> None:
        remote, stack = await _stack("async-send", fileserver, True)
        async with stack as (srv, tunnels, port):
            before = srv.stats()["hosts"]["h0"]["bytes_in"]  # what the host sent over the SAN
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow reader
            s.connect(("127.0.0.1", port))
            s.setblocking(False)
            r, w = await asyncio.open_connection(sock=s)
            w.write(b"GET /dir0/class3_8 HTTP/1.1\r\nHost: x\r\n\r\n" * n
                    + b"GET /dir0/class0_0 HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.sleep(0.5)  # the client has not read: the daemon reads the file server no faster
            c = next(iter(srv.conns.values()))
            assert c.fetching is not None and c.after  # later answers wait behind the body in flight
            assert c.transport.get_write_buffer_size() < 1024 * 1024
            for body in [big] * n + [small]:  # slowly: 64 KiB at a time
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(body)}\r\n".encode() in head
                got = b""
                while len(got) < len(body):
                    got += await asyncio.wait_for(r.readexactly(min(65536, len(body) - len(got))), 10)
                    await asyncio.sleep(0.002)
                assert got == body
            w.close()
            sent = srv.stats()["hosts"]["h0"]["bytes_in"] - before
            assert 0 < sent < 0.01 * len(big), sent / n  # per 900 KiB reply, well under 1%
            assert srv.stats()["fetches"] == n + 1 and srv.stats()["fetch_failures"] == 0
        remote.close()

    uvloop.run(main())


@pytest.mark.parametrize("direct", [False, True], ids=["relayed", "direct"])
def test_a_file_server_that_dies_gives_a_prompt_error_and_the_tcp_server_stays(
        direct: bool, docroot: Path, fileserver: FileServer) -> None:
    async def main() -> None:
        remote, stack = await _stack("eager-accept", fileserver, direct)
        async with stack as (srv, tunnels, port):
            assert (await _pipelined(port, ["/dir0/class1_0"]))[0][0] == 200
            fileserver.stop()
            t0 = time.monotonic()
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /dir0/class2_0 HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                data = await asyncio.wait_for(r.read(), 10)
            except ConnectionResetError:
                data = b""
            w.close()
            assert time.monotonic() - t0 < 3
            if direct:  # the head may be out; the body is not: the connection ends without it
                assert len(data) < 10 * 1024
                assert srv.stats()["fetch_failures"] >= 1
            else:
                assert data.startswith(b"HTTP/1.1 502")
            # the TCP server and the host still serve what needs no file server
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /dynamic HTTP/1.0\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(r.read(), 10)).startswith(b"HTTP/1.1 200")
            w.close()
        remote.close()

    uvloop.run(main())


# -- in namespaces: the multitier topology as `up` builds it -------------------------------------

@pytest.mark.needs_root
@pytest.mark.parametrize("mode, direct", [("regular", False), ("eager-accept", False), ("async-send", True)])
def test_multitier_serves_every_file_byte_exact(mode: str, direct: bool, tb_name: str) -> None:
    from testbed.describe.topology import load_topology
    from testbed.system.lifecycle import Testbed

    from .offload_helpers import fetch_every_file
    from .test_offload_netns import in_client

    with Testbed(load_topology("multitier"), tb_name, mode=mode, start_services=True,
                 service_options={"docroot_dirs": 1, "direct_files": direct}) as tb:
        assert in_client(tb, fetch_every_file, 40, 1) == 36
        time.sleep(1.2)  # the stats files are rewritten every 0.5 s
        host = json.loads((tb.store.dir / "stats-host1.json").read_text())
        assert host["index_files"] == 37 and host["fileserver_failures"] == 0
        if direct:
            assert host["fileserver_gets"] == 0
            daemon = json.loads((tb.store.dir / "stats-tcpserver.json").read_text())
            assert daemon["fetches"] >= 36 and daemon["fetch_failures"] == 0
        else:
            assert host["fileserver_gets"] >= 36
        assert os.path.exists(tb.store.dir / "fileserver" / "nginx.conf")

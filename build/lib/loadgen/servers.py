"""Small servers to try the generator against: nginx with a throwaway configuration and a
deliberately slow Python server. Used by the tests and the benchmark; not the testbed's
host application (that is ``testbed.app.server``).

Every file and directory made here is under a ``tcps``-prefixed temporary directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger(__name__)

NGINX = "/usr/sbin/nginx"

NGINX_CONF = """
worker_processes {workers};
daemon off;
master_process {master};
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    server {{
        listen {listen} backlog=4096 reuseport;
        root {root};
        location /dynamic {{ default_type text/plain; return 200 "dynamic\\n"; }}
    }}
}}
"""


def make_docroot(root: Path, only: str | None = None) -> dict:
    """A small SPECweb99-like tree plus manifest.json (four classes, nine files each), and a
    6 KiB file ``/6k``; ``only="/6k"`` makes the manifest list that one file (benchmarks)."""
    from .workload import CLASS_BASE
    files = []
    for cls, base in CLASS_BASE.items():
        for i in range(9):
            size = base * (i + 1)
            path = f"/dir0/class{cls}_{i}"
            (root / "dir0").mkdir(parents=True, exist_ok=True)
            (root / path.lstrip("/")).write_bytes(b"x" * size)
            files.append({"path": path, "size": size, "class": cls})
    (root / "6k").write_bytes(b"y" * 6144)
    if only is not None:
        files = [{"path": only, "size": (root / only.lstrip("/")).stat().st_size, "class": 1}]
    manifest = {"files": files, "seed": 0}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


@dataclass
class Server:
    """A server process started by this module; ``stop()`` ends exactly that process."""

    proc: subprocess.Popen
    url: str
    workdir: Path
    cleanup_dir: bool = True
    stopped: bool = field(default=False)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if not self._is_nginx() else signal.SIGQUIT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.cleanup_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _is_nginx(self) -> bool:
        return Path(str(self.proc.args[0])).name == "nginx"

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_listening(host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None,
                   connect: Callable[[], bool] | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        if connect is not None:
            if connect():
                return
        else:
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout} s")


def nginx_argv(workdir: Path, listen: str, workers: int = 1, root: Path | None = None) -> list[str]:
    """Write nginx.conf into ``workdir`` and return the command that runs it in the foreground."""
    root = root or workdir / "root"
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    conf = NGINX_CONF.format(workers=workers, master="on" if workers > 1 else "off", dir=workdir,
                             listen=listen, root=root)
    (workdir / "nginx.conf").write_text(conf)
    return [NGINX, "-p", str(workdir), "-c", str(workdir / "nginx.conf")]


def start_nginx(host: str = "127.0.0.1", port: int | None = None, workers: int = 1,
                cpus: Sequence[int] | None = None, only: str | None = None,
                popen: Callable[..., subprocess.Popen] | None = None) -> Server:
    """nginx serving a small document root; ``popen`` lets a caller start it in a node."""
    port = port or free_port(host if host != "0.0.0.0" else "127.0.0.1")
    workdir = Path(tempfile.mkdtemp(prefix="tcps-nginx-"))
    make_docroot(workdir / "root", only=only)
    workdir.chmod(0o755)
    argv = nginx_argv(workdir, f"{host}:{port}", workers)
    if cpus:
        argv = ["taskset", "-c", ",".join(map(str, cpus))] + argv
    starter = popen or (lambda a, **kw: subprocess.Popen(a, **kw))
    proc = starter(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = Server(proc, f"http://{host}:{port}/", workdir)
    if popen is None:
        try:
            wait_listening(host, port, proc=proc)
        except BaseException:
            server.stop()
            raise
    return server


SLOW_SERVER = r'''
import socket, sys, threading, time
delay, backlog = float(sys.argv[2]), int(sys.argv[3])
host, port = sys.argv[1].rsplit(":", 1)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, int(port))); s.listen(backlog)
body = b"slow\n"
def serve(c):
    try:
        c.recv(4096)
        time.sleep(delay)
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n" + body)
    except OSError:
        pass
    finally:
        c.close()
# one request at a time: service rate 1/delay, so anything faster queues and times out
while True:
    c, _ = s.accept()
    serve(c)
'''


def slow_server_argv(listen: str, delay_s: float, backlog: int = 64) -> list[str]:
    return [sys.executable, "-c", SLOW_SERVER, listen, str(delay_s), str(backlog)]


def start_slow_server(delay_s: float, host: str = "127.0.0.1", backlog: int = 64) -> Server:
    """A server that answers one request at a time after ``delay_s``: a queue that grows."""
    port = free_port(host)
    workdir = Path(tempfile.mkdtemp(prefix="tcps-slow-"))
    proc = subprocess.Popen(slow_server_argv(f"{host}:{port}", delay_s, backlog),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(proc, f"http://{host}:{port}/", workdir)
    try:
        wait_listening(host, port, proc=proc)
    except BaseException:
        server.stop()
        raise
    return server

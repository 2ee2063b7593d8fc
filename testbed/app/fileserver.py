"""The file server node's service: nginx serving the document root over HTTP/1.1.

The multi-tier topology's third tier (the slides' "direct communication with the file
server"). NFS would be the classic choice, but the kernels this runs on may not have it
(the development machine's registers neither ``nfsd`` nor ``nfs`` in /proc/filesystems),
and NFS needs rpcbind and mountd in the node as well; an HTTP file server is what both
readers here need anyway:
the host application reads a body with ``GET`` (``app/remote_files.py``), the TCP server
fetches it the same way for a client (``offload/fetch.py``), and nginx answers from its
page cache with ``sendfile``. Directory listings are on, as JSON: the host builds its index
of names and sizes from them when it starts.

nginx runs in the foreground, one process (no master), so the testbed supervises and
stops it by pid like any node process; its configuration, pid file and error log live in
``--workdir`` (the testbed's state directory), nothing under /etc or /var.

Run: ``python -m testbed.app.fileserver --root DOCROOT --listen ADDR:PORT --workdir DIR``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from ..system.files import write_atomic

NGINX = "/usr/sbin/nginx"
CONF = """\
worker_processes 1;
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    default_type application/octet-stream;
    server {{
        listen {listen} backlog=4096;
        root {root};
        autoindex on;
        autoindex_format json;
    }}
}}
"""


def config(root: Path, listen: str, workdir: Path) -> str:
    return CONF.format(dir=workdir, listen=listen, root=root)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.app.fileserver", description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="the document root to serve")
    ap.add_argument("--listen", required=True, help="ADDR:PORT")
    ap.add_argument("--workdir", type=Path, required=True, help="configuration, pid file and log")
    a = ap.parse_args(argv)
    nginx = shutil.which("nginx") or NGINX
    if not os.access(nginx, os.X_OK):
        print("fileserver: nginx is not installed (apt-get install nginx-light, or bash scripts/setup.sh)",
              file=sys.stderr)
        return 2
    if not a.root.is_dir():
        print(f"fileserver: --root {a.root} is not a directory", file=sys.stderr)
        return 2
    (a.workdir / "tmp").mkdir(parents=True, exist_ok=True)
    conf = a.workdir / "nginx.conf"
    write_atomic(conf, config(a.root.resolve(), a.listen, a.workdir.resolve()))
    # nginx itself takes this pid: the testbed stops it by pid like any node process
    os.execv(nginx, [nginx, "-e", str(a.workdir / "error.log"), "-p", str(a.workdir), "-c", str(conf)])


if __name__ == "__main__":
    sys.exit(main())

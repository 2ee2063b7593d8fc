"""Function placement: the TCP server answers cacheable static requests itself.

From the paper's "process ahead" and "direct communication with the file server" ideas
(the third balancing knob; docs/architectures.md). With ``--serve-static DOCROOT`` the TCP server loads
the files listed in the document root's ``manifest.json`` (the shared filesystem stands in
for the file server) into the same response cache the host application builds
(``testbed.app.server.Entry``: identical status line, headers and bytes). A run-time
*share* in [0, 1] says which fraction of new connections it serves ahead: each such
connection is held until its first request is in; a complete ``GET``/``HEAD`` without a
body for a cached path is answered in the TCP server and never reaches a host, anything
else hands the connection to a host exactly as before (with the bytes already read).

The share comes from a small JSON control file (``{"share": x}``), re-read when it
changes (checked every 100 ms from a timer, never per request), or at once on SIGHUP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

log = logging.getLogger("testbed.offload.placement")

POLL_S = 0.1
MAX_HEAD = 8192  # a request head larger than this is not ours: hand it to the host
_CRLF2 = b"\r\n\r\n"


def load_cache(docroot: str | os.PathLike) -> dict:
    """URL path (bytes) -> ``app.server.Entry`` for every file in the manifest."""
    from testbed.app.server import App  # the host app's own cache: the same bytes on the wire

    root = Path(docroot)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except OSError as e:
        raise ValueError(f"{root}: cannot read manifest.json ({e})") from None
    app = App(root, cache_bytes=1 << 40)
    cache = {}
    for f in manifest.get("files", []):
        path = f["path"].encode()
        e = app.lookup(path)
        if e is None:
            raise ValueError(f"{root}: manifest lists {f['path']}, which cannot be read")
        if "size" in f and len(e.body) != f["size"]:
            raise ValueError(f"{root}{f['path']}: {len(e.body)} bytes, manifest says {f['size']}")
        cache[path] = e
    return cache


def parse_head(head: bytes) -> tuple[bool, bytes, bool] | None:
    """``(is_head, path, keep_alive)`` of an eligible request head (without the blank
    line), or None: not GET/HEAD, a body, an upgrade, an expectation, anything unusual."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if method == b"GET":
        is_head = False
    elif method == b"HEAD":
        is_head = True
    else:
        return None
    if version == b"HTTP/1.1":
        ka = True
    elif version == b"HTTP/1.0":
        ka = False
    else:
        return None
    if target[:1] != b"/":
        return None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name[-1:] in (b" ", b"\t"):
            return None
        name = name.lower()
        if name == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"close" in tokens:
                ka = False
            elif b"keep-alive" in tokens:
                ka = True
            if b"upgrade" in tokens:
                return None
        elif name == b"content-length":
            if value.strip() != b"0":
                return None
        elif name in (b"transfer-encoding", b"expect", b"upgrade"):
            return None
    q = target.find(b"?")
    return is_head, (target if q < 0 else target[:q]), ka


class Control:
    """The share, from the control file (polled by mtime) or set directly."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: Path | None, share: float = 0.0) -> None:
        self.loop = loop
        self.path = path
        self.share = share
        self._sig: tuple | None = None
        self.reads = 0
        self.errors = 0

    def start(self) -> None:
        if self.path is None:
            return
        self.poll()

    def poll(self) -> None:
        self.check()
        self.loop.call_later(POLL_S, self.poll)

    def check(self, force: bool = False) -> None:
        try:
            st = os.stat(self.path)  # type: ignore[arg-type]
        except OSError:
            return  # not written yet: keep the current share
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if sig == self._sig and not force:
            return
        self._sig = sig
        try:
            share = float(json.loads(Path(self.path).read_text())["share"])  # type: ignore[arg-type]
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"share {share} is outside [0, 1]")
        except (OSError, ValueError, KeyError, TypeError) as e:
            self.errors += 1
            log.warning("placement file %s: %s; share stays %.3f", self.path, e, self.share)
            return
        if share != self.share:
            log.info("placement share %.3f -> %.3f", self.share, share)
        self.share = share
        self.reads += 1

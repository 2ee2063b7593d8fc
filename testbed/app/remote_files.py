"""The host application's document root on a file server (the multi-tier topology).

``RemoteFiles`` is what the application asks instead of its own disk when it runs with
``--file-server``: ``lookup`` turns a request path into a file of the file server's (the
same refusals as a local document root: outside the root, undecodable, NUL), from an index
of names and sizes read from the file server's JSON directory listings when the
application starts (a stat cache: files added later are not seen); ``get`` reads a body
with ``GET`` over a small pool of keep-alive connections. Bodies are not cached: the file
server is the tier that holds them, and every reply crosses from it, through the host
(Regular TCP and the relayed modes) or straight to the TCP server (``--direct-files``,
``offload/fetch.py``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from urllib.parse import quote_from_bytes, unquote_to_bytes

from ..offload.fetch import MAX_HEAD, parse_head

GET_TIMEOUT = 10.0  # seconds for one body from the file server
MAX_CONNS = 32  # keep-alive connections to the file server at most (more requests wait)
MAX_FILES = 1_000_000  # an index larger than this is refused (a file server, not the web)


class FileServerError(OSError):
    """The file server did not answer as a file server should."""


@dataclass(frozen=True)
class RemoteFile:
    path: bytes   # the path on the file server, as it goes into a request line
    size: int
    ctype: bytes


def _ctype(name: str) -> bytes:
    return b"application/json" if name.endswith(".json") else (
        b"text/html" if name.endswith((".html", ".htm")) else b"application/octet-stream")


class RemoteFiles:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.index: dict[str, RemoteFile] = {}  # normalized relative path -> file
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(MAX_CONNS)
        self.gets = 0
        self.bytes = 0
        self.failures = 0

    async def load_index(self) -> int:
        """Read the file server's listings, directory by directory; the number of files."""
        todo = [""]
        while todo:
            rel = todo.pop()
            url = b"/" + quote_from_bytes(rel.encode()).encode() + b"/" if rel else b"/"
            listing = json.loads(await asyncio.wait_for(self._listing(url), GET_TIMEOUT))
            for entry in listing:
                name = str(entry["name"])
                child = f"{rel}/{name}" if rel else name
                if entry.get("type") == "directory":
                    todo.append(child)
                elif entry.get("type") == "file":
                    self.index[child] = RemoteFile(b"/" + quote_from_bytes(child.encode()).encode(),
                                                   int(entry["size"]), _ctype(name))
                if len(self.index) > MAX_FILES:
                    raise FileServerError(f"the file server lists more than {MAX_FILES} files")
        return len(self.index)

    async def _listing(self, url: bytes) -> bytes:
        """A directory's JSON listing: asked in HTTP/1.0, so that it comes whole and the
        connection ends with it (HTTP/1.1 listings are chunked)."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(b"GET %s HTTP/1.0\r\nHost: fileserver\r\n\r\n" % url)
            data = await reader.read(-1)
        finally:
            writer.close()
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep or head[9:12] != b"200":
            raise FileServerError(f"listing {url[:80]!r}: {head[:40]!r}")
        return body

    def lookup(self, path: bytes) -> RemoteFile | None:
        """The file a request path names; None (404) when it names none, or a path outside
        the root, undecodable or with a NUL."""
        raw = unquote_to_bytes(path) if b"%" in path else path
        try:
            rel = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if "\x00" in rel:
            return None
        parts: list[str] = []
        for seg in rel.split("/"):
            if seg == "..":
                if not parts:
                    return None  # above the root: not found, as with a local document root
                parts.pop()
            elif seg not in ("", "."):
                parts.append(seg)
        rel = "/".join(parts)
        return self.index.get(rel)

    async def get(self, path: bytes) -> bytes:
        """The body of ``path`` (FileServerError, OSError or a timeout when the file server
        does not deliver it)."""
        async with self.slots:
            conn = None
            while self.idle and conn is None:  # the file server may have closed an idle one
                conn = self.idle.pop()
                if conn[0].at_eof() or conn[1].is_closing():
                    conn[1].close()
                    conn = None
            try:
                try:
                    if conn is None:
                        raise ConnectionResetError
                    body, reusable = await asyncio.wait_for(self._get(conn, path), GET_TIMEOUT)
                except (OSError, asyncio.IncompleteReadError):  # a fresh connection, once
                    if conn is not None:
                        conn[1].transport.abort()
                    conn = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), GET_TIMEOUT)
                    body, reusable = await asyncio.wait_for(self._get(conn, path), GET_TIMEOUT)
            except BaseException:
                self.failures += 1
                if conn is not None:
                    conn[1].transport.abort()
                raise
            if reusable:
                self.idle.append(conn)
            else:
                conn[1].close()
            self.gets += 1
            self.bytes += len(body)
            return body

    @staticmethod
    async def _get(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: bytes) -> tuple[bytes, bool]:
        reader, writer = conn
        writer.write(b"GET %s HTTP/1.1\r\nHost: fileserver\r\n\r\n" % path)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise FileServerError("response head too long") from None
        except asyncio.IncompleteReadError:
            raise FileServerError("the file server closed the connection") from None
        if len(head) > MAX_HEAD:
            raise FileServerError("response head too long")
        status, length, reusable = parse_head(head)
        if status != b"200":
            raise FileServerError(f"GET {path[:80]!r}: status {status.decode(errors='replace')}")
        if length is None:
            raise FileServerError(f"GET {path[:80]!r}: no Content-Length")
        return await reader.readexactly(length), reusable

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()

    def counters(self) -> dict[str, int]:
        return {"fileserver_gets": self.gets, "fileserver_bytes": self.bytes,
                "fileserver_failures": self.failures, "index_files": len(self.index)}

"""The host application's settings: ``AppConfig``, checked when made, and its command line.

Kept apart from the server (no event loop, no I/O) so that the testbed's service plan builds
the application's argv from an ``AppConfig`` (``to_argv``) and the application reads it back
with the same table (``from_argv``): one form of each setting from the plan to the process.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from ..offload.config import check_option
from ..offload.modes import Mode, get_mode

HEADER_TIMEOUT = 20.0  # seconds to finish a request once it began (a byte-a-second client)
# the kernel's listen backlog in regular mode: the TCP server's default (offload/config.py),
# so that under overload both queue as deep (docs/limits.md, "Overload": 4,096 at ~1,200
# replies/s held clients 3.4 s, past a 2 s client's patience)
LISTEN_BACKLOG = 1024


@dataclass(frozen=True)
class AppConfig:
    docroot: Path | None                   # the document root on this machine's disk, or
    mode: Mode
    listen: tuple[str, int] | None = None  # regular mode: kernel sockets on ADDR:PORT
    tunnel: str | None = None              # offloaded modes: the TCP server's SAN endpoint
    token_file: Path | None = None
    listen_port: int = 80                  # the public port the TCP server listens on for us
    host_id: str | None = None
    dynamic_cost_us: int = 0
    idle_timeout: float = 30.0
    header_timeout: float = HEADER_TIMEOUT
    listen_backlog: int = LISTEN_BACKLOG
    poll_us: int = 0
    stats_file: Path | None = None
    file_server: tuple[str, int] | None = None  # ... on a file server (app/remote_files.py)
    direct_files: bool = False             # bodies sent by the TCP server from the file server (FETCH)

    def __post_init__(self) -> None:
        """One line naming the option and its rule (ValueError)."""
        if (self.docroot is None) == (self.file_server is None):
            raise ValueError("give one document root: --docroot DIR or --file-server ADDR:PORT")
        if self.direct_files and (self.file_server is None or not self.mode.offloaded):
            raise ValueError("--direct-files has the TCP server send bodies from the file server: "
                             "it needs --file-server and an offloaded mode")
        if self.mode.offloaded:
            if not self.tunnel or not self.token_file:
                raise ValueError(f"mode {self.mode.name} needs --tunnel and --token-file")
            if self.listen is not None:
                raise ValueError(f"mode {self.mode.name} listens through the TCP server: no --listen")
        else:
            if self.listen is None:
                raise ValueError("regular mode needs --listen ADDR:PORT")
            if self.tunnel or self.poll_us:
                raise ValueError("--tunnel and --poll-us reach a TCP server: they need an offloaded mode")
        for name in ("dynamic_cost_us", "listen_backlog", "listen_port"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{_flag(name)} must be a whole number >= 0, not {v!r}")
        for name in ("idle_timeout", "header_timeout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{_flag(name)} must be seconds > 0, not {v!r}")
        check_option("poll_us", self.poll_us, _flag("poll_us"))  # the daemon's rule for a polling period

    def to_argv(self) -> list[str]:
        """The application's arguments (``from_argv`` reads them back); options at their
        defaults are left out."""
        argv = ["--docroot", str(self.docroot)] if self.docroot is not None else []
        argv += ["--mode", self.mode.name]
        for f in fields(self):
            if f.name in ("docroot", "mode"):
                continue
            v = getattr(self, f.name)
            if v is None or v == f.default:
                continue
            flag = _flag(f.name)
            if f.name in ("listen", "file_server"):
                argv += [flag, f"{v[0]}:{v[1]}"]
            elif v is True:
                argv.append(flag)
            else:
                argv += [flag, f"{v:g}" if isinstance(v, float) else str(v)]
        return argv

    @classmethod
    def from_argv(cls, argv: Sequence[str] | None = None) -> tuple["AppConfig", argparse.Namespace]:
        """Parse the application's command line (argparse exits on a malformed one) and check
        it (ValueError naming the option); also returns the namespace (for ``--log-level``)."""
        a = parser().parse_args(argv)
        kw: dict[str, Any] = {f.name: getattr(a, f.name) for f in fields(cls)
                              if f.name not in ("docroot", "mode") and getattr(a, f.name) is not None}
        return cls(docroot=Path(a.docroot) if a.docroot else None, mode=get_mode(a.mode), **kw), a


def _flag(name: str) -> str:
    """The command-line flag of a setting (``poll_us`` -> ``--poll-us``)."""
    return "--" + name.replace("_", "-")


def _addr_port(s: str) -> tuple[str, int]:
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{s!r}: expected ADDR:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m testbed.app.server",
                                 description="the host web application (every mode)")
    ap.add_argument("--docroot", help="the document root on this machine (or --file-server)")
    ap.add_argument("--mode", default="regular")
    ap.add_argument("--listen", type=_addr_port, help="regular mode: ADDR:PORT on kernel sockets")
    ap.add_argument("--tunnel", help="offloaded modes: tcp:ADDR:PORT, unix:PATH or shm:NAME of the TCP server")
    ap.add_argument("--token-file", type=Path)
    ap.add_argument("--listen-port", type=int)
    ap.add_argument("--host-id")
    ap.add_argument("--dynamic-cost-us", type=int)
    ap.add_argument("--idle-timeout", type=float)
    ap.add_argument("--header-timeout", type=float,
                    help=f"seconds a client has to finish a request it began (then 408; default {HEADER_TIMEOUT:g})")
    ap.add_argument("--listen-backlog", type=int,
                    help=f"regular mode: the kernel's listen backlog (SYNs beyond it are dropped; "
                         f"default {LISTEN_BACKLOG})")
    ap.add_argument("--poll-us", type=int, metavar="US",
                    help="offloaded modes: poll the SAN every US microseconds while busy instead of "
                         "waking per event (over shm: no doorbell while polling; default 0 = off)")
    ap.add_argument("--stats-file", type=Path, help="JSON counters (with SAN frames by type), every 0.5 s")
    ap.add_argument("--file-server", type=_addr_port, metavar="ADDR:PORT",
                    help="read the document root from this HTTP file server instead of a local --docroot")
    ap.add_argument("--direct-files", action="store_true", default=None,
                    help="offloaded modes with --file-server: the TCP server sends each file's body "
                         "to the client straight from the file server (the host sends the head)")
    ap.add_argument("--log-level", default="INFO")
    return ap

"""The TCP-server daemon's settings: ``ServerConfig``, its command line, and the rules of its options.

Kept apart from the daemon (no event loop, no I/O) so that the testbed's service options
(testbed/describe/options.py) check a user's overload and polling options with the same rules the
daemon applies, without importing the event-loop code.

A ``ServerConfig`` is checked when it is made (``__post_init__``, one line naming the
option and the rule). Its command line is made by ``to_argv`` and read back by
``from_argv`` from one table of options (``_FLAGS``): the testbed's service plan builds
the daemon's argv from a ``ServerConfig``, and the daemon parses it with the same code.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from . import channels
from .modes import MODES, Mode, get_mode
from .polling import check_period_us

CLIENT_IO = ("epoll", "asyncio")


# -- the rules of the options a user sets (one each; also used by testbed/describe/options.py) -----------

def _whole(lo: int, hi: int, note: str = "") -> Callable[[str, object], None]:
    def check(name: str, v: object) -> None:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ValueError(f"{name} must be a whole number in [{lo}, {hi}]{note}, not {v!r}")
    return check


def _seconds(lo: float, hi: float, note: str = "", open_low: bool = False) -> Callable[[str, object], None]:
    def check(name: str, v: object) -> None:
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
              and (lo < v if open_low else lo <= v) and v <= hi)
        if not ok:
            span = f"({lo:g}, {hi:g}]" if open_low else f"[{lo:g}, {hi:g}]"
            raise ValueError(f"{name} must be seconds in {span}{note}, not {v!r}")
    return check


def _period(name: str, v: object) -> None:
    try:
        check_period_us(v)
    except ValueError as e:
        raise ValueError(str(e).replace("poll_us", name, 1)) from None


def _flag(name: str, v: object) -> None:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be true or false, not {v!r}")


def _share(name: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a share in [0, 1], not {v!r}")


def _client_io(name: str, v: object) -> None:
    if v not in CLIENT_IO:
        raise ValueError(f"{name} must be one of {', '.join(CLIENT_IO)}, not {v!r}")


def _defer(name: str, v: object) -> None:
    if v is not None:
        _seconds(0, 3600, " (0 = off)")(name, v)


#: every option of the daemon a user may set, and its rule
RULES: dict[str, Callable[[str, object], None]] = {
    "max_conns": _whole(1, 1_000_000),
    "backlog": _whole(1, 65535),
    "listen_backlog": _whole(1, 65535),
    "queue_deadline": _seconds(0, 3600, " (0 = no limit)"),
    "host_conns": _whole(0, 65535, " (0 = no bound)"),
    "overload_control": _flag,
    "idle_timeout": _seconds(0, 86400, open_low=True),
    "defer_accept": _defer,
    "placement_share": _share,
    "client_io": _client_io,
    "poll_us": _period,
}


def check_option(name: str, value: object, label: str | None = None) -> None:
    """``value`` for the daemon's option ``name`` (a key of ``RULES``), or ValueError
    naming it (as ``label`` when given, e.g. ``host_poll_us`` checked as a period)."""
    RULES[name](label or name, value)


# -- the configuration -----------------------------------------------------------------------

@dataclass(frozen=True)
class ServerConfig:
    listen_host: str
    listen_port: int
    san: channels.ChannelSpec
    mode: Mode
    token: str = ""
    token_file: Path | None = None  # where the token is read from (the command line names it)
    stats_file: Path | None = None
    max_conns: int = 20000
    # overload control (scheduler.py): connections accepted but not yet given to a host,
    # per port; beyond it the listener pauses and the kernel's backlog holds the rest
    backlog: int = 64
    listen_backlog: int = 1024  # the kernel's listen backlog (SYNs beyond it are dropped)
    queue_deadline: float = 1.0  # a connection queued longer is reset (0 = never)
    # push modes: connections given to one host and not yet finished by it (0 = no bound)
    host_conns: int = 128
    # False: the daemon before its overload control, for A/B (accept everything, reset beyond backlog)
    overload_control: bool = True
    idle_timeout: float = 60.0
    hello_timeout: float = 5.0
    setup_wait: float = 0.05  # setup-with-accept: announce without data after this
    # TCP_DEFER_ACCEPT seconds on the public listener (0 = off; None = on, 1 s, only in
    # setup-with-accept, where a connection is not announced before its first bytes anyway)
    defer_accept: float | None = None
    # function placement (placement.py): answer cached static requests here, for a share
    # of new connections read from placement_file (or placement_share when there is none)
    serve_static: str | None = None
    placement_file: Path | None = None
    placement_share: float = 0.0
    # client sockets: "epoll" = rawio's fast path (our own epoll set, no per-connection
    # transport machinery); "asyncio" = the event loop's transports (the A/B reference)
    client_io: str = "epoll"
    # the paper's "No Interrupts": poll every poll_us microseconds (0 = wake per event)
    poll_us: int = 0
    # direct communication with the file server (fetch.py): the HTTP file server whose
    # bodies FETCH frames send to clients (None: FETCH is refused)
    file_server: tuple[str, int] | None = None
    # No Data Copying (zerocopy.py): hosts write large sends into a send area of the shm
    # channel and the daemon hands it to the kernel with MSG_ZEROCOPY
    zero_copy: bool = False

    def __post_init__(self) -> None:
        if not self.mode.offloaded:
            raise ValueError(f"mode {self.mode.name!r} has no TCP server: the tcpserver node only routes IP")
        for name in RULES:
            check_option(name, getattr(self, name))
        if self.file_server is not None and not (self.file_server[0] and 0 < self.file_server[1] < 65536):
            raise ValueError(f"--file-server must be ADDR:PORT with a port in 1-65535, not {self.file_server!r}")
        if self.zero_copy:
            _flag("zero_copy", self.zero_copy)
            if self.san.kind != "shm":
                raise ValueError(f"zero_copy sends from memory the host shares with the TCP server: it needs "
                                 f"the shm channel, not {self.san.kind} (--channel shm)")
            if self.mode.sync_send:
                raise ValueError(f"zero_copy needs an asynchronous send: in {self.mode.name} each send waits "
                                 "for its completion anyway (e.g. --mode async-send)")
            if self.client_io != "epoll":
                raise ValueError("zero_copy needs --client-io epoll (the daemon's own client sockets)")
        if (self.placement_file or self.placement_share) and not self.serve_static:
            raise ValueError("placement_file/placement_share need serve_static DOCROOT")

    # -- the command line: made and read by the same table --------------------------------

    def to_argv(self) -> list[str]:
        """The daemon's arguments for this configuration (``from_argv`` reads them back);
        options at their defaults are left out. The token travels as ``--token-file``."""
        argv = ["--listen", f"{self.listen_host}:{self.listen_port}", "--san", str(self.san),
                "--mode", self.mode.name]
        for flag, name, _, _ in _FLAGS:
            v = getattr(self, name)
            if v == _DEFAULTS[name] or v is None:
                continue
            if isinstance(v, bool):
                argv += [flag, "on" if v else "off"]
            elif name == "file_server":
                argv += [flag, f"{v[0]}:{v[1]}"]
            else:
                argv += [flag, f"{v:g}" if isinstance(v, float) else str(v)]
        return argv

    @classmethod
    def from_argv(cls, argv: Sequence[str] | None = None, *,
                  read_token: Callable[[str], str] | None = None) -> tuple["ServerConfig", argparse.Namespace]:
        """Parse the daemon's command line (argparse exits on a malformed one) and check it
        (ValueError naming the option); ``read_token`` reads the token file, if given.
        Returns the configuration and the parsed namespace (for ``--log-level``)."""
        a = parser().parse_args(argv)
        kw: dict[str, Any] = {name: getattr(a, name) for _, name, _, _ in _FLAGS
                              if getattr(a, name) is not None}
        for name in ("overload_control", "zero_copy"):
            if name in kw:
                kw[name] = kw[name] == "on"
        if a.token_file is None:
            raise ValueError("--token-file is required")
        token = read_token(str(a.token_file)) if read_token else ""
        cfg = cls(listen_host=a.listen[0], listen_port=a.listen[1], san=channels.parse(a.san),
                  mode=get_mode(a.mode), token=token, **kw)
        return cfg, a


_DEFAULTS = {f.name: f.default for f in fields(ServerConfig)}


def _addr_port(s: str) -> tuple[str, int]:
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{s!r}: expected ADDR:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


# flag, field, argparse keywords, help
_FLAGS: list[tuple[str, str, dict[str, Any], str]] = [
    ("--token-file", "token_file", {"type": Path}, "the file holding the shared token"),
    ("--stats-file", "stats_file", {"type": Path}, "where the stats are written"),
    ("--max-conns", "max_conns", {"type": int}, "client connections at most"),
    ("--backlog", "backlog", {"type": int},
     "connections accepted but not yet given to a host, per port; at this bound the daemon "
     "stops accepting (the rest wait in the kernel's backlog)"),
    ("--listen-backlog", "listen_backlog", {"type": int},
     "the kernel's listen backlog on the public port (SYNs beyond it are dropped)"),
    ("--overload-control", "overload_control", {"choices": ("on", "off")},
     "off: the daemon before it (accept everything, queue up to --backlog, reset beyond; no "
     "deadline), for comparisons"),
    ("--host-conns", "host_conns", {"type": int},
     "push modes: connections given to one host and not yet finished by it; beyond, new ones "
     "queue as in the pull modes (0 = no bound)"),
    ("--queue-deadline", "queue_deadline", {"type": float},
     "seconds a connection may wait for a host before it is reset (0 = no limit)"),
    ("--idle-timeout", "idle_timeout", {"type": float}, "seconds an idle client connection is kept"),
    ("--defer-accept", "defer_accept", {"type": float},
     "TCP_DEFER_ACCEPT seconds on the public port (0 = off; default: 1 in setup-with-accept, "
     "off otherwise, so silent clients are announced at once)"),
    ("--client-io", "client_io", {"choices": CLIENT_IO},
     "client sockets on our own epoll fast path (default) or on the event loop's transports "
     "(for A/B comparisons)"),
    ("--poll-us", "poll_us", {"type": int},
     "poll every N microseconds instead of waking up per event (the paper's 'No Interrupts'; "
     "adds up to two periods of latency; 0 = off)"),
    ("--serve-static", "serve_static", {"metavar": "DOCROOT"},
     "function placement: cache DOCROOT's manifest files and answer eligible static requests "
     "here for a share of new connections"),
    ("--placement-file", "placement_file", {"type": Path, "metavar": "PATH"},
     'the share as JSON {"share": x}, re-read when it changes (every 100 ms; SIGHUP: now)'),
    ("--placement-share", "placement_share", {"type": float},
     "the share until the placement file says otherwise (default 0)"),
    ("--file-server", "file_server", {"type": _addr_port, "metavar": "ADDR:PORT"},
     "direct communication: the HTTP file server whose files the hosts' FETCH frames send to "
     "clients from here"),
    ("--zero-copy", "zero_copy", {"choices": ("on", "off")},
     "on: hosts put large sends in a shared send area and the daemon sends them with "
     "MSG_ZEROCOPY, no copy through its user space (shm channel, asynchronous modes)"),
]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m testbed.offload",
                                 description="the TCP-server daemon: clients' TCP here, the "
                                             "application's over the SAN")
    ap.add_argument("--listen", required=True, type=_addr_port, help="public ADDR:PORT for clients")
    ap.add_argument("--san", required=True, help="tcp:ADDR:PORT, unix:PATH or shm:NAME")
    ap.add_argument("--mode", required=True, help=", ".join(n for n, m in MODES.items() if m.offloaded))
    for flag, name, kw, help_ in _FLAGS:
        default = _DEFAULTS[name]
        shown = "" if default is None or name in ("token_file", "stats_file") else f" (default {default})"
        ap.add_argument(flag, dest=name, default=None, help=help_ + shown, **kw)
    ap.add_argument("--log-level", default="INFO")
    return ap

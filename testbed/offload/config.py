"""The TCP-server daemon's settings: ``ServerConfig`` and the overload bounds' one check.

Kept apart from the daemon so that the testbed's services and experiment files can check
a user's overload options (``check_overload``) without importing the event-loop code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import channels
from .modes import Mode


@dataclass
class ServerConfig:
    listen_host: str
    listen_port: int
    san: channels.ChannelSpec
    mode: Mode
    token: str
    stats_file: Path | None = None
    max_conns: int = 20000
    # overload control (module docstring): connections accepted but not yet given to a
    # host, per port; beyond it the listener pauses and the kernel's backlog holds the rest
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
    accept_ahead: int = 0  # unused by the server; the host decides how many it asks for
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


def check_overload(backlog: object, listen_backlog: object, queue_deadline: object,
                   host_conns: object = ServerConfig.host_conns) -> None:
    """The overload-control bounds as given by a user, or ValueError (one rule for the
    daemon's options and the service options of ``up`` and experiment files)."""
    for name, v in (("backlog", backlog), ("listen_backlog", listen_backlog)):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65535:
            raise ValueError(f"{name} must be a whole number in [1, 65535], not {v!r}")
    if not isinstance(host_conns, int) or isinstance(host_conns, bool) or not 0 <= host_conns <= 65535:
        raise ValueError(f"host_conns must be a whole number in [0, 65535] (0 = no bound), not {host_conns!r}")
    if (not isinstance(queue_deadline, (int, float)) or isinstance(queue_deadline, bool)
            or not 0 <= queue_deadline <= 3600):
        raise ValueError(f"queue_deadline must be seconds in [0, 3600] (0 = no limit), not {queue_deadline!r}")

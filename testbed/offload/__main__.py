"""The TCP-server daemon's command line: ``python -m testbed.offload --listen ADDR:PORT ...``.

(``python -m testbed.offload.server`` runs the same.) Options are checked here, one line
naming the option and the rule, before anything listens; ``daemon.TcpServer`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from . import channels
from .config import ServerConfig, check_overload
from .daemon import TcpServer
from .daemon import __doc__ as _DAEMON_DOC
from .modes import get_mode
from .polling import check_period_us
from .runtime import install_loop, read_token

log = logging.getLogger("testbed.offload.server")


def _addr_port(s: str) -> tuple[str, int]:
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{s!r}: expected ADDR:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.offload.server", description=_DAEMON_DOC.split("\n")[0])
    ap.add_argument("--listen", required=True, type=_addr_port, help="public ADDR:PORT for clients")
    ap.add_argument("--san", required=True, help="tcp:ADDR:PORT, unix:PATH or shm:NAME")
    ap.add_argument("--mode", required=True, help="split, async-send, eager-receive, eager-accept, setup-with-accept")
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--stats-file", type=Path)
    ap.add_argument("--max-conns", type=int, default=20000)
    ap.add_argument("--backlog", type=int, default=ServerConfig.backlog,
                    help="connections accepted but not yet given to a host, per port; at this "
                         "bound the daemon stops accepting (the rest wait in the kernel's backlog)")
    ap.add_argument("--listen-backlog", type=int, default=ServerConfig.listen_backlog,
                    help="the kernel's listen backlog on the public port (SYNs beyond it are dropped)")
    ap.add_argument("--overload-control", choices=("on", "off"), default="on",
                    help="off: the daemon before it (accept everything, queue up to --backlog, "
                         "reset beyond; no deadline), for comparisons")
    ap.add_argument("--host-conns", type=int, default=ServerConfig.host_conns,
                    help="push modes: connections given to one host and not yet finished by it; "
                         "beyond, new ones queue as in the pull modes (0 = no bound)")
    ap.add_argument("--queue-deadline", type=float, default=ServerConfig.queue_deadline,
                    help="seconds a connection may wait for a host before it is reset (0 = no limit)")
    ap.add_argument("--idle-timeout", type=float, default=60.0)
    ap.add_argument("--defer-accept", type=float, default=None,
                    help="TCP_DEFER_ACCEPT seconds on the public port (0 = off; default: 1 in "
                         "setup-with-accept, off otherwise, so silent clients are announced at once)")
    ap.add_argument("--client-io", choices=("epoll", "asyncio"), default="epoll",
                    help="client sockets on our own epoll fast path (default) or on the event "
                         "loop's transports (for A/B comparisons)")
    ap.add_argument("--poll-us", type=int, default=0,
                    help="poll every N microseconds instead of waking up per event (the paper's "
                         "'No Interrupts'; adds up to two periods of latency; 0 = off)")
    ap.add_argument("--serve-static", metavar="DOCROOT",
                    help="function placement: cache DOCROOT's manifest files and answer eligible "
                         "static requests here for a share of new connections")
    ap.add_argument("--placement-file", type=Path, metavar="PATH",
                    help='the share as JSON {"share": x}, re-read when it changes (every 100 ms; SIGHUP: now)')
    ap.add_argument("--placement-share", type=float, default=0.0,
                    help="the share until the placement file says otherwise (default 0)")
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if (a.placement_file or a.placement_share) and not a.serve_static:
            raise ValueError("--placement-file/--placement-share need --serve-static DOCROOT")
        check_period_us(a.poll_us)
        check_overload(a.backlog, a.listen_backlog, a.queue_deadline, a.host_conns)
        if not 0.0 <= a.placement_share <= 1.0:
            raise ValueError("--placement-share must be in [0, 1]")
        if a.serve_static and not (Path(a.serve_static) / "manifest.json").is_file():
            raise ValueError(f"--serve-static {a.serve_static}: no manifest.json there")
        mode = get_mode(a.mode)
        if not mode.offloaded:
            raise ValueError("mode 'regular' has no TCP server: the tcpserver node only routes IP")
        cfg = ServerConfig(
            listen_host=a.listen[0], listen_port=a.listen[1], san=channels.parse(a.san), mode=mode,
            token=read_token(a.token_file), stats_file=a.stats_file, max_conns=a.max_conns,
            backlog=a.backlog, listen_backlog=a.listen_backlog, queue_deadline=a.queue_deadline,
            host_conns=a.host_conns,
            overload_control=a.overload_control == "on",
            idle_timeout=a.idle_timeout, defer_accept=a.defer_accept,
            serve_static=a.serve_static, placement_file=a.placement_file, placement_share=a.placement_share,
            client_io=a.client_io, poll_us=a.poll_us,
        )
    except (ValueError, OSError) as e:
        print(f"offload.server: {e}", file=sys.stderr)
        return 2
    loop_name = install_loop()

    async def run() -> None:
        srv = TcpServer(cfg)
        try:
            await srv.start()
        except OSError as e:
            print(f"offload.server: cannot listen: {e}", file=sys.stderr)
            raise SystemExit(1)
        except ValueError as e:  # a bad --serve-static document root
            print(f"offload.server: {e}", file=sys.stderr)
            raise SystemExit(2)
        if srv.place is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, srv.place.check, True)
        log.info("event loop: %s", loop_name)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await srv.close()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The TCP-server daemon's command line: ``python -m testbed.offload --listen ADDR:PORT ...``.

The options are ``ServerConfig``'s (config.py makes and reads them from one table, and
checks them there, one line naming the option and the rule, before anything listens);
``daemon.TcpServer`` runs it. The testbed's service plan builds this command line from a
``ServerConfig`` with the same table.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path

from .config import ServerConfig
from .daemon import TcpServer
from .runtime import install_loop, read_token

log = logging.getLogger("testbed.offload.server")


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, a = ServerConfig.from_argv(argv)
        logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
        if cfg.serve_static and not (Path(cfg.serve_static) / "manifest.json").is_file():
            raise ValueError(f"--serve-static {cfg.serve_static}: no manifest.json there")
        cfg = replace(cfg, token=read_token(str(cfg.token_file)))
    except (ValueError, OSError) as e:
        print(f"offload: {e}", file=sys.stderr)
        return 2
    loop_name = install_loop()

    async def run() -> None:
        srv = TcpServer(cfg)
        try:
            await srv.start()
        except OSError as e:
            print(f"offload: cannot listen: {e}", file=sys.stderr)
            raise SystemExit(1)
        except ValueError as e:  # a bad --serve-static document root
            print(f"offload: {e}", file=sys.stderr)
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

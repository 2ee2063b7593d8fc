"""``testbed locust``: Locust in the client node, its web UI on this machine's loopback.

Locust runs inside the client node (its namespace and CPU budget, against the service
address), with its UI on the node's own loopback; ``forward.serve_forward`` makes that
reachable at ``http://127.0.0.1:PORT`` from the machine's browser. Ctrl-C (or SIGTERM)
stops both; ``down`` stops Locust with the node's other processes.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TestbedError
from ..system.forward import serve_forward
from ..system.processes import spawn, stop

if TYPE_CHECKING:
    from ..system.lifecycle import Testbed

ROOT = Path(__file__).resolve().parents[2]
INNER_PORT = 8089  # on the client node's own loopback


def run_locust(tb: "Testbed", port: int, locustfile: str | None, locust_args: list[str]) -> int:
    if not 1024 <= port <= 65535:
        raise TestbedError("locust --port must be in [1024, 65535]")
    path = Path(locustfile or ROOT / "loadgen" / "locustfile.py").resolve()
    if not path.is_file():
        raise TestbedError(f"locust: no locustfile {path}")
    argv = [sys.executable, "-m", "locust", "-f", str(path), "--host", tb.service_url,
            "--web-host", "127.0.0.1", "--web-port", str(INNER_PORT), *(locust_args or ["--class-picker"])]
    client = tb.topology.by_role("client")[0].name
    proc = spawn(tb.netns(client), tb.cgroups.procs_files(tb.cgroup(client)), argv, stdin=subprocess.DEVNULL)
    print(f"Locust runs in node {client} against {tb.service_url}; its web UI: http://127.0.0.1:{port}/ "
          "(Ctrl-C stops it)", flush=True)

    async def main() -> None:
        fwd = asyncio.ensure_future(serve_forward(tb.netns(client), INNER_PORT, port))
        try:
            while proc.poll() is None and not fwd.done():
                await asyncio.sleep(0.2)
            if fwd.done() and not fwd.cancelled() and fwd.exception():
                raise TestbedError(f"locust: cannot listen on 127.0.0.1:{port}: {fwd.exception()}")
        finally:
            fwd.cancel()

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # stopped as by Ctrl-C: Locust goes too
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            stop(proc.pid, None, timeout=5)
    return 0


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt

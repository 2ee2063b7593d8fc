"""What every engine process sets up the same way: the event loop, the garbage collector,
its scheduling class, and the SAN token (the TCP server, the host application, the bench).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


def read_token(path: str) -> str:
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


def batch_scheduling() -> bool:
    """Run this process as SCHED_BATCH (``TCPS_SCHED=normal`` keeps SCHED_OTHER).

    The TCP server and its host share a core: with SCHED_OTHER every SAN write wakes the
    peer, which preempts the writer at once, so each side runs a few frames per time slice
    and pays a context switch per batch. A SCHED_BATCH task that wakes up does not preempt
    the running one; each side then runs until it blocks in epoll and frames batch up.
    The benchmark runs HAProxy and the regular host the same way (docs/performance.md).
    """
    if os.environ.get("TCPS_SCHED", "batch") != "batch" or not hasattr(os, "SCHED_BATCH"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:
        return False
    return True


def install_loop() -> str:
    """Use uvloop when importable: the same loop for every mode keeps comparisons fair.

    Also moves start-up objects out of the garbage collector's view and makes its young
    generation larger: per-connection objects are freed by reference counting anyway, and
    frequent young collections cost several percent per request (same for every mode).
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    batch_scheduling()
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"

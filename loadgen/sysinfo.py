"""What the generator's own process and namespace look like: file-descriptor limit,
CPU time, TCP socket counts (TIME_WAIT, ports) from /proc of the current namespace."""

from __future__ import annotations

import logging
import os
import resource
from pathlib import Path

log = logging.getLogger(__name__)


def raise_nofile(want: int = 1 << 20) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (root may lift the hard limit); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target_hard in (max(hard, want), hard):
        try:
            new = min(want, target_hard) if target_hard != resource.RLIM_INFINITY else want
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, target_hard))
            return new
        except (ValueError, OSError):
            continue
    return soft


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sockstat() -> dict[str, int]:
    """TCP counters of the current network namespace (/proc/net/sockstat)."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                f = line.split()[1:]
                out = {f"tcp_{f[i]}": int(f[i + 1]) for i in range(0, len(f) - 1, 2)}
    except OSError:
        pass
    return out


def port_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return (32768, 60999)


def netns_inode() -> int:
    """Identifies the network namespace (two processes in the same one share TIME_WAIT)."""
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


def pin(cpus: list[int]) -> None:
    os.sched_setaffinity(0, set(cpus))

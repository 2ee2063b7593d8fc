"""What the generator's own process and namespace look like: file-descriptor limit,
CPU time, TCP socket counts (TIME_WAIT, ports) from /proc of the current namespace."""

from __future__ import annotations

import logging
import os
import resource
import socket
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


def _cgroup_paths() -> list[Path]:
    """This process's cgroup directories that hold CPU limits (v2, or v1's cpu controller)."""
    out = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if ctrls == "":
            out.append(Path("/sys/fs/cgroup") / path.lstrip("/"))
        elif "cpu" in ctrls.split(","):
            for mount in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
                d = Path("/sys/fs/cgroup") / mount
                if d.is_dir():
                    out.append(d / path.lstrip("/"))
                    break
    return out


def _quota_cores(d: Path) -> float | None:
    try:
        if (d / "cpu.max").exists():
            quota, period = (d / "cpu.max").read_text().split()
            return None if quota == "max" else int(quota) / int(period)
        q = int((d / "cpu.cfs_quota_us").read_text())
        return None if q < 0 else q / int((d / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None


def cpu_capacity() -> float:
    """Cores this process can use at most: its affinity, capped by the tightest CPU quota
    of its cgroup and every ancestor."""
    cap = float(len(os.sched_getaffinity(0)))
    for d in _cgroup_paths():
        while True:
            q = _quota_cores(d)
            if q is not None:
                cap = min(cap, q)
            if d.parent == d or d.parent == Path("/sys/fs/cgroup") or not d.parent.is_relative_to("/sys/fs/cgroup"):
                break
            d = d.parent
    return cap


def cpu_group() -> str:
    """What processes that share CPU time have in common: cgroup and affinity."""
    paths = ",".join(str(p) for p in _cgroup_paths())
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    return f"{socket.gethostname()}|{paths}|{cpus}"


def pin(cpus: list[int]) -> None:
    os.sched_setaffinity(0, set(cpus))

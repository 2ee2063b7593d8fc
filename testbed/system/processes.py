"""Processes inside nodes: started in a node's network namespace *and* its cgroup.

`ip netns exec` also unshares the mount namespace and remounts /sys, which hides
/sys/fs/cgroup; here the child joins its cgroups (by writing its pid from the root mount
namespace) and then enters only the network namespace with setns, before exec. The
child starts a session of its own, so stopping it stops everything it spawned.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import TestbedError
from .kernel import _libc, CLONE_NEWNET, netns_path, pid_alive, pid_start_time

log = logging.getLogger(__name__)


@dataclass
class ProcessRecord:
    """A supervised process, as kept in state.json: pid plus start time names it for good."""
    name: str
    node: str
    pid: int
    start_time: int | None
    argv: list[str]
    log: str
    machine: str | None = None  # None: this machine; else the pid is that machine's

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def spawn(netns: str, procs_files: Sequence[Path], argv: Sequence[str], *,
          log_path: Path | None = None, env: dict[str, str] | None = None,
          cwd: str | None = None, **popen_kw: Any) -> subprocess.Popen:
    """Start ``argv`` inside namespace ``netns`` and the cgroups whose cgroup.procs are given."""
    try:
        ns_fd = os.open(netns_path(netns), os.O_RDONLY)
    except FileNotFoundError:
        raise TestbedError(f"network namespace {netns} does not exist (is the testbed up?)") from None
    procs = [str(p) for p in procs_files]

    def enter() -> None:  # runs in the child between fork and exec
        pid = str(os.getpid()).encode()
        for path in procs:
            fd = os.open(path, os.O_WRONLY)
            os.write(fd, pid)
            os.close(fd)
        if _libc.setns(ns_fd, CLONE_NEWNET) != 0:
            os._exit(126)

    out: Any = popen_kw.pop("stdout", None)
    err: Any = popen_kw.pop("stderr", None)
    log_file = None
    if log_path is not None and out is None:
        log_file = open(log_path, "ab")
        out, err = log_file, subprocess.STDOUT
    try:
        return subprocess.Popen(list(argv), preexec_fn=enter, pass_fds=(ns_fd,), stdout=out,
                                stderr=err, env=env, cwd=cwd, start_new_session=True, **popen_kw)
    except FileNotFoundError:
        raise TestbedError(f"command not found: {argv[0]}") from None
    finally:
        os.close(ns_fd)
        if log_file:
            log_file.close()


@contextmanager
def ctrl_c_goes_to(proc: subprocess.Popen) -> Iterator[None]:
    """While in the block, Ctrl-C (SIGINT) goes to ``proc``'s session instead of ending us
    first: the child, in a session of its own, stops the way it would at a terminal."""
    previous = signal.signal(signal.SIGINT, lambda *_: os.killpg(proc.pid, signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def record(name: str, node: str, proc: subprocess.Popen, argv: Sequence[str], log_path: Path) -> ProcessRecord:
    return ProcessRecord(name, node, proc.pid, pid_start_time(proc.pid), list(argv), str(log_path))


def stop(pid: int, start_time: int | None, timeout: float = 3.0) -> bool:
    """SIGTERM the process's session, then SIGKILL after ``timeout``. Only if the pid still
    names the process that was started (same start time). True if something was stopped."""
    if not pid_alive(pid, start_time):
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid, start_time):
            return True
        time.sleep(0.02)
    _signal_group(pid, signal.SIGKILL)
    for _ in range(100):
        _reap(pid)
        if not pid_alive(pid, start_time):
            break
        time.sleep(0.01)
    return True


def kill_pids(pids: Sequence[int]) -> None:
    """SIGKILL processes found inside the testbed's own cgroups (they are ours by placement)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        _reap(pid)


def _signal_group(pid: int, sig: int) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its own parent (or init) reaps it

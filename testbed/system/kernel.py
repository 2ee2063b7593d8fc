"""Thin wrappers over the system calls the testbed needs and Python 3.11 lacks.

Network namespaces are created without forking (unshare, then a bind mount under
/run/netns as iproute2 does) and entered by the calling thread with setns, so a whole
topology builds in one process with one netlink socket per namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import KernelFeatureMissing, TestbedError

CLONE_NEWNET = 0x40000000
MS_BIND, MS_REC, MS_SHARED = 4096, 16384, 1 << 20
MNT_DETACH = 2
NETNS_DIR = Path("/run/netns")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open at ``fd``."""
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def _share_netns_dir() -> None:
    # iproute2's convention: /run/netns is a shared bind mount, so mounts made by
    # one `ip netns add` are visible in every mount namespace.
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    if _libc.mount(b"", str(NETNS_DIR).encode(), b"none", MS_SHARED | MS_REC, None) != 0:
        _check(_libc.mount(str(NETNS_DIR).encode(), str(NETNS_DIR).encode(), b"none",
                           MS_BIND | MS_REC, None), "bind /run/netns")
        _check(_libc.mount(b"", str(NETNS_DIR).encode(), b"none", MS_SHARED | MS_REC, None),
               "share /run/netns")


def _new_mount_point(name: str) -> Path:
    """The empty file /run/netns/NAME that a namespace gets bind-mounted on."""
    _share_netns_dir()
    path = netns_path(name)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except FileExistsError:
        raise TestbedError(f"network namespace {name} already exists: "
                           "run `sudo testbed clean` to remove leftovers") from None
    return path


def create_netns(name: str) -> None:
    """Create a named network namespace (like `ip netns add`), in this thread, without a fork."""
    path = _new_mount_point(name)
    root = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            _check(_libc.mount(b"/proc/thread-self/ns/net", str(path).encode(), b"none", MS_BIND, None),
                   f"bind {path}")
        finally:
            setns(root)
    except OSError:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(root)


def attach_netns(name: str, pid: int) -> None:
    """Name the network namespace of process ``pid`` (like `ip netns attach NAME PID`), so it
    outlives the process and every tool that opens /run/netns/NAME can enter it."""
    path = _new_mount_point(name)
    try:
        _check(_libc.mount(f"/proc/{pid}/ns/net".encode(), str(path).encode(), b"none", MS_BIND, None),
               f"bind {path} to the namespace of pid {pid}")
    except OSError:
        path.unlink(missing_ok=True)
        raise


def remove_netns(name: str) -> bool:
    """Unmount and remove a named namespace; False if it did not exist."""
    path = netns_path(name)
    if not path.exists():
        return False
    _libc.umount2(str(path).encode(), MNT_DETACH)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def list_netns(prefix: str) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with this thread in namespace ``name`` (sockets opened stay there)."""
    root = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        fd = os.open(netns_path(name), os.O_RDONLY)
    except FileNotFoundError:
        os.close(root)
        raise TestbedError(f"network namespace {name} does not exist") from None
    try:
        setns(fd)
        yield
    finally:
        setns(root)
        os.close(fd)
        os.close(root)


def write_sysctl(key: str, value: str) -> None:
    """Write a sysctl in the *current thread's* network namespace (net.* are per namespace)."""
    path = Path("/proc/sys") / key.replace(".", "/")
    if not key.startswith("net."):
        raise TestbedError(f"sysctl {key}: only net.* sysctls are per namespace; "
                           "the testbed never changes host-wide settings")
    try:
        path.write_text(str(value))
    except FileNotFoundError:
        raise KernelFeatureMissing(f"sysctl {key} does not exist in this kernel") from None
    except OSError as e:
        raise TestbedError(f"cannot set sysctl {key}={value}: {e.strerror}") from None
    got = path.read_text().split()
    if got != str(value).split():
        raise TestbedError(f"sysctl {key}: wrote {value!r} but read back {' '.join(got)!r}")


def read_sysctl(key: str) -> str | None:
    try:
        return (Path("/proc/sys") / key.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: fields resume after the last ')'
    return stat.rsplit(")", 1)[1].split()


def pid_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks: with the pid it names one process for good."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def pid_alive(pid: int, start_time: int | None) -> bool:
    """True while ``pid`` runs and is still the process that started at ``start_time``."""
    fields = _stat_fields(pid)
    if not fields or fields[0] in ("Z", "X"):
        return False
    return start_time is None or int(fields[19]) == start_time


def is_root() -> bool:
    return os.geteuid() == 0


def errno_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def irq_time_accounting() -> bool | None:
    """CONFIG_IRQ_TIME_ACCOUNTING of the running kernel (None when its configuration is not
    readable): without it softirq time is charged to the cgroup of whoever runs, so the
    runner records it and the report says where a node's kernel work was counted."""
    import gzip
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{platform.release()}")):
        try:
            text = gzip.open(path, "rt").read() if path.suffix == ".gz" else path.read_text()
        except OSError:
            continue
        return "CONFIG_IRQ_TIME_ACCOUNTING=y" in text
    return None

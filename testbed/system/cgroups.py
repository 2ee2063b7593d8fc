"""CPU budgets as cgroups, written straight to cgroupfs, on v1 or v2 (detected at run time).

A node's budget in CPUs becomes a CFS quota (``cpu: 0.5`` = 50 ms per 100 ms period) and
optionally a cpuset. Every value written is read back and compared, as Mininet does.
Groups live under one parent per testbed, ``tcps-<testbed>/<node>``, in every hierarchy
used, so cleaning up needs nothing but that name.

v1 (this machine): ``cpu``, ``cpuacct`` and ``cpuset`` are separate hierarchies.
v2: one tree; ``cpu.max``, ``cpuset.cpus``, ``cpu.stat``; controllers are enabled in each
parent's ``cgroup.subtree_control``. Measured in a stock Debian 12 VM (``make vm-test``):
systemd leaves only ``memory pids`` enabled at the root, so ``up`` enables ``cpu`` and
``cpuset`` there. systemd's reload and re-exec do not take them away while a testbed is up
(the kernel refuses, EBUSY, to disable at the root what a child still enables, and the
testbed's top group does), and the last testbed's removal disables again what the testbed
enabled at the root, recorded in ``ROOT_RECORD``, so the machine is left as it was found.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .. import PREFIX
from ..describe import cpulist
from ..describe.budget import BudgetShape
from ..errors import KernelFeatureMissing, TestbedError

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: v2: controllers the testbed enabled in the root's cgroup.subtree_control, one a line
ROOT_RECORD = Path(f"/run/{PREFIX}-cgroup-root-controllers")
TOP_PREFIX = f"{PREFIX}-"
DEFAULT_PERIOD_US = BudgetShape().period_us


@dataclass(frozen=True)
class CpuUsage:
    """Cumulative CPU use of a group, in seconds since it was created."""
    user_s: float
    system_s: float
    total_s: float
    throttled_s: float
    nr_throttled: int
    nr_periods: int


def _write(path: Path, value: str, expect: str | None = None) -> None:
    """Write a cgroup file and read it back; ``expect`` is the kernel's normalised echo."""
    try:
        path.write_text(value)
    except OSError as e:
        raise TestbedError(f"cannot write {value!r} to {path}: {e.strerror}") from None
    got = path.read_text().strip()
    if got != (expect if expect is not None else value):
        raise TestbedError(f"{path}: wrote {value!r} but read back {got!r}")


def _read_kv(path: Path) -> dict[str, int]:
    out = {}
    for line in path.read_text().splitlines():
        k, _, v = line.partition(" ")
        if v.strip().lstrip("-").isdigit():
            out[k] = int(v)
    return out


def _remove_dir(path: Path) -> None:
    """rmdir a cgroup, children first; waits briefly for exiting tasks to leave."""
    if not path.is_dir():
        return
    for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
        _remove_dir(child)
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            time.sleep(0.02)
    raise TestbedError(f"cgroup {path} is still busy (processes inside it did not exit)")


class Cgroups:
    """Common interface; ``detect()`` returns the one for this machine."""

    version: int
    root: Path

    def create(self, group: str, cpu: float | None, cpuset: str | None,
               shape: BudgetShape = BudgetShape()) -> None:
        raise NotImplementedError

    def set_cpu(self, group: str, cpu: float | None, shape: BudgetShape | None = None) -> None:
        """The group's budget; ``shape`` None keeps the period and burst share it has."""
        raise NotImplementedError

    def shape_of(self, group: str) -> BudgetShape:
        """The period and burst share a group's budget is enforced with now."""
        lim = self.limits(group)
        quota, burst = int(lim["quota_us"]), int(lim["burst_us"])  # type: ignore[call-overload]
        return BudgetShape(int(lim["period_us"]) / 1000,  # type: ignore[call-overload]
                           min(100.0, 100.0 * burst / quota) if quota > 0 else 0.0)

    @staticmethod
    def _set_burst(file: Path, cpu: float | None, shape: BudgetShape, before: bool) -> None:
        """The burst is written around the quota: zeroed before it (the kernel refuses a
        quota below the burst in force), set after it."""
        if before:
            if file.exists():
                _write(file, "0")
        elif cpu is not None and shape.burst_pct > 0:
            if not file.exists():
                raise KernelFeatureMissing(f"cpu_burst_pct: this kernel has no {file.name} (Linux 5.14 or later "
                                           "with CONFIG_CFS_BANDWIDTH): use cpu_burst_pct=0")
            _write(file, str(shape.burst_us(cpu)))

    def set_cpuset(self, group: str, cpuset: str) -> None:
        raise NotImplementedError

    def add_pid(self, group: str, pid: int) -> None:
        for d in self.dirs(group):
            _write_pid(d / "cgroup.procs", pid)

    def procs_files(self, group: str) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs(group)]

    def pids(self, group: str) -> list[int]:
        pids: set[int] = set()
        for f in self.procs_files(group):
            try:
                pids.update(int(x) for x in f.read_text().split())
            except FileNotFoundError:
                pass
        return sorted(pids)

    def usage(self, group: str) -> CpuUsage:
        raise NotImplementedError

    def limits(self, group: str) -> dict[str, object]:
        raise NotImplementedError

    def dirs(self, group: str) -> list[Path]:
        raise NotImplementedError

    def remove(self, group: str) -> None:
        for d in self.dirs(group):
            _remove_dir(d)

    def list_groups(self, prefix: str) -> list[str]:
        """Top-level groups whose name starts with ``prefix`` in any hierarchy used."""
        names: set[str] = set()
        for base in self.bases():
            if base.is_dir():
                names.update(p.name for p in base.iterdir() if p.is_dir() and p.name.startswith(prefix))
        return sorted(names)

    def bases(self) -> list[Path]:
        raise NotImplementedError


def _write_pid(path: Path, pid: int) -> None:
    try:
        path.write_text(str(pid))
    except ProcessLookupError:
        pass  # it exited already: nothing to place
    except OSError as e:
        raise TestbedError(f"cannot move pid {pid} into {path.parent}: {e.strerror}") from None


class CgroupsV1(Cgroups):
    version = 1
    HIERARCHIES = ("cpu", "cpuacct", "cpuset")

    def __init__(self, root: Path = CGROUP_ROOT):
        self.root = root
        for h in self.HIERARCHIES:
            if not (root / h / "cgroup.procs").exists():
                raise KernelFeatureMissing(f"cgroup v1 hierarchy {root / h} is not mounted")

    def bases(self) -> list[Path]:
        return [self.root / h for h in self.HIERARCHIES]

    def dirs(self, group: str) -> list[Path]:
        return [self.root / h / group for h in self.HIERARCHIES]

    def _cpuset_dir(self, group: str) -> Path:
        return self.root / "cpuset" / group

    def create(self, group: str, cpu: float | None, cpuset: str | None,
               shape: BudgetShape = BudgetShape()) -> None:
        for h in self.HIERARCHIES:
            base = self.root / h
            # create each level; cpuset children start empty and must copy their parent's
            for part in Path(group).parts:
                base = base / part
                if not base.is_dir():
                    base.mkdir()
                    if h == "cpuset":
                        parent = base.parent
                        _write(base / "cpuset.mems", (parent / "cpuset.mems").read_text().strip())
                        _write(base / "cpuset.cpus", (parent / "cpuset.cpus").read_text().strip())
        self.set_cpu(group, cpu, shape)
        if cpuset is not None:
            self.set_cpuset(group, cpuset)

    def set_cpu(self, group: str, cpu: float | None, shape: BudgetShape | None = None) -> None:
        d = self.root / "cpu" / group
        shape = shape or self.shape_of(group)
        self._set_burst(d / "cpu.cfs_burst_us", cpu, shape, before=True)
        _write(d / "cpu.cfs_period_us", str(shape.period_us))
        _write(d / "cpu.cfs_quota_us", str(-1 if cpu is None else shape.quota_us(cpu)))
        self._set_burst(d / "cpu.cfs_burst_us", cpu, shape, before=False)

    def set_cpuset(self, group: str, cpuset: str) -> None:
        d = self._cpuset_dir(group)
        try:
            (d / "cpuset.cpus").write_text(cpuset)
        except OSError as e:
            raise TestbedError(f"cannot set cpuset {cpuset!r} on {d}: {e.strerror}") from None
        if cpulist.parse((d / "cpuset.cpus").read_text()) != cpulist.parse(cpuset):
            raise TestbedError(f"{d}/cpuset.cpus: wrote {cpuset!r}, read back "
                               f"{(d / 'cpuset.cpus').read_text().strip()!r}")

    def usage(self, group: str) -> CpuUsage:
        acct = self.root / "cpuacct" / group
        user = int((acct / "cpuacct.usage_user").read_text()) / 1e9
        system = int((acct / "cpuacct.usage_sys").read_text()) / 1e9
        total = int((acct / "cpuacct.usage").read_text()) / 1e9
        stat = _read_kv(self.root / "cpu" / group / "cpu.stat")
        return CpuUsage(user, system, total, stat.get("throttled_time", 0) / 1e9,
                        stat.get("nr_throttled", 0), stat.get("nr_periods", 0))

    def limits(self, group: str) -> dict[str, object]:
        d = self.root / "cpu" / group
        quota = int((d / "cpu.cfs_quota_us").read_text())
        period = int((d / "cpu.cfs_period_us").read_text())
        burst = d / "cpu.cfs_burst_us"
        return {"quota_us": quota, "period_us": period,
                "burst_us": int(burst.read_text()) if burst.exists() else 0,
                "cpu": None if quota < 0 else quota / period,
                "cpuset": (self._cpuset_dir(group) / "cpuset.cpus").read_text().strip()}


class CgroupsV2(Cgroups):
    version = 2

    def __init__(self, root: Path = CGROUP_ROOT):
        self.root = root
        if not (root / "cgroup.controllers").exists():
            raise KernelFeatureMissing(f"{root} is not a cgroup v2 mount")

    def bases(self) -> list[Path]:
        return [self.root]

    def dirs(self, group: str) -> list[Path]:
        return [self.root / group]

    @contextmanager
    def _root_locked(self) -> Iterator[None]:
        """Serialise enabling at the root (with the top group's mkdir) and its release."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _enable(self, parent: Path, controller: str) -> None:
        available = (parent / "cgroup.controllers").read_text().split()
        if controller not in available:
            raise KernelFeatureMissing(
                f"cgroup v2 controller {controller!r} is not available in {parent} "
                f"(available: {' '.join(available) or 'none'}); on a hybrid system it may be "
                "bound to a v1 hierarchy")
        enabled = (parent / "cgroup.subtree_control").read_text().split()
        if controller not in enabled:
            (parent / "cgroup.subtree_control").write_text(f"+{controller}")
            if controller not in (parent / "cgroup.subtree_control").read_text().split():
                raise TestbedError(f"{parent}: could not enable the {controller} controller")
            if parent == self.root and self.root == CGROUP_ROOT:
                with open(ROOT_RECORD, "a") as f:
                    f.write(controller + "\n")

    def _release_root_controllers(self) -> None:
        """Once no testbed group is left, disable at the root what the testbed enabled
        there. EBUSY: something else (a systemd unit's quota) now uses it, so it stays."""
        if self.root != CGROUP_ROOT or not ROOT_RECORD.exists():
            return
        if self.list_groups(TOP_PREFIX):
            return
        for controller in dict.fromkeys(ROOT_RECORD.read_text().split()):
            try:
                (self.root / "cgroup.subtree_control").write_text(f"-{controller}")
            except OSError as e:
                log.debug("leaving %s enabled at the root: %s", controller, e.strerror)
        ROOT_RECORD.unlink(missing_ok=True)

    def create(self, group: str, cpu: float | None, cpuset: str | None,
               shape: BudgetShape = BudgetShape()) -> None:
        wanted = (["cpu"] if cpu is not None else []) + (["cpuset"] if cpuset is not None else [])
        d = self.root
        with self._root_locked():
            for part in Path(group).parts:
                for c in wanted:
                    self._enable(d, c)
                d = d / part
                d.mkdir(exist_ok=True)
        if cpu is not None:
            self.set_cpu(group, cpu, shape)
        if cpuset is not None:
            self.set_cpuset(group, cpuset)

    def remove(self, group: str) -> None:
        with self._root_locked():
            super().remove(group)
            self._release_root_controllers()

    def set_cpu(self, group: str, cpu: float | None, shape: BudgetShape | None = None) -> None:
        d = self.root / group
        if not (d / "cpu.max").exists():
            if cpu is None:
                return
            with self._root_locked():
                for parent in reversed(Path(group).parents):
                    self._enable(self.root / parent, "cpu")
        shape = shape or self.shape_of(group)
        self._set_burst(d / "cpu.max.burst", cpu, shape, before=True)
        _write(d / "cpu.max", f"{'max' if cpu is None else shape.quota_us(cpu)} {shape.period_us}")
        self._set_burst(d / "cpu.max.burst", cpu, shape, before=False)

    def set_cpuset(self, group: str, cpuset: str) -> None:
        d = self.root / group
        if not (d / "cpuset.cpus").exists():
            with self._root_locked():
                for parent in reversed(Path(group).parents):
                    self._enable(self.root / parent, "cpuset")
        (d / "cpuset.cpus").write_text(cpuset)
        if cpulist.parse((d / "cpuset.cpus").read_text()) != cpulist.parse(cpuset):
            raise TestbedError(f"{d}/cpuset.cpus: wrote {cpuset!r}, read back "
                               f"{(d / 'cpuset.cpus').read_text().strip()!r}")

    def usage(self, group: str) -> CpuUsage:
        stat = _read_kv(self.root / group / "cpu.stat")
        return CpuUsage(stat.get("user_usec", 0) / 1e6, stat.get("system_usec", 0) / 1e6,
                        stat.get("usage_usec", 0) / 1e6, stat.get("throttled_usec", 0) / 1e6,
                        stat.get("nr_throttled", 0), stat.get("nr_periods", 0))

    def limits(self, group: str) -> dict[str, object]:
        d = self.root / group
        quota, period = "max", DEFAULT_PERIOD_US
        if (d / "cpu.max").exists():
            q, p = (d / "cpu.max").read_text().split()
            quota, period = q, int(p)
        cpuset = (d / "cpuset.cpus").read_text().strip() if (d / "cpuset.cpus").exists() else ""
        burst = d / "cpu.max.burst"
        return {"quota_us": -1 if quota == "max" else int(quota), "period_us": period,
                "burst_us": int(burst.read_text()) if burst.exists() else 0,
                "cpu": None if quota == "max" else int(quota) / period, "cpuset": cpuset}


_detected: Cgroups | None = None


def detect(root: Path = CGROUP_ROOT) -> Cgroups:
    """v2 when the root is a unified mount, v1 when cpu/cpuacct/cpuset hierarchies exist."""
    global _detected
    if _detected is not None and _detected.root == root:
        return _detected
    if (root / "cgroup.controllers").exists():
        _detected = CgroupsV2(root)
    elif (root / "cpu").is_dir():
        _detected = CgroupsV1(root)
    else:
        raise KernelFeatureMissing(f"no cgroup v1 cpu hierarchy nor cgroup v2 mount under {root}")
    log.debug("cgroup version %d at %s", _detected.version, root)
    return _detected


def usage(group: str) -> CpuUsage:
    return detect().usage(group)

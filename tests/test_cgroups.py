"""cgroups v1 (this machine) and v2.

v2 cannot run in full here: this kernel binds cpu/cpuset to v1 and leaves an empty
cgroup2 at /sys/fs/cgroup/unified. So v2 is tested in two honest halves: group life,
process placement and cpu.stat on that real (controller-less) cgroup2 mount, and the
cpu.max / cpuset.cpus writing logic on a directory laid out as a v2 tree.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testbed.describe.budget import BudgetShape
from testbed.system.cgroups import CgroupsV1, CgroupsV2, detect
from testbed.errors import KernelFeatureMissing, TestbedError

pytestmark = pytest.mark.needs_root
UNIFIED = Path("/sys/fs/cgroup/unified")


V1 = ["cpu/cgroup.procs", "cpuacct/cgroup.procs", "cpuset/cgroup.procs", "memory/cgroup.procs"]


@pytest.mark.parametrize("files, version", [
    # a unified mount at the root (Debian 12, systemd's default)
    (["cgroup.controllers", "cgroup.procs", "cgroup.subtree_control", "system.slice/cgroup.procs"], 2),
    # v1: one hierarchy per controller
    (V1, 1),
    # hybrid, as on this machine: v1 controllers beside an empty cgroup2 at unified/
    (V1 + ["unified/cgroup.controllers", "unified/cgroup.procs"], 1),
])
def test_detects_the_version_of_a_tree_laid_out_by_hand(tmp_path, files, version):
    for f in files:
        (tmp_path / f).parent.mkdir(exist_ok=True)
        (tmp_path / f).write_text("")
    assert detect(tmp_path).version == version


@pytest.mark.parametrize("files, message", [
    (["memory/cgroup.procs"], "no cgroup v1 cpu hierarchy nor cgroup v2 mount"),
    (["cpu/cgroup.procs", "cpuacct/cgroup.procs"], "hierarchy .*/cpuset is not mounted"),
])
def test_a_tree_without_what_the_testbed_needs_is_refused_by_name(tmp_path, files, message):
    for f in files:
        (tmp_path / f).parent.mkdir(exist_ok=True)
        (tmp_path / f).write_text("")
    with pytest.raises(KernelFeatureMissing, match=message):
        detect(tmp_path)


def test_detects_this_machines_version_as_its_mount_table_says():
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    fstype = {m[1]: m[2] for m in mounts}.get("/sys/fs/cgroup")
    assert detect().version == (2 if fstype == "cgroup2" else 1)


@pytest.mark.skipif(not Path("/sys/fs/cgroup/cpu").is_dir(), reason="no cgroup v1 cpu hierarchy")
def test_v1_budget_written_read_back_changed_and_removed(tb_name):
    g = CgroupsV1()
    group = f"tcps-{tb_name}/node"
    g.create(group, 0.25, "1")
    try:
        assert g.limits(group) == {"quota_us": 25000, "period_us": 100000, "burst_us": 0, "cpu": 0.25,
                                   "cpuset": "1"}
        g.set_cpu(group, 0.6)
        g.set_cpuset(group, "0-1")
        assert g.limits(group)["cpu"] == 0.6 and g.limits(group)["cpuset"] == "0-1"
        g.set_cpu(group, None)
        assert g.limits(group)["quota_us"] == -1
        with pytest.raises(TestbedError, match="cpuset"):
            g.set_cpuset(group, "7")
    finally:
        g.remove(f"tcps-{tb_name}")
    assert not any(d.exists() for d in g.dirs(f"tcps-{tb_name}"))


@pytest.mark.skipif(not (UNIFIED / "cgroup.procs").exists(), reason="no cgroup2 mount at /sys/fs/cgroup/unified")
def test_v2_groups_processes_and_usage_on_the_real_cgroup2_mount(tb_name):
    g = CgroupsV2(UNIFIED)
    group = f"tcps-{tb_name}/node"
    g.create(group, None, None)
    try:
        # 0.3 s of its own CPU time, not of the clock: on a busy machine the clock runs ahead
        proc = subprocess.Popen([sys.executable, "-c", "import time\nwhile time.process_time() < 0.3: pass"])
        g.add_pid(group, proc.pid)
        assert proc.pid in g.pids(group)
        proc.wait()
        u = g.usage(group)
        assert 0.1 < u.total_s < 1.0 and u.user_s > 0
        if "cpu" not in (UNIFIED / "cgroup.controllers").read_text().split():
            with pytest.raises(KernelFeatureMissing, match="controller 'cpu' is not available"):
                g.set_cpu(group, 0.5)
    finally:
        g.remove(f"tcps-{tb_name}")
    assert not (UNIFIED / f"tcps-{tb_name}").exists()


def _fake_v2(root: Path, group: str) -> None:
    """Lay out a v2 tree whose controllers are already enabled (files echo what is written)."""
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("cpuset cpu\n")
    d = root
    for part in Path(group).parts:
        d = d / part
        d.mkdir()
        (d / "cgroup.controllers").write_text("cpuset cpu\n")
        (d / "cgroup.subtree_control").write_text("cpuset cpu\n")
        (d / "cpu.max").write_text("max 100000\n")
        (d / "cpuset.cpus").write_text("\n")
        (d / "cgroup.procs").write_text("")
        (d / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n"
                                    "nr_periods 10\nnr_throttled 4\nthrottled_usec 250000\n")


def test_v2_writes_cpu_max_and_cpuset_and_reads_stat(tmp_path):
    _fake_v2(tmp_path, "tcps-x/host1")
    g = CgroupsV2(tmp_path)
    g.create("tcps-x/host1", 0.3, "1")
    assert (tmp_path / "tcps-x/host1/cpu.max").read_text() == "30000 100000"
    assert g.limits("tcps-x/host1") == {"quota_us": 30000, "period_us": 100000, "burst_us": 0, "cpu": 0.3,
                                        "cpuset": "1"}
    g.set_cpu("tcps-x/host1", None)
    assert (tmp_path / "tcps-x/host1/cpu.max").read_text() == "max 100000"
    u = g.usage("tcps-x/host1")
    assert (u.total_s, u.user_s, u.system_s, u.throttled_s, u.nr_throttled) == (1.5, 1.0, 0.5, 0.25, 4)
    assert detect(tmp_path).version == 2


@pytest.mark.skipif(not Path("/sys/fs/cgroup/cpu/cpu.cfs_burst_us").exists(), reason="no CFS burst in this kernel")
def test_v1_period_and_burst_are_written_kept_when_the_budget_moves_and_read_back(tb_name):
    g = CgroupsV1()
    group = f"tcps-{tb_name}/node"
    g.create(group, 0.3, None, BudgetShape(period_ms=10, burst_pct=50))
    try:
        assert {k: g.limits(group)[k] for k in ("quota_us", "period_us", "burst_us")} == \
            {"quota_us": 3000, "period_us": 10000, "burst_us": 1500}
        # a smaller budget (what the balancer does) keeps the period and the burst's share;
        # its quota is below the burst in force, which the kernel refuses unless the burst goes first
        g.set_cpu(group, 0.1)
        assert {k: g.limits(group)[k] for k in ("quota_us", "period_us", "burst_us")} == \
            {"quota_us": 1000, "period_us": 10000, "burst_us": 500}
        assert g.shape_of(group) == BudgetShape(period_ms=10, burst_pct=50)
        g.set_cpu(group, 0.2, BudgetShape())
        assert {k: g.limits(group)[k] for k in ("quota_us", "period_us", "burst_us")} == \
            {"quota_us": 20000, "period_us": 100000, "burst_us": 0}
    finally:
        g.remove(f"tcps-{tb_name}")


def test_v2_writes_period_and_burst_and_refuses_a_burst_the_kernel_lacks(tmp_path):
    _fake_v2(tmp_path, "tcps-x/host1")
    (tmp_path / "tcps-x/host1/cpu.max.burst").write_text("0\n")
    g = CgroupsV2(tmp_path)
    g.create("tcps-x/host1", 0.15, None, BudgetShape(period_ms=20, burst_pct=100))
    assert (tmp_path / "tcps-x/host1/cpu.max").read_text() == "3000 20000"
    assert (tmp_path / "tcps-x/host1/cpu.max.burst").read_text() == "3000"
    g.set_cpu("tcps-x/host1", 0.3)
    assert (tmp_path / "tcps-x/host1/cpu.max").read_text() == "6000 20000"
    assert g.limits("tcps-x/host1")["burst_us"] == 6000
    (tmp_path / "tcps-x/host1/cpu.max.burst").unlink()
    with pytest.raises(KernelFeatureMissing, match="cpu_burst_pct: this kernel has no cpu.max.burst"):
        g.set_cpu("tcps-x/host1", 0.3, BudgetShape(burst_pct=10))
    g.set_cpu("tcps-x/host1", 0.3, BudgetShape())  # no burst asked: nothing to refuse

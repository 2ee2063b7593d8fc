"""Soak: `up` killed with SIGKILL at random moments, `up`/`down`, and `clean`, many times;
at the end nothing of the testbed's is left (namespaces, links, cgroups, state, shm files,
processes)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, leftovers, run_cli

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

CYCLES = 30


def _tcps_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ": tcps" in line]


def test_thirty_killed_builds_leave_nothing(tb_name):
    rng = random.Random(14)
    links_before = set(_tcps_links())
    for i in range(CYCLES):
        kind = i % 3
        if kind == 0:  # a build killed with SIGKILL somewhere between 0 and 1.5 s in
            proc = subprocess.Popen([sys.executable, "-m", "testbed", "up", "multihost", "--name", tb_name,
                                     "-p", "hosts=3", "-p", "host_cpu=none", "--mode", "split"], cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.0, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            run_cli("down", tb_name, check=False)  # by the journal it left
        elif kind == 1:  # a whole up and down; every fourth time with services over shm
            services = [] if i % 4 == 1 else ["--no-services"]
            run_cli("up", "cluster", "--name", tb_name, "--mode", "eager-accept", "--channel", "shm",
                    "-p", "host_cpu=0.3", "-p", "tcpserver_cpu=0.3", *services, timeout=120)
            run_cli("down", tb_name)
        else:  # killed, then the global clean
            proc = subprocess.Popen([sys.executable, "-m", "testbed", "up", "cluster", "--name", tb_name,
                                     "--no-services"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.0, 0.8))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            run_cli("clean")
        assert leftovers(tb_name) == [], f"cycle {i}: {leftovers(tb_name)}"
    assert set(_tcps_links()) <= links_before, "veth or bridge left in the root namespace"
    assert not list(Path("/dev/shm").glob(f"tcps-{tb_name}-*")), "shm files left"
    cgroup_procs = [p for p in Path("/sys/fs/cgroup").rglob(f"tcps-{tb_name}*")]
    assert cgroup_procs == [], cgroup_procs

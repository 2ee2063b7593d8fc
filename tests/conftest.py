"""Shared fixtures. Tests that touch the kernel need root and use unique testbed names."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (namespaces, cgroups): run the tests with sudo")
        for item in items:
            if "needs_root" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def tb_name() -> str:
    """A testbed name no other test (or developer) uses at the same time."""
    return "t" + secrets.token_hex(4)


def run_cli(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run `python -m testbed ...` as a user would, from the project root."""
    proc = subprocess.run([sys.executable, "-m", "testbed", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=kw.pop("timeout", 120), **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"testbed {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


# A one-shot TCP echo on port 8080 and a client that retries until it answers: the
# smallest real traffic that shows a path through the nodes (and whose address was seen).
ECHO_SERVER = [sys.executable, "-c", """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(16)
while True:
    c, a = s.accept(); data = c.recv(65536); c.sendall(b"echo:" + data + b" from " + a[0].encode()); c.close()
"""]
ECHO_CLIENT = [sys.executable, "-c", """
import socket, sys, time
for _ in range(100):
    try:
        s = socket.create_connection((sys.argv[1], 8080), timeout=2); break
    except OSError:
        time.sleep(0.05)
s.sendall(b"hello"); print(s.recv(65536).decode())
"""]


def interruptible() -> None:
    """preexec_fn for a child the test will SIGINT: a shell that runs the suite in the
    background (as CI may) starts it with SIGINT ignored, and Python then never turns
    SIGINT into KeyboardInterrupt. Restore the default so Ctrl-C behaves as for a user."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def leftovers(name: str) -> list[str]:
    """Every trace testbed ``name`` could leave: namespaces, cgroups, state, processes."""
    found = []
    netns = Path("/run/netns")
    if netns.is_dir():
        found += [f"netns {p.name}" for p in netns.iterdir() if p.name.startswith(f"tcps-{name}-")]
    for h in ("cpu", "cpuacct", "cpuset", "unified", ""):  # "": the v2 root itself
        d = Path("/sys/fs/cgroup") / h / f"tcps-{name}"
        if d.exists():
            found.append(f"cgroup {d}")
    if (Path("/run/tcps") / name).exists():
        found.append(f"state /run/tcps/{name}")
    return found


# runs an experiment given as JSON (argv 1) into a run directory (argv 2), as `testbed run`
# does, in a process of its own that a test can interrupt
RUNNER = """
import json, sys
from pathlib import Path
from testbed.describe.experiment import experiment_from_dict
from testbed.measure.runner import run_experiment
sys.exit(run_experiment(experiment_from_dict(json.loads(sys.argv[1])), Path(sys.argv[2])))
"""

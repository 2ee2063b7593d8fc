"""Remove everything any testbed ever left on this machine, by exact name and prefix.

First each recorded testbed (its state and journal, so recorded pids are stopped only if
they are still the processes that were started), then whatever still carries the prefix:
processes inside ``tcps-*`` cgroups, ``tcps-*`` namespaces and cgroups, ``/dev/shm/tcps-*``
and ``/run/tcps``. Nothing is chosen by process name.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import PREFIX
from . import cgroups as cg
from .backends.netns import NetnsBackend
from .kernel import list_netns
from .lifecycle import _child_groups, teardown
from .nodes import kill_pids
from .state import run_root

SHM_DIR = Path("/dev/shm")


def clean_all() -> list[str]:
    removed: list[str] = []
    root = run_root()
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir():
                removed.extend(teardown(d.name) if _valid(d.name) else [])
    groups = cg.detect()
    for parent in groups.list_groups(f"{PREFIX}-"):
        for g in _child_groups(groups, parent):
            pids = groups.pids(g)
            if pids:
                kill_pids(pids)
                removed.extend(f"process {p}" for p in pids)
    removed.extend(f"netns {n}" for n in NetnsBackend.teardown(list_netns(f"{PREFIX}-")))
    for parent in groups.list_groups(f"{PREFIX}-"):
        groups.remove(parent)
        removed.append(f"cgroup {parent}")
    if SHM_DIR.is_dir():
        for f in SHM_DIR.glob(f"{PREFIX}-*"):
            f.unlink(missing_ok=True)
            removed.append(f"file {f}")
    if root.is_dir():
        shutil.rmtree(root, ignore_errors=True)
    return removed


def _valid(name: str) -> bool:
    from .state import NAME
    return bool(NAME.match(name))

"""Remove what testbeds left on this machine: by their journals, never by a name pattern alone.

Each recorded testbed (``/run/tcps/<name>``: its state and journal) is torn down by exact
name (``lifecycle.teardown``: recorded pids are stopped only if they are still the
processes that were started; its shm files ``/dev/shm/tcps-<name>-*`` go too). Objects that carry the prefix but that no journal
names (another tool's ``tcps-foreign`` namespace, a testbed whose run directory is gone) are
listed and left alone; ``force=True`` removes those too. A failure on one object is reported
and the rest still cleaned. Nothing is chosen by process name.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .. import PREFIX
from . import cgroups as cg
from .backends.base import remove_namespaces
from .kernel import list_netns
from .lifecycle import _child_groups, shm_files, teardown
from .processes import kill_pids
from .state import NAME, run_root

@dataclass
class CleanResult:
    removed: list[str] = field(default_factory=list)
    left_alone: list[str] = field(default_factory=list)  # prefixed, but no journal names them
    failed: list[str] = field(default_factory=list)  # "object: reason"


def clean_all(force: bool = False) -> CleanResult:
    res = CleanResult()
    root = run_root()
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir() and NAME.match(d.name):
                # its journal's objects and its shm files (/dev/shm/tcps-<name>-*)
                _try(res, f"testbed {d.name}", lambda n=d.name: res.removed.extend(teardown(n)))
    groups = cg.detect()
    strays = ([("netns", n) for n in list_netns(f"{PREFIX}-")]
              + [("cgroup", g) for g in groups.list_groups(f"{PREFIX}-")]
              + [("file", str(f)) for f in shm_files(f"{PREFIX}-")])
    if not force:
        res.left_alone.extend(f"{kind} {n}" for kind, n in strays)
        return res
    for kind, n in strays:
        if kind == "netns":
            _try(res, f"netns {n}", lambda n=n: res.removed.extend(f"netns {x}" for x in remove_namespaces([n])))
        elif kind == "cgroup":
            _try(res, f"cgroup {n}", lambda n=n: _remove_group(res, groups, n))
        else:
            _try(res, f"file {n}", lambda n=n: _unlink(res, Path(n)))
    if root.is_dir():
        shutil.rmtree(root, ignore_errors=True)
    return res


def _try(res: CleanResult, what: str, action) -> None:  # type: ignore[no-untyped-def]
    try:
        action()
    except Exception as e:  # report it, clean the rest
        res.failed.append(f"{what}: {e}")


def _unlink(res: CleanResult, f: Path) -> None:
    f.unlink(missing_ok=True)
    res.removed.append(f"file {f}")


def _remove_group(res: CleanResult, groups: cg.Cgroups, parent: str) -> None:
    for g in _child_groups(groups, parent):
        pids = groups.pids(g)
        if pids:
            kill_pids(pids)
            res.removed.extend(f"process {p}" for p in pids)
    groups.remove(parent)
    res.removed.append(f"cgroup {parent}")

"""A run as the report reads it: its tables, manifest and per-point files, and the frames
prepared over one run or several (``compare``).

    from analysis.run import RunInfo, prepare_runs
    runs = [RunInfo.load("results/quick-20261124-120000")]
    prep = prepare_runs(runs)        # raises EmptyRun when no step was measured

Facts about the run that several report sections state (which kernel accounting charged
softirq time where, the roles of the nodes) are read here, once.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .frames import Prepared, prepare, roles_from

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunInfo:
    """One run directory's tables, manifest and per-point files."""
    dir: Path
    name: str
    tables: dict[str, Any]
    manifest: dict[str, Any]
    points: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunInfo":
        from . import load
        run_dir = Path(run_dir)
        tables = load(run_dir)
        points = []
        for pj in sorted((run_dir / "points").glob("*/point.json")):
            try:
                points.append(json.loads(pj.read_text()))
            except ValueError:
                log.warning("%s: not valid JSON, left out", pj)
        if not points:  # a published report keeps its points in one file
            from .published import points_of
            points = points_of(run_dir)
        return cls(dir=run_dir, name=run_dir.name, tables=tables, manifest=tables["manifest"], points=points)

    @property
    def ncpus(self) -> int | None:
        return (self.manifest.get("machine") or {}).get("cpus")

    @property
    def equivalence_pct(self) -> float:
        return equivalence_of(self.dir, self.manifest)


def equivalence_of(run_dir: Path, manifest: dict[str, Any]) -> float:
    """The experiment's equivalence bound in percent (``equivalence_pct``: a gain whose
    interval lies inside ± it is "no difference"), read from the raw ``experiment.yaml``
    mapping of the run (then the manifest), else ``intervals.EQUIVALENCE_PCT``."""
    from .intervals import EQUIVALENCE_PCT
    value: Any = None
    path = Path(run_dir) / "experiment.yaml"
    if path.exists():
        import yaml
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            raw = None
        if isinstance(raw, dict):
            value = raw.get("equivalence_pct")
    if value is None:
        value = manifest.get("equivalence_pct")
    try:
        v = float(value)
    except (TypeError, ValueError):
        return EQUIVALENCE_PCT
    return v if v >= 0 else EQUIVALENCE_PCT


class EmptyRun(ValueError):
    """A run without a single measured step: there is nothing to plot."""


def roles_of(runs: list[RunInfo]) -> dict[str, str]:
    """node -> role over report runs (their samples, then each point's nodes)."""
    roles: dict[str, str] = {}
    for r in runs:
        roles.update(roles_from(r.tables))
        for p in r.points:
            roles.update({n: v.get("role", "") for n, v in (p.get("nodes") or {}).items()})
    return roles


def prepare_runs(runs: list[RunInfo]) -> Prepared:
    """One Prepared over several runs (the run's name is part of each curve when >1)."""
    frames = []
    for r in runs:
        steps = r.tables.get("steps")
        if steps is None or steps.empty:
            continue
        frames.append(steps.assign(run=r.name if len(runs) > 1 else ""))
    if not frames:
        raise EmptyRun("no steps measured: " + ", ".join(str(r.dir) for r in runs))
    steps = pd.concat(frames, ignore_index=True)
    eq = max(r.equivalence_pct for r in runs)  # several runs: the widest bound any states
    prep = prepare(steps, roles=roles_of(runs), run=None, equivalence_pct=eq)
    if prep.missing:
        log.info("load generator columns not found: %s", ", ".join(prep.missing))
    return prep


def irq_time_accounting_of(manifest: dict[str, Any]) -> bool | None:
    """Whether the run's kernel accounted IRQ time apart from the cgroups
    (CONFIG_IRQ_TIME_ACCOUNTING): as the runner recorded it, else read from this kernel
    when the report is built on the kernel the run used, else None (not known)."""
    recorded = manifest.get("irq_time_accounting")
    if isinstance(recorded, bool):
        return recorded
    if manifest.get("kernel") != platform.release():
        return None
    from testbed.system.kernel import irq_time_accounting
    return irq_time_accounting()


def report_dir_of(run_dir: str | Path) -> Path:
    """RUN_DIR/report, or the directory itself for a published report (rebuilt in place)."""
    from .published import is_published
    run_dir = Path(run_dir)
    return run_dir if is_published(run_dir) else run_dir / "report"

"""Results -> pandas frames -> figures and report.

    import analysis
    t = analysis.load("results/quick-20261124-120000")
    t["steps"]    # one row per offered-load step, with CPU per node and fidelity flags
    t["samples"]  # 1 s samples: node CPU, per-CPU times, TCP and link counters, server counters
    t["points"]   # one row per point of the matrix, with its status
    t["balance"]  # the balancing controller's decisions over time (when balancing ran)
    t["manifest"] # dict: experiment, versions, commit, kernel, cgroups, machine
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load(run_dir: str | Path) -> dict[str, Any]:
    import pandas as pd

    from .tables import build_tables
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no manifest.json)")
    from .published import is_published, load_published
    if is_published(run_dir):  # a shipped report: its tables, no raw points to rebuild from
        return _rules(load_published(run_dir))
    names = ("steps", "samples", "points", "balance")
    if all((run_dir / f"{n}.parquet").exists() for n in names):
        tables: dict[str, Any] = {n: pd.read_parquet(run_dir / f"{n}.parquet") for n in names}
    else:
        tables = dict(build_tables(run_dir))
    tables["manifest"] = json.loads((run_dir / "manifest.json").read_text())
    return _rules(tables)


def _rules(tables: dict[str, Any]) -> dict[str, Any]:
    """The steps table under today's rules (``tables.apply_rules``): a table written under
    an older one (a shipped report) is read the way a new run's is."""
    from .tables import apply_rules
    steps = tables.get("steps")
    if steps is not None and not steps.empty:
        fidelity = (tables.get("manifest") or {}).get("fidelity") or {}
        tables["steps"] = apply_rules(steps, float(fidelity.get("max_foreign_cpu", 0.25)))
    return tables

"""Shipping a report with its data (``summary.py`` writes the numbers it may be quoted by).

    python -m analysis publish results/paper-cluster-20261126-101500 docs/reports/paper-cluster
    python -m analysis report docs/reports/paper-cluster      # rebuilds HTML, figures, summary

A published report directory holds, beside ``index.html`` and its PNG figures:

- ``manifest.json``: the run's manifest (commit, dirty tree, machine, experiment, order);
- ``steps.parquet`` and ``points.parquet``: the tidy tables the report is drawn from,
  ``balance.parquet`` when the balancer ran, ``points.json`` (each point's point.json);
- ``summary.json``: the headline numbers, machine-readable: per curve the peak and the
  capacity at the latency target (mean, 95% interval, repetitions) and the gains over
  Regular TCP paired by round, with their verdict.

The 1 s samples stay out (megabytes per run): every per-step figure is drawn from the
steps table, which already holds each node's CPU over each step's window.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from .published import DATA_FILES


def publish(run_dir: str | Path, dest: str | Path) -> Path:
    """Copy a run's tables into ``dest`` and build its report there; returns index.html."""
    from .report import build_report
    from .run import RunInfo

    run_dir, dest = Path(run_dir), Path(dest)
    run = RunInfo.load(run_dir)  # builds the tidy tables when the run has none yet
    tables, manifest = run.tables, run.manifest
    if manifest.get("dirty"):
        print(f"warning: {run_dir} was measured on a dirty tree (commit {manifest.get('commit', '?')[:10]})")
    dest.mkdir(parents=True, exist_ok=True)
    for old in [*dest.glob("*.png"), *(dest / f for f in DATA_FILES)]:
        old.unlink(missing_ok=True)  # a re-publish leaves nothing of the previous run
    shutil.copy2(run_dir / "manifest.json", dest / "manifest.json")
    for name in ("steps", "points", "balance"):
        df = tables.get(name)
        if isinstance(df, pd.DataFrame) and not df.empty:
            df.to_parquet(dest / f"{name}.parquet", index=False, compression="zstd")
    (dest / "points.json").write_text(json.dumps(run.points, indent=1, default=str) + "\n")
    path, _, _ = build_report([dest], dest)
    return path

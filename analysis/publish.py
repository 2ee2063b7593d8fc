"""Shipped reports that carry their own data, and the summary every quoted number comes from.

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
import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from .frames import Prepared

SUMMARY_VERSION = 1
DATA_FILES = ("manifest.json", "steps.parquet", "points.parquet", "balance.parquet", "points.json")
_CURVE_FIELDS = {
    "peak": ("peak_mean", "peak_ci_lo", "peak_ci_hi"),
    "capacity": ("capacity_mean", "capacity_ci_lo", "capacity_ci_hi"),
    "peak_gain_pct": ("gain_pct", "gain_ci_lo", "gain_ci_hi"),
    "capacity_gain_pct": ("capacity_gain_pct", "capacity_gain_ci_lo", "capacity_gain_ci_hi"),
}


def is_published(report_dir: Path) -> bool:
    """A published report: the tables beside the page, no raw points."""
    return (report_dir / "steps.parquet").exists() and not (report_dir / "points").is_dir()


def _num(v: Any, digits: int) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else round(f, digits)


def summary(prep: Prepared | None, manifest: dict[str, Any]) -> dict[str, Any]:
    """The machine-readable summary of a report (what README and docs may quote)."""
    curves = []
    if prep is not None:
        for _, s in prep.saturation.iterrows():
            entry: dict[str, Any] = {"curve": s["curve"], "workload": s["workload"], "config": s["config_label"],
                                     "mode": s["mode_label"], "repetitions": int(s["repetitions"]),
                                     "saturated": bool(s["saturated"]),
                                     "baseline": s["baseline"] if s["mode_label"] != "regular" else None}
            for name, (mean, lo, hi) in _CURVE_FIELDS.items():
                digits = 1 if name.endswith("pct") else 0
                entry[name] = {"mean": _num(s.get(mean), digits), "ci95": [_num(s.get(lo), digits),
                                                                            _num(s.get(hi), digits)]}
            entry["peak_gain_verdict"] = s.get("gain_verdict")
            entry["capacity_gain_verdict"] = s.get("capacity_gain_verdict")
            curves.append(entry)
    return {"version": SUMMARY_VERSION, "experiment": manifest.get("experiment"),
            "commit": manifest.get("commit"), "dirty": manifest.get("dirty"),
            "quick": manifest.get("quick", False), "repetitions": manifest.get("repetitions"),
            "order_seed": manifest.get("order_seed"), "latency_target_ms": manifest.get("latency_target_ms"),
            "budgets": manifest.get("budgets"), "curves": curves}


def write_summary(out: Path, prep: Prepared | None, manifest: dict[str, Any]) -> Path:
    path = out / "summary.json"
    path.write_text(json.dumps(summary(prep, manifest), indent=1, sort_keys=False) + "\n")
    return path


def publish(run_dir: str | Path, dest: str | Path) -> Path:
    """Copy a run's tables into ``dest`` and build its report there; returns index.html."""
    from . import load
    from .report import build_report

    run_dir, dest = Path(run_dir), Path(dest)
    tables = load(run_dir)  # builds the tidy tables when the run has none yet
    manifest = tables["manifest"]
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
    points = []
    for pj in sorted((run_dir / "points").glob("*/point.json")):
        try:
            points.append(json.loads(pj.read_text()))
        except ValueError:
            continue
    (dest / "points.json").write_text(json.dumps(points, indent=1, default=str) + "\n")
    path, _, _ = build_report([dest], dest)
    return path


def load_published(report_dir: Path) -> dict[str, Any]:
    """The tables of a published report (missing ones empty)."""
    tables: dict[str, Any] = {}
    for name in ("steps", "samples", "points", "balance"):
        p = report_dir / f"{name}.parquet"
        tables[name] = pd.read_parquet(p) if p.exists() else pd.DataFrame()
    tables["manifest"] = json.loads((report_dir / "manifest.json").read_text())
    return tables


def points_of(report_dir: Path) -> list[dict[str, Any]]:
    p = report_dir / "points.json"
    return json.loads(p.read_text()) if p.exists() else []

"""Several runs side by side: one report over all of them, curves labelled by run, and a
table of each mode's peak reply rate per run.

    python -m analysis compare results/quick-A results/quick-B [--out DIR]

Gains stay within a run (each run's modes against that run's Regular TCP); the side-by-side
table is there to compare runs, e.g. the same experiment on two kernels or two budgets.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd

from .frames import Prepared
from .render import render
from .report import build_report
from .sections.registry import Report, Section


def peaks_by_run(prep: Prepared | None) -> pd.DataFrame:
    """Rows: workload, configuration and mode; columns: each run's peak (and gain)."""
    if prep is None or prep.saturation.empty:
        return pd.DataFrame()
    sat = prep.saturation.copy()
    sat["cell"] = [f"{p:,.0f}" + ("" if m == "regular" or pd.isna(g) else f" ({g:+.1f}%)")
                   + ("" if f else " ⚑") for p, g, m, f in
                   zip(sat["peak_mean"], sat["gain_pct"], sat["mode_label"], sat["all_faithful"])]
    wide = sat.pivot_table(index=["workload", "config_label", "mode_label"], columns="run", values="cell",
                           aggfunc="first").reset_index()
    wide.columns.name = None
    return wide.rename(columns={"config_label": "configuration", "mode_label": "mode"})


def _side_by_side(report: Report) -> Any:
    budgets = ", ".join(f"{r.name}: {r.manifest.get('budgets')}" for r in report.runs)
    return render("sections/side_by_side.html", peaks=peaks_by_run(report.prep), budgets=budgets)


SIDE_BY_SIDE = Section("side-by-side", 100, html=_side_by_side, needs_steps=False)


def default_out(run_dirs: list[str | Path]) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(run_dirs[0]).resolve().parent / f"compare-{stamp}"


def compare(run_dirs: list[str | Path], out_dir: str | Path | None = None) -> tuple[Path, Any, Any]:
    """Write the comparison report; returns (index.html, Prepared, runs)."""
    if len(run_dirs) < 1:
        raise ValueError("compare needs at least one run directory")
    out = Path(out_dir) if out_dir else default_out(run_dirs)
    return build_report(run_dirs, out, extra=[SIDE_BY_SIDE])

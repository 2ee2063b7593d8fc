"""Every step of the run, the flagged ones first: what a curve is made of, and why a step
does not count toward a peak (generator-bound, oversubscribed, interfered, slowed)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..frames import Prepared
from ..render import num as _num
from ..render import render
from .registry import Report, Section, register


def steps_table(prep: Prepared, only_flagged: bool = False) -> pd.DataFrame:
    st = prep.steps
    if only_flagged:
        st = st[~st["faithful"]]
    cols = {"curve": "curve", "repetition": "rep", "offered": "offered", "send_rate": "sent/s",
            "reply_rate": "replies/s", "error_rate": "errors/s", "lat_p50": "p50 ms", "lat_p99": "p99 ms",
            "generator_cpu": "gen CPU", "machine_idle": "machine idle", "foreign_cpu": "foreign CPU",
            "slowdown": "probe slowdown", "starved_nodes": "starved nodes",
            "bound_reasons": "generator-bound because", "flags": "flags"}
    cols.update({f"cpu_{n}": f"cpu {n}" for n in prep.nodes})
    for n in prep.server_nodes:  # a budget is a stopwatch: how long and how often it stopped
        cols[f"throttled_{n}"] = f"throttled s/s {n}"
        if f"nr_throttled_{n}" in st and st[f"nr_throttled_{n}"].notna().any():
            cols[f"nr_throttled_{n}"] = f"throttles {n}"
    have = [c for c in cols if c in st]
    out = st[have].rename(columns=cols).copy()
    for c in out.columns:
        if out[c].dtype.kind == "f":
            out[c] = out[c].map(lambda v: _num(v, 3 if abs(v) < 10 else 0) if pd.notna(v) else "-")
    return out


def html(report: Report) -> Any:
    prep = report.prep
    return render("sections/steps.html", flagged=steps_table(prep, only_flagged=True), steps=steps_table(prep),
                  missing=prep.missing)


register(Section("steps", 90, html=html))

"""A budget is a stopwatch, not a slower processor: under CFS bandwidth control a node
with a 0.15-CPU budget runs at full speed for 15 ms of each 100 ms period and then stops.
This section sets the latency tail (p99) of the steps that kept up with their load against
the time their busiest server-side node spent throttled (``throttled_<node>``, seconds per
second; ``nr_throttled_<node>``: periods throttled in the step, when the samples carried
the count), so a reader sees how much of a p99 is throttle gaps rather than work."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..frames import KNEE_FRACTION, Prepared
from ..render import render
from .registry import Report, Section, register

#: bins of the busiest server-side node's throttled time (seconds per second)
BINS = (0.0, 0.05, 0.3, 0.6, 1.0, np.inf)


def _throttled(prep: Prepared) -> tuple[pd.Series, pd.Series]:
    st = prep.steps
    cols = [f"throttled_{n}" for n in prep.server_nodes if f"throttled_{n}" in st]
    counts = [f"nr_throttled_{n}" for n in prep.server_nodes if f"nr_throttled_{n}" in st]
    t = st[cols].apply(pd.to_numeric, errors="coerce").max(axis=1) if cols else pd.Series(np.nan, index=st.index)
    n = (st[counts].apply(pd.to_numeric, errors="coerce").sum(axis=1, min_count=1) if counts
         else pd.Series(np.nan, index=st.index))
    return t, n


def tail_table(prep: Prepared) -> pd.DataFrame:
    """Per bin of throttled time: the steps that kept up (faithful, replies >= 95% of
    offered), their median and 90th-percentile p99, and the median throttle count."""
    st = prep.steps
    t, n = _throttled(prep)
    kept = st["faithful"] & (st["reply_rate"] >= KNEE_FRACTION * st["offered"]) & t.notna()
    if not kept.any():
        return pd.DataFrame()
    rows = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        m = kept & (t >= lo) & (t < hi)
        if not m.any():
            continue
        p99 = pd.to_numeric(st.loc[m, "lat_p99"], errors="coerce")
        cnt = n[m].dropna()
        rows.append({"throttled s/s (busiest server node)": f"{lo:g}-{hi:g}" if hi < np.inf else f">= {lo:g}",
                     "steps": int(m.sum()), "median p99 ms": f"{p99.median():.1f}",
                     "p90 of p99 ms": f"{p99.quantile(0.9):.1f}",
                     "median throttled periods": "-" if cnt.empty else f"{cnt.median():.0f}"})
    return pd.DataFrame(rows)


def tail_by_curve(prep: Prepared) -> pd.DataFrame:
    """Per curve, over its steps that kept up with their load: how many, their median p99,
    and the busiest server-side node's median throttled time and throttles per second."""
    st = prep.steps
    t, n = _throttled(prep)
    kept = st["faithful"] & (st["reply_rate"] >= KNEE_FRACTION * st["offered"])
    per_s = n / pd.to_numeric(st["duration_s"], errors="coerce") if "duration_s" in st else n * np.nan
    rows = []
    for (workload, config, mode), idx in st[kept].groupby(["workload", "config_label", "mode_label"],
                                                          sort=False).groups.items():
        p99 = pd.to_numeric(st.loc[idx, "lat_p99"], errors="coerce")
        cnt = per_s[idx].dropna()
        rows.append({"workload": workload, "configuration": config or "-", "mode": mode, "steps kept up": len(idx),
                     "median p99 ms": f"{p99.median():.1f}", "p90 of p99 ms": f"{p99.quantile(0.9):.1f}",
                     "median throttled s/s": f"{t[idx].median():.2f}",
                     "median throttles/s": "-" if cnt.empty else f"{cnt.median():.0f}"})
    return pd.DataFrame(rows)


def spearman(prep: Prepared) -> float:
    st = prep.steps
    t, _ = _throttled(prep)
    kept = st["faithful"] & (st["reply_rate"] >= KNEE_FRACTION * st["offered"]) & t.notna()
    if kept.sum() < 3:
        return float("nan")
    a = t[kept].rank()
    b = pd.to_numeric(st.loc[kept, "lat_p99"], errors="coerce").rank()
    return float(a.corr(b))


def html(report: Report) -> Any:
    prep = report.prep
    table = tail_table(prep)
    if table.empty:
        return ""
    return render("sections/throttling.html", tail=table, by_curve=tail_by_curve(prep), rho=spearman(prep),
                  counted=bool(_throttled(prep)[1].notna().any()))


register(Section("throttling", 65, html=html, title="Latency tail against throttling"))

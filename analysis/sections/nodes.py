"""Where each node's time goes, and what saturates first: per curve, the bottleneck and
each server-side node's busy share of its budget at saturation split into user, system and
softirq; the figures of ``analysis.figures_nodes``; every step's bottleneck.

The softirq rule is stated with the section because it decides what "system" means here:
without IRQ time accounting, softirq is charged to whichever process ran on the CPU
(``analysis.utilization`` carves it out of system time).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..figures_nodes import SPLIT, draw_all, node_role
from ..frames import Prepared
from ..render import render
from ..run import RunInfo, irq_time_accounting_of, roles_of
from ..utilization import SATURATED_UTIL, first_bottleneck, link_names, node_names
from .registry import Report, Section, register


def _pct(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "-"
    return "-" if np.isnan(f) else f"{f * 100:.0f}%"


def bottleneck_table(prep: Prepared, roles: dict[str, str]) -> pd.DataFrame:
    """Per curve: what saturated first and at which offered rate, and at the saturation
    step (mean over repetitions) each server-side node's busy/idle share of its budget,
    its user/system/softirq split (shares of the budget) and the links' utilization."""
    st = prep.steps
    nodes = [n for n in node_names(st) if node_role(n, roles) != "client"]
    links = link_names(st)
    peaks = prep.peaks
    rows = []
    for curve, cdf in st.groupby("curve", sort=False):
        kind, where, rate = first_bottleneck(cdf)
        row: dict[str, Any] = {"curve": curve, "saturated first": kind + (f" ({where})" if where and
                                                                          kind != "generator" else ""),
                               "at offered": "-" if rate != rate else f"{rate:,.0f}"}
        pk = peaks[peaks["curve"] == curve] if not peaks.empty else peaks
        for n in nodes:
            if pk.empty or f"busy_{n}" not in pk:
                continue
            cap = pd.to_numeric(pk[f"capacity_{n}"], errors="coerce")
            split = "/".join(_pct((pd.to_numeric(pk.get(f"split_{k}_{n}"), errors="coerce") / cap).mean())
                             for k, _ in SPLIT)
            row[f"{n} busy (idle)"] = (f"{_pct(pd.to_numeric(pk[f'busy_{n}'], errors='coerce').mean())} "
                                       f"({_pct(pd.to_numeric(pk[f'idle_{n}'], errors='coerce').mean())})")
            row[f"{n} usr/sys/sirq"] = split
        for l in links:
            if not pk.empty and f"linkutil_{l}" in pk:
                row[f"link {l}"] = _pct(pd.to_numeric(pk[f"linkutil_{l}"], errors="coerce").mean())
        if not pk.empty and "bottleneck" in pk:
            row["at saturation step"] = ", ".join(sorted(set(pk["bottleneck"].astype(str))))
        rows.append(row)
    return pd.DataFrame(rows)


def steps_bottleneck_table(prep: Prepared, roles: dict[str, str]) -> pd.DataFrame:
    """Every step: offered, replies, each server-side node's busy share, links, bottleneck."""
    st = prep.steps
    nodes = [n for n in node_names(st) if node_role(n, roles) != "client"]
    cols = {"curve": "curve", "repetition": "rep", "offered": "offered", "reply_rate": "replies/s"}
    cols.update({f"busy_{n}": f"{n} busy" for n in nodes})
    cols.update({f"linkutil_{l}": f"link {l}" for l in link_names(st)})
    cols.update({"bottleneck": "bottleneck", "bottleneck_at": "at", "flags": "flags"})
    out = st[[c for c in cols if c in st]].rename(columns=cols).copy()
    for c in out.columns:
        if c.endswith(" busy") or c.startswith("link "):
            out[c] = out[c].map(_pct)
        elif out[c].dtype.kind == "f":
            out[c] = out[c].map(lambda v: "-" if pd.isna(v) else f"{v:,.0f}")
    return out


def _irq_accounting(runs: list[RunInfo]) -> str:
    """'yes' or 'no' when every run's kernel is known to (not) account IRQ time, else 'unknown'."""
    irq = {irq_time_accounting_of(r.manifest) for r in runs}
    return "yes" if irq == {True} else "no" if irq == {False} else "unknown"


def html(report: Report) -> Any:
    prep, runs = report.prep, report.runs
    if "bottleneck" not in prep.steps:
        return render("sections/nodes.html", predates=True)
    roles = roles_of(runs)
    figs = draw_all(prep, report.out, runs)
    return render("sections/nodes.html", predates=False, saturated_util=SATURATED_UTIL,
                  irq=_irq_accounting(runs),
                  bottlenecks=bottleneck_table(prep, roles), steps=steps_bottleneck_table(prep, roles),
                  node_util=[figs[k] for k in sorted(k for k in figs if k.startswith("node_util"))],
                  smp_cpu=figs.get("smp_cpu"), inic_util=figs.get("inic_util"))


register(Section("nodes", 30, html=html, title="Where each node's time goes"))

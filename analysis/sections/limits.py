"""What the numbers depend on, stated next to them: how the CPU budgets were compared,
the fidelity threshold and every flagged step, where softirq time was charged, the NIC
offloads, and each node's budget per mode."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..frames import Prepared
from ..render import render
from ..run import RunInfo
from .cpu import softirq_text
from .provenance import offloads_table
from .registry import Report, Section, register


def limits(runs: list[RunInfo], prep: Prepared) -> dict[str, Any]:
    """The facts the section states, for its template."""
    st = prep.steps

    def where(df: pd.DataFrame) -> str:
        return ", ".join(f"{c} @ {o:g} req/s (r{r})" for c, o, r in zip(df["curve"], df["offered"], df["repetition"]))

    gb, ov = st[st["generator_bound"]], st[st["oversubscribed"]]
    reasons = sorted({x for x in st.loc[st["generator_bound"], "bound_reasons"].dropna().astype(str)
                      for x in x.split(";") if x}) if "bound_reasons" in st else []
    starved = sorted({n for x in st.loc[st["oversubscribed"], "starved_nodes"].dropna().astype(str)
                      for n in x.split(",") if n}) if "starved_nodes" in st else []
    offl = offloads_table(runs)
    nic = ""
    if not offl.empty:
        flags = [c for c in offl.columns if c not in ("run", "interface")]
        vals = {f: sorted(set("/".join(offl[f].dropna().astype(str)).split("/"))) for f in flags}
        nic = "; ".join(f"{f}: {'/'.join(v)}" for f, v in vals.items())
    return {
        "runs": [{"name": r.name if len(runs) > 1 else "", "budgets": str(r.manifest.get("budgets", "extra")),
                  "min_idle": f"{float((r.manifest.get('fidelity') or {}).get('min_idle', 0.05)):.0%}"}
                 for r in runs],
        "steps": len(st), "generator_bound": len(gb), "generator_bound_at": where(gb),
        "reasons": "; ".join(reasons), "oversubscribed": len(ov), "oversubscribed_at": where(ov),
        "starved": ", ".join(starved), "softirq": softirq_text(runs), "nic": nic, "budgets": budget_table(prep),
    }


def budget_table(prep: Prepared) -> pd.DataFrame:
    cols = [f"budget_{n}" for n in prep.nodes if f"budget_{n}" in prep.steps]
    if not cols:
        return pd.DataFrame()
    df = prep.steps.groupby("curve", sort=False)[cols].first().reset_index()
    df.columns = ["curve"] + [c[len("budget_"):] for c in cols]
    for c in df.columns[1:]:
        df[c] = df[c].map(lambda v: "-" if v is None or pd.isna(v) else f"{float(v):g}")
    return df


def html(report: Report) -> Any:
    return render("sections/limits.html", **limits(report.runs, report.prep))


register(Section("limits", 50, html=html))

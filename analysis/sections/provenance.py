"""Where the numbers come from: each point's status, the NIC offload flags inside the
nodes, and each run's manifest (commit, kernel, machine, versions, the experiment)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pandas as pd

from ..render import num as _num
from ..render import render
from ..run import RunInfo
from .registry import Report, Section, register


def points_table(runs: list[RunInfo]) -> pd.DataFrame:
    rows = []
    for r in runs:
        for p in r.points:
            rows.append({"run": r.name, "point": p.get("point"), "status": p.get("status"),
                         "loadgen exit": p.get("loadgen_exit", "-"),
                         "seconds": _num((p.get("finished") or np.nan) - (p.get("started") or np.nan)),
                         "error": (p.get("error") or "")[:300]})
    df = pd.DataFrame(rows)
    if len(runs) == 1 and not df.empty:
        df = df.drop(columns="run")
    return df


def offloads_table(runs: list[RunInfo]) -> pd.DataFrame:
    """NIC offload flags per interface; a flag that differed between points says so."""
    seen: dict[tuple[str, str, str], set[str]] = {}
    for r in runs:
        for p in r.points:
            for iface, flags in (p.get("offloads") or {}).items():
                for k, v in flags.items():
                    seen.setdefault((r.name, iface, k), set()).add(str(v))
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for (run, iface, k), vals in seen.items():
        rows.setdefault((run, iface), {"run": run, "interface": iface})[k] = "/".join(sorted(vals))
    df = pd.DataFrame(list(rows.values()))
    if len(runs) == 1 and not df.empty:
        df = df.drop(columns="run")
    return df


def manifest_rows(r: RunInfo) -> list[tuple[str, str]]:
    """The manifest's fields a reader checks, as (name, text) rows."""
    m = r.manifest
    when = lambda t: dt.datetime.fromtimestamp(t).isoformat(timespec="seconds") if t else "-"  # noqa: E731
    cfs = sorted({str(p.get("cfs_period_us")) for p in r.points if p.get("cfs_period_us")})
    burst = sorted({f'{p["cfs_burst_pct"]:g}' for p in r.points if p.get("cfs_burst_pct") is not None})
    key = {"run directory": str(r.dir), "experiment": m.get("experiment"), "source": m.get("source"),
           "quick": m.get("quick"), "commit": m.get("commit"),
           "uncommitted changes": m.get("dirty"), "kernel": m.get("kernel"),
           "cgroup version": m.get("cgroup_version"), "machine": m.get("machine"),
           "versions": m.get("versions"), "started": when(m.get("started")), "finished": when(m.get("finished")),
           "resumed": [when(t) for t in m.get("resumed", [])], "seed": m.get("seed"),
           "repetitions": m.get("repetitions"), "topology": m.get("topology"), "params": m.get("params"),
           "sweep": m.get("sweep"), "modes": m.get("modes"), "workloads": m.get("workloads"),
           "load": m.get("load"), "budgets": m.get("budgets"), "fidelity": m.get("fidelity"),
           "CFS period (µs)": ", ".join(cfs) or "-", "CFS burst (% of quota)": ", ".join(burst) or "-",
           "host sysctls": m.get("host_sysctls"),
           "clock": m.get("clock")}
    sysctls = next((p.get("sysctls") for p in r.points if p.get("sysctls")), None)
    if sysctls:
        key["namespace sysctls (first point)"] = sysctls
    return [(k, v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in key.items()]


def html(report: Report) -> Any:
    return render("sections/provenance.html", points=points_table(report.runs),
                  offloads=offloads_table(report.runs),
                  manifests=[(r.name, manifest_rows(r)) for r in report.runs])


register(Section("provenance", 110, html=html, needs_steps=False))

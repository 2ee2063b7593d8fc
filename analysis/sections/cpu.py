"""CPU at saturation: each node's user and system CPU against its budget, CPU per reply,
and the softirq per CPU, with where this kernel charged softirq time (which decides what
a node's CPU column can be trusted for)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .. import figures
from ..frames import Prepared, cpu_at_saturation
from ..render import num as _num
from ..render import render
from ..run import RunInfo, irq_time_accounting_of
from .registry import Report, Section, register


def cpu_table(prep: Prepared, ncpus: int | None) -> pd.DataFrame:
    """Per curve at saturation: each node's user/system CPU against its budget, server CPU
    per reply by node, all CPUs busy per reply, and the equal-total-CPU projection."""
    sat = cpu_at_saturation(prep)
    if sat.empty:
        return pd.DataFrame()
    rows = []
    nan = np.full(len(sat), np.nan)
    user, system = {}, {}
    for n in prep.nodes:
        u, sy = figures.user_system(sat, n)
        user[n], system[n] = u.to_numpy(), sy.to_numpy()
    for i, (_, s) in enumerate(sat.iterrows()):
        row: dict[str, Any] = {"curve": s["curve"], "replies/s": _num(s.get("reply_rate"))}
        for n in prep.nodes:
            b = s.get(f"budget_{n}")
            row[f"{n} user+sys"] = (f"{user.get(n, nan)[i]:.2f}+{system.get(n, nan)[i]:.2f}"
                                    + (f" / {b:g}" if b is not None and not np.isnan(b) else " / -"))
            if f"throttled_{n}" in s and s[f"throttled_{n}"] > 0:
                row[f"{n} user+sys"] += f" (thr {s[f'throttled_{n}']:.2f})"
        for n in prep.server_nodes:
            row[f"µs/reply {n}"] = _num(s.get(f"cpu_us_per_reply_{n}"))
        row["µs/reply servers"] = _num(s.get("cpu_us_per_reply_servers"))
        if ncpus and "machine_idle" in s and s.get("reply_rate"):
            row["µs/reply all CPUs"] = _num((1.0 - s["machine_idle"]) * ncpus / s["reply_rate"] * 1e6)
        row["server budget"] = _num(s.get("budget_servers"), 2)
        row["flags"] = s["flags"]
        rows.append(row)
    return pd.DataFrame(rows)


def softirq_table(prep: Prepared) -> pd.DataFrame:
    """Per-CPU softirq and idle fraction at each curve's saturation step."""
    sat = cpu_at_saturation(prep)
    if sat.empty or not prep.cpus:
        return pd.DataFrame()
    rows = []
    for _, s in sat.iterrows():
        row: dict[str, Any] = {"curve": s["curve"]}
        for c in prep.cpus:
            row[f"softirq {c}"] = f"{s.get(f'softirq_{c}', np.nan):.3f}"
            if f"idle_{c}" in s:
                row[f"idle {c}"] = f"{s[f'idle_{c}']:.3f}"
        row["machine idle"] = f"{s.get('machine_idle', np.nan):.3f}"
        row["flags"] = s["flags"]
        rows.append(row)
    return pd.DataFrame(rows)


def softirq_text(runs: list[RunInfo]) -> str:
    irq = {irq_time_accounting_of(r.manifest) for r in runs}
    if irq == {False}:
        head = ("This kernel has no IRQ time accounting (CONFIG_IRQ_TIME_ACCOUNTING is not set): softirq "
                "work (veth receive, forwarding, NAT) is charged to whichever process's cgroup was running "
                "on that CPU. In Regular TCP the host and the client pay for the router's forwarding and "
                "for receiving replies; the TCP-server node's cgroup can read near zero while forwarding "
                "everything. ")
    elif irq == {True}:
        head = ("This kernel accounts IRQ time separately (CONFIG_IRQ_TIME_ACCOUNTING=y): softirq time shows "
                "in /proc/stat's softirq column and is not charged to the cgroups. ")
    else:
        head = ("Whether this kernel accounts IRQ time separately is not known (the run did not record it "
                "and the report was built on another kernel or cannot read its configuration); without it, "
                "softirq work is charged to the cgroup of whichever process was running. ")
    return head + ("The per-CPU softirq columns from /proc/stat are shown beside the node CPU, and "
                   "'µs/reply all CPUs' counts every busy CPU cycle of the machine, which no accounting "
                   "can move between nodes, but it includes the load generator and anything else that "
                   "ran on the machine meanwhile (other users' work too).")


def html(report: Report) -> Any:
    ncpus = report.runs[0].ncpus if report.runs else None
    return render("sections/cpu.html", cpu=cpu_table(report.prep, ncpus), softirq=softirq_table(report.prep),
                  softirq_text=softirq_text(report.runs))


register(Section("cpu", 70, html=html))

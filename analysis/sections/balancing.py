"""The report's "Balancing host and TCP server" section, beyond the paper: per run that
balanced, the measured comparisons with their intervals, where the pass-through path's kernel work is
charged, the adaptive policy against the best fixed split and Regular TCP, and per
workload a figure and the policies side by side (``analysis.balance`` computes them,
``analysis.balance_figure`` draws). The section also adds the same results to the
terminal summary. Runs without balance points get neither.
"""

from __future__ import annotations

import logging
from typing import Any

from ..balance import (SHIFTING, accounting_note, comparison_sentences, comparisons, has_balance, points_table,
                       summary_for, summary_table)
from ..balance_figure import draw_workload
from ..frames import Prepared, of_run
from ..render import render
from ..run import RunInfo
from .registry import Report, Section, register

log = logging.getLogger(__name__)


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in s).strip("-").lower() or "x"


def _run_prep(prep: Prepared | None, run: RunInfo, runs: list[RunInfo]) -> Prepared | None:
    return of_run(prep, run.name) if prep is not None and len(runs) > 1 else prep


def _workload(c: Any, run: RunInfo, runs: list[RunInfo], prep: Prepared | None, report: Report) -> dict[str, Any]:
    key = f"balance_{_slug(run.name) + '_' if len(runs) > 1 else ''}{_slug(c.group)}_{_slug(c.mode)}"
    try:
        png = draw_workload(c, run, prep, report.out, key + ".png")  # type: ignore[arg-type]
    except Exception:  # a broken figure must not cost the section
        log.exception("balance figure %s failed", key)
        import matplotlib.pyplot as plt
        plt.close("all")
        png = None
    return {"group": c.group, "mode": c.mode, "key": key, "png": png, "shifting": c.workload == SHIFTING,
            "points": points_table(c), "points_id": f"{key.replace('_', '-')}-points"}


def html(report: Report) -> Any:
    runs = [r for r in report.runs if has_balance(r)]
    if not runs:
        return ""
    shown = []
    for run in runs:
        prep = _run_prep(report.prep, run, runs)
        comps = comparisons(prep, run.tables.get("balance"), run.manifest.get("workloads"))
        shown.append({
            "name": run.name if len(runs) > 1 else "", "measured": bool(comps),
            "comparisons": comparison_sentences(comps, [run]) if comps else [], "accounting": accounting_note([run]),
            "summary": summary_table(comps) if comps else None,
            "summary_id": "balance" if len(runs) == 1 else f"balance-{_slug(run.name)}",
            "workloads": [_workload(c, run, runs, prep, report) for c in comps]})
    return render("sections/balancing.html", runs=shown)


def text(runs: list[RunInfo], prep: Prepared | None) -> str:
    """The balancing results of each run that balanced, for the terminal summary."""
    lines = []
    for r in runs:
        t = summary_for(r, _run_prep(prep, r, runs))
        if t:
            lines += ["", (f"[{r.name}] " if len(runs) > 1 else "") + t]
    return "\n".join(lines)


register(Section("balancing", 20, html=html, title="Balancing host and TCP server", needs_steps=False, text=text))

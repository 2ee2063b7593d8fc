"""The run's main figures (drawn by ``analysis.figures`` before the sections are built):
reply rate, gain, CPU per node and per reply, latency, errors and, past saturation, the
goodput kept under overload."""

from __future__ import annotations

from typing import Any

from ..render import render
from .registry import Report, Section, register


def html(report: Report) -> Any:
    budgets = ", ".join(sorted({str(r.manifest.get("budgets")) for r in report.runs}))
    return render("sections/figures.html", figs=report.figs, budgets=budgets)


register(Section("figures", 60, html=html))

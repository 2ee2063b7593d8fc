"""The paper against this testbed: each claim the paper makes for the run's architecture,
the measured counterpart and a verdict (computed by ``analysis.claims``)."""

from __future__ import annotations

from typing import Any

from ..claims import claims_table
from ..render import render
from .registry import Report, Section, register


def html(report: Report) -> Any:
    return render("sections/claims.html", claims=claims_table(report.runs, report.prep))


register(Section("claims", 40, html=html, title="The paper against this testbed"))

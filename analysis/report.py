"""The run report: one self-contained HTML page with PNG figures beside it.

    from analysis.report import write_report
    write_report("results/quick-20261124-120000")   # -> .../report/index.html

The page states next to the numbers what they depend on: how the CPU budgets were
compared (``extra`` or ``same-total``), where softirq time was charged, the fidelity
threshold and every flagged step, the NIC offload flags, and the manifest. Its summary
says plainly whether offloading raised or lowered peak throughput against Regular TCP.
``compare.py`` builds the same page over several runs.

The page is laid out from the sections registered in ``analysis.sections.registry``
(one module per section under ``analysis/sections/``, templates under
``analysis/templates/``): this module loads the runs, draws the main figures, and puts
the sections in order; it knows no section by name.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Iterable

from markupsafe import Markup

from . import figures
from . import sections as _registered  # noqa: F401  (importing the package registers the sections
from .frames import Prepared
from .render import render
from .run import EmptyRun, RunInfo, prepare_runs, report_dir_of
from .sections.registry import Report, Section, ordered
from .sections.summary import summary_sentences, summary_table

__all__ = ["EmptyRun", "RunInfo", "build_report", "prepare_runs", "report_dir_of", "summary_of", "summary_text",
           "write_report"]

log = logging.getLogger(__name__)


def _section_html(section: Section, report: Report) -> Markup:
    if section.needs_steps and report.prep is None:
        return Markup("")
    if not section.title:  # a core section: its failure is the report's
        return Markup(section.html(report))
    try:
        return Markup(section.html(report))
    except Exception:  # an optional section must not cost the user the rest of the report
        log.exception("the %s section failed", section.name)
        return render("failed.html", title=section.title)


def render_html(report: Report, title: str, extra: Iterable[Section] = ()) -> str:
    descr = " ".join(r.manifest.get("description", "") for r in report.runs if r.manifest.get("description"))
    parts = [_section_html(s, report) for s in ordered(tuple(extra))]
    return str(render("page.html", title=title, description=descr, runs=report.runs,
                      generated=dt.datetime.now().isoformat(timespec="seconds"),
                      sections=[p for p in parts if p.strip()]))


def build_report(run_dirs: list[str | Path], out_dir: str | Path, title: str | None = None,
                 extra: Iterable[Section] = ()) -> tuple[Path, Prepared | None, list[RunInfo]]:
    """Load the runs, draw the figures into ``out_dir``, write ``out_dir/index.html``;
    ``extra``: sections of this report only (compare's runs side by side)."""
    runs = [RunInfo.load(d) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        prep: Prepared | None = prepare_runs(runs)
    except EmptyRun as e:
        log.warning("%s", e)
        prep = None
    figs = figures.draw_all(prep, out, runs[0].ncpus) if prep is not None else {}
    title = title or (f"Report: {runs[0].name}" if len(runs) == 1 else
                      "Comparison: " + ", ".join(r.name for r in runs))
    page = render_html(Report(runs=runs, prep=prep, out=out, figs=figs), title, extra)
    (out / "index.html").write_text(page, encoding="utf-8")
    if len(runs) == 1:
        from .summary import write_summary
        write_summary(out, prep, runs[0].manifest)
    log.info("report written to %s", out / "index.html")
    return out / "index.html", prep, runs


def write_report(run_dir: str | Path) -> Path:
    """RUN_DIR/report/index.html with its PNG figures beside it; a published report
    (``analysis.publish``) is rebuilt in place."""
    path, _, _ = build_report([run_dir], report_dir_of(run_dir))
    return path


def summary_of(run_dir: str | Path) -> str:
    """The terminal summary of a run (for the runner to print after ``write_report``)."""
    runs = [RunInfo.load(run_dir)]
    try:
        prep: Prepared | None = prepare_runs(runs)
    except EmptyRun:
        prep = None
    return summary_text(prep, runs)


def summary_text(prep: Prepared | None, runs: list[RunInfo]) -> str:
    """The terminal version of the summary: the gain table, the sentences, and what the
    registered sections add (the balancing results)."""
    if prep is None:
        return "no step was measured; see the points in the report"
    table = summary_table(prep)
    cols = [c for c in ("group", "mode", "peak replies/s", "capacity req/s", "reps", "peak gain", "capacity gain",
                        "server CPU µs/reply", "flagged steps", "flags") if c in table]
    t = table[cols]
    if (t["group"] == "-").all():
        t = t.drop(columns="group")
    lines = [t.to_string(index=False), ""]
    lines += [f"- {s}" for s in summary_sentences(prep, runs)]
    lines.append(f"- budgets: {', '.join(sorted({str(r.manifest.get('budgets')) for r in runs}))}")
    for section in ordered():
        added = section.text(runs, prep) if section.text else ""
        if added:
            lines.append(added)
    return "\n".join(lines)

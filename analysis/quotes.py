"""Numbers in README and docs, written from the shipped reports' summaries, never by hand.

A Markdown file quotes a shipped report through a generated block:

    <!-- quote:paper-cluster -->
    ... (written by `python -m analysis quotes --write`) ...
    <!-- /quote:paper-cluster -->

``<!-- quote:tail.<name> -->`` is the latency tail and throttling per curve of a shipped
report (from its data). ``<!-- quote:precision -->`` is the precision every shipped report reached (also those kept
under ``docs/reports/round-paired/``, made point after point before the configurations
took turns at each rate), one row per report.

``python -m analysis quotes`` lists blocks that differ from what the summaries give (exit
1), ``--write`` rewrites them. The test suite runs the check, and also refuses a signed
gain (``+12%``, ``-25.3%``) written outside a block that no shipped summary contains.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "docs" / "reports"
BLOCK = re.compile(r"(<!-- quote:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /quote:(?P=name) -->)", re.S)
SIGNED_PCT = re.compile(r"(?<![\w.])[+\-−]\d+(?:\.\d+)?%")


#: the engine's optimisation journal: A/B figures of `make bench` runs at the time, each
#: with the command that measures it again, not results of shipped experiments
JOURNALS = {"performance.md"}


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name not in JOURNALS)]


def load_summary(name: str) -> dict[str, Any]:
    path = REPORTS / name / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"no shipped summary {path.relative_to(ROOT)}")
    return json.loads(path.read_text())


def _iv(d: dict[str, Any], unit: str = "", signed: bool = False) -> str:
    mean, (lo, hi) = d.get("mean"), d.get("ci95") or (None, None)
    if mean is None:
        return "-"
    fmt = (lambda v: f"{v:+.1f}") if signed else (lambda v: f"{v:,.0f}")
    bound = d.get("bound")
    if bound == "lower":  # a value on the top offered step: at least this
        return f"≥ {fmt(mean)}{unit}" + ("" if lo is None else f" (one-sided 95%: ≥ {fmt(lo)})")
    if bound == "upper":
        return f"≤ {fmt(mean)}{unit}" + ("" if hi is None else f" (one-sided 95%: ≤ {fmt(hi)})")
    text = fmt(mean) + unit
    if lo is not None and hi is not None:
        text += f" [{fmt(lo)}, {fmt(hi)}]"
    if d.get("clipped"):
        text += " (clipped)"
    return text


def _share(d: dict[str, Any]) -> str:
    mean, (lo, hi) = d.get("mean"), d.get("ci95") or (None, None)
    if mean is None:
        return "-"
    return f"{mean:.0%}" + ("" if lo is None or hi is None else f" [{lo:.0%}, {hi:.0%}]")


PRECISION = "precision"
PRECISION_PTS = 5.0
EARLIER = "round-paired"  # reports kept from before step pairing, with their data


def render_precision() -> str:
    """Per shipped report: how it paired its configurations, its rounds and minutes, and how
    precise its headline peak gains came out (two-sided 95% half-widths)."""
    import statistics
    lines = ["| report | pairing | rounds | minutes | two-sided peak gains | within ±5 points | "
             "median half-width | one-sided (a peak on the top step) |", "|---|---|---|---|---|---|---|---|"]
    paths = sorted(REPORTS.glob("*/summary.json")) + sorted((REPORTS / EARLIER).glob("*/summary.json"))
    for path in paths:
        s = json.loads(path.read_text())
        gains = [c["peak_gain_pct"] for c in s.get("curves", []) if c.get("mode") != "regular"
                 and (c.get("peak_gain_pct") or {}).get("mean") is not None]
        widths = [g["half_width"] for g in gains if g.get("half_width") is not None]
        name = str(path.parent.relative_to(REPORTS))
        minutes = s.get("minutes")
        lines.append(f"| [{name}](reports/{name}/index.html) | {s.get('pairing', 'round')} | {s.get('repetitions')} | "
                     f"{'-' if minutes is None else f'{minutes:.0f}'} | {len(widths)} | "
                     f"{sum(w <= PRECISION_PTS for w in widths)} | "
                     f"{f'±{statistics.median(widths):.1f}' if widths else '-'} | {len(gains) - len(widths)} |")
    return "\n".join(lines) + "\n"


PAIRING_SHIFT = "pairing-shift"
PAIRING_BIAS = "pairing-bias"  # from bench.pairing's runs: docs/bench/pairing/pairing.json


def render_pairing_shift() -> str:
    """Per experiment shipped both ways: each curve's peak in the current report over its
    peak in the one kept under round-paired/ (same curve names), Regular TCP apart."""
    import statistics
    lines = ["| experiment | pairing now / before | commits now / before | Regular TCP peak, now/before | "
             "offloaded peaks, now/before: median [min-max] (curves) |", "|---|---|---|---|---|"]
    for before_path in sorted((REPORTS / EARLIER).glob("*/summary.json")):
        now_path = REPORTS / before_path.parent.name / "summary.json"
        if not now_path.exists():
            continue
        now, before = json.loads(now_path.read_text()), json.loads(before_path.read_text())
        peaks = {c["curve"]: (c["mode"], (c.get("peak") or {}).get("mean")) for c in before["curves"]}
        reg, off = [], []
        for c in now["curves"]:
            mode, old = peaks.get(c["curve"], (None, None))
            new = (c.get("peak") or {}).get("mean")
            if old and new:
                (reg if c["mode"] == "regular" else off).append(new / old)
        if not off:
            continue
        rng = f"{statistics.median(off):.2f} [{min(off):.2f}-{max(off):.2f}] ({len(off)})"
        reg_text = ", ".join(f"{r:.2f}" for r in reg) or "-"
        lines.append(f"| {before_path.parent.name} | {now.get('pairing', 'round')} / {before.get('pairing', 'round')} | "
                     f"{str(now.get('commit'))[:7]} / {str(before.get('commit'))[:7]} | {reg_text} | {rng} |")
    return "\n".join(lines) + "\n"


TAIL = "tail."  # tail.<report>: per curve, the latency tail and throttling of its steps that kept up


def render_tail(name: str) -> str:
    """From a shipped report's data: per curve, the steps that kept up, their p99 and how
    often and how long the busiest server-side node was throttled."""
    from .run import RunInfo, prepare_runs
    from .sections.throttling import tail_by_curve
    if not (REPORTS / name / "summary.json").exists():
        raise FileNotFoundError(f"no shipped summary docs/reports/{name}/summary.json")
    table = tail_by_curve(prepare_runs([RunInfo.load(REPORTS / name)]))
    lines = [f"From [docs/reports/{name}](reports/{name}/index.html), its steps that kept up with their load "
             "(faithful, replies >= 95% of offered):", "",
             "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def render(name: str) -> str:
    """The Markdown table of one shipped report's headline numbers."""
    if name.startswith(TAIL):
        return render_tail(name[len(TAIL):])
    if name == PRECISION:
        return render_precision()
    if name == PAIRING_SHIFT:
        return render_pairing_shift()
    if name == PAIRING_BIAS:
        from .pairing import load, table
        path = ROOT / "docs" / "bench" / "pairing" / "pairing.json"
        if not path.exists():
            raise FileNotFoundError(f"no {path.relative_to(ROOT)} (python -m bench.pairing writes it)")
        return table(load(path))
    s = load_summary(name)
    reps = s.get("repetitions")
    lines = [f"From [docs/reports/{name}](reports/{name}/index.html) (commit {str(s.get('commit'))[:10]}"
             f"{', dirty tree' if s.get('dirty') else ''}; {reps} interleaved repetition(s)"
             + ("; the configurations taking turns at each offered rate" if s.get("pairing") == "step" else "")
             + f"; budgets: "
             f"{s.get('budgets')}; latency target {s.get('latency_target_ms')} ms). Mean [95% interval]; "
             "gains paired by round against Regular TCP; \"no difference\" only inside "
             f"±{s.get('equivalence_pct') or 5:g}%, \"not resolved\" when the interval holds 0 and more; "
             "≥: a peak on the top offered step, a lower bound.", ""]
    overload = any((c.get("max_load_over_capacity") or 0) >= 2.0 for c in s["curves"])
    head = ["workload", "configuration", "mode", "peak replies/s", "capacity req/s", "peak gain", "capacity gain"]
    if overload:
        head += ["highest load / capacity", "goodput kept there"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in s["curves"]:
        gain = _iv(c["peak_gain_pct"], "%", signed=True)
        if c.get("peak_gain_verdict") in ("no difference", "not resolved"):
            gain += f" ({c['peak_gain_verdict']})"
        cap_gain = _iv(c["capacity_gain_pct"], "%", signed=True)
        if c.get("capacity_gain_verdict") in ("no difference", "not resolved"):
            cap_gain += f" ({c['capacity_gain_verdict']})"
        # a shifting mix is one curve per phase: say which
        phase = next((p for p in str(c.get("curve", "")).split(" / ") if p.startswith("phase ")), None)
        workload = f"{c['workload']}, {phase}" if phase else c["workload"]
        row = (f"| {workload} | {c['config'] or '-'} | {c['mode']} | {_iv(c['peak'])}"
               f"{'' if c['saturated'] else ' (not saturated)'} | {_iv(c['capacity'])} | "
               f"{gain if c['mode'] != 'regular' else '-'} | {cap_gain if c['mode'] != 'regular' else '-'} |")
        if overload:
            x, kept = c.get("max_load_over_capacity"), c.get("retained_at_max_load") or {}
            row += f" {'-' if x is None else f'{x:.1f}x'} | {_share(kept)} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def _relink(text: str, doc: Path) -> str:
    """Links in a rendered block are relative to docs/; README sits one level up."""
    return text.replace("](reports/", "](docs/reports/") if doc.parent == ROOT else text


def stale_blocks(write: bool = False) -> list[str]:
    """Blocks whose text differs from their summary (rewritten when ``write``)."""
    out = []
    for doc in documents():
        text = doc.read_text()

        def fill(m: re.Match[str]) -> str:
            try:
                body = _relink(render(m["name"]), doc)
            except FileNotFoundError as e:
                out.append(f"{doc.relative_to(ROOT)}: {e}")
                return m.group(0)
            if body != m["body"]:
                out.append(f"{doc.relative_to(ROOT)}: quote:{m['name']} differs from its summary")
            return m.group(1) + body + m.group(4)

        new = BLOCK.sub(fill, text)
        if write and new != text:
            doc.write_text(new)
    return out


def shipped_numbers() -> set[str]:
    """Every signed gain, as rendered, in every shipped summary."""
    found: set[str] = set()
    for path in [*REPORTS.glob("*/summary.json"), *(REPORTS / EARLIER).glob("*/summary.json")]:
        for c in json.loads(path.read_text()).get("curves", []):
            for key in ("peak_gain_pct", "capacity_gain_pct"):
                d = c.get(key) or {}
                for v in [d.get("mean"), *(d.get("ci95") or [])]:
                    if v is not None:
                        found.update({f"{v:+.1f}%", f"{v:+.0f}%"})
    return found


def unquoted_gains() -> list[str]:
    """Signed percentages outside quote blocks that no shipped summary holds."""
    known = shipped_numbers()
    out = []
    for doc in documents():
        text = BLOCK.sub("", doc.read_text())
        for m in SIGNED_PCT.finditer(text):
            if m.group(0).replace("−", "-") not in known:
                line = text.count("\n", 0, m.start()) + 1
                out.append(f"{doc.relative_to(ROOT)}:{line}: {m.group(0)} is in no shipped summary")
    return out

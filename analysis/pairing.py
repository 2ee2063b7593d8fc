"""Step pairing against round pairing, from runs of one experiment made each way in turn.

``bench.pairing`` runs an experiment whole, one round per run, alternating the two
pairings, and records each run's peak gains in ``docs/bench/pairing/pairing.json``; this
module turns those gains into the comparison (docs/measurement.md quotes it through the
``pairing-bias`` block): per curve, each pairing's mean gain and 95% half-width, and step
minus round with its 95% interval (Welch), the bias of taking turns at each rate against
runs in which one testbed is up at a time; per pairing, the median half-width scaled to one
hour of runs (a half-width shrinks as one over the square root of the runs).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from .intervals import t975

PAIRINGS = ("step", "round")


def half_width(xs: list[float]) -> float:
    return t975(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """mean(a) - mean(b) and the 95% half-width of that difference (Welch's degrees of freedom)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return statistics.mean(a) - statistics.mean(b), 0.0
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return statistics.mean(a) - statistics.mean(b), t975(max(1, int(df))) * se


def compare(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Per curve present in both pairings' runs: the gains and their comparison; per pairing:
    its minutes of runs and median half-width, now and for one hour of runs."""
    by = {p: [r for r in runs if r["pairing"] == p] for p in PAIRINGS}
    curves = sorted(set.intersection(*({c for r in by[p] for c in r["gains"]} for p in PAIRINGS)))
    rows = []
    for c in curves:
        g = {p: [r["gains"][c] for r in by[p] if c in r["gains"]] for p in PAIRINGS}
        if min(len(v) for v in g.values()) < 2:
            continue
        d, hw = welch(g["step"], g["round"])
        rows.append({"curve": c, **{f"{p}_gains": g[p] for p in PAIRINGS},
                     **{f"{p}_mean": statistics.mean(g[p]) for p in PAIRINGS},
                     **{f"{p}_half_width": half_width(g[p]) for p in PAIRINGS},
                     "difference": d, "difference_ci95": (d - hw, d + hw)})
    per: dict[str, dict[str, float]] = {}
    for p in PAIRINGS:
        minutes = sum(float(r["minutes"]) for r in by[p])
        widths = [row[f"{p}_half_width"] for row in rows]
        med = statistics.median(widths) if widths else math.nan
        per[p] = {"runs": len(by[p]), "minutes": minutes, "half_width": med,
                  "half_width_per_hour": med * math.sqrt(minutes / 60.0) if minutes else math.nan}
    return rows, per


def table(data: dict[str, Any]) -> str:
    """The Markdown form of ``compare`` over a pairing.json."""
    rows, per = compare(data["runs"])
    lines = [f"{data['experiment']} (commit {str(data.get('commit'))[:7]}), {per['step']['runs']} runs paired by step "
             f"and {per['round']['runs']} by round, alternated, one round each, knee search off; peak gain over "
             "Regular TCP per run (%), mean ± 95% half-width, step minus round [95% interval]:", "",
             "| configuration | step runs | round runs | step | round | step - round |", "|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["difference_ci95"]
        lines.append(f"| {_label(r['curve'])} | {', '.join(f'{x:+.1f}' for x in r['step_gains'])} | "
                     f"{', '.join(f'{x:+.1f}' for x in r['round_gains'])} | "
                     f"{r['step_mean']:+.1f} ± {r['step_half_width']:.1f} | "
                     f"{r['round_mean']:+.1f} ± {r['round_half_width']:.1f} | "
                     f"{r['difference']:+.1f} [{lo:+.1f}, {hi:+.1f}] |")
    lines.append("")
    lines.append("Median half-width of a configuration's gain, and what one hour of runs of that pairing "
                 "would give: " + "; ".join(
                     f"{p} {per[p]['half_width']:.1f} points after {per[p]['minutes']:.0f} min "
                     f"({per[p]['half_width_per_hour']:.1f} for an hour)" for p in PAIRINGS) + ".")
    return "\n".join(lines) + "\n"


def _label(curve: str) -> str:
    """A curve's configuration and mode, without the workload."""
    parts = curve.split(" / ")
    return " / ".join(parts[1:]) if len(parts) > 1 else curve


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())

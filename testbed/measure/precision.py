"""Precision as the stopping rule: rounds are added until every headline gain is known
well enough, or the experiment's time is spent.

    precision: {half_width_pct: 5, max_rounds: 10, minutes: 60}

``repetitions`` stays the number of rounds always run; after each further round the
runner rebuilds the run's tables and asks for every offloaded curve's peak gain over its
Regular TCP (paired by round) whether its 95% interval is within ``half_width_pct``
points either side. It stops when all are, when ``max_rounds`` have run, or when another
round would end past ``minutes`` of load since the run started. Without ``precision`` an
experiment runs exactly ``repetitions`` rounds.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..describe.fidelity import Precision

def headline_half_widths(run_dir: Path) -> dict[str, float]:
    """Every offloaded curve's peak gain over Regular TCP: the half-width of its 95% interval
    in percentage points (inf with fewer than two paired rounds)."""
    from analysis.frames import REGULAR
    from analysis.run import RunInfo, prepare_runs
    from analysis.tables import build_tables
    build_tables(run_dir)
    sat = prepare_runs([RunInfo.load(run_dir)]).saturation
    out = {}
    for _, row in sat.iterrows():
        if row["mode_label"] == REGULAR or row.get("baseline") is None:
            continue
        lo, hi = float(row["gain_ci_lo"]), float(row["gain_ci_hi"])
        out[str(row["curve"])] = (hi - lo) / 2 if math.isfinite(lo) and math.isfinite(hi) else math.inf
    return out


def decide(half_widths: dict[str, float], target: Precision, rounds_done: int, minutes_used: float,
           minutes_per_round: float) -> str:
    """'' to run another round, or why the rounds stop here."""
    if half_widths and all(h <= target.half_width_pct for h in half_widths.values()):
        return f"every headline gain within ±{target.half_width_pct:g} points after {rounds_done} rounds"
    if rounds_done >= target.max_rounds:
        return f"max_rounds ({target.max_rounds}) reached"
    if minutes_used + minutes_per_round > target.minutes:
        return (f"another round (about {minutes_per_round:.0f} min) would pass the time budget "
                f"({target.minutes:g} min)")
    return ""

"""Points measured side by side: a round's configurations of one workload take turns at each
offered rate, so that the steps a gain compares ran seconds apart.

Why: this machine slows down from outside for minutes at a time. Measured point after point,
a round lasts 3-11 minutes and a slowdown lands on some configurations and not on others;
taking turns at each rate puts every configuration's step at one rate inside the same minute,
where a slowdown hits all of them (testbed.describe.fidelity, ``pairing: step``).

How: every point's testbed is up at once (own namespaces, cgroups and budgets, idle while
another takes its turn); for each rate in turn, each testbed's load generator runs that one
step (warm-up included), in the round's order at even rates and reversed at odd ones, so a
drift within a turn does not always favour the same configuration. After the grid, up to
``fidelity.refine`` knee-search turns offer each configuration the midpoint of the gap its
peak lies in (``next_rate``). Each turn is judged as the analysis will judge its steps; a
turn with a slowed or interfered step is measured again for every configuration
(``fidelity.remeasure`` times at most), the spoiled steps kept under ``remeasured/`` and
their reason in the manifest.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from . import guard
from ..describe.experiment import Experiment, Point
from .point import PointRun, set_aside

STEP_DIR = "step{:02d}"


def run_side_by_side(exp: Experiment, points: list[Point], run_dir: Path, manifest: dict[str, Any],
                     save_manifest: Callable[[], None], prefix: str = "    ") -> dict[str, str]:
    """Measure ``points`` (one round, one workload) taking turns at each rate; their statuses."""
    workload = points[0].workload
    assert all(p.workload == workload for p in points) and workload != "shifting"
    rates = exp.rates_for(workload)
    runs = [PointRun(exp, p, run_dir, name=f"r{os.getpid() % 100000}x{i}") for i, p in enumerate(points)]
    interrupted = False
    statuses: dict[str, str] = {}
    try:
        live = [run for run in runs if run.start()]
        refine = exp.fidelity.refine
        print(f"{prefix}{len(live)} testbeds up side by side; {len(rates)} rates taken in turn"
              + (f", then up to {refine} turns searching each knee" if refine else ""), flush=True)
        turns: list[dict[PointRun, float]] = [{run: rate for run in live} for rate in rates]
        i = 0
        while i < len(turns) and live:
            label = f"{i + 1}/{len(rates)}" if i < len(rates) else f"knee search {i - len(rates) + 1}/{refine}"
            _take_turn(exp, run_dir, live, turns[i], i, label, manifest, save_manifest, prefix)
            if i + 1 == len(turns) and i + 1 < len(rates) + refine:
                wanted = {run: r for run in live if (r := next_rate(run.out, exp.fidelity.resolution_pct)) is not None}
                if wanted:
                    turns.append(wanted)
            i += 1
        for run in live:
            run.code = 0
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        errors = []
        for run in runs:  # every testbed down, whatever one of them does
            try:
                statuses[run.p.id] = run.close(interrupted)
            except Exception as e:
                errors.append(e)
        if errors and not interrupted:
            raise errors[0]
    return statuses


def _take_turn(exp: Experiment, run_dir: Path, live: list[PointRun], rates: dict[PointRun, float], i: int,
               label: str, manifest: dict[str, Any], save_manifest: Callable[[], None], prefix: str) -> None:
    """Step ``i``: each configuration in ``rates`` offered its rate in turn (the order reversed
    at odd steps), then measured again while the turn comes out spoiled and attempts remain.
    A configuration whose load generator fails leaves ``live``."""
    limit = exp.fidelity.remeasure
    attempt = 0
    while True:
        guard.wait_for_quiet(exp.fidelity.max_foreign_cpu)
        if limit:
            guard.wait_for_speed(run_dir)
        turn = [run for run in live if run in rates]
        for run in turn if i % 2 == 0 else turn[::-1]:
            out = run.out / "load" / STEP_DIR.format(i)
            if out.exists():
                shutil.rmtree(out)
            print(f"{prefix}rate {rates[run]:g}/s ({label}): {run.p.mode} {run.p.id}", flush=True)
            code = run.load(run.sweep(out, [rates[run]]), prefix + "  ")
            if code != 0:
                run.code = code  # failed: its error recorded as it closes; the others go on
                live.remove(run)
        turn = [run for run in turn if run in live]
        reason = _judge_turn(run_dir, turn, i, manifest) if limit else ""
        if not reason or attempt >= limit:
            if reason:
                print(f"{prefix}{reason}: kept, flagged, after {attempt + 1} attempts", flush=True)
            return
        attempt += 1
        _set_aside(run_dir, turn, i, attempt, reason, manifest)
        save_manifest()
        print(f"{prefix}{reason}: this turn ({label}) measured again for every configuration "
              f"(attempt {attempt + 1} of at most {limit + 1})", flush=True)


def next_rate(point_out: Path, resolution_pct: float, grow: float = 1.25) -> float | None:
    """Where a configuration's peak is not yet known to ``resolution_pct``: the midpoint
    between its best step (highest reply rate, counted as the analysis counts it) and the
    next offered step when the best step kept up with its load; 1.25x the top step when that
    one kept up. None when the peak was measured past the knee (a reply rate, not a bound)
    or the gap is already within the resolution."""
    import pandas as pd

    from analysis.frames import KNEE_FRACTION
    from analysis.tables import apply_rules
    frames = [pd.read_csv(f) for f in sorted((point_out / "load").glob("*/steps.csv")) if f.stat().st_size > 0]
    if not frames:
        return None
    steps = apply_rules(pd.concat(frames, ignore_index=True))
    by_rate = steps.groupby("offered_rate")["reply_rate_own"].mean().dropna().sort_index()
    if by_rate.empty:
        return None
    best = float(by_rate.idxmax())
    if by_rate.max() < KNEE_FRACTION * best:
        return None
    higher = by_rate.index[by_rate.index > best]
    if len(higher) == 0:
        return float(round(best * grow))
    nxt = float(higher[0])
    if (nxt - best) / best * 100 <= resolution_pct:
        return None
    return float(round((best + nxt) / 2))


def _judge_turn(run_dir: Path, live: list[PointRun], i: int, manifest: dict[str, Any]) -> str:
    """Why this rate's turn must be measured again ('' if it need not): any configuration's
    step slowed or interfered, judged from its samples so far and the run's probe."""
    import pandas as pd
    time.sleep(1.2)  # a sample after the last step's end closes its window
    reasons = []
    for run in live:
        if run.sampler is None:
            continue
        steps_csv = run.out / "load" / STEP_DIR.format(i) / "steps.csv"
        if not steps_csv.exists() or steps_csv.stat().st_size == 0:
            continue
        judged = guard.judge_steps(run_dir, pd.read_csv(steps_csv), pd.DataFrame(list(run.sampler.rows)),
                                   run.info, manifest)
        if judged.reason:
            reasons.append(f"{run.p.mode}: {judged.reason}")
    return "; ".join(reasons)


def _set_aside(run_dir: Path, live: list[PointRun], i: int, attempt: int, reason: str,
               manifest: dict[str, Any]) -> None:
    """Move this turn's steps out of every point (kept for inspection) and record why."""
    step = STEP_DIR.format(i)
    kept = [set_aside(run_dir, run.out / "load" / step, f"{run.p.id}/{step}.a{attempt}") for run in live]
    manifest.setdefault("remeasured", []).append(
        {"points": [run.p.id for run in live], "step": i, "attempt": attempt,
         "reason": reason, "kept_in": [k for k in kept if k]})

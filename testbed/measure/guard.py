"""The runner's guard: measure only on a quiet machine running at its own speed, and say
which points must be measured again.

Two things spoil a step without the testbed's doing: other programs taking CPU
(``interfered``: busy CPU outside the testbed's cgroups above the fidelity threshold) and
the machine itself running slow for minutes (``slowed``: the fixed work of
``testbed.measure.probe`` taking longer than its baseline). Before each point the runner waits,
within a patience, for both to pass; after it, a point with such steps is measured again
(``fidelity.remeasure`` times at most), the spoiled attempt kept aside under
``remeasured/`` with its reason.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from . import probe

QUIET_PATIENCE_S = 15.0
SPEED_PATIENCE_S = 90.0  # slow windows last minutes: wait a while, then measure and judge


def busy_cores(seconds: float = 1.0) -> float:
    """Cores busy with this machine's tasks (user, nice, system) over ``seconds``, machine-wide;
    steal (the hypervisor running others) is not a program here to wait for."""
    from .metrics import read_proc_stat

    def busy() -> tuple[int, int]:
        c = read_proc_stat()["cpu"]
        return c["user"] + c["nice"] + c["system"], sum(c.values())
    b0, t0 = busy()
    time.sleep(seconds)
    b1, t1 = busy()
    ncpu = os.cpu_count() or 1
    return (b1 - b0) / max(t1 - t0, 1) * ncpu


def wait_for_quiet(limit: float, patience_s: float = QUIET_PATIENCE_S) -> None:
    """Between points nothing of ours runs: wait (up to ``patience_s``) while something else
    keeps the machine busier than the interference threshold, rather than measure into it.
    Steps that still overlap other work are flagged ``interfered`` and measured again."""
    end = time.monotonic() + patience_s
    used = busy_cores()
    if used <= limit:
        return
    print(f"    the machine is busy ({used:.2f} cores used by other programs); waiting up to "
          f"{patience_s:.0f} s for it to calm down", flush=True)
    while time.monotonic() < end:
        used = busy_cores()
        if used <= limit:
            return
    print(f"    still busy ({used:.2f} cores): measuring anyway; steps it overlaps will be flagged "
          "interfered", flush=True)


def current_slowdown(run_dir: Path, window_s: float = 8.0) -> float:
    """The worst CPU's slowdown over the last ``window_s`` seconds of the run's probe
    (NaN before the probe has a baseline)."""
    readings = probe.read(run_dir)
    if not readings or min(len(v) for _, v in readings.values()) < 30:
        return float("nan")  # a baseline needs some history
    now = max(float(t[-1]) for t, _ in readings.values())
    return probe.slowdown(readings, probe.baselines(readings), now - window_s, now + 1)


def wait_for_speed(run_dir: Path, patience_s: float = SPEED_PATIENCE_S) -> None:
    """Wait (up to ``patience_s``) while the probe says the machine runs slow."""
    ratio = current_slowdown(run_dir)
    if not probe.is_slowed(ratio):
        return
    print(f"    the machine runs slow (fixed work {ratio:.2f}x its baseline); waiting up to "
          f"{patience_s:.0f} s for it to recover", flush=True)
    end = time.monotonic() + patience_s
    while time.monotonic() < end:
        time.sleep(5)
        ratio = current_slowdown(run_dir)
        if not probe.is_slowed(ratio):
            return
    print(f"    still slow ({ratio:.2f}x): measuring anyway; slowed steps will be measured again",
          flush=True)


@dataclass(frozen=True)
class Judgement:
    """Why a finished point must be measured again ("" = it need not)."""
    reason: str
    slowed_steps: int
    interfered_steps: int
    steps: int


def judge_point(run_dir: Path, point_dir: Path, manifest: dict[str, Any]) -> Judgement:
    """A finished point's steps judged as the analysis will judge them."""
    import pandas as pd
    frames = [pd.read_csv(f) for f in sorted((point_dir / "load").glob("**/steps.csv")) if f.stat().st_size > 0]
    steps = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    samples_path = point_dir / "samples.parquet"
    samples = pd.read_parquet(samples_path) if samples_path.exists() else pd.DataFrame()
    return judge_steps(run_dir, steps, samples, json.loads((point_dir / "point.json").read_text()), manifest)


def judge_steps(run_dir: Path, steps: "pd.DataFrame", samples: "pd.DataFrame", point: dict[str, Any],
                manifest: dict[str, Any]) -> Judgement:
    """Steps judged as the analysis will judge them: slowed by the probe (against the run's
    baseline so far) and interfered by foreign CPU. Unjudged without samples."""
    from analysis.tables import step_metrics
    if steps.empty or samples.empty:
        return Judgement("", 0, 0, len(steps))
    fidelity = manifest.get("fidelity") or {}
    readings = probe.read(run_dir)
    enriched = step_metrics(steps, samples, point, float(fidelity.get("min_idle", 0.05)),
                            float(fidelity.get("max_foreign_cpu", 0.25)), readings, probe.baselines(readings))
    interfered = int(enriched["interfered"].astype(bool).sum())
    ratios = [float(r) for r in enriched["slowdown"]]
    slowed = sum(probe.is_slowed(r) for r in ratios)
    parts = []
    if slowed:
        worst = max(r for r in ratios if r == r)  # NaN: a step too short to judge
        parts.append(f"{slowed} of {len(steps)} steps slowed (fixed work up to {worst:.2f}x its baseline)")
    if interfered:
        worst = float(enriched["foreign_cpu"].max())
        parts.append(f"{interfered} of {len(steps)} steps interfered (other programs' CPU, up to {worst:.2f} cores)")
    return Judgement("; ".join(parts), slowed, interfered, len(steps))

"""Which per-step signal tells a slow step, and whether taking turns biases a step: measured
on a run's own steps.

    python -m analysis signals docs/reports/paper-cluster

A saturated step's reply rate is set against the median of the same configuration at the
same offered rate over the run's rounds (``relative``: 1.0 = as usual). For each candidate
signal (the hypervisor's steal time, the fixed-work probe's slowdown, other programs' CPU)
the rank correlation with ``relative`` says how well it tells the slow steps; a candidate
that tells them could gate re-measurement. Within a rate's turn, each step's position (0
first, 1 last) against ``relative`` says whether going first or last moves a step: the
bias step pairing could add.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

CANDIDATES = ("steal_cores", "slowdown", "foreign_cpu")
SLOW = 0.9  # a step more than 10% below its configuration's median at that rate


@dataclass(frozen=True)
class Signal:
    name: str
    steps: int
    rank_corr: float     # with the step's relative reply rate (negative: high signal, slow step)
    median_slow: float   # the signal's median over the slow steps
    median_rest: float


def _config_keys(steps: pd.DataFrame) -> list[str]:
    return [k for k in ["mode", "balance", "workload", "offered_rate"] if k in steps] + \
        [c for c in steps.columns if c.startswith(("param_", "config_"))]


def relative(steps: pd.DataFrame) -> pd.DataFrame:
    """Saturated steps of configurations measured in 3 rounds or more, with ``relative``."""
    sat = steps[steps["saturated"].fillna(False).astype(bool)].copy()
    keys = _config_keys(sat)
    grouped = sat.groupby(keys, dropna=False)["reply_rate_own"]
    sat["relative"] = sat["reply_rate_own"] / grouped.transform("median")
    return sat[grouped.transform("count") >= 3]


def _rank_corr(a: pd.Series, b: pd.Series) -> float:
    d = pd.concat([a, b], axis=1).dropna()
    if len(d) < 3:
        return float("nan")
    return float(d.iloc[:, 0].rank().corr(d.iloc[:, 1].rank()))


def signals(steps: pd.DataFrame) -> tuple[int, int, list[Signal]]:
    """(saturated steps judged, slow ones among them, one Signal per candidate present)."""
    sat = relative(steps)
    slow = sat["relative"] < SLOW
    out = []
    for name in CANDIDATES:
        if name not in sat or sat[name].isna().all():
            continue
        v = pd.to_numeric(sat[name], errors="coerce")
        out.append(Signal(name, int(v.notna().sum()), _rank_corr(sat["relative"], v),
                          float(v[slow].median()), float(v[~slow].median())))
    return len(sat), int(slow.sum()), out


def turn_order(steps: pd.DataFrame) -> tuple[int, float, float, float]:
    """Saturated steps of rates every configuration took in turn (4 or more in a turn): their
    number, the rank correlation of position in the turn with ``relative``, and the median
    ``relative`` of the first and the second half of the turns."""
    keys = ["workload", "repetition", "offered_rate"]
    per_turn = steps.groupby(keys)["t_start"].transform("count")
    s = steps[per_turn >= 4].copy()
    if s.empty:
        return 0, float("nan"), float("nan"), float("nan")
    s["position"] = (s.groupby(keys)["t_start"].rank() - 1) / (s.groupby(keys)["t_start"].transform("count") - 1)
    rel = relative(s)
    if rel.empty:
        return 0, float("nan"), float("nan"), float("nan")
    first, last = rel[rel["position"] < 0.5]["relative"], rel[rel["position"] >= 0.5]["relative"]
    return len(rel), _rank_corr(rel["relative"], rel["position"]), float(first.median()), float(last.median())


def round_spread(steps: pd.DataFrame) -> dict[str, float]:
    """Per configuration, how far apart its rounds' peaks lie (highest over lowest, minus 1),
    the peak being a round's highest reply rate over its faithful steps."""
    keys = [k for k in _config_keys(steps) if k != "offered_rate"]
    ok = steps[steps["faithful"].fillna(False).astype(bool)]
    peaks = ok.groupby(keys + ["repetition"], dropna=False)["reply_rate_own"].max()
    spread = peaks.groupby(level=list(range(len(keys))), dropna=False).agg(lambda v: v.max() / v.min() - 1)
    return {" / ".join(str(x) for x in (k if isinstance(k, tuple) else (k,)) if pd.notna(x)): float(v)
            for k, v in spread.items()}


STEAL_THRESHOLDS = (0.2, 0.1, 0.05)  # cores of steal over a step


def precision_without_steal(run_dir: Path, thresholds: tuple[float, ...] = STEAL_THRESHOLDS) -> list[tuple[float, int, float]]:
    """What leaving steps with at least each threshold of steal out of the peaks (as slowed
    steps are) does to the headline gains: per threshold, the steps left out and the median
    half-width of the two-sided peak gains (the first row, threshold inf: as shipped)."""
    import statistics

    from .frames import REGULAR
    from .run import RunInfo, prepare_runs
    out = []
    for th in (float("inf"), *thresholds):
        run = RunInfo.load(run_dir)
        steps = run.tables["steps"].copy()
        if "steal_cores" not in steps:
            return []
        gone = (pd.to_numeric(steps["steal_cores"], errors="coerce") >= th).fillna(False).to_numpy()
        steps["slowed"] = steps["slowed"].fillna(False).astype(bool).to_numpy() | gone
        steps["faithful"] = steps["faithful"].fillna(False).astype(bool).to_numpy() & ~gone
        run.tables["steps"] = steps
        sat = prepare_runs([run]).saturation
        widths = [(r["gain_ci_hi"] - r["gain_ci_lo"]) / 2 for _, r in sat.iterrows()
                  if r["mode_label"] != REGULAR and pd.notna(r["gain_ci_lo"]) and pd.notna(r["gain_ci_hi"])
                  and abs(r["gain_ci_lo"]) != float("inf") and abs(r["gain_ci_hi"]) != float("inf")]
        out.append((th, int(gone.sum()), statistics.median(widths) if widths else float("nan")))
    return out


def report(run_dir: Path) -> str:
    from . import load
    tables = load(run_dir)
    steps = tables["steps"]
    stepped = ((tables.get("manifest") or {}).get("fidelity") or {}).get("pairing") == "step"
    n, n_slow, found = signals(steps)
    lines = [f"{run_dir}: {n} saturated steps of configurations measured in 3 or more rounds; "
             f"{n_slow} ran more than {1 - SLOW:.0%} below their configuration's median at that rate"]
    for s in found:
        lines.append(f"  {s.name:12s} rank correlation with the relative reply rate {s.rank_corr:+.2f} "
                     f"(median {s.median_slow:.3f} over the slow steps, {s.median_rest:.3f} over the rest)")
    m, corr, first, last = turn_order(steps) if stepped else (0, float("nan"), float("nan"), float("nan"))
    if m:
        lines.append(f"  position in a rate's turn (0 first, 1 last), {m} steps: rank correlation {corr:+.2f}; "
                     f"median relative reply rate {first:.3f} in the first half, {last:.3f} in the second")
    else:
        lines.append("  no rate was taken in turn by four or more configurations (the run paired by round)")
    spread = round_spread(steps)
    from .frames import REGULAR
    reg = [v for k, v in spread.items() if k.split(" / ")[0] == REGULAR]
    off = [v for k, v in spread.items() if k.split(" / ")[0] != REGULAR]
    if reg and off:
        lines.append(f"  rounds' peaks apart (highest/lowest - 1): Regular TCP {', '.join(f'{v:.1%}' for v in reg)}; "
                     f"offloaded configurations median {pd.Series(off).median():.1%}, up to {max(off):.1%}")
    for th, gone, width in precision_without_steal(run_dir):
        what = "as shipped" if th == float("inf") else f"steps with >= {th:g} cores of steal left out of peaks ({gone})"
        lines.append(f"  median half-width of the two-sided peak gains, {what}: ±{width:.1f}")
    return "\n".join(lines)

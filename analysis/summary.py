"""The machine-readable summary of a report: what README and docs may quote.

``summary.json`` holds, per curve, the peak and the capacity at the latency target (mean,
95% interval, repetitions) and the gains over Regular TCP paired by round, with their
verdict; with the run's commit, tree state, order seed and latency target.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .frames import Prepared

SUMMARY_VERSION = 2  # 2: bounds ("lower": a peak on the top offered step), clipping, precision, verdicts
_BOUND = {"peak": "peak_bound", "capacity": "capacity_bound", "peak_gain_pct": "gain_bound",
          "capacity_gain_pct": "capacity_gain_bound"}
_CLIPPED = {"peak": "peak_clipped", "capacity": "capacity_clipped", "peak_gain_pct": "gain_clipped",
            "capacity_gain_pct": "capacity_gain_clipped", "retained_at_max_load": "retained_clipped"}
_CURVE_FIELDS = {
    "peak": ("peak_mean", "peak_ci_lo", "peak_ci_hi"),
    "capacity": ("capacity_mean", "capacity_ci_lo", "capacity_ci_hi"),
    "peak_gain_pct": ("gain_pct", "gain_ci_lo", "gain_ci_hi"),
    "capacity_gain_pct": ("capacity_gain_pct", "capacity_gain_ci_lo", "capacity_gain_ci_hi"),
    "retained_at_max_load": ("retained_mean", "retained_ci_lo", "retained_ci_hi"),
}


def _num(v: Any, digits: int) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else round(f, digits)


def bound_of(s: Any) -> str:
    return str(s.get("gain_bound") or "")


def summary(prep: Prepared | None, manifest: dict[str, Any]) -> dict[str, Any]:
    """The machine-readable summary of a report (what README and docs may quote)."""
    curves = []
    if prep is not None:
        for _, s in prep.saturation.iterrows():
            entry: dict[str, Any] = {"curve": s["curve"], "workload": s["workload"], "config": s["config_label"],
                                     "mode": s["mode_label"], "repetitions": int(s["repetitions"]),
                                     "saturated": bool(s["saturated"]),
                                     "baseline": s["baseline"] if s["mode_label"] != "regular" else None}
            for name, (mean, lo, hi) in _CURVE_FIELDS.items():
                digits = 1 if name.endswith("pct") else 3 if name.startswith("retained") else 0
                entry[name] = {"mean": _num(s.get(mean), digits), "ci95": [_num(s.get(lo), digits),
                                                                            _num(s.get(hi), digits)]}
                bound = s.get(_BOUND.get(name, ""), "") or ""
                if bound:  # one-sided: the mean is at least (lower) / at most (upper) this
                    entry[name]["bound"] = bound
                if bool(s.get(_CLIPPED[name], False)):
                    entry[name]["clipped"] = True
            if not bound_of(s) and s.get("gain_ci_lo") == s.get("gain_ci_lo") and s["mode_label"] != "regular":
                entry["peak_gain_pct"]["half_width"] = _num((s["gain_ci_hi"] - s["gain_ci_lo"]) / 2, 1)
            if bool(s.get("peak_grid")):
                entry["peak"]["grid_step"] = _num(s.get("peak_step"), 0)
            entry["max_load_over_capacity"] = _num(s.get("overload_x"), 2)
            entry["peak_gain_verdict"] = s.get("gain_verdict")
            entry["capacity_gain_verdict"] = s.get("capacity_gain_verdict")
            curves.append(entry)
    return {"version": SUMMARY_VERSION, "experiment": manifest.get("experiment"),
            "commit": manifest.get("commit"), "dirty": manifest.get("dirty"),
            "quick": manifest.get("quick", False), "repetitions": manifest.get("repetitions"),
            "order_seed": manifest.get("order_seed"), "latency_target_ms": manifest.get("latency_target_ms"),
            "budgets": manifest.get("budgets"),
            "pairing": (manifest.get("fidelity") or {}).get("pairing", "round"),
            "minutes": _minutes(manifest),
            "equivalence_pct": prep.equivalence_pct if prep is not None else None, "curves": curves}


def _minutes(manifest: dict[str, Any]) -> float | None:
    """The run's length on the clock, in minutes (None when it did not record its end)."""
    try:
        return round((float(manifest["finished"]) - float(manifest["started"])) / 60.0, 1)
    except (KeyError, TypeError, ValueError):
        return None


def write_summary(out: Path, prep: Prepared | None, manifest: dict[str, Any]) -> Path:
    path = out / "summary.json"
    path.write_text(json.dumps(summary(prep, manifest), indent=1, sort_keys=False) + "\n")
    return path

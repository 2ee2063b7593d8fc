"""The report's summary: the result in words, negative results stated as plainly as
positive ones, and the gain table (peak and capacity at the latency target per curve, their
gains over Regular TCP of the same run, workload and configuration, paired by round).

The terminal summary (``analysis.report.summary_text``) prints the same table and sentences.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..frames import KNEE_FRACTION, REGULAR, Prepared, cpu_at_saturation
from ..intervals import rounds_for
from ..render import num as _num
from ..render import render
from ..run import RunInfo
from .registry import Report, Section, register


def summary_table(prep: Prepared) -> pd.DataFrame:
    """The headline table, one row per curve: peak reply rate and capacity at the latency
    target (mean and 95% interval over repetitions), and their gains over Regular TCP of
    the same run, workload and configuration, paired by round."""
    sat = prep.saturation
    if sat.empty:
        return pd.DataFrame()
    cpu = cpu_at_saturation(prep).set_index("curve")
    rows = []
    for _, s in sat.iterrows():
        flags = cpu.loc[s["curve"], "flags"] if s["curve"] in cpu.index else ""
        is_reg = s["mode_label"] == REGULAR or s["baseline"] is None
        rows.append({
            "group": s["group"] or "-",
            "mode": s["mode_label"],
            "peak replies/s": _peak(s),
            "capacity req/s": _capacity(s),
            "reps": int(s["repetitions"]),
            "knee at": _num(s["knee_offered"]) if not np.isnan(s["knee_offered"]) else "none",
            "vs regular of": "-" if is_reg else (s["baseline"] or "-"),
            "peak gain": "-" if is_reg else _gain(s, "gain"),
            "capacity gain": "-" if is_reg else _gain(s, "capacity_gain"),
            "precision (±pts)": "-" if is_reg else _precision(s),
            "server CPU µs/reply": _num(cpu.loc[s["curve"], "cpu_us_per_reply_servers"])
            if s["curve"] in cpu.index and "cpu_us_per_reply_servers" in cpu else "-",
            "flagged steps": int(s["flagged_steps"]),
            "flags": ("peak from flagged steps; " if not s["all_faithful"] else "") + (flags or ""),
        })
    return pd.DataFrame(rows)


def _ci(lo: Any, hi: Any, digits: int = 0) -> str:
    return "" if pd.isna(lo) or pd.isna(hi) else f" [{_num(lo, digits)}, {_num(hi, digits)}]"


def _bounded(mean: Any, lo: Any, hi: Any, bound: str, digits: int = 0) -> str:
    """'1,234 [1,100, 1,400]', or for a lower bound '≥ 1,234 (95%: ≥ 1,150)'."""
    if bound == "lower":
        return f"≥ {_num(mean, digits)}" + ("" if pd.isna(lo) else f" (one-sided 95%: ≥ {_num(lo, digits)})")
    return _num(mean, digits) + _ci(lo, hi, digits)


def _peak(s: pd.Series) -> str:
    text = _bounded(s["peak_mean"], s["peak_ci_lo"], s["peak_ci_hi"], s.get("peak_bound", ""))
    if s.get("peak_bound") != "lower" and not s["saturated"]:
        text += " (≥, not saturated)"
    if bool(s.get("peak_grid")) and s.get("peak_bound") != "lower":
        text += f" (grid: every round on one step; resolution {_num(s.get('peak_step'))} req/s)"
    if bool(s.get("peak_clipped")):
        text += " (interval clipped at 0)"
    return text


def _capacity(s: pd.Series) -> str:
    if pd.isna(s["capacity_mean"]):
        return f"< {_num(s['lowest_offered'])} (no step met the target)"
    text = _bounded(s["capacity_mean"], s["capacity_ci_lo"], s["capacity_ci_hi"], s.get("capacity_bound", ""))
    if s["capacity_reps"] < s["repetitions"]:
        text += f" ({int(s['capacity_reps'])} of {int(s['repetitions'])} reps met it)"
    if bool(s.get("capacity_clipped")):
        text += " (interval clipped at 0)"
    return text


def half_width(s: pd.Series, prefix: str = "gain") -> float:
    """The precision reached: half the width of a two-sided 95% gain interval (points)."""
    lo, hi = s.get(f"{prefix}_ci_lo"), s.get(f"{prefix}_ci_hi")
    if s.get(f"{prefix}_bound") or pd.isna(lo) or pd.isna(hi):
        return float("nan")
    return (float(hi) - float(lo)) / 2.0


def _precision(s: pd.Series) -> str:
    h = half_width(s)
    if np.isnan(h):
        return "one-sided" if s.get("gain_bound") else "-"
    return f"±{h:.1f}" + (" (> ±5)" if h > PRECISION_PTS else "")


PRECISION_PTS = 5.0  # the half-width at which a headline gain can decide a 5% effect


def _gain(s: pd.Series, prefix: str, with_verdict: bool = True) -> str:
    """'+12.3% [+4.1, +20.5] higher', '+2.0% [-3.1, +7.2] not resolved', '≥ +30.1% (...)'."""
    mean, v = s[f"{prefix}_pct"], s[f"{prefix}_verdict"]
    if pd.isna(mean):
        return "-"
    lo, hi, bound = s[f"{prefix}_ci_lo"], s[f"{prefix}_ci_hi"], s.get(f"{prefix}_bound", "")
    if bound == "lower":
        text = f"≥ {mean:+.1f}%" + ("" if pd.isna(lo) else f" (one-sided 95%: ≥ {lo:+.1f})")
    elif bound == "upper":
        text = f"≤ {mean:+.1f}%" + ("" if pd.isna(hi) else f" (one-sided 95%: ≤ {hi:+.1f})")
    else:
        text = f"{mean:+.1f}%"
        if not pd.isna(lo):
            text += f" [{lo:+.1f}, {hi:+.1f}]"
    if v.startswith("one repetition"):
        text += " (1 rep)"
    elif v.startswith("not measurable"):
        text += " (both on the top offered step: not measurable)"
    elif v and with_verdict:
        text += f" {v}"
    return text


def targets(runs: list[RunInfo]) -> str:
    vals = sorted({float(r.manifest.get("latency_target_ms", 200.0)) for r in runs})
    return ", ".join(f"{v:g} ms" for v in vals)



def summary_sentences(prep: Prepared, runs: list[RunInfo]) -> list[str]:
    """The result in words, negative results stated as plainly as positive ones."""
    out = []
    sat = prep.saturation
    budgets = {r.manifest.get("budgets", "extra") for r in runs}
    budget_note = " and ".join(f"budgets: {b}" for b in sorted(budgets))
    cpu = cpu_at_saturation(prep)
    cpu_of = dict(zip(cpu["curve"], cpu["cpu_us_per_reply_servers"])) \
        if not cpu.empty and "cpu_us_per_reply_servers" in cpu else {}
    reg_curve = {g: c for g, c, m in zip(sat["group"], sat["curve"], sat["mode_label"]) if m == REGULAR}
    for group, df in sat.groupby("group", sort=False):
        where = f"[{group}] " if group else ""
        others = df[df["mode_label"] != REGULAR]
        for _, s in others.iterrows():
            if s["baseline"] is None or pd.isna(s["regular_peak"]):
                out.append(f"{where}{s['mode_label']}: no Regular TCP curve to compare with "
                           f"(peak {s['peak_mean']:.0f} replies/s).")
                continue
            against = "" if s["baseline"] == group else " (base configuration)"
            if not s["saturated"] and not s["regular_saturated"]:
                out.append(f"{where}{s['mode_label']}: neither it nor Regular TCP{against} saturated within the "
                           f"offered range (peaks {s['peak_mean']:.0f} and {s['regular_peak']:.0f} replies/s): "
                           "no gain or loss can be measured; offer more load.")
                continue
            pct = s["gain_pct"]
            reps = int(s["gain_pairs"])
            v = s["gain_verdict"]
            peaks = f"peaks {_peak_short(s)} vs {s['regular_peak']:.0f} replies/s"
            if reps < 2:
                text = (f"{where}{s['mode_label']}: peak throughput {pct:+.1f}% against Regular TCP{against} "
                        f"(one repetition: no interval, so the sign is not established; {peaks}; {budget_note}).")
            elif v in ("higher", "lower"):
                text = (f"{where}{s['mode_label']}: peak throughput {v} than Regular TCP{against} with the same app "
                        f"and event loop: {_gain(s, 'gain', False)} over {reps} paired rounds ({peaks}; {budget_note}).")
            elif v == "no difference":
                text = (f"{where}{s['mode_label']}: no difference in peak throughput against Regular TCP{against}: "
                        f"{_gain(s, 'gain', False)} over {reps} paired rounds lies inside ±{prep.equivalence_pct:g}% "
                        f"({peaks}; {budget_note}).")
            else:
                text = (f"{where}{s['mode_label']}: peak throughput against Regular TCP{against} not resolved: "
                        f"{_gain(s, 'gain', False)} over {reps} paired rounds neither excludes 0 nor lies inside "
                        f"±{prep.equivalence_pct:g}% ({peaks}; {budget_note}).")
            if not pd.isna(s.get("capacity_gain_pct")):
                text += (f" Capacity at the latency target: {_gain(s, 'capacity_gain')} "
                         f"({_num(s['capacity_mean'])} vs {_num(s['regular_capacity'])} req/s).")
            caveats = []
            if not s["saturated"]:
                caveats.append(f"{s['mode_label']} did not saturate (its peak is a lower bound)")
            if not s["regular_saturated"]:
                caveats.append("Regular TCP did not saturate (its peak is a lower bound)")
            if not s["all_faithful"]:
                caveats.append("its peak comes from flagged steps only")
            if caveats:
                text += " Caveat: " + "; ".join(caveats) + "."
            c, base = cpu_of.get(s["curve"], np.nan), cpu_of.get(reg_curve.get(s["baseline"]), np.nan)
            if c > 0 and base > 0:
                text += (f" It used {c:.0f} µs of server-side CPU per reply against Regular TCP's {base:.0f} µs: "
                         f"at the same total CPU (if CPU-bound) it would reach {base / c:.2f}x Regular TCP's "
                         f"rate ({'a gain' if base > c else 'a loss'} of {abs(base / c - 1) * 100:.0f}%).")
            out.append(text)
        measurable = others[others["saturated"] | (others["regular_saturated"] == True)]  # noqa: E712
        measurable = measurable[measurable["regular_peak"].notna()]
        if len(measurable) > 1:
            best = measurable.loc[measurable["peak_mean"].idxmax()]
            out.append(f"{where}Highest offloaded peak: {best['mode_label']} "
                       f"({_gain(best, 'gain')} against Regular TCP).")
    for _, s in sat[sat["overload_x"] >= 2.0].iterrows():
        lo, hi = s["retained_ci_lo"], s["retained_ci_hi"]
        ci = "" if pd.isna(lo) else f" [{lo:.0%}, {hi:.0%}]"
        out.append(f"[{s['group'] or s['workload']}] {s['mode_label']}: at {s['overload_x']:.1f}x its capacity it "
                   f"kept {s['retained_mean']:.0%}{ci} of its peak goodput"
                   + (" (interval clipped to [0%, 100%], what is possible)." if s.get("retained_clipped") else "."))
    wide = [s for _, s in sat.iterrows() if s["mode_label"] != REGULAR and half_width(s) > PRECISION_PTS]
    two_sided = [s for _, s in sat.iterrows() if s["mode_label"] != REGULAR and not np.isnan(half_width(s))]
    if two_sided:
        hw = sorted(half_width(s) for s in two_sided)
        text = (f"Precision reached: {len(two_sided) - len(wide)} of {len(two_sided)} two-sided peak gains have a "
                f"95% interval within ±{PRECISION_PTS:g} points (median half-width ±{float(np.median(hw)):.1f}).")
        if wide:
            text += (" Wider than ±5 points, so they cannot decide an effect of that size (in brackets: the "
                     "paired rounds behind each, and about how many its rounds' spread would need for ±5): "
                     + "; ".join(f"{_where(s)}{s['mode_label']} ±{half_width(s):.1f} ({_rounds_needed(s)})"
                                 for s in wide) + ".")
            text += " " + _why_stopped(runs)
        out.append(text)
    bad = [(r.name, p.get("point"), p.get("status")) for r in runs for p in r.points if p.get("status") != "done"]
    total = sum(len(r.points) for r in runs)
    if bad:
        out.append(f"{len(bad)} of {total} points did not finish ("
                   + ", ".join(f"{pt}: {st}" for _, pt, st in bad)
                   + "): their curves are missing or have fewer repetitions; see Points.")
    out += _measured_again(runs)
    n_flag = int((~prep.steps["faithful"]).sum())
    n_int = int(prep.steps["interfered"].sum())
    if n_int:
        out.append(f"{n_int} of {len(prep.steps)} steps were interfered: programs outside the testbed used more "
                   "than the fidelity threshold's CPU while they ran (foreign_cpu); measure again on a quiet "
                   "machine before quoting them.")
    n_slow = int(prep.steps["slowed"].sum()) if "slowed" in prep.steps else 0
    if n_slow:
        out.append(f"{n_slow} of {len(prep.steps)} steps were slowed: the fixed-work probe ran at least "
                   "1.2x its baseline on some CPU while they ran (the machine itself ran slow); they are left "
                   "out of peaks like interfered steps.")
    elif "slowdown" in prep.steps and prep.steps["slowdown"].isna().all():
        out.append("No probe data (the run predates the slowdown probe): no step could be judged slowed.")
    if n_flag:
        out.append(f"{n_flag} of {len(prep.steps)} steps are flagged (generator-bound, oversubscribed, "
                   "interfered or slowed) and marked in every figure and table; peaks use faithful steps only "
                   "where any exist.")
    return out


def _measured_again(runs: list[Any]) -> list[str]:
    """How the run paired its configurations in time, and what it measured again and why
    (the manifest's ``fidelity`` and ``remeasured``)."""
    out = []
    for r in runs:
        fidelity = r.manifest.get("fidelity") or {}
        name = f"{r.name}: " if len(runs) > 1 else ""
        if fidelity.get("pairing") == "step":
            out.append(f"{name}Configurations took turns at each offered rate (side by side, seconds apart)"
                       + (f", then up to {fidelity['refine']} knee-search turns to a {fidelity.get('resolution_pct', 4):g}% "
                          "resolution" if fidelity.get("refine") else "") + ".")
        redo = r.manifest.get("remeasured") or []
        if redo:
            steps = sum(len(x.get("kept_in") or []) if "points" in x else int(x.get("steps") or 0) for x in redo)
            slowed = sum("slowed" in str(x.get("reason")) for x in redo)
            interfered = sum("interfered" in str(x.get("reason")) for x in redo)
            what = "turns" if any("points" in x for x in redo) else "points"
            out.append(f"{name}{len(redo)} {what} ({steps} steps) were measured again: {slowed} with slowed steps "
                       f"(the probe), {interfered} with interfered steps (other programs' CPU); the spoiled "
                       "attempts are kept under remeasured/ in the run.")
        elif fidelity.get("remeasure"):
            out.append(f"{name}No turn or point needed measuring again.")
    return out


def _rounds_needed(s: pd.Series) -> str:
    n = int(s.get("gain_pairs") or 0)
    m = rounds_for(half_width(s), n, PRECISION_PTS)
    return f"{n} rounds; {'over 1,000' if m is None else f'about {m}'}"


def _why_stopped(runs: list) -> str:
    """What ended the rounds: the experiment's precision rule, or its fixed repetitions."""
    reasons = []
    for r in runs:
        p = r.manifest.get("precision") or {}
        if p.get("stopped"):
            reasons.append(f"the rounds stopped after {p.get('rounds')}: {p['stopped']}")
        else:
            reasons.append(f"the experiment ran a fixed {r.manifest.get('repetitions', '?')} rounds (no "
                           "precision rule)")
    return "Why no more: " + "; ".join(dict.fromkeys(reasons)) + "."


def _where(s: pd.Series) -> str:
    return f"[{s['group']}] " if s["group"] else ""


def _peak_short(s: pd.Series) -> str:
    return ("≥ " if s.get("peak_bound") == "lower" else "") + f"{s['peak_mean']:.0f}"


def html(report: Report) -> Any:
    if report.prep is None:
        return render("sections/summary.html", prep=None)
    return render("sections/summary.html", prep=report.prep, sentences=summary_sentences(report.prep, report.runs),
                  summary=summary_table(report.prep), targets=targets(report.runs), knee_fraction=KNEE_FRACTION,
                  equivalence=report.prep.equivalence_pct)


register(Section("summary", 10, html=html, needs_steps=False))

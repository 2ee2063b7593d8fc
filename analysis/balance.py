"""The balancing results: how the adaptive host/TCP-server balance did against every
fixed split and against Regular TCP (the balancing experiment, ``paper-balance``).

    from analysis.balance import balance_summary
    print(balance_summary("results/paper-balance-<time>"))

A run has balance points when the ``balance`` column of its points is set (``fixed:S``,
``adaptive[:...]``) or its ``balance`` table (the controller's decisions) is not empty.
Per workload the report's balancing section (``analysis.sections.balancing``) shows:

- a figure (``analysis.balance_figure``): reply rate over each point's time with the
  split on a second axis;
- a table: the best fixed split, the adaptive result, their ratio, Regular TCP and the
  adaptive's ratio to it, the controller's moves, reversals and final split; and the
  same per point;
- sentences stating the measured comparisons, each a gain paired by round with its 95%
  interval and verdict (``intervals.verdict``): adaptive against the best fixed split, and
  on static load with equal nodes against Regular TCP and full offload (fixed:1.0).

The *result* of a point on a steady workload (static, dynamic, ...) is its peak faithful
reply rate, exactly as the report's gain table computes it (``frames.prepare``); on the
shifting workload it is the mean reply rate over the phases' measured windows (flagged
phases included, and said so). Repetitions are averaged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .frames import REGULAR, Prepared
from .intervals import EQUIVALENCE_PCT, paired_gain_pct, verdict
from .render import num as _num
from .run import EmptyRun, RunInfo, irq_time_accounting_of, prepare_runs

log = logging.getLogger(__name__)

SHIFTING = "shifting"
FULL_OFFLOAD = "fixed:1"


# --------------------------------------------------------------------------- detection


def has_balance(run: Any) -> bool:
    """True when the run (a RunInfo) has balance points or balancing decisions."""
    bal = run.tables.get("balance")
    if bal is not None and not bal.empty:
        return True
    pts = run.tables.get("points")
    if pts is not None and not pts.empty and "balance" in pts:
        return bool(pts["balance"].dropna().astype(str).str.len().gt(0).any())
    return any(p.get("balance") for p in run.points)


def _kind(balance: Any) -> str:
    """'regular' (no balancing), 'fixed', 'adaptive' or '' (an offload mode without balance)."""
    if not isinstance(balance, str) or not balance:
        return ""
    return balance.split(":", 1)[0]


def _fixed_split(balance: str) -> float:
    try:
        return float(balance.split(":", 1)[1])
    except (IndexError, ValueError):
        return float("nan")


def _norm(balance: Any) -> str:
    """fixed:1.0 and fixed:1 are the same policy."""
    if _kind(balance) == "fixed":
        return f"fixed:{_fixed_split(balance):g}"
    return balance if isinstance(balance, str) else ""


# --------------------------------------------------------------------------- results per point


@dataclass(frozen=True)
class PointResult:
    """One curve of a workload: a point (averaged over repetitions)."""
    workload: str
    group: str                # run / workload / configuration (no phase)
    mode: str
    balance: str              # '' for Regular TCP (and offload without balance)
    label: str                # mode[:balance]
    value: float              # peak faithful reply rate, or the mean over phases
    phases: list[float] = field(default_factory=list)
    saturated: bool | None = None
    flags: str = ""
    points: list[str] = field(default_factory=list)
    moves: float = float("nan")
    reversals: float = float("nan")
    final_split: float = float("nan")
    knob: str = ""
    reps: dict[int, float] = field(default_factory=dict)  # the result per repetition (round)

    @property
    def kind(self) -> str:
        return REGULAR if self.mode == REGULAR else (_kind(self.balance) or "offload")


def _steady_results(prep: Prepared, workload: str) -> list[PointResult]:
    sat = prep.saturation
    sat = sat[(sat["workload"] == workload)]
    st = prep.steps[prep.steps["workload"] == workload]
    info = st.groupby("curve", sort=False).agg(mode=("mode", "first"), balance=("balance", "first"),
                                               config=("config_label", "first"), run=("run", "first"))
    points = st.groupby("curve", sort=False)["point"].unique()
    out = []
    for _, s in sat.iterrows():
        c = s["curve"]
        if c not in info.index:
            continue
        pk = prep.peaks[prep.peaks["curve"] == c]
        out.append(PointResult(
            workload=workload, group=" / ".join(x for x in (info.loc[c, "run"], workload, info.loc[c, "config"]) if x),
            mode=info.loc[c, "mode"], balance=_norm(info.loc[c, "balance"]), label=s["mode_label"],
            value=float(s["peak_mean"]), saturated=bool(s["saturated"]),
            flags=("peak from flagged steps" if not s["all_faithful"] else ""),
            points=list(points.get(c, [])),
            reps={int(r): float(v) for r, v in zip(pk["repetition"], pk["reply_rate"])}))
    return out


def _shifting_results(prep: Prepared, workload: str) -> list[PointResult]:
    st = prep.steps[prep.steps["workload"] == workload]
    if st.empty:
        return []
    out = []
    keys = ["run", "config_label", "mode", "mode_label"]
    st = st.assign(_bal=[_norm(b) for b in st.get("balance", [None] * len(st))],
                   _phase=pd.to_numeric(st["phase"], errors="coerce") if "phase" in st else 0)
    for (run, cfg, mode, label, bal), df in st.groupby(keys + ["_bal"], sort=False, dropna=False):
        per_phase = df.groupby("_phase")["reply_rate"].mean().sort_index()
        # mean over phases of each repetition, then over repetitions
        per_rep = df.groupby("repetition")["reply_rate"].mean()
        flagged = df[~df["faithful"]]
        flags = ""
        if not flagged.empty:
            ph = sorted({int(p) for p in flagged["_phase"].dropna()})
            flags = "flagged phase(s) " + ", ".join(str(p) for p in ph) + ": " + ", ".join(
                sorted({f for x in flagged["flags"] for f in str(x).split(",") if f}))
        out.append(PointResult(
            workload=workload, group=" / ".join(x for x in (run, workload, cfg) if x), mode=mode, balance=bal,
            label=label, value=float(per_rep.mean()), phases=[float(v) for v in per_phase.to_numpy()],
            flags=flags, points=list(df["point"].unique()),
            reps={int(r): float(v) for r, v in per_rep.items()}))
    return out


def _controller(balance: pd.DataFrame | None, res: PointResult) -> PointResult:
    """``res`` with its controller's moves, reversals and final split (mean over repetitions)."""
    if balance is None or balance.empty or "point" not in balance:
        return res
    rows = balance[balance["point"].isin(res.points)]
    if rows.empty:
        return res
    last = rows.sort_values("t").groupby("point").tail(1)
    nan = float("nan")
    return replace(res, moves=float(last["moves"].mean()) if "moves" in last else nan,
                   reversals=float(last["reversals"].mean()) if "reversals" in last else nan,
                   final_split=float(last["split"].mean()) if "split" in last else nan,
                   knob=str(rows["knob"].iloc[0]) if "knob" in rows else "")


@dataclass(frozen=True)
class Comparison:
    """One workload and group (run/configuration) and offload mode: the policies side by side."""
    workload: str
    group: str
    mode: str
    regular: PointResult | None
    fixed: list[PointResult]
    adaptive: list[PointResult]
    others: list[PointResult]

    @property
    def steady(self) -> bool:
        return self.workload != SHIFTING

    @property
    def best_fixed(self) -> PointResult | None:
        ok = [f for f in self.fixed if not np.isnan(f.value)]
        return max(ok, key=lambda f: f.value) if ok else None

    @property
    def full_offload(self) -> PointResult | None:
        return next((f for f in self.fixed if f.balance == FULL_OFFLOAD), None)

    def all(self) -> list[PointResult]:
        return ([self.regular] if self.regular else []) + self.fixed + self.adaptive + self.others


def comparisons(prep: Prepared | None, balance: pd.DataFrame | None,
                workloads: list[str] | None = None) -> list[Comparison]:
    """Per workload, group and offload mode; Regular TCP of the same group is the baseline."""
    if prep is None or prep.steps.empty or "balance" not in prep.steps:
        return []
    out = []
    order = list(dict.fromkeys(prep.steps["workload"]))
    if workloads:  # the experiment's order (static, dynamic, shifting), not the alphabet's
        order.sort(key=lambda w: workloads.index(w) if w in workloads else len(workloads))
    for wl in order:
        results = _shifting_results(prep, wl) if wl == SHIFTING else _steady_results(prep, wl)
        results = [_controller(balance, r) for r in results]
        for group in dict.fromkeys(r.group for r in results):
            mine = [r for r in results if r.group == group]
            regular = next((r for r in mine if r.mode == REGULAR), None)
            for mode in dict.fromkeys(r.mode for r in mine if r.mode != REGULAR):
                rs = [r for r in mine if r.mode == mode]
                fixed = sorted([r for r in rs if r.kind == "fixed"], key=lambda r: _fixed_split(r.balance))
                adaptive = [r for r in rs if r.kind == "adaptive"]
                if not fixed and not adaptive:
                    continue
                out.append(Comparison(wl, group, mode, regular, fixed, adaptive,
                                      [r for r in rs if r.kind == "offload"]))
    return out


# --------------------------------------------------------------------------- tables


def _ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or np.isnan(a) or np.isnan(b) or b <= 0:
        return float("nan")
    return a / b


def _what(c: Comparison) -> str:
    return "mean replies/s over phases" if not c.steady else "peak replies/s"


def summary_table(comps: list[Comparison]) -> pd.DataFrame:
    """One row per workload (group, offload mode) and adaptive policy: the balancing table."""
    rows = []
    for c in comps:
        best = c.best_fixed
        for a in c.adaptive or [None]:
            r_best = _ratio(a.value if a else None, best.value if best else None)
            r_reg = _ratio(a.value if a else None, c.regular.value if c.regular else None)
            rows.append({
                "workload": c.group, "offload mode": c.mode, "measure": _what(c),
                "best fixed split": best.balance if best else "-",
                "best fixed replies/s": _num(best.value) if best else "-",
                "adaptive": a.balance if a else "-", "adaptive replies/s": _num(a.value) if a else "-",
                "adaptive / best fixed": "-" if np.isnan(r_best) else f"{r_best:.3f}",
                "Regular TCP replies/s": _num(c.regular.value) if c.regular else "-",
                "adaptive / Regular": "-" if np.isnan(r_reg) else f"{r_reg:.3f}",
                "moves": _num(a.moves, 0 if a is None or float(a.moves).is_integer() else 1) if a else "-",
                "reversals": _num(a.reversals, 0 if a is None or float(a.reversals).is_integer() else 1)
                if a else "-",
                "final split": _num(a.final_split, 3) if a else "-",
                "flags": "; ".join(f"{r.label}: {r.flags}" for r in ([best] if best else []) + ([a] if a else [])
                                   + ([c.regular] if c.regular else []) if r.flags),
            })
    return pd.DataFrame(rows)


def points_table(c: Comparison) -> pd.DataFrame:
    """Every policy of one comparison: its result, ratios, controller counts, phases."""
    best = c.best_fixed
    rows = []
    nphases = max((len(r.phases) for r in c.all()), default=0)
    for r in c.all():
        row: dict[str, Any] = {"policy": "Regular TCP" if r.mode == REGULAR else (r.balance or r.mode)}
        row[_what(c)] = _num(r.value)
        if not c.steady:
            for i in range(nphases):
                row[f"phase {i}"] = _num(r.phases[i]) if i < len(r.phases) else "-"
        else:
            row["saturated"] = "-" if r.saturated is None else ("yes" if r.saturated else "no (lower bound)")
        row["vs best fixed"] = "-" if best is None or r is best else f"{_ratio(r.value, best.value):.3f}"
        if r is best:
            row["vs best fixed"] = "best fixed"
        row["vs Regular TCP"] = "-" if c.regular is None or r is c.regular else \
            f"{_ratio(r.value, c.regular.value):.3f}"
        row["moves"] = _num(r.moves)
        row["reversals"] = _num(r.reversals)
        row["final split"] = _num(r.final_split, 3)
        row["flags"] = r.flags
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- words


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def _compare(a: PointResult, ref: PointResult, equivalence_pct: float) -> str:
    """'+3.1% [-2.0, +8.2] over 3 paired rounds, not resolved (1,234 vs 1,197 replies/s)'."""
    iv = paired_gain_pct(a.reps, ref.reps)
    v = verdict(iv, equivalence_pct)
    if iv.n == 0:
        return f"no paired rounds ({a.value:,.0f} vs {ref.value:,.0f} replies/s)"
    if iv.n < 2:
        return (f"{iv.mean:+.1f}% in one round: no interval ({a.value:,.0f} vs {ref.value:,.0f} replies/s)")
    return (f"{iv.mean:+.1f}% [{iv.lo:+.1f}, {iv.hi:+.1f}] over {iv.n} paired rounds, {v} "
            f"({a.value:,.0f} vs {ref.value:,.0f} replies/s)")


def comparison_sentences(comps: list[Comparison], runs: list[Any]) -> list[str]:
    """The balancing results as measured comparisons: each a gain paired by round with its
    95% interval and verdict ("higher"/"lower" when the interval excludes 0, "no
    difference" only inside the equivalence bound, else "not resolved")."""
    out: list[str] = []
    params = {}
    for r in runs:
        params.update(r.manifest.get("params") or {})
    eq = max((r.equivalence_pct for r in runs if hasattr(r, "equivalence_pct")), default=EQUIVALENCE_PCT)
    topology = {r.manifest.get("topology") for r in runs}
    for c in comps:
        where = f"[{c.group}, {c.mode}] "
        best = c.best_fixed
        for a in c.adaptive:
            if np.isnan(a.value):
                out.append(f"{where}{a.balance}: no result (no step measured).")
                continue
            what = "peak" if c.steady else "mean reply rate over the phases"
            if best is None:
                out.append(f"{where}{a.balance}: no fixed split ran on this workload: nothing to compare the "
                           "adaptive policy with.")
            else:
                text = (f"{where}{a.balance} against the best fixed split {best.balance}, {what}: "
                        + _compare(a, best, eq) + ".")
                if not c.steady and a.phases and best.phases:
                    text += " Per phase (adaptive vs best fixed): " + ", ".join(
                        f"{i}: {x:,.0f} vs {y:,.0f}" for i, (x, y) in enumerate(zip(a.phases, best.phases))) + "."
                caveats = [f"{p.label} did not saturate (its peak is a lower bound)"
                           for p in (a, best) if p.saturated is False]
                caveats += [f"{p.label}: {p.flags}" for p in (a, best) if p.flags]
                if len(c.fixed) < 3:
                    caveats.append(f"only {len(c.fixed)} fixed split(s) ran, so the best fixed split is "
                                   "only the best of those")
                if caveats:
                    text += " Caveat: " + "; ".join(caveats) + "."
                out.append(text)
            if c.workload == "static" and a.knob != "cpu":
                out.append(where + _equal_nodes_sentence(c, a, params, topology, eq))
    return out




def _equal_nodes_sentence(c: Comparison, a: PointResult, params: dict[str, Any], topology: set[Any],
                          eq: float = EQUIVALENCE_PCT) -> str:
    host, tcps = params.get("host_cpu"), params.get("tcpserver_cpu")
    equal = host is not None and tcps is not None and float(host) == float(tcps)
    head = f"{a.balance} on static load with two equal nodes ({host} CPU each), peak: "
    if not equal:
        return (f"{a.balance} on static load: the nodes were not equal (host_cpu {host}, tcpserver_cpu {tcps}, "
                f"topology {', '.join(map(str, topology))}), so no equal-nodes comparison.")
    parts = []
    for name, ref in (("Regular TCP", c.regular), ("full offload (fixed:1.0)", c.full_offload)):
        if ref is None or np.isnan(ref.value) or ref.value <= 0:
            parts.append(f"against {name}: not run")
            continue
        parts.append(f"against {name} " + _compare(a, ref, eq))
    return head + "; ".join(parts) + "."


def accounting_note(runs: list[Any]) -> str:
    irq = {irq_time_accounting_of(r.manifest) for r in runs}
    base = ("Where the pass-through path's kernel work is charged: connections the TCP server does not "
            "terminate are DNATed by an nftables rule and forwarded in the TCP-server node's kernel, in softirq "
            "context. ")
    if irq == {False}:
        return base + ("This kernel has no IRQ time accounting (CONFIG_IRQ_TIME_ACCOUNTING is not set), so that "
                       "NAT and forwarding work is charged to the cgroup of whichever process was running on the "
                       "CPU when the packet was sent, in practice the sender processes (the client's load "
                       "generator and the host's application), not to the TCP server's cgroup. The TCP server's "
                       "measured CPU (and so the controller's network-side pressure) understates what "
                       "pass-through costs; the host's and the client's overstate it.")
    if irq == {True}:
        return base + ("This kernel accounts IRQ time separately (CONFIG_IRQ_TIME_ACCOUNTING=y): that work shows "
                       "as softirq time in /proc/stat and is charged to no cgroup, neither the TCP server's nor "
                       "the sender's.")
    return base + ("Whether this kernel accounts IRQ time is not known (the run did not record it, and the "
                   "report was built on another kernel or cannot read its configuration): without it, that "
                   "NAT and forwarding work is charged to the sender processes (client and host), not to the "
                   "TCP server's cgroup.")


# --------------------------------------------------------------------------- entry points


def summary_for(run: Any, prep: Prepared | None) -> str:
    """The terminal text of one run's balancing results ('' when it has none)."""
    if not has_balance(run):
        return ""
    comps = comparisons(prep, run.tables.get("balance"), run.manifest.get("workloads"))
    lines = ["Balancing host and TCP server:"]
    if not comps:
        return "\n".join(lines + ["  no step of a balance point was measured"])
    table = summary_table(comps)
    cols = [c for c in ("workload", "offload mode", "best fixed split", "best fixed replies/s", "adaptive",
                        "adaptive replies/s", "adaptive / best fixed", "Regular TCP replies/s",
                        "adaptive / Regular", "moves", "reversals", "final split") if c in table]
    lines.append(table[cols].to_string(index=False))
    lines.append("")
    lines += [f"- {s}" for s in comparison_sentences(comps, [run])]
    lines.append(f"- {accounting_note([run])}")
    return "\n".join(lines)


def balance_summary(run_dir: str | Path) -> str:
    """The balancing results of a run as text ('' when the run has no balance points)."""
    run = RunInfo.load(run_dir)
    if not has_balance(run):
        return ""
    try:
        prep: Prepared | None = prepare_runs([run])
    except EmptyRun:
        prep = None
    return summary_for(run, prep)

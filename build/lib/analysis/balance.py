"""The balancing part of the report (issue 8): how the adaptive host/TCP-server balance did
against every fixed split and against Regular TCP.

    from analysis.balance import balance_summary
    print(balance_summary("results/paper-balance-<time>"))

A run has balance points when the ``balance`` column of its points is set (``fixed:S``,
``adaptive[:...]``) or its ``balance`` table (the controller's decisions) is not empty.
Per workload the report gets:

- a figure: reply rate per 1 s bin over the point's time (replies completed in the bin,
  from ``requests.parquet``: status 1-399 and no error), one line per point, the split
  (the network side's share, from the decisions) on a second y axis, the offered load and
  the measured windows shaded, phase boundaries of the shifting workload marked;
- a table: the best fixed split, the adaptive result, their ratio, Regular TCP and the
  adaptive's ratio to it, the controller's moves, reversals and final split; and the
  same per point;
- sentences against the goals of issue 8.

The *result* of a point on a steady workload (static, dynamic, ...) is its peak faithful
reply rate, exactly as the report's gain table computes it (``frames.prepare``); on the
shifting workload it is the mean reply rate over the phases' measured windows (flagged
phases included, and said so). Repetitions are averaged.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .frames import REGULAR, Prepared

log = logging.getLogger(__name__)

SHIFTING = "shifting"
STEADY_WITHIN = 0.05  # goal: within 5% of the best fixed split on each steady workload
SHIFTING_ABOVE = 0.10  # goal: at least 10% above every fixed split on the shifting mix
EQUAL_NODES_ABOVE = 0.40  # goal: on static load with two equal nodes, >= 40% above Regular and fixed:1.0
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


@dataclass
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
        out.append(PointResult(
            workload=workload, group=" / ".join(x for x in (info.loc[c, "run"], workload, info.loc[c, "config"]) if x),
            mode=info.loc[c, "mode"], balance=_norm(info.loc[c, "balance"]), label=s["mode_label"],
            value=float(s["peak_mean"]), saturated=bool(s["saturated"]),
            flags=("peak from flagged steps" if not s["all_faithful"] else ""),
            points=list(points.get(c, []))))
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
            flags=flags, points=list(df["point"].unique())))
    return out


def _controller(balance: pd.DataFrame | None, res: PointResult) -> None:
    """Moves, reversals and final split of the point's controller (mean over repetitions)."""
    if balance is None or balance.empty or "point" not in balance:
        return
    rows = balance[balance["point"].isin(res.points)]
    if rows.empty:
        return
    last = rows.sort_values("t").groupby("point").tail(1)
    res.moves = float(last["moves"].mean()) if "moves" in last else float("nan")
    res.reversals = float(last["reversals"].mean()) if "reversals" in last else float("nan")
    res.final_split = float(last["split"].mean()) if "split" in last else float("nan")
    res.knob = str(rows["knob"].iloc[0]) if "knob" in rows else ""


@dataclass
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
        for r in results:
            _controller(balance, r)
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


def _num(v: float, digits: int = 0) -> str:
    return "-" if v is None or np.isnan(v) else f"{v:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or np.isnan(a) or np.isnan(b) or b <= 0:
        return float("nan")
    return a / b


def _what(c: Comparison) -> str:
    return "mean replies/s over phases" if not c.steady else "peak replies/s"


def summary_table(comps: list[Comparison]) -> pd.DataFrame:
    """One row per workload (group, offload mode) and adaptive policy: the table of issue 8."""
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


def goal_sentences(comps: list[Comparison], runs: list[Any]) -> list[str]:
    """The goals of issue 8, each met or missed with its margin."""
    out: list[str] = []
    params = {}
    for r in runs:
        params.update(r.manifest.get("params") or {})
    topology = {r.manifest.get("topology") for r in runs}
    for c in comps:
        where = f"[{c.group}, {c.mode}] "
        best = c.best_fixed
        for a in c.adaptive:
            if np.isnan(a.value):
                out.append(f"{where}{a.balance}: no result (no step measured).")
                continue
            if c.steady:
                if best is None:
                    out.append(f"{where}{a.balance}: no fixed split ran on this workload: the goal "
                               f"'within {STEADY_WITHIN:.0%} of the best fixed split' cannot be judged.")
                else:
                    r = a.value / best.value
                    met = r >= 1 - STEADY_WITHIN
                    text = (f"{where}Goal: within {STEADY_WITHIN:.0%} of the best fixed split on steady load: "
                            f"{'MET' if met else 'MISSED'}. The adaptive policy peaked at {a.value:,.0f} replies/s, "
                            f"{_pct(r - 1)} against the best fixed split {best.balance} ({best.value:,.0f}); "
                            + (f"{(r - (1 - STEADY_WITHIN)) * 100:.1f} points to spare."
                               if met else f"short of the goal by {((1 - STEADY_WITHIN) - r) * 100:.1f} points."))
                    caveats = [f"{p.label} did not saturate (its peak is a lower bound)"
                               for p in (a, best) if p.saturated is False]
                    caveats += [f"{p.label}: {p.flags}" for p in (a, best) if p.flags]
                    if len(c.fixed) < 3:
                        caveats.append(f"only {len(c.fixed)} fixed split(s) ran, so the best fixed split is "
                                       "only the best of those")
                    if caveats:
                        text += " Caveat: " + "; ".join(caveats) + "."
                    out.append(text)
            else:
                if not c.fixed:
                    out.append(f"{where}{a.balance}: no fixed split ran on the shifting mix: the goal "
                               f"'{SHIFTING_ABOVE:.0%} above every fixed split' cannot be judged.")
                else:
                    r = a.value / best.value  # type: ignore[union-attr]
                    met = r >= 1 + SHIFTING_ABOVE
                    text = (f"{where}Goal: at least {SHIFTING_ABOVE:.0%} above every fixed split on the shifting mix: "
                            f"{'MET' if met else 'MISSED'}. The adaptive policy's mean over the phases was "
                            f"{a.value:,.0f} replies/s, {_pct(r - 1)} against the best fixed split "
                            f"{best.balance} ({best.value:,.0f}); "  # type: ignore[union-attr]
                            + (f"{(r - 1 - SHIFTING_ABOVE) * 100:.1f} points to spare."
                               if met else f"short of the goal by {(1 + SHIFTING_ABOVE - r) * 100:.1f} points."))
                    if a.phases and best.phases:  # type: ignore[union-attr]
                        text += " Per phase (adaptive vs best fixed): " + ", ".join(
                            f"{i}: {x:,.0f} vs {y:,.0f}" for i, (x, y) in
                            enumerate(zip(a.phases, best.phases))) + "."  # type: ignore[union-attr]
                    flagged = [f"{p.label}: {p.flags}" for p in (a, best) if p and p.flags]
                    if flagged:
                        text += (" Caveat: " + "; ".join(flagged) + " (their phases count in the mean: "
                                 "the server was overloaded there or the generator could not keep up).")
                    out.append(text)
            if c.workload == "static" and a.knob != "cpu":
                out.append(where + _equal_nodes_sentence(c, a, params, topology))
    return out


def _equal_nodes_sentence(c: Comparison, a: PointResult, params: dict[str, Any], topology: set[Any]) -> str:
    host, tcps = params.get("host_cpu"), params.get("tcpserver_cpu")
    equal = host is not None and tcps is not None and float(host) == float(tcps)
    head = (f"Goal: on static load with two equal nodes, the adaptive work split at least {EQUAL_NODES_ABOVE:.0%} "
            f"above both Regular TCP and full offload (fixed:1.0): ")
    if not equal:
        return head + (f"not applicable as run: the nodes were not equal (host_cpu {host}, tcpserver_cpu {tcps}, "
                       f"topology {', '.join(map(str, topology))}).")
    parts, verdicts = [], []
    for name, ref in (("Regular TCP", c.regular), ("full offload (fixed:1.0)", c.full_offload)):
        if ref is None or np.isnan(ref.value) or ref.value <= 0:
            parts.append(f"{name} was not run, so this half cannot be judged")
            verdicts.append(None)
            continue
        r = a.value / ref.value
        ok = r >= 1 + EQUAL_NODES_ABOVE
        verdicts.append(ok)
        parts.append(f"{_pct(r - 1)} against {name} ({a.value:,.0f} vs {ref.value:,.0f} replies/s), "
                     + (f"met with {(r - 1 - EQUAL_NODES_ABOVE) * 100:.1f} points to spare" if ok else
                        f"missed by {(1 + EQUAL_NODES_ABOVE - r) * 100:.1f} points"))
    verdict = ("MET" if all(verdicts) else "MISSED" if any(v is False for v in verdicts)
               else "NOT JUDGED") if verdicts else "NOT JUDGED"
    if verdict != "MISSED" and None in verdicts:
        verdict = "NOT FULLY JUDGED"
    return head + f"{verdict}. " + "; ".join(parts) + f" (equal nodes: {host} CPU each)."


def accounting_note(runs: list[Any]) -> str:
    from .report import irq_time_accounting
    irq = {irq_time_accounting(r.manifest) for r in runs}
    base = ("Where the pass-through path's kernel work is charged: connections the TCP server does not "
            "terminate are DNATed by an nftables rule and forwarded in the TCP-server node's kernel, in softirq "
            "context. ")
    if irq == {"n"}:
        return base + ("This kernel has no IRQ time accounting (CONFIG_IRQ_TIME_ACCOUNTING is not set), so that "
                       "NAT and forwarding work is charged to the cgroup of whichever process was running on the "
                       "CPU when the packet was sent, in practice the sender processes (the client's load "
                       "generator and the host's application), not to the TCP server's cgroup. The TCP server's "
                       "measured CPU (and so the controller's network-side pressure) understates what "
                       "pass-through costs; the host's and the client's overstate it.")
    if irq == {"y"}:
        return base + ("This kernel accounts IRQ time separately (CONFIG_IRQ_TIME_ACCOUNTING=y): that work shows "
                       "as softirq time in /proc/stat and is charged to no cgroup, neither the TCP server's nor "
                       "the sender's.")
    return base + ("Whether this kernel accounts IRQ time is not known (the report was built on another kernel): "
                   "without it, that NAT and forwarding work is charged to the sender processes (client and "
                   "host), not to the TCP server's cgroup.")


# --------------------------------------------------------------------------- the figure


def _point_replies(point_dir: Path) -> tuple[np.ndarray, list[tuple[int, float]]]:
    """(completion times of the point's successful replies, [(phase, first intended time)] per
    load-generator run: one for a sweep, one per phase of the shifting workload)."""
    import pyarrow.parquet as pq
    dones, spans = [], []
    for f in sorted((point_dir / "load").glob("**/requests.parquet")):
        t = pq.read_table(f, columns=["intended", "done", "status", "error"]).to_pandas()
        if t.empty:
            continue
        err = t["error"].astype(object).where(t["error"].notna(), "").astype(str)
        ok = (err == "") & (t["status"] > 0) & (t["status"] < 400) & t["done"].notna()
        dones.append(t.loc[ok, "done"].to_numpy(dtype=float))
        name = f.parent.name
        phase = int(name[5:]) if name.startswith("phase") and name[5:].isdigit() else -1
        spans.append((phase, float(t["intended"].min())))
    return (np.concatenate(dones) if dones else np.zeros(0)), sorted(spans, key=lambda s: s[1])


class _Clock:
    """Maps each point's epoch times onto one axis on which every point's load-generator runs
    (phases) start together: a phase starts at the same x for every point, late enough that
    no point's previous phase runs into it."""

    def __init__(self, spans: dict[str, list[tuple[int, float]]]):
        self.spans = {p: s for p, s in spans.items() if s}
        n = max((len(s) for s in self.spans.values()), default=0)
        self.starts = [0.0] * n
        for k in range(1, n):
            gaps = [s[k][1] - s[k - 1][1] for s in self.spans.values() if len(s) > k]
            self.starts[k] = self.starts[k - 1] + max(gaps)
        self.phases = [next((s[k][0] for s in self.spans.values() if len(s) > k), -1) for k in range(n)]

    def x(self, point: str, t: np.ndarray) -> np.ndarray:
        s = self.spans.get(point)
        t = np.asarray(t, dtype=float)
        if not s:
            return np.full(t.shape, np.nan)
        los = np.array([lo for _, lo in s])
        k = np.clip(np.searchsorted(los, t, side="right") - 1, 0, len(los) - 1)
        return t - los[k] + np.array(self.starts)[k]


def _label(r: PointResult) -> str:
    return "Regular TCP" if r.mode == REGULAR else f"{r.mode}:{r.balance}" if r.balance else r.mode


def draw_workload(c: Comparison, run: Any, prep: Prepared, out: Path, name: str) -> str:
    """Reply rate over time per point (repetition 1) with the split on a second y axis."""
    from . import figures
    plt = figures.plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(12, 5.4))
    ax2 = ax.twinx()
    balance = run.tables.get("balance")
    results = c.all()
    fixed_cmap = plt.get_cmap("viridis")
    handles: list[Any] = []
    first_rep = {}
    st = prep.steps
    for r in results:
        reps = st[st["point"].isin(r.points)].sort_values("repetition")
        first_rep[id(r)] = reps["point"].iloc[0] if not reps.empty else (r.points[0] if r.points else None)
    replies, spans = {}, {}
    for r in results:
        point = first_rep[id(r)]
        if point is not None:
            replies[point], spans[point] = _point_replies(run.dir / "points" / point)
    clock = _Clock(spans)
    xmax = 0.0
    for r in results:
        point = first_rep[id(r)]
        if point is None or point not in clock.spans:
            continue
        if r.mode == REGULAR:
            color, lw, z = "black", 1.6, 4
        elif r.kind == "adaptive":
            color, lw, z = ("tab:red", "tab:purple", "tab:brown")[c.adaptive.index(r) % 3], 2.4, 6
        elif r.kind == "fixed":
            n = max(len(c.fixed) - 1, 1)
            color, lw, z = fixed_cmap(0.1 + 0.75 * c.fixed.index(r) / n), 1.4, 3
        else:
            color, lw, z = "tab:gray", 1.2, 2
        x = clock.x(point, replies[point])
        x = x[x >= 0]
        if len(x):
            counts = np.bincount(np.floor(x).astype(np.int64)).astype(float)
            ax.plot(np.arange(len(counts)) + 0.5, counts, color=color, linewidth=lw, zorder=z, marker="o",
                    markersize=2.5)
            xmax = max(xmax, float(len(counts)))
        handles.append(Line2D([], [], color=color, linewidth=lw, label=f"{_label(r)}: replies/s"))
        # the split: the controller's decisions (a fixed policy logs its constant split too)
        if balance is not None and not balance.empty and "point" in balance:
            dec = balance[balance["point"] == point].sort_values("t")
            if not dec.empty:
                style = dict(linewidth=2.0, linestyle="--") if r.kind == "adaptive" else \
                    dict(linewidth=1.0, linestyle=":")
                ax2.step(clock.x(point, dec["t"].to_numpy(dtype=float)), dec["split"].to_numpy(dtype=float),
                         where="post", color=color, zorder=z, alpha=0.9, **style)  # type: ignore[arg-type]
                handles.append(Line2D([], [], color=color, label=f"{_label(r)}: split (right axis)",
                                      **style))  # type: ignore[arg-type]
    # offered load and measured windows of the adaptive point (else the first), phase starts
    ref = next((first_rep[id(r)] for r in c.adaptive if first_rep[id(r)] in clock.spans), None) or \
        next((first_rep[id(r)] for r in results if first_rep[id(r)] in clock.spans), None)
    if ref is not None:
        rs = st[st["point"] == ref].sort_values("t_start")
        warm = float((run.manifest.get("load") or {}).get("warmup_seconds", 0) or 0)
        for _, s in rs.iterrows():
            a_, b_ = clock.x(ref, np.array([float(s["t_start"]), float(s["t_end"])]))
            ax.axvspan(a_, b_, color="tab:blue", alpha=0.06, linewidth=0)
            ax.hlines(float(s["offered"]), a_ - warm, b_, colors="grey", linestyles="--", linewidth=1.0)
        handles.append(Line2D([], [], color="grey", linestyle="--", linewidth=1.0,
                              label="offered load" + ("" if ref == first_rep[id(results[0])] and not c.adaptive
                                                      else " (adaptive point's schedule)")))
        handles.append(Patch(color="tab:blue", alpha=0.15, label="measured window"))
    if c.workload == SHIFTING and clock.starts:
        mixes = _phase_mixes(run)
        for phase, x0 in zip(clock.phases, clock.starts):
            if phase < 0:
                continue
            ax.axvline(x0, color="dimgrey", linewidth=1.4)
            mix = f"\nstatic share {mixes[phase]:g}" if phase < len(mixes) else ""
            ax.text(x0 + 0.1, 0.98, f"phase {phase}{mix}", transform=ax.get_xaxis_transform(),
                    va="top", ha="left", fontsize=8, color="dimgrey")
        handles.append(Line2D([], [], color="dimgrey", linewidth=1.4, label="phase start"))
    ax.set_xlim(-0.5, max(xmax, 1.0) + 0.5)
    ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1.0) * (1.15 if c.workload == SHIFTING else 1.05))
    ax2.set_ylim(-0.03, 1.05)
    ax.set_xlabel("seconds since the point's load started" + (" (each phase aligned on its start)"
                                                              if c.workload == SHIFTING else "")
                  + "; repetition 1")
    ax.set_ylabel("replies/s (1 s bins, replies completed in the bin)")
    ax2.set_ylabel("split: the network side's share (work the TCP server terminates)")
    ax.set_title(f"reply rate over time and the split: {c.group} ({c.mode})")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.08, 1.0))
    return figures._finish(fig, out, name)


def _phase_mixes(run: Any) -> list[float]:
    ph = run.manifest.get("phases")
    if not ph:
        try:
            import yaml
            ph = (yaml.safe_load((run.dir / "experiment.yaml").read_text()) or {}).get("phases")
        except Exception:  # no yaml, no file: the phases are still marked, without their mix
            ph = None
    try:
        return [float(p["mix"]) for p in ph or []]
    except (TypeError, KeyError, ValueError):
        return []


# --------------------------------------------------------------------------- entry points


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in s).strip("-").lower() or "x"


def sections(runs: list[Any], prep: Prepared | None, out: Path) -> list[str]:
    """The report's "Balancing host and TCP server" section (empty when no run balanced)."""
    from .report import html_table
    runs = [r for r in runs if has_balance(r)]
    if not runs:
        return []
    parts = ["<h2 id='balancing'>Balancing host and TCP server</h2>",
             "<p>Beyond the paper (issue 8): the split is the network side's share (work split: the share of "
             "new connections the TCP server terminates, the rest passed through its node's kernel to the host's "
             "kernel TCP). Each offload point ran one policy: a fixed split, or the adaptive controller. "
             "A point's result is its <b>peak faithful reply rate</b> on a steady workload (as in the gain "
             "table above) and the <b>mean reply rate over the phases' measured windows</b> on the shifting "
             "mix.</p>"]
    for run in runs:
        run_prep = prep
        if prep is not None and len(runs) > 1:
            run_prep = _subset(prep, run.name)
        comps = comparisons(run_prep, run.tables.get("balance"), run.manifest.get("workloads"))
        if len(runs) > 1:
            parts.append(f"<h3>{html.escape(run.name)}</h3>")
        if not comps:
            parts.append("<p><i>No step of a balance point was measured: nothing to compare.</i></p>")
            continue
        parts.append("<div class='note result'>" + "<br>".join(
            html.escape(s) for s in goal_sentences(comps, [run])) + "</div>")
        parts.append(f"<div class='note'>{html.escape(accounting_note([run]))}</div>")
        parts.append(html_table(summary_table(comps), table_id=_id("balance", run, runs)))
        for c in comps:
            key = f"balance_{_slug(run.name) + '_' if len(runs) > 1 else ''}{_slug(c.group)}_{_slug(c.mode)}"
            parts.append(f"<h3>{html.escape(c.group)} ({html.escape(c.mode)})</h3>")
            try:
                png = draw_workload(c, run, run_prep, out, key + ".png")  # type: ignore[arg-type]
                caption = ("Reply rate per 1 s bin (solid) for each point, from its requests; the split "
                           "(right axis): dashed for the adaptive controller's decisions, dotted for fixed "
                           "splits; grey dashes: offered load; shaded: the measured windows"
                           + ("; vertical lines: phase starts." if c.workload == SHIFTING else ".")
                           + " Only the first repetition is drawn.")
                parts.append(f'<figure><img src="{html.escape(png)}" alt="{html.escape(key)}">'
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")
            except Exception:  # a broken figure must not cost the section
                log.exception("balance figure %s failed", key)
                import matplotlib.pyplot as plt
                plt.close("all")
                parts.append(f"<p><i>figure {html.escape(key)} could not be drawn (see the log)</i></p>")
            parts.append(html_table(points_table(c), table_id=f"{key.replace('_', '-')}-points"))
    return parts


def _id(base: str, run: Any, runs: list[Any]) -> str:
    return base if len(runs) == 1 else f"{base}-{_slug(run.name)}"


def _subset(prep: Prepared, run_name: str) -> Prepared:
    from dataclasses import replace
    keep = lambda df: df[df["run"] == run_name] if "run" in df else df  # noqa: E731
    return replace(prep, steps=keep(prep.steps), curves=keep(prep.curves), peaks=keep(prep.peaks),
                   saturation=keep(prep.saturation))


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
    lines += [f"- {s}" for s in goal_sentences(comps, [run])]
    lines.append(f"- {accounting_note([run])}")
    return "\n".join(lines)


def balance_summary(run_dir: str | Path) -> str:
    """The balancing results of a run as text ('' when the run has no balance points)."""
    from .report import EmptyRun, RunInfo, prepare_runs
    run = RunInfo.load(run_dir)
    if not has_balance(run):
        return ""
    try:
        prep: Prepared | None = prepare_runs([run])
    except EmptyRun:
        prep = None
    return summary_for(run, prep)

"""The paper against this testbed: each claim the paper makes for the run's architecture,
the measured counterpart with its interval, and a verdict computed from the data.

The claims are the slides' (Rangarajan et al., DCS-TR-481), by architecture: the 2-node
cluster on static and on static+dynamic (mixed, else dynamic) load, the 4-way SMP, and the
intelligent-NIC simulation. Only claims the run has the curves for are listed.

Verdicts:

- **reproduced**: the 95% interval is consistent with the paper's figure (contains it, or
  overlaps the paper's range; a claim of direction only, "later", "two > one": the
  interval excludes no effect on the paper's side); for a "what saturates first" claim:
  the named resource saturated first;
- **same direction**: the interval excludes no effect on the paper's side but not the
  paper's figure (a larger or smaller effect of the same sign);
- **not reproduced**: the interval excludes no effect on the other side (or another
  resource saturated first);
- **no difference**: the interval lies inside the equivalence bound (±5% unless the
  experiment says otherwise); **not resolved**: it contains no effect and effects beyond
  the bound;
- **... only when the TCP server's CPU comes on top**: a throughput gain measured with the
  TCP server's CPU on top of the host's (``budgets: extra``) that would be a loss at the
  same total CPU: the offloaded mode's server-side CPU per reply above Regular TCP's at
  matched load (``frames.matched_load_cpu``: the same offered step, below both knees).

Intervals: gains over Regular TCP come from ``Prepared.saturation`` (``gain_pct``,
``gain_ci_lo``, ``gain_ci_hi``: paired per interleaved repetition) when the frames have
them; otherwise, and for mode-against-mode claims, they are computed here the same way:
the per-repetition ratio of the two peaks, its mean and Student's t 95% interval. With
one repetition there is no interval: the verdict follows the point estimate and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .frames import REGULAR, Prepared, cpu_at_saturation, matched_load_cpu, of_run
from .intervals import EQUIVALENCE_PCT, mean_ci, paired_gain_pct
from .run import roles_of
from .utilization import first_bottleneck

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
SAME_DIRECTION = "same direction"
NO_DIFFERENCE = "no difference"
NOT_RESOLVED = "not resolved"
ON_TOP = " only when the TCP server's CPU comes on top"
IDLE_SHARE = 0.10  # "the host has idle time": at least 10% of its budget unused at saturation


@dataclass(frozen=True)
class Gain:
    """A percentage change with its 95% interval over n paired repetitions."""
    mean: float
    lo: float
    hi: float
    n: int
    bound: str = ""  # "lower": the value is at least this (a peak on the top offered step)

    def text(self) -> str:
        if math.isnan(self.mean):
            return "-"
        if self.bound == "lower":
            return f"≥ {self.mean:+.1f}% (one-sided 95%: ≥ {self.lo:+.1f}; {self.n} repetitions)"
        if self.bound == "upper":
            return f"≤ {self.mean:+.1f}% (one-sided 95%: ≤ {self.hi:+.1f}; {self.n} repetitions)"
        if self.n < 2 or math.isnan(self.lo):
            return f"{self.mean:+.1f}% ({self.n} repetition{'s' if self.n != 1 else ''}: no interval)"
        return f"{self.mean:+.1f}% [{self.lo:+.1f}, {self.hi:+.1f}] ({self.n} repetitions)"


def paired_gain(a: pd.Series, b: pd.Series) -> Gain:
    """a over b in percent, paired by repetition (index), with a t interval."""
    return _gain(paired_gain_pct(dict(a.dropna().items()), dict(b.dropna().items())))


def _gain(iv: Any) -> Gain:
    return Gain(iv.mean, iv.lo, iv.hi, iv.n)


def paper_range(paper: str) -> tuple[float, float] | None:
    """The paper's figure as a range in percent: '+17%' -> (17, 17), '+25-30%' -> (25, 30);
    None for a claim of direction only ('later', 'two > one')."""
    import re
    m = re.fullmatch(r"\s*\+?(\d+(?:\.\d+)?)(?:\s*-\s*(\d+(?:\.\d+)?))?%.*", paper)
    if not m:
        return None
    lo = float(m[1])
    return lo, float(m[2]) if m[2] else lo


def gain_verdict(g: Gain, expect_positive: bool = True, paper: tuple[float, float] | None = None,
                 equivalence_pct: float = EQUIVALENCE_PCT) -> str:
    """The verdict of a measured gain against the paper's claim (``paper``: its figure as
    a range in percent, None for a claim of direction only)."""
    if math.isnan(g.mean):
        return "cannot be measured"
    lo = g.lo if g.n >= 2 and not math.isnan(g.lo) else (-math.inf if g.bound == "upper" and g.n >= 2 else math.nan)
    hi = g.hi if g.n >= 2 and not math.isnan(g.hi) else (math.inf if g.bound == "lower" and g.n >= 2 else math.nan)
    if g.n < 2 or math.isnan(lo) or math.isnan(hi):
        positive = g.mean > 0
        return (REPRODUCED if positive == expect_positive else NOT_REPRODUCED) + " (one repetition: no interval)"
    if lo > 0 or hi < 0:
        if (lo > 0) != expect_positive:
            return NOT_REPRODUCED
        if paper is None or (lo <= paper[1] and hi >= paper[0]):
            return REPRODUCED
        return SAME_DIRECTION + f" (the interval excludes the paper's {_range_text(paper)})"
    if lo >= -equivalence_pct and hi <= equivalence_pct:
        return NO_DIFFERENCE
    return NOT_RESOLVED


def _range_text(paper: tuple[float, float]) -> str:
    return f"+{paper[0]:g}%" if paper[0] == paper[1] else f"+{paper[0]:g}-{paper[1]:g}%"


@dataclass
class Claim:
    architecture: str
    claim: str
    paper: str
    measured: str
    verdict: str

    def row(self) -> dict[str, str]:
        return {"architecture": self.architecture, "the paper": self.claim, "paper's number": self.paper,
                "this testbed": self.measured, "verdict": self.verdict}


class _Run:
    """Lookups over one run's prepared frames."""

    def __init__(self, prep: Prepared, budgets: str, roles: dict[str, str]):
        self.prep, self.budgets, self.roles = prep, budgets, roles
        self.sat = prep.saturation
        self.peaks = prep.peaks
        cpu = cpu_at_saturation(prep)
        self.cpu_per_reply = (dict(zip(cpu["curve"], cpu["cpu_us_per_reply_servers"]))
                              if not cpu.empty and "cpu_us_per_reply_servers" in cpu else {})

    def rows(self, workload: str, modes: tuple[str, ...] | None = None) -> pd.DataFrame:
        s = self.sat[self.sat["workload"] == workload]
        return s if modes is None else s[s["mode_label"].isin(modes)]

    def reps(self, curve: str) -> pd.Series:
        p = self.peaks[self.peaks["curve"] == curve]
        return pd.Series(p["reply_rate"].to_numpy(dtype=float), index=p["repetition"].to_numpy())

    def regular_curve(self, row: pd.Series) -> str | None:
        base = row.get("baseline")
        reg = self.sat[(self.sat["group"] == base) & (self.sat["mode_label"] == REGULAR)]
        return None if reg.empty else str(reg["curve"].iloc[0])

    def gain(self, row: pd.Series) -> Gain:
        """The curve's gain over its Regular TCP: the frames' paired interval when present."""
        if {"gain_ci_lo", "gain_ci_hi"} <= set(row.index) and not pd.isna(row.get("gain_pct")):
            n = int(row.get("gain_pairs", row.get("repetitions", 1)) or 1)
            bound = str(row.get("gain_bound") or "")
            return Gain(float(row["gain_pct"]), float(row["gain_ci_lo"]), float(row["gain_ci_hi"]), n,
                        bound if bound in ("lower", "upper") else "")
        reg = self.regular_curve(row)
        return paired_gain(self.reps(row["curve"]), self.reps(reg)) if reg else Gain(np.nan, np.nan, np.nan, 0)

    def same_total(self, row: pd.Series) -> tuple[float, float, float, float]:
        """At matched load (the same offered step, below both knees): (offered, the mode's
        and Regular TCP's server-side CPU per reply, Regular's over the mode's: the ratio of
        rates at the same total CPU when both are CPU-bound); NaNs without such a step."""
        at, mine, reg = matched_load_cpu(self.prep, row["curve"], self.regular_curve(row))
        ratio = float(reg / mine) if mine and mine > 0 and reg == reg else float("nan")
        return at, mine, reg, ratio
    def offload_budget(self, row: pd.Series) -> tuple[float, float]:
        """(TCP server's or NIC's budget, host's budget) at the curve's saturation step."""
        p = self.peaks[self.peaks["curve"] == row["curve"]]
        off = host = float("nan")
        for c in (c for c in p.columns if c.startswith("budget_")):
            role = self.roles.get(c[len("budget_"):], "")
            v = pd.to_numeric(p[c], errors="coerce").mean()
            if role in ("tcpserver", "nic") and not np.isnan(v):
                off = v if np.isnan(off) else off + v
            elif role == "host" and not np.isnan(v):
                host = v if np.isnan(host) else host + v
        return off, host

    def bottleneck(self, curve: str) -> tuple[str, str, float]:
        return first_bottleneck(self.prep.steps[self.prep.steps["curve"] == curve])

    def idle_at_peak(self, curve: str, role: str) -> Gain:
        """The nodes of a role: idle share of their budget at the saturation step (%)."""
        p = self.peaks[self.peaks["curve"] == curve]
        cols = [f"idle_{n}" for n, r in self.roles.items() if r == role and f"idle_{n}" in p]
        if p.empty or not cols:
            return Gain(np.nan, np.nan, np.nan, 0)
        v = p[cols].apply(pd.to_numeric, errors="coerce").mean(axis=1).dropna().to_numpy() * 100
        return _gain(mean_ci(v))


def _label(row: pd.Series) -> str:
    return row["mode_label"] + (f" ({row['config_label']})" if row.get("config_label") else "")


def _gain_claim(run: _Run, rows: pd.DataFrame, arch: str, claim: str, paper: str,
                best: bool = True, figure: str | None = None) -> list[Claim]:
    """A throughput-gain claim over Regular TCP, for the best offloaded curve (or each)."""
    rows = rows[rows["mode_label"] != REGULAR]
    if rows.empty:
        return []
    if best:
        rows = rows.loc[[rows["peak_mean"].idxmax()]]
    out = []
    for _, r in rows.iterrows():
        g = run.gain(r)
        verdict = gain_verdict(g, paper=paper_range(figure if figure is not None else paper),
                               equivalence_pct=run.prep.equivalence_pct)
        measured = f"{_label(r)}: {g.text()} over Regular TCP"
        if not bool(r.get("saturated", True)) and not bool(r.get("regular_saturated", True)):
            verdict, measured = "cannot be measured", measured + "; neither saturated in the offered range"
        at, mine, reg, proj = run.same_total(r)
        if proj == proj:
            measured += (f"; at matched load ({at:,.0f} req/s, below both knees) {mine:.0f} against {reg:.0f} µs "
                         f"of server CPU per reply: at the same total CPU {proj:.2f}x Regular TCP's rate")
        if (verdict.startswith(REPRODUCED) or verdict.startswith(SAME_DIRECTION)) and run.budgets == "extra" \
                and proj == proj and proj < 1:
            head, _, rest = verdict.partition(" (")
            verdict = head + ON_TOP + (f" ({rest}" if rest else "")
        out.append(Claim(arch, claim, paper, measured, verdict))
    return out


def _equal_budget(run: _Run, rows: pd.DataFrame) -> pd.DataFrame:
    """The configuration(s) where the TCP server's budget equals the host's (the paper's two
    equal nodes); all rows when no configuration has that."""
    keep = []
    for i, r in rows.iterrows():
        off, host = run.offload_budget(r)
        if r["mode_label"] == REGULAR or (off == off and host == host and abs(off - host) < 1e-9):
            keep.append(i)
    sub = rows.loc[keep]
    return sub if (sub["mode_label"] != REGULAR).any() else rows


def _bottleneck_claim(run: _Run, row: pd.Series, arch: str, claim: str, paper: str, expect: str,
                      idle_role: str | None = None) -> Claim:
    kind, where, rate = run.bottleneck(row["curve"])
    measured = f"{_label(row)}: saturated first: {kind}" + (f" ({where})" if where and kind != "generator" else "")
    measured += "" if rate != rate else f" at {rate:,.0f} req/s offered"
    ok = kind == expect
    if idle_role:
        idle = run.idle_at_peak(row["curve"], idle_role)
        measured += f"; {idle_role} idle at saturation: " + (
            "-" if idle.mean != idle.mean else f"{idle.mean:.0f}%" + (
                f" [{idle.lo:.0f}, {idle.hi:.0f}]" if idle.n >= 2 else ""))
        ok = ok and idle.mean == idle.mean and idle.mean >= IDLE_SHARE * 100
    if kind in ("none", "generator"):
        return Claim(arch, claim, paper, measured, "cannot be measured (nothing server-side saturated)")
    return Claim(arch, claim, paper, measured, REPRODUCED if ok else NOT_REPRODUCED)


def _pair_claim(run: _Run, a: pd.Series, b: pd.Series, arch: str, claim: str, paper: str) -> Claim:
    g = paired_gain(run.reps(a["curve"]), run.reps(b["curve"]))
    return Claim(arch, claim, paper, f"{_label(a)} against {_label(b)}: {g.text()}",
                 gain_verdict(g, equivalence_pct=run.prep.equivalence_pct))


def cluster_claims(run: _Run) -> list[Claim]:
    out: list[Claim] = []
    arch = "cluster"
    static = run.rows("static")
    if not static.empty:
        eq = _equal_budget(run, static)
        out += _gain_claim(run, eq, arch, "Offloading raises peak throughput on static load (two equal "
                           "nodes); the best variant gains 17%", "+17%")
        others = static[(static["mode_label"] != REGULAR) & ~static.index.isin(eq.index)]
        for i, r in others.iterrows():  # TCP-server budget sweeps: the same claim per configuration
            off, host = run.offload_budget(r)
            out += _gain_claim(run, others.loc[[i]], arch, "Offloading raises peak throughput on static load "
                               f"(a TCP server of {off:g} CPU, the host {host:g})", "+17% (equal nodes)",
                               best=False, figure="later")  # the paper's 17% is for equal nodes: sign only
        split, asyn = eq[eq["mode_label"] == "split"], eq[eq["mode_label"] == "async-send"]
        if not split.empty and not asyn.empty:
            out.append(_pair_claim(run, asyn.iloc[0], split.iloc[0], arch, "Asynchronous send outperforms "
                                   "its synchronous counterpart (static load)", "AsyncSend > Split-TCP"))
        for _, r in eq[eq["mode_label"].isin(["split", "async-send"])].iterrows():
            out.append(_bottleneck_claim(run, r, arch, "Under Split-TCP and AsyncSend the host has idle time: "
                                         "the TCP server is the bottleneck (static load)", "host idle",
                                         "tcpserver", idle_role="host"))
    wl = "mixed" if not run.rows("mixed").empty else ("dynamic" if not run.rows("dynamic").empty else None)
    if wl:
        rows = _equal_budget(run, run.rows(wl))
        what = "static+dynamic" if wl == "mixed" else "dynamic"
        for _, r in rows[rows["mode_label"].isin(["split", "async-send"])].iterrows():
            out += _gain_claim(run, rows.loc[[_]], arch, f"Split-TCP and AsyncSend saturate later than "
                               f"Regular TCP ({what} load)", "later", best=False)
        reg = rows[rows["mode_label"] == REGULAR]
        if not reg.empty:
            out.append(_bottleneck_claim(run, reg.iloc[0], arch, f"Under Regular TCP the host CPU saturates "
                                         f"first, at about 500 req/s ({what} load)", "host, ~500 req/s",
                                         "host"))
        out += _gain_claim(run, rows, arch, f"The greatest throughput improvement is 18% ({what} load)",
                           "+18%")
    return out


def _by_offload_budget(run: _Run, rows: pd.DataFrame) -> list[tuple[float, pd.DataFrame]]:
    budgets: dict[float, list[int]] = {}
    for i, r in rows.iterrows():
        off, _ = run.offload_budget(r)
        if off == off:
            budgets.setdefault(round(off, 6), []).append(i)
    return [(b, rows.loc[idx]) for b, idx in sorted(budgets.items())]


def smp_claims(run: _Run) -> list[Claim]:
    out: list[Claim] = []
    arch = "SMP"
    for wl in dict.fromkeys(run.sat["workload"]):
        rows = run.rows(wl)
        off = rows[rows["mode_label"] != REGULAR]
        levels = _by_offload_budget(run, off)
        if len(levels) >= 2:
            (lo_b, lo), (hi_b, hi) = levels[0], levels[-1]
            for mode in dict.fromkeys(off["mode_label"]):
                a, b = hi[hi["mode_label"] == mode], lo[lo["mode_label"] == mode]
                if not a.empty and not b.empty:
                    out.append(_pair_claim(run, a.iloc[0], b.iloc[0], arch, "Dedicating two network processors "
                                           "is always better than one", "two > one"))
            for _, r in lo.iterrows():
                out.append(_bottleneck_claim(run, r, arch, "With one network processor it is the bottleneck and "
                                             "the application processor idles", "network processor",
                                             "tcpserver", idle_role="host"))
            for _, r in hi.iterrows():
                out.append(_bottleneck_claim(run, r, arch, "With two network processors the application "
                                             "processor becomes the bottleneck", "application processor",
                                             "host"))
        out += _gain_claim(run, rows, arch, "Throughput benefits of up to 25-30%", "+25-30%")
    return out


def inic_claims(run: _Run) -> list[Claim]:
    out: list[Claim] = []
    arch = "I-NIC"
    for wl in dict.fromkeys(run.sat["workload"]):
        rows = run.rows(wl)
        off = rows[rows["mode_label"] != REGULAR]
        for cfg, df in off.groupby("config_label", sort=True):
            split = df[df["mode_label"] == "split"]
            rest = df[df["mode_label"] != "split"]
            if not split.empty and not rest.empty:
                best = rest.loc[rest["peak_mean"].idxmax()]
                out.append(_pair_claim(run, split.iloc[0], best, arch, "Split-TCP outperforms all the other "
                                       "implementations, for every processor speed", "Split-TCP best"))
            if not split.empty:
                out.append(_bottleneck_claim(run, split.iloc[0], arch, "In Split-TCP the NIC's processor saturates "
                                             "much earlier than the host or the network", "NIC first", "nic"))
            out += _gain_claim(run, df, arch, "Improvements over a conventional system of 20-45%", "+20-45%")
    return out


ARCHITECTURES = {"cluster": cluster_claims, "multihost": cluster_claims, "smp": smp_claims, "inic": inic_claims}


def claims_table(runs: list[Any], prep: Prepared) -> pd.DataFrame:
    """Every claim of the runs' architectures the data can speak to, as a table."""
    rows: list[dict[str, str]] = []
    for r in runs:
        sub = of_run(prep, r.name) if len(runs) > 1 else prep
        fn = ARCHITECTURES.get(str(r.manifest.get("topology")))
        if fn is None or sub.saturation.empty:
            continue
        run = _Run(sub, str(r.manifest.get("budgets", "extra")), roles_of([r]))
        for c in fn(run):
            row = c.row()
            if len(runs) > 1:
                row = {"run": r.name, **row}
            rows.append(row)
    return pd.DataFrame(rows)

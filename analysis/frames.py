"""From the tidy ``steps`` table to the frames the report draws: canonical column names,
curve labels, per-curve means over repetitions, the saturation point of every curve.

The load generator's column names are resolved here, in one place (``COLUMNS``), so a
rename in ``loadgen`` is a one-line change. Nothing here plots or writes files.

Definitions the report states next to its numbers:

- a *curve* is one (run, workload, sweep configuration, mode[:balance]) over offered load;
- a step is *faithful* when it is neither ``generator_bound`` (the generator limited the
  load) nor ``oversubscribed`` (the node did not get its budget) nor ``interfered``
  (something outside the testbed took the machine) nor ``slowed`` (the machine itself ran
  slow, ``testbed.measure.probe``). A *saturated* step (past the knee:
  replies under 95% of offered, errors over 1%, or p99 over the latency target) is the
  server's answer and counts;
- the *reply rate* of a step counts replies to the step's own requests (``reply_rate_own``,
  ``tables.apply_rules``), never the previous step's backlog answered in its window;
- the *peak* of a curve (per repetition) is the highest reply rate over its faithful
  steps, saturated ones included; the step it comes from is the *saturation point*. A
  curve whose reply rate never fell below ``KNEE_FRACTION`` of the offered rate did not
  saturate within the sweep, and its peak is only a lower bound; so is a peak on the top
  offered step that kept up with it (shown as "≥", with a one-sided 95% bound; a gain
  against it is one-sided too);
- *the grid's resolution*: a saturation step that kept up with its offered rate says the
  true peak lies between it and the next offered step, so no interval is narrower than
  that (``peak_step``: the spacing); capacity likewise. Intervals are clipped to what is
  possible (rates >= 0, goodput kept in [0, 1], gains >= -100%), and say so (``*_clipped``);
- the *capacity at target* (per repetition) is the highest offered rate whose step was
  faithful and not saturated: errors <= 1% and p99 <= the latency target;
- *retained* (per repetition): the reply rate at the highest offered load over the peak,
  with ``overload_x`` = that load over the capacity: how much goodput survives overload;
- over repetitions, peaks and capacities are given as mean and 95% interval, and gains
  over Regular TCP are paired by round (``intervals``): "higher"/"lower" when the interval
  excludes 0, "no difference" only inside the equivalence bound, else "not resolved";
- the *knee* is the offered rate from which on the mean reply rate stayed below
  ``KNEE_FRACTION`` of the offered rate up to the highest offered rate; a curve whose
  highest step was still served has no knee and did not saturate.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .intervals import EQUIVALENCE_PCT, Interval, mean_ci, one_sided_lower, one_sided_upper, verdict

log = logging.getLogger(__name__)

KNEE_FRACTION = 0.95  # a reply rate under 95% of offered counts as "departed from y=x"
REGULAR = "regular"

# canonical name -> candidate column names in steps.csv, first match wins
COLUMNS: dict[str, tuple[str, ...]] = {
    "offered": ("offered_rate", "offered", "rate", "target_rate"),
    "send_rate": ("achieved_rate", "send_rate", "achieved_send_rate", "sent_rate"),
    # replies to the step's own requests; the completed-in-window rate where a table lacks it
    "reply_rate": ("reply_rate_own", "reply_rate_avg", "reply_rate", "replies_per_s"),
    # replies completed inside the window (the window the CPU was measured over)
    "reply_rate_done": ("reply_rate_avg", "reply_rate", "replies_per_s"),
    "reply_rate_min": ("reply_rate_min",),
    "reply_rate_max": ("reply_rate_max",),
    "reply_rate_std": ("reply_rate_stddev", "reply_rate_std"),
    "replies": ("replies", "ok", "n_ok"),
    "sent": ("sent", "n_sent", "requests"),
    "overflow": ("overflow", "errors_overflow", "err_overflow"),
    "generator_cpu": ("gen_cpu_max", "generator_cpu", "gen_cpu"),  # busiest generator process
    "lat_p50": ("lat_p50_ms", "latency_p50_ms"),            # from the intended send time
    "lat_p99": ("lat_p99_ms", "latency_p99_ms"),
    "lat_sent_p50": ("lat_sent_p50_ms", "latency_sent_p50_ms"),  # from the actual send time
    "lat_sent_p99": ("lat_sent_p99_ms", "latency_sent_p99_ms"),
}
_ERROR_RE = re.compile(r"^(?:errors?|err)_(?P<kind>[a-z_]+)$")
_NOT_KINDS = {"total", "rate", "all", "count"}


def pick(df: pd.DataFrame, name: str) -> str | None:
    for c in COLUMNS[name]:
        if c in df.columns:
            return c
    return None


def error_kinds(df: pd.DataFrame) -> dict[str, str]:
    """{kind: column} for the per-kind error counts of a steps table (overflow included)."""
    out = {}
    for c in df.columns:
        m = _ERROR_RE.match(c)
        if m and m["kind"] not in _NOT_KINDS:
            out[m["kind"]] = c
    ov = pick(df, "overflow")
    if ov and "overflow" not in out:
        out["overflow"] = ov
    return out


def nodes_of(steps: pd.DataFrame) -> list[str]:
    """Nodes with per-step CPU columns, in a stable order (client last)."""
    nodes = sorted({c[len("user_"):] for c in steps.columns if c.startswith("user_")})
    return sorted(nodes, key=lambda n: (n == "client", n))


def cpus_of(steps: pd.DataFrame) -> list[str]:
    return sorted((c[len("softirq_"):] for c in steps.columns if c.startswith("softirq_cpu")),
                  key=lambda c: int(c[3:]) if c[3:].isdigit() else 0)


def _fmt_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass
class Prepared:
    """A run (or several, for compare) ready to draw."""
    steps: pd.DataFrame                      # one row per step, canonical columns added
    curves: pd.DataFrame                     # per curve and offered rate, mean over repetitions
    peaks: pd.DataFrame                      # per curve and repetition: the saturation step
    saturation: pd.DataFrame                 # per curve: peak mean/min/max/std, gain over regular
    nodes: list[str]
    server_nodes: list[str]
    cpus: list[str]
    error_kinds: list[str]
    missing: list[str] = field(default_factory=list)  # canonical columns loadgen did not give
    equivalence_pct: float = EQUIVALENCE_PCT


def prepare(steps: pd.DataFrame, *, roles: dict[str, str] | None = None,
            run: str | None = None, equivalence_pct: float = EQUIVALENCE_PCT) -> Prepared:
    """Canonical columns, labels and the derived frames. ``roles``: node -> role;
    ``equivalence_pct``: the bound inside which a gain's interval is "no difference"."""
    steps = steps.copy()
    missing = []
    for name in COLUMNS:
        col = pick(steps, name)
        if col is None:
            missing.append(name)
            steps[name] = np.nan
        elif col != name:
            steps[name] = pd.to_numeric(steps[col], errors="coerce")
    if steps["replies"].isna().all() and not steps["reply_rate"].isna().all() and "duration_s" in steps:
        steps["replies"] = steps["reply_rate"] * steps["duration_s"]
    # CPU per reply from replies *completed in the window* (reply_rate), the same window the
    # CPU was measured over. steps.csv's `replies` counts answers to requests *intended* in the
    # window, finished whenever: past saturation that overstates the window's replies (up to
    # 2x seen) and understates the CPU per reply.
    rate = steps["reply_rate_done"].where(steps["reply_rate_done"] > 0)
    for c in [c for c in steps.columns if c.startswith("cpu_") and not c.startswith("cpu_us_per_reply")]:
        suffix = c[len("cpu_"):]
        steps[f"cpu_us_per_reply_{suffix}"] = pd.to_numeric(steps[c], errors="coerce") / rate * 1e6
    kinds = error_kinds(steps)
    for kind, col in kinds.items():
        steps[f"err_{kind}"] = pd.to_numeric(steps[col], errors="coerce").fillna(0)
    steps["errors_total"] = sum((steps[f"err_{k}"] for k in kinds), pd.Series(0.0, index=steps.index))
    dur = steps["duration_s"] if "duration_s" in steps else (steps["t_end"] - steps["t_start"])
    steps["duration_s"] = dur
    steps["error_rate"] = steps["errors_total"] / dur.where(dur > 0)
    for flag in ("generator_bound", "oversubscribed", "interfered", "slowed"):
        steps[flag] = steps[flag].fillna(False).astype(bool) if flag in steps else False
    if "slowdown" not in steps:
        steps["slowdown"] = np.nan
    if "saturated" in steps:
        steps["saturated"] = steps["saturated"].fillna(False).astype(bool)
    else:  # steps from before the loadgen classified them: the reply-rate rule alone
        steps["saturated"] = steps["reply_rate"] < KNEE_FRACTION * steps["offered"]
    steps["faithful"] = ~(steps["generator_bound"] | steps["oversubscribed"] | steps["interfered"]
                          | steps["slowed"])
    steps["flags"] = [_flag_text(g, o, i, w) for g, o, i, w in
                      zip(steps["generator_bound"], steps["oversubscribed"], steps["interfered"], steps["slowed"])]
    steps["run"] = run if run is not None else steps.get("run", "")
    steps["mode_label"] = [m if not isinstance(b, str) or not b else f"{m}:{b}"
                           for m, b in zip(steps["mode"], steps.get("balance", [None] * len(steps)))]
    cfg_cols = sorted(c for c in steps.columns if c.startswith("config_"))
    # a point without the key (a mode outside the sweep) has NaN or None there, by the column's dtype
    steps["config_label"] = [", ".join(f"{c[len('config_'):]}={_fmt_value(row[c])}" for c in cfg_cols
                                       if not (row[c] is None or (isinstance(row[c], float) and np.isnan(row[c]))))
                             for _, row in steps[cfg_cols].iterrows()] if cfg_cols else ""
    # phases of a shifting workload (the balancing experiment) are compared phase by phase, like configurations
    phase = steps["phase"] if "phase" in steps else pd.Series([None] * len(steps), index=steps.index)
    steps["phase_label"] = ["" if p is None or (isinstance(p, float) and np.isnan(p)) else f"phase {int(p)}"
                            for p in phase]
    steps["group"] = [" / ".join(x for x in (r, w, c, p) if x) for r, w, c, p in
                      zip(steps["run"], steps["workload"], steps["config_label"], steps["phase_label"])]
    # modes outside a sweep (``sweep_modes``) ran the base configuration only: their group
    # without the configuration is the baseline of every swept configuration
    steps["base_group"] = [" / ".join(x for x in (r, w, p) if x) for r, w, p in
                           zip(steps["run"], steps["workload"], steps["phase_label"])]
    order = {m: i for i, m in enumerate(sorted(steps["mode_label"].unique(), key=lambda m: (m != REGULAR, m)))}
    steps = steps.assign(_order=steps["mode_label"].map(order)).sort_values(
        ["run", "workload", "config_label", "phase_label", "_order", "repetition", "offered"],
        kind="stable").drop(columns="_order").reset_index(drop=True)
    steps["curve"] = [f"{g} / {m}" if g else m for g, m in zip(steps["group"], steps["mode_label"])]
    nodes = nodes_of(steps)
    roles = roles or {}
    server_nodes = [n for n in nodes if roles.get(n, "client" if n == "client" else "server") != "client"]
    curves = _curves(steps, kinds)
    peaks = _peaks(steps)
    saturation = _saturation(peaks, curves, equivalence_pct)
    return Prepared(steps=steps, curves=curves, peaks=peaks, saturation=saturation, nodes=nodes,
                    server_nodes=server_nodes, cpus=cpus_of(steps), error_kinds=list(kinds),
                    missing=missing, equivalence_pct=equivalence_pct)


def _flag_text(gen_bound: bool, over: bool, interfered: bool = False, slowed: bool = False) -> str:
    return ",".join(f for f, on in (("generator_bound", gen_bound), ("oversubscribed", over),
                                    ("interfered", interfered), ("slowed", slowed)) if on)


_KEYS = ["group", "base_group", "run", "workload", "config_label", "mode_label", "curve"]


def _curves(steps: pd.DataFrame, kinds: dict[str, str]) -> pd.DataFrame:
    """Mean (and min/max over repetitions) per curve and offered rate; a point is flagged
    when any of its repetitions was."""
    value_cols = ["reply_rate", "send_rate", "lat_p50", "lat_p99", "lat_sent_p50", "lat_sent_p99",
                  "error_rate", "errors_total", "generator_cpu", "machine_idle"] + \
                 [f"err_{k}" for k in kinds]
    value_cols = [c for c in value_cols if c in steps]
    g = steps.groupby(_KEYS + ["offered"], sort=False, dropna=False)  # keeps regular first
    out = g[value_cols].mean()
    out["reply_rate_lo"] = g["reply_rate"].min()
    out["reply_rate_hi"] = g["reply_rate"].max()
    out["repetitions"] = g["reply_rate"].size()
    out["generator_bound"] = g["generator_bound"].any()
    out["oversubscribed"] = g["oversubscribed"].any()
    out["interfered"] = g["interfered"].any()
    out["slowed"] = g["slowed"].any()
    out["saturated"] = g["saturated"].any()
    out = out.reset_index()
    out["faithful"] = ~(out["generator_bound"] | out["oversubscribed"] | out["interfered"] | out["slowed"])
    return out


def knee_of(curve: pd.DataFrame) -> float:
    """The offered rate from which on every step's reply rate stayed under KNEE_FRACTION of
    the offered rate (NaN when the highest offered rate was still served): a one-step dip
    followed by recovery, common in 1 s windows, is not a knee."""
    df = curve.dropna(subset=["reply_rate"]).groupby("offered")["reply_rate"].mean().sort_index()
    below = (df < KNEE_FRACTION * df.index.to_numpy()).to_numpy()
    if len(below) == 0 or not below[-1]:
        return float("nan")
    k = len(below) - 1
    while k > 0 and below[k - 1]:
        k -= 1
    return float(df.index[k])


def _peaks(steps: pd.DataFrame) -> pd.DataFrame:
    """The saturation step of every curve and repetition (faithful steps first), with the
    repetition's capacity at target (``capacity``: NaN when even its lowest step missed)."""
    rows = []
    for _, df in steps.groupby(_KEYS + ["repetition"], dropna=False, sort=False):
        faithful = df[df["faithful"]]
        pool = faithful if not faithful.empty and faithful["reply_rate"].notna().any() else df
        if pool["reply_rate"].isna().all():
            continue
        best = pool.loc[pool["reply_rate"].idxmax()].copy()
        best["peak_faithful"] = pool is faithful
        best["curve_saturated"] = not np.isnan(knee_of(df))
        within = faithful[~faithful["saturated"]]
        best["capacity"] = float(within["offered"].max()) if not within.empty else float("nan")
        best["lowest_offered"] = float(df["offered"].min())
        # the grid: where the true peak and capacity can lie between offered steps
        offered = np.sort(df["offered"].dropna().unique())
        top = float(offered[-1]) if len(offered) else float("nan")
        nxt = lambda x: float(offered[offered > x][0]) if (offered > x).any() else float("nan")  # noqa: E731
        kept_up = bool(best["reply_rate"] >= KNEE_FRACTION * best["offered"])
        # the top step still kept up: more load might have given more, so a lower bound
        best["peak_at_top"] = bool(best["offered"] >= top) and kept_up
        # a step that kept up with its load: the peak lies up to the next offered step
        best["peak_grid_hi"] = nxt(best["offered"]) if kept_up else float(best["reply_rate"])
        best["peak_step"] = nxt(best["offered"]) - float(best["offered"])
        best["capacity_at_top"] = bool(best["capacity"] >= top)
        best["capacity_grid_hi"] = nxt(best["capacity"]) if best["capacity"] == best["capacity"] else float("nan")
        # overload: the goodput kept at the highest offered load, as a share of the peak
        top = df.loc[df["offered"].idxmax()]
        best["overload_x"] = float(top["offered"]) / best["capacity"] if best["capacity"] > 0 else float("nan")
        best["retained"] = float(top["reply_rate"]) / float(best["reply_rate"]) if best["reply_rate"] > 0 \
            else float("nan")
        rows.append(best)
    return pd.DataFrame(rows).reset_index(drop=True) if rows else pd.DataFrame(columns=list(steps.columns))


def _paired(mine: dict[int, dict[str, Any]], base: dict[int, dict[str, Any]], val: str, ghi: str,
            top: str) -> tuple[Interval, str]:
    """The gain of ``mine`` over ``base`` in percent, paired by round, and its bound: a
    value on the top offered step is only a lower bound, so the gain is one-sided
    ("lower": at least; "upper": at most; "unknown": both sides were). Two-sided gains
    are no narrower than the grid allows (each side up to its next offered step)."""
    rounds = [r for r in sorted(set(mine) & set(base))
              if _pos(mine[r][val]) and _pos(base[r][val])]
    gains = [(mine[r][val] / base[r][val] - 1.0) * 100.0 for r in rounds]
    m_top = any(bool(mine[r][top]) for r in rounds)
    b_top = any(bool(base[r][top]) for r in rounds)
    if m_top and b_top:
        return mean_ci(gains), "unknown"
    if m_top:
        return one_sided_lower(gains), "lower"
    if b_top:
        return one_sided_upper(gains), "upper"
    iv = mean_ci(gains)
    if iv.n < 2:
        return iv, ""
    grid_lo = [(mine[r][val] / _or(base[r][ghi], base[r][val]) - 1.0) * 100.0 for r in rounds]
    grid_hi = [(_or(mine[r][ghi], mine[r][val]) / base[r][val] - 1.0) * 100.0 for r in rounds]
    return Interval(iv.mean, min(iv.lo, float(np.mean(grid_lo))), max(iv.hi, float(np.mean(grid_hi))),
                    iv.n, iv.std), ""


def _pos(x: Any) -> bool:
    try:
        return float(x) > 0
    except (TypeError, ValueError):
        return False


def _or(x: Any, default: float) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return default
    return v if v == v else default


def _saturation(peaks: pd.DataFrame, curves: pd.DataFrame,
                equivalence_pct: float = EQUIVALENCE_PCT) -> pd.DataFrame:
    """Per curve: peak reply rate over repetitions (mean, spread) and gain over Regular TCP
    of the same run, workload and configuration."""
    if peaks.empty:
        return pd.DataFrame(columns=_KEYS + ["peak_mean"])
    g = peaks.groupby(_KEYS, sort=False, dropna=False)
    sat = g["reply_rate"].agg(peak_mean="mean", peak_min="min", peak_max="max", peak_std="std",
                              repetitions="size").reset_index()
    sat["peak_std"] = sat["peak_std"].fillna(0.0)
    extra = g.agg(offered_at_peak=("offered", "mean"), all_faithful=("peak_faithful", "all"),
                  saturated=("curve_saturated", "all"), lowest_offered=("lowest_offered", "min"),
                  capacity_reps=("capacity", "count"), overload_x=("overload_x", "mean")).reset_index()
    sat = sat.merge(extra, on=_KEYS)
    per_rep = {key: df for key, df in g}
    keys = [tuple(k) for k in sat[_KEYS].itertuples(index=False)]
    # a peak (or capacity) on the top offered step is a lower bound: one-sided interval
    sat["peak_bound"] = ["lower" if per_rep[k]["peak_at_top"].any() else "" for k in keys]
    sat["capacity_bound"] = ["lower" if per_rep[k]["capacity_at_top"].fillna(False).any() else "" for k in keys]
    for prefix, col, grid, hi_max in (("peak", "reply_rate", "peak_grid_hi", np.inf),
                                      ("capacity", "capacity", "capacity_grid_hi", np.inf),
                                      ("retained", "retained", None, 1.0)):
        bounds = sat[f"{prefix}_bound"] if f"{prefix}_bound" in sat else [""] * len(sat)
        means, los, his, clipped = [], [], [], []
        for k, bound in zip(keys, bounds):
            vals = per_rep[k][col]
            iv = one_sided_lower(vals) if bound == "lower" else mean_ci(vals)
            lo, hi = iv.lo, iv.hi
            if grid is not None and iv.n >= 1 and bound != "lower":
                # no interval narrower than the grid allows: up to the next offered step
                ghi = pd.to_numeric(per_rep[k][grid], errors="coerce").dropna()
                if len(ghi):
                    hi = float(np.nanmax([hi, ghi.mean()])) if hi == hi else float(ghi.mean())
                    lo = float(np.nanmin([lo, iv.mean])) if lo == lo else iv.mean
            was = (lo, hi)
            lo = max(lo, 0.0) if lo == lo else lo  # nothing here can be negative
            hi = min(hi, hi_max) if hi == hi else hi  # goodput kept cannot exceed all of it
            clipped.append(was != (lo, hi))
            means.append(iv.mean)
            los.append(lo)
            his.append(hi)
        if prefix != "peak":
            sat[f"{prefix}_mean"] = means
        sat[f"{prefix}_ci_lo"], sat[f"{prefix}_ci_hi"], sat[f"{prefix}_clipped"] = los, his, clipped
    sat["peak_step"] = [float(pd.to_numeric(per_rep[k]["peak_step"], errors="coerce").mean()) for k in keys]
    sat["peak_grid"] = [bool((per_rep[k]["reply_rate"] >= KNEE_FRACTION * per_rep[k]["offered"]).all()
                             and per_rep[k]["offered"].nunique() == 1) for k in keys]
    knees = [(*key, knee_of(df)) for key, df in curves.groupby(_KEYS, dropna=False)]
    sat = sat.merge(pd.DataFrame(knees, columns=_KEYS + ["knee_offered"]), on=_KEYS, how="left")
    flagged = curves.groupby(_KEYS, dropna=False)["faithful"].apply(lambda s: int((~s).sum())).reset_index()
    sat = sat.merge(flagged.rename(columns={"faithful": "flagged_steps"}), on=_KEYS, how="left")
    reg = sat[sat["mode_label"] == REGULAR].drop_duplicates("group").set_index("group")
    # a swept configuration without its own Regular TCP is compared with the base one
    sat["baseline"] = [g if g in reg.index else (b if b in reg.index else None)
                       for g, b in zip(sat["group"], sat["base_group"])]
    for col, src in (("regular_peak", "peak_mean"), ("regular_min", "peak_min"), ("regular_max", "peak_max"),
                     ("regular_std", "peak_std"), ("regular_saturated", "saturated")):
        sat[col] = sat["baseline"].map(reg[src])
    sat["regular_capacity"] = sat["baseline"].map(reg["capacity_mean"])
    # gains paired by round: each repetition against Regular TCP of the same round
    cols = ("reply_rate", "capacity", "peak_grid_hi", "capacity_grid_hi", "peak_at_top", "capacity_at_top")
    by_rep = {key: {r: dict(zip(cols, v)) for r, *v in zip(df["repetition"], *(df[c] for c in cols))}
              for key, df in per_rep.items()}
    reg_key = {r["group"]: tuple(r[k] for k in _KEYS) for _, r in reg.reset_index().iterrows()}
    for prefix, val, ghi, top in (("gain", "reply_rate", "peak_grid_hi", "peak_at_top"),
                                  ("capacity_gain", "capacity", "capacity_grid_hi", "capacity_at_top")):
        means, los, his, ns, verdicts, bounds, clipped = [], [], [], [], [], [], []
        for _, s in sat.iterrows():
            base = reg_key.get(s["baseline"]) if s["baseline"] is not None else None
            bound = ""
            if base is None or s["mode_label"] == REGULAR:
                iv = mean_ci([])
            else:
                iv, bound = _paired(by_rep[tuple(s[k] for k in _KEYS)], by_rep[base], val, ghi, top)
            lo = max(iv.lo, -100.0) if iv.lo == iv.lo else iv.lo  # a rate cannot fall below zero
            clipped.append(lo != iv.lo and iv.lo == iv.lo)
            means.append(iv.mean)
            los.append(lo)
            his.append(iv.hi)
            ns.append(iv.n)
            bounds.append(bound)
            verdicts.append(verdict(Interval(iv.mean, lo, iv.hi, iv.n, iv.std), equivalence_pct)
                            if bound != "unknown" else "not measurable: both on the top offered step")
        sat[f"{prefix}_pct"], sat[f"{prefix}_ci_lo"], sat[f"{prefix}_ci_hi"] = means, los, his
        sat[f"{prefix}_pairs"], sat[f"{prefix}_verdict"] = ns, verdicts
        sat[f"{prefix}_bound"], sat[f"{prefix}_clipped"] = bounds, clipped
    sat["gain_significant"] = sat["gain_verdict"].isin(["higher", "lower"])
    sat["ratio_to_regular"] = 1.0 + sat["gain_pct"] / 100.0
    # the ratio's 95% interval (paired rounds); NaN with one round
    sat["ratio_lo"] = 1.0 + sat["gain_ci_lo"] / 100.0
    sat["ratio_hi"] = 1.0 + sat["gain_ci_hi"] / 100.0
    return sat


def of_run(prep: Prepared, run: str) -> Prepared:
    """One run's frames out of a comparison's (``prepare`` over several runs)."""
    keep = lambda df: df[df["run"] == run] if "run" in df else df  # noqa: E731
    return replace(prep, steps=keep(prep.steps), curves=keep(prep.curves), peaks=keep(prep.peaks),
                   saturation=keep(prep.saturation))


def cpu_at_saturation(prep: Prepared) -> pd.DataFrame:
    """Per curve: each node's user/system/throttled CPU and budget at the saturation step
    (mean over repetitions), CPU per reply per node and in total, softirq per CPU."""
    peaks = prep.peaks
    if peaks.empty:
        return pd.DataFrame()
    cols = []
    for n in prep.nodes:
        cols += [c for c in (f"user_{n}", f"system_{n}", f"cpu_{n}", f"throttled_{n}", f"budget_{n}",
                             f"util_{n}", f"cpu_us_per_reply_{n}") if c in peaks]
    cols += [c for c in ("cpu_servers", "cpu_us_per_reply_servers", "machine_idle", "reply_rate",
                         "offered", "generator_cpu") if c in peaks]
    cols += [f"softirq_{c}" for c in prep.cpus] + [f"idle_{c}" for c in prep.cpus if f"idle_{c}" in peaks]
    num = peaks[_KEYS + cols].copy()
    for c in cols:
        num[c] = pd.to_numeric(num[c], errors="coerce")
    out = num.groupby(_KEYS, sort=False, dropna=False)[cols].mean().reset_index()
    flags = peaks.groupby(_KEYS, sort=False, dropna=False).agg(
        generator_bound=("generator_bound", "any"), oversubscribed=("oversubscribed", "any"),
        interfered=("interfered", "any"), slowed=("slowed", "any")).reset_index()
    out = out.merge(flags, on=_KEYS)
    out["flags"] = [_flag_text(g, o, i, w) for g, o, i, w in
                    zip(out["generator_bound"], out["oversubscribed"], out["interfered"], out["slowed"])]
    budgets = [f"budget_{n}" for n in prep.server_nodes if f"budget_{n}" in out]
    out["budget_servers"] = out[budgets].sum(axis=1, min_count=1) if budgets else np.nan
    return out


def matched_load_cpu(prep: Prepared, curve: str, other: str | None) -> tuple[float, float, float]:
    """Server-side CPU per reply of two curves at matched load: the highest offered rate
    at which both were faithful and not saturated in every repetition (below both knees),
    as (offered, µs/reply of ``curve``, µs/reply of ``other``); NaNs when no such step.
    Comparing CPU per reply at each curve's own saturation point compares different loads."""
    nan = float("nan")
    if other is None or "cpu_us_per_reply_servers" not in prep.steps:
        return nan, nan, nan
    ok = {}
    for c in (curve, other):
        st = prep.steps[prep.steps["curve"] == c]
        if st.empty:
            return nan, nan, nan
        knee = knee_of(st)
        good = st.groupby("offered").apply(lambda d: bool((d["faithful"] & ~d["saturated"]).all()),
                                           include_groups=False)
        rates = {float(o) for o, g in good.items() if g and (knee != knee or o < knee)}
        ok[c] = (rates, st)
    common = sorted(ok[curve][0] & ok[other][0])
    if not common:
        return nan, nan, nan
    at = common[-1]
    us = [float(pd.to_numeric(ok[c][1].loc[ok[c][1]["offered"] == at, "cpu_us_per_reply_servers"],
                              errors="coerce").mean()) for c in (curve, other)]
    return at, us[0], us[1]


def machine_cpu_per_reply(prep: Prepared, ncpus: int | None) -> pd.Series:
    """All CPUs' busy time per reply at saturation (generator and misattributed softirq
    included): the one figure no cgroup accounting can shift between nodes."""
    sat = cpu_at_saturation(prep)
    if sat.empty or not ncpus or "machine_idle" not in sat:
        return pd.Series(dtype=float)
    return (1.0 - sat["machine_idle"]) * ncpus / sat["reply_rate"] * 1e6


def roles_from(tables: dict[str, Any]) -> dict[str, str]:
    """node -> role, from the samples table (kind == node)."""
    s = tables.get("samples")
    if s is None or s.empty or "role" not in s:
        return {}
    nodes = s[s["kind"] == "node"][["node", "role"]].dropna().drop_duplicates("node")
    return dict(zip(nodes["node"], nodes["role"]))


def run_name(run_dir: Path, manifest: dict[str, Any]) -> str:
    return Path(run_dir).name or str(manifest.get("experiment", "run"))

"""The report's figures: matplotlib (Agg) PNGs drawn from ``frames.Prepared``.

Every function takes the prepared frames and an output directory, writes one PNG and
returns its file name (the report links it relatively). Flagged steps are drawn the same
way in every figure: a hollow red square around a generator-bound point, a hollow orange
diamond around an oversubscribed one, a hollow purple triangle around an interfered or
slowed one (the machine was taken by something else, or ran slow); bars for a flagged saturation step are hatched and
their label carries the flag.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: the report is written on servers and in tests
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .frames import KNEE_FRACTION, Prepared, cpu_at_saturation  # noqa: E402

log = logging.getLogger(__name__)

DPI = 110
GEN_BOUND = dict(marker="s", s=150, facecolors="none", edgecolors="red", linewidths=1.6, zorder=5)
OVERSUB = dict(marker="D", s=110, facecolors="none", edgecolors="darkorange", linewidths=1.6, zorder=5)
DISTURBED = dict(marker="v", s=130, facecolors="none", edgecolors="purple", linewidths=1.6, zorder=5)
LINESTYLES = ["-", "--", ":", "-."]


def _styles(prep: Prepared) -> dict[str, dict[str, object]]:
    """curve -> a color of its own (modes and configurations must stay apart) and a line
    style per run (compare)."""
    st = prep.steps
    # the same mode and configuration keeps its color across workload panels
    key = st["run"].astype(str) + "|" + st["config_label"] + "|" + st["phase_label"] + "|" + st["mode_label"]
    keys = list(dict.fromkeys(key))
    cmap = plt.get_cmap("tab10" if len(keys) <= 10 else "tab20")
    runs = list(dict.fromkeys(st["run"]))
    out = {}
    for curve, k, run in zip(st["curve"], key, st["run"]):
        out[curve] = {"color": cmap(keys.index(k) % cmap.N), "linestyle": LINESTYLES[runs.index(run) % len(LINESTYLES)]}
    return out


def _flag_legend() -> list[object]:
    return [Line2D([], [], marker="s", markerfacecolor="none", markeredgecolor="red", linestyle="none",
                   markersize=9, label="generator-bound step"),
            Line2D([], [], marker="D", markerfacecolor="none", markeredgecolor="darkorange",
                   linestyle="none", markersize=8, label="oversubscribed step"),
            Line2D([], [], marker="v", markerfacecolor="none", markeredgecolor="purple",
                   linestyle="none", markersize=8, label="interfered or slowed step")]


def _mark_flags(ax: plt.Axes, df: pd.DataFrame, x: str, y: str) -> None:
    gb = df[df["generator_bound"] & df[y].notna()]
    ov = df[df["oversubscribed"] & df[y].notna()]
    if not gb.empty:
        ax.scatter(gb[x], gb[y], **GEN_BOUND)
    if not ov.empty:
        ax.scatter(ov[x], ov[y], **OVERSUB)
    dist = df[(df["interfered"] | df.get("slowed", False)) & df[y].notna()] if "interfered" in df else df.iloc[:0]
    if not dist.empty:
        ax.scatter(dist[x], dist[y], **DISTURBED)


def _facets(prep: Prepared, ncols_max: int = 2) -> tuple[plt.Figure, list[plt.Axes], list[str]]:
    workloads = list(dict.fromkeys(prep.curves["workload"]))
    n = max(len(workloads), 1)
    ncols = min(n, ncols_max)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.5 * ncols, 5.2 * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n], workloads


def finish(fig: plt.Figure, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=DPI)
    plt.close(fig)
    return name


def reply_rate(prep: Prepared, out: Path) -> str:
    """Reply rate against offered load, one curve per mode (and configuration), the y=x
    line, the saturation point (star) and the knee (dotted vertical)."""
    styles = _styles(prep)
    fig, axes, workloads = _facets(prep)
    sat = prep.saturation.set_index("curve") if not prep.saturation.empty else pd.DataFrame()
    for ax, wl in zip(axes, workloads):
        cur = prep.curves[prep.curves["workload"] == wl]
        top = float(np.nanmax([cur["offered"].max(), cur["reply_rate_hi"].max(), 1.0]))
        ax.plot([0, top * 1.05], [0, top * 1.05], color="grey", linewidth=1, linestyle="--",
                label="y = x (every request answered)")
        for curve, df in cur.groupby("curve", sort=False):
            st = styles[curve]
            ax.plot(df["offered"], df["reply_rate"], marker="o", markersize=4, label=curve, **st)
            if (df["repetitions"] > 1).any():
                ax.fill_between(df["offered"], df["reply_rate_lo"], df["reply_rate_hi"],
                                color=st["color"], alpha=0.15, linewidth=0)
            _mark_flags(ax, df, "offered", "reply_rate")
            if curve in sat.index:
                s = sat.loc[curve]
                ax.scatter([s["offered_at_peak"]], [s["peak_mean"]], marker="*", s=220,
                           color=st["color"], edgecolors="black", zorder=6)
                if not np.isnan(s["knee_offered"]):
                    ax.axvline(s["knee_offered"], color=st["color"], linestyle=":", linewidth=1.2)
        ax.set_title(f"reply rate vs offered load ({wl})")
        ax.set_xlabel("offered load (requests/s)")
        ax.set_ylabel("replies/s")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        handles += [Line2D([], [], marker="*", color="grey", markeredgecolor="black", linestyle="none",
                           markersize=13, label="saturation: peak faithful reply rate"),
                    Line2D([], [], color="grey", linestyle=":",
                           label=f"knee: reply rate < {KNEE_FRACTION:.0%} of offered from here on")] + _flag_legend()
        ax.legend(handles=handles, fontsize=7, loc="upper left")
    return finish(fig, out, "reply_rate.png")


def _wrap(curve: str) -> str:
    return curve.replace(" / ", "\n")  # one part of the label per line keeps bars apart


def _bar_labels(sat: pd.DataFrame) -> list[str]:
    return [_wrap(c) + (f"\n[{f}]" if f else "") for c, f in zip(sat["curve"], sat["flags"])]


def user_system(sat: pd.DataFrame, node: str) -> tuple[pd.Series, pd.Series]:
    """The node's CPU split into user and system. cpuacct.stat's user/system are counted in
    10 ms ticks while the total (cpuacct.usage) is exact, so the split is taken as a share
    of the exact total, not summed from the ticks."""
    nan = pd.Series(np.nan, index=sat.index)
    total = sat.get(f"cpu_{node}", nan)
    u, s = sat.get(f"user_{node}", nan), sat.get(f"system_{node}", nan)
    share = (u / (u + s)).where((u + s) > 0)
    return (total * share).fillna(0), (total * (1 - share)).fillna(total.fillna(0))


def cpu_breakdown(prep: Prepared, out: Path) -> str:
    """CPU per node at each curve's saturation step: user and system stacked, one bar per
    node, the node's budget as a black tick."""
    sat = cpu_at_saturation(prep)
    nodes = prep.nodes
    fig, ax = plt.subplots(figsize=(max(7.0, 1.2 * len(sat) * max(len(nodes), 1) * 0.6 + 3), 5.2))
    if sat.empty or not nodes:
        ax.text(0.5, 0.5, "no CPU samples at saturation", ha="center", va="center", transform=ax.transAxes)
        return finish(fig, out, "cpu_breakdown.png")
    cmap = plt.get_cmap("tab10")
    width = 0.8 / len(nodes)
    x = np.arange(len(sat))
    for j, node in enumerate(nodes):
        xs = x - 0.4 + width * (j + 0.5)
        user, system = user_system(sat, node)
        hatch = ["//" if f else None for f in sat["flags"]]
        for k in range(len(sat)):
            ax.bar(xs[k], user.iloc[k], width * 0.95, color=cmap(j), hatch=hatch[k], edgecolor="white")
            ax.bar(xs[k], system.iloc[k], width * 0.95, bottom=user.iloc[k], color=cmap(j), alpha=0.5,
                   hatch=hatch[k], edgecolor="white")
        budget = sat.get(f"budget_{node}")
        if budget is not None:
            for k, b in enumerate(budget):
                if b is not None and not np.isnan(b):
                    ax.hlines(b, xs[k] - width * 0.5, xs[k] + width * 0.5, colors="black", linewidth=2)
        for k in range(len(sat)):
            ax.text(xs[k], 0, node, rotation=90, fontsize=6, ha="center", va="bottom", color="black")
    ax.set_xticks(x)
    ax.set_xticklabels(_bar_labels(sat), fontsize=7)
    ax.set_ylabel("CPU (cores) at saturation")
    ax.set_title("CPU per node at saturation: user (solid) + system (light); black tick = budget")
    handles = [Patch(color=cmap(j), label=n) for j, n in enumerate(nodes)]
    handles += [Patch(facecolor="grey", label="user"), Patch(facecolor="grey", alpha=0.5, label="system"),
                Line2D([], [], color="black", linewidth=2, label="CPU budget (quota)"),
                Patch(facecolor="white", edgecolor="black", hatch="//", label="flagged step")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return finish(fig, out, "cpu_breakdown.png")


def cpu_per_request(prep: Prepared, out: Path, ncpus: int | None) -> str:
    """CPU time per reply at saturation, stacked over the server-side nodes. (All CPUs' busy
    time per reply is in the table only: it includes the generator and anything else that
    ran on the machine, which would dwarf the bars.)"""
    sat = cpu_at_saturation(prep)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(sat) + 3), 5.0))
    if sat.empty:
        ax.text(0.5, 0.5, "no CPU samples at saturation", ha="center", va="center", transform=ax.transAxes)
        return finish(fig, out, "cpu_per_request.png")
    cmap = plt.get_cmap("tab10")
    x = np.arange(len(sat))
    bottom = np.zeros(len(sat))
    hatch = ["//" if f else None for f in sat["flags"]]
    for j, node in enumerate(prep.server_nodes):
        col = f"cpu_us_per_reply_{node}"
        if col not in sat:
            continue
        v = sat[col].fillna(0).to_numpy()
        for k in range(len(sat)):
            ax.bar(x[k], v[k], 0.6, bottom=bottom[k], color=cmap(j), hatch=hatch[k], edgecolor="white",
                   label=node if k == 0 else None)
        bottom += v
    for k, total in enumerate(bottom):
        ax.text(x[k], total, f"{total:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(_bar_labels(sat), fontsize=7)
    ax.set_ylabel("CPU µs per reply at saturation")
    ax.set_title("total server-side CPU per request (stacked by node)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return finish(fig, out, "cpu_per_request.png")


def latency(prep: Prepared, out: Path) -> str:
    """p50 and p99 latency against offered load, from the intended send time (solid) and,
    when recorded, from the actual send time (thin)."""
    styles = _styles(prep)
    workloads = list(dict.fromkeys(prep.curves["workload"]))
    fig, axes = plt.subplots(len(workloads) or 1, 2, figsize=(13, 4.6 * max(len(workloads), 1)),
                             squeeze=False)
    for row, wl in enumerate(workloads):
        cur = prep.curves[prep.curves["workload"] == wl]
        for col, (pct, intended, sent) in enumerate((("p50", "lat_p50", "lat_sent_p50"),
                                                      ("p99", "lat_p99", "lat_sent_p99"))):
            ax = axes[row][col]
            for curve, df in cur.groupby("curve", sort=False):
                st = styles[curve]
                ax.plot(df["offered"], df[intended], marker="o", markersize=4, label=curve, **st)
                if sent in df and df[sent].notna().any():
                    ax.plot(df["offered"], df[sent], color=st["color"], linewidth=0.8, alpha=0.6)
                _mark_flags(ax, df, "offered", intended)
            if cur[intended].notna().any() and (cur[intended] > 0).any():
                ax.set_yscale("log")
            ax.set_title(f"{pct} latency ({wl}); thin: from actual send time")
            ax.set_xlabel("offered load (requests/s)")
            ax.set_ylabel(f"{pct} latency from intended send time (ms)")
            ax.grid(alpha=0.3, which="both")
            handles, _ = ax.get_legend_handles_labels()
            ax.legend(handles=handles + _flag_legend(), fontsize=7)
    return finish(fig, out, "latency.png")


def errors(prep: Prepared, out: Path) -> str:
    """Failed requests per second against offered load per curve, and the kinds of errors
    summed over the run."""
    styles = _styles(prep)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.6))
    for curve, df in prep.curves.groupby("curve", sort=False):
        ax.plot(df["offered"], df["error_rate"], marker="o", markersize=4, label=curve, **styles[curve])
        _mark_flags(ax, df, "offered", "error_rate")
    ax.set_title("errors vs offered load (overflow included)")
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("failed requests/s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + _flag_legend(), fontsize=7)
    kinds = [k for k in prep.error_kinds if f"err_{k}" in prep.steps]
    if kinds:
        totals = prep.steps.groupby("curve", sort=False)[[f"err_{k}" for k in kinds]].sum()
        left = np.zeros(len(totals))
        cmap = plt.get_cmap("tab20")
        for j, k in enumerate(kinds):
            v = totals[f"err_{k}"].to_numpy()
            if v.sum() > 0:
                ax2.barh(np.arange(len(totals)), v, left=left, color=cmap(j), label=k)
            left += v
        ax2.set_yticks(np.arange(len(totals)))
        ax2.set_yticklabels(totals.index, fontsize=7)
        if left.sum() == 0:
            ax2.text(0.5, 0.5, "no errors", ha="center", va="center", transform=ax2.transAxes)
        else:
            ax2.legend(fontsize=7)
    else:
        ax2.text(0.5, 0.5, "no per-kind error columns", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_title("errors by kind, all steps")
    ax2.set_xlabel("requests")
    return finish(fig, out, "errors.png")


def gain(prep: Prepared, out: Path) -> str:
    """Peak faithful reply rate per curve with its 95% interval over repetitions (min-max
    when there is one repetition only)."""
    sat = prep.saturation
    fig, ax = plt.subplots(figsize=(max(7.0, 1.2 * len(sat) + 3), 4.6))
    if sat.empty:
        ax.text(0.5, 0.5, "no steps", ha="center", va="center", transform=ax.transAxes)
        return finish(fig, out, "gain.png")
    styles = _styles(prep)
    x = np.arange(len(sat))
    for k, (_, s) in enumerate(sat.iterrows()):
        flagged = not s["all_faithful"]
        ax.bar(x[k], s["peak_mean"], 0.6, color=styles[s["curve"]]["color"],
               hatch="//" if flagged else None, edgecolor="white")
        lo, hi = s.get("peak_ci_lo", np.nan), s.get("peak_ci_hi", np.nan)
        lo, hi = (s["peak_min"], s["peak_max"]) if pd.isna(lo) else (lo, hi)
        hi = s["peak_mean"] if pd.isna(hi) else hi  # a lower bound: no upper whisker
        ax.errorbar(x[k], s["peak_mean"], yerr=[[s["peak_mean"] - lo], [hi - s["peak_mean"]]],
                    color="black", capsize=4)
        txt = ("≥ " if s.get("peak_bound") == "lower" else "") + f"{s['peak_mean']:.0f}"
        if not np.isnan(s["ratio_to_regular"]) and s["mode_label"] != "regular":
            txt += "\n" + {"lower": "≥ ", "upper": "≤ "}.get(s.get("gain_bound", ""), "") + f"{s['gain_pct']:+.0f}%"
            if s.get("gain_verdict") == "no difference":
                txt += " (n.d.)"
            elif s.get("gain_verdict") == "not resolved":
                txt += " (n.r.)"
        if not s["saturated"]:
            txt += "\n(not saturated)"
        ax.text(x[k], max(s["peak_max"], hi), txt, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels([_wrap(c) for c in sat["curve"]], fontsize=7)
    ax.set_ylim(0, float(np.nanmax(np.fmax(sat["peak_max"], sat.get("peak_ci_hi", sat["peak_max"])))) * 1.2)
    ax.set_ylabel("peak faithful replies/s")
    ax.set_title("peak reply rate and gain over Regular TCP\n(whiskers: min-max over repetitions)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch="//",
                             label="no faithful step: peak from flagged steps")], fontsize=7)
    return finish(fig, out, "gain.png")


OVERLOAD_FROM = 2.0  # the overload figure is drawn when some curve went this far past capacity


def overload(prep: Prepared, out: Path) -> str | None:
    """Goodput past saturation: reply rate over the curve's peak against offered load over
    its capacity at target (both means over repetitions); None when no curve went past
    ``OVERLOAD_FROM`` times its capacity."""
    sat = prep.saturation
    if sat.empty or "capacity_mean" not in sat or not (sat["overload_x"] >= OVERLOAD_FROM).any():
        return None
    styles = _styles(prep)
    fig, axes, workloads = _facets(prep)
    ref = sat.set_index("curve")
    for ax, wl in zip(axes, workloads):
        cur = prep.curves[prep.curves["workload"] == wl]
        for curve, df in cur.groupby("curve", sort=False):
            if curve not in ref.index or not ref.loc[curve, "capacity_mean"] > 0:
                continue
            s = ref.loc[curve]
            ax.plot(df["offered"] / s["capacity_mean"], df["reply_rate"] / s["peak_mean"], marker="o",
                    markersize=4, label=curve, **styles[curve])
        ax.axhline(0.9, color="grey", linestyle="--", linewidth=1, label="90% of the peak")
        ax.axvline(2.5, color="grey", linestyle=":", linewidth=1, label="2.5x capacity")
        ax.set_title(f"goodput past saturation ({wl})")
        ax.set_xlabel("offered load / capacity at the latency target")
        ax.set_ylabel("replies/s / peak")
        ax.set_ylim(0, 1.15)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    return finish(fig, out, "overload.png")


def draw_all(prep: Prepared, out: Path, ncpus: int | None) -> dict[str, str]:
    """Every figure; a figure that fails is logged and left out rather than losing the report."""
    out.mkdir(parents=True, exist_ok=True)
    figs: dict[str, str] = {}
    for key, fn in (("reply_rate", lambda: reply_rate(prep, out)), ("gain", lambda: gain(prep, out)),
                    ("cpu_breakdown", lambda: cpu_breakdown(prep, out)),
                    ("cpu_per_request", lambda: cpu_per_request(prep, out, ncpus)),
                    ("latency", lambda: latency(prep, out)), ("errors", lambda: errors(prep, out)),
                    ("overload", lambda: overload(prep, out))):
        try:
            name = fn()
            if name is not None:
                figs[key] = name
        except Exception:  # one broken figure must not cost the user the whole report
            log.exception("figure %s failed", key)
            plt.close("all")
    return figs

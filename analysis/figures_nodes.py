"""Where each node's time goes, drawn the way the paper draws it (the section that shows
these figures is ``analysis.sections.nodes``).

Figures (PNG, at most ~1,600 px wide: small multiples in a grid of up to three columns,
one panel per mode, rather than one wide axis):

- ``node_util_<i>.png``, one per workload and configuration: each server-side node's
  utilization of its budget (solid) and idle share (dotted) against offered load, per
  mode; rate-limited links' utilization (dashed); the load generator's CPU (thin grey);
  the knee (vertical dotted) and, along the top, what saturated at each step
  (``utilization`` bottleneck: H host, T TCP server, N NIC, L link, G generator);
- ``smp_cpu.png`` (``smp`` runs): the network processors' (TCP server) and application
  processors' (host) CPU split into user, system, softirq and idle shares of their budget,
  against offered load, one row per configuration (one against two network processors);
- ``inic_util.png`` (runs with ``nic`` nodes): NIC, host and I/O link utilization against
  offered load, one column per NIC:host ratio and one row per mode, Regular TCP's host as
  a grey reference in every panel.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: the report is written on servers and in tests
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .frames import REGULAR, Prepared  # noqa: E402
from .run import roles_of  # noqa: E402
from .utilization import SATURATED_UTIL, link_names, mode_order, node_names  # noqa: E402

log = logging.getLogger(__name__)

DPI = 110
NCOLS = 3
PANEL_W, PANEL_H = 4.6, 3.2  # inches: three panels are 1,518 px wide at DPI
ROLE_COLORS = {"host": "tab:blue", "tcpserver": "tab:orange", "nic": "tab:green", "link": "tab:purple",
               "generator": "tab:red", "client": "grey", "fileserver": "tab:brown"}
LETTER = {"host": "H", "tcpserver": "T", "nic": "N", "link": "L", "generator": "G", "fileserver": "F"}
SPLIT = (("user", "tab:blue"), ("system", "tab:orange"), ("softirq", "tab:red"))


def node_role(node: str, roles: dict[str, str]) -> str:
    if node in roles:
        return roles[node]
    return "client" if node == "client" else ("nic" if node.startswith("nic") else
                                              "tcpserver" if node.startswith("tcpserver") else
                                              "fileserver" if node.startswith("files") else "host")


def _node_color(node: str, roles: dict[str, str], nodes: list[str]) -> Any:
    """The role's color; several nodes of one role (multihost) get shades of it."""
    role = node_role(node, roles)
    same = [n for n in nodes if node_role(n, roles) == role]
    base = matplotlib.colors.to_rgb(ROLE_COLORS.get(role, "black"))
    if len(same) <= 1:
        return base
    k = same.index(node) / max(len(same) - 1, 1)
    return tuple(c * (1 - 0.5 * k) for c in base)


def _grid(n: int, ncols: int = NCOLS, h: float = PANEL_H) -> tuple[plt.Figure, list[plt.Axes]]:
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(max(n, 1) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(PANEL_W * ncols, h * nrows + 0.6), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:max(n, 1)]


def _finish(fig: plt.Figure, out: Path, name: str, legend: list[Any] | None = None) -> str:
    if legend:
        fig.legend(handles=legend, loc="lower center", ncol=min(len(legend), 6), fontsize=7,
                   frameon=False, bbox_to_anchor=(0.5, 0.0))
        fig.tight_layout(rect=(0, 0.07 if len(legend) <= 6 else 0.11, 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(out / name, dpi=DPI)
    plt.close(fig)
    return name


def per_offered(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Mean over repetitions per offered rate of the numeric columns, and the most common
    bottleneck at each rate."""
    cols = [c for c in cols if c in df]
    num = df[["offered"] + cols].copy()
    for c in cols:
        num[c] = pd.to_numeric(num[c], errors="coerce")
    out = num.groupby("offered").mean()
    if "bottleneck" in df:
        out["bottleneck"] = df.groupby("offered")["bottleneck"].agg(lambda s: s.value_counts().index[0])
    return out.reset_index().sort_values("offered")


def _knees(prep: Prepared) -> dict[str, float]:
    sat = prep.saturation
    if sat.empty or "knee_offered" not in sat:
        return {}
    return dict(zip(sat["curve"], sat["knee_offered"]))


def _bottleneck_strip(ax: plt.Axes, df: pd.DataFrame, y: float = 1.1) -> None:
    for x, b in zip(df["offered"], df.get("bottleneck", [])):
        if b in LETTER:
            ax.text(x, y, LETTER[b], color=ROLE_COLORS[b], ha="center", va="center", fontsize=7,
                    fontweight="bold")


def _panel_sets(prep: Prepared) -> list[tuple[str, list[str]]]:
    """(title, curves) per workload/configuration/phase; a configuration without its own
    Regular TCP gets the base one beside its modes."""
    st = prep.steps
    sets = []
    regular_of = {g: c for g, c, m in zip(st["group"], st["curve"], st["mode_label"]) if m == REGULAR}
    for group, df in st.groupby("group", sort=False):
        modes = dict(zip(df["curve"], df["mode_label"]))
        curves = sorted(dict.fromkeys(df["curve"]), key=lambda c: mode_order(modes[c]))
        base = df["base_group"].iloc[0]
        if group not in regular_of and base in regular_of:
            curves = [regular_of[base]] + curves
        # the base group holding only Regular TCP, when every other mode is swept: no set of its own
        if set(df["mode_label"]) == {REGULAR} and any(b == group and g != group for g, b in
                                                      zip(st["group"], st["base_group"])):
            continue
        sets.append((group or "all", curves))
    return sets


def node_utilization(prep: Prepared, out: Path, roles: dict[str, str]) -> list[str]:
    """One figure per workload/configuration: utilization and idle share of each node
    against offered load, a panel per mode."""
    nodes = node_names(prep.steps)
    links = link_names(prep.steps)
    server = [n for n in nodes if node_role(n, roles) != "client"]
    clients = [n for n in nodes if node_role(n, roles) == "client"]
    knees = _knees(prep)
    names = []
    for i, (title, curves) in enumerate(_panel_sets(prep)):
        fig, axes = _grid(len(curves))
        for ax, curve in zip(axes, curves):
            cdf = prep.steps[prep.steps["curve"] == curve]
            cols = [f"busy_{n}" for n in nodes] + [f"idle_{n}" for n in nodes] + [f"linkutil_{l}" for l in links]
            df = per_offered(cdf, cols)
            for n in server:
                if f"busy_{n}" not in df or df[f"busy_{n}"].isna().all() or cdf.get(f"budget_{n}") is None \
                        or pd.to_numeric(cdf[f"budget_{n}"], errors="coerce").isna().all():
                    continue
                color = _node_color(n, roles, nodes)
                ax.plot(df["offered"], df[f"busy_{n}"], marker="o", markersize=3, color=color, label=f"{n} busy")
                ax.plot(df["offered"], df[f"idle_{n}"], linestyle=":", color=color, label=f"{n} idle")
            for n in clients:
                if f"busy_{n}" in df:
                    ax.plot(df["offered"], df[f"busy_{n}"], color="grey", linewidth=0.8, label=f"{n} (generator) CPU")
            for l in links:
                if f"linkutil_{l}" in df and df[f"linkutil_{l}"].notna().any():
                    ax.plot(df["offered"], df[f"linkutil_{l}"], linestyle="--", color=ROLE_COLORS["link"],
                            label=f"link {l}")
            ax.axhline(SATURATED_UTIL, color="tab:red", linewidth=0.7, linestyle=(0, (6, 3)), alpha=0.5)
            knee = knees.get(curve, np.nan)
            if knee == knee:
                ax.axvline(knee, color="black", linestyle="-.", linewidth=0.9, alpha=0.7)
            _bottleneck_strip(ax, df)
            ax.set_ylim(0, 1.18)
            ax.set_xlim(left=0)
            label = cdf["mode_label"].iloc[0]
            cfg = cdf["config_label"].iloc[0]
            base = cdf["group"].iloc[0] != title and not cfg
            ax.set_title(label + (f" ({cfg})" if cfg and cfg not in title else "")
                         + (" (base configuration)" if base else ""), fontsize=9)
            ax.set_xlabel("offered load (requests/s)", fontsize=8)
            ax.set_ylabel("share of budget", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        fig.suptitle(f"Utilization (solid) and idle share (dotted) of each node's budget — {title}", fontsize=10)
        legend = [Line2D([], [], color=_node_color(n, roles, nodes), marker="o", markersize=3,
                         label=f"{n} ({node_role(n, roles)})") for n in server]
        legend += [Line2D([], [], color="black", linestyle=":", label="idle share"),
                   Line2D([], [], color="grey", linewidth=0.8, label="generator CPU (cores of its cpuset)")]
        if links:
            legend.append(Line2D([], [], color=ROLE_COLORS["link"], linestyle="--", label="rate-limited link"))
        legend += [Line2D([], [], color="black", linestyle="-.", linewidth=0.9, alpha=0.7, label="knee"),
                   Line2D([], [], color="tab:red", alpha=0.5, linewidth=0.7, linestyle=(0, (6, 3)),
                          label=f"{SATURATED_UTIL:.0%} of budget: saturated"),
                   Line2D([], [], linestyle="none", marker="$H$", color="black",
                          label="top: what saturated (H host, T TCP server, N NIC, L link, G generator)")]
        names.append(_finish(fig, out, f"node_util_{i}.png", legend))
    return names


def smp_cpu(prep: Prepared, out: Path, roles: dict[str, str]) -> str:
    """CPU split (user, system, softirq, idle) of the network processors (TCP server) and the
    application processors (host) against offered load; one row per curve."""
    nodes = [n for n in node_names(prep.steps) if node_role(n, roles) in ("tcpserver", "host")]
    nodes = sorted(nodes, key=lambda n: (node_role(n, roles) != "tcpserver", n))
    st = prep.steps
    net = [f"budget_{n}" for n in nodes if node_role(n, roles) == "tcpserver" and f"budget_{n}" in st]
    net_budget = st[net].apply(pd.to_numeric, errors="coerce").sum(axis=1) if net else pd.Series(0.0, index=st.index)
    # per mode, fewer network processors first (one, then two, as the paper shows them)
    key = {c: (mode_order(m), float(b)) for c, m, b in zip(st["curve"], st["mode_label"], net_budget)}
    curves = sorted(dict.fromkeys(st["curve"]), key=lambda c: key[c])
    fig, axes = _grid(len(curves) * len(nodes), ncols=max(len(nodes), 1), h=3.1)
    for r, curve in enumerate(curves):
        cdf = st[st["curve"] == curve]
        for c, n in enumerate(nodes):
            ax = axes[r * len(nodes) + c]
            cols = [f"split_{k}_{n}" for k, _ in SPLIT] + [f"capacity_{n}", f"cpu_{n}", f"budget_{n}"]
            df = per_offered(cdf, cols)
            what = "network processors" if node_role(n, roles) == "tcpserver" else "application processors"
            budget = df.get(f"budget_{n}", pd.Series(dtype=float))
            cfg = cdf["config_label"].iloc[0]
            ax.set_title(f"{cdf['mode_label'].iloc[0]}" + (f" ({cfg})" if cfg else "") + f"\n{n} = {what}"
                         + (f", {budget.iloc[0]:g} CPU" if len(budget) and budget.notna().any() else ""),
                         fontsize=8)
            if df.empty or f"capacity_{n}" not in df or df.get(f"cpu_{n}", pd.Series([0])).fillna(0).max() <= 1e-3:
                ax.text(0.5, 0.5, "unused in this mode", ha="center", va="center", transform=ax.transAxes,
                        fontsize=8, color="grey")
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            cap = df[f"capacity_{n}"].where(df[f"capacity_{n}"] > 0)
            shares = [(df.get(f"split_{k}_{n}", 0) / cap).fillna(0).clip(lower=0) for k, _ in SPLIT]
            idle = (1 - sum(shares)).clip(lower=0)
            ax.stackplot(df["offered"], *shares, idle, colors=[col for _, col in SPLIT] + ["#e8e8e8"])
            ax.set_ylim(0, max(1.05, float(sum(shares).max()) * 1.05))
            ax.set_xlim(df["offered"].min(), df["offered"].max())
            ax.set_xlabel("offered load (requests/s)", fontsize=8)
            ax.set_ylabel("share of budget", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    fig.suptitle("SMP: CPU breakdown of network and application processors against offered load", fontsize=10)
    legend = [Patch(color=col, label=k) for k, col in SPLIT] + [Patch(color="#e8e8e8", label="idle")]
    return _finish(fig, out, "smp_cpu.png", legend)


def inic_util(prep: Prepared, out: Path, roles: dict[str, str]) -> str:
    """NIC, host and I/O link utilization against offered load: a column per NIC:host
    ratio (configuration), a row per offloaded mode; Regular TCP's host in grey."""
    st = prep.steps
    nodes = node_names(st)
    nics = [n for n in nodes if node_role(n, roles) == "nic"]
    hosts = [n for n in nodes if node_role(n, roles) == "host"]
    links = link_names(st)
    configs = sorted({c for c, m in zip(st["config_label"], st["mode_label"]) if m != REGULAR}) or [""]
    modes = sorted(dict.fromkeys(m for m in st["mode_label"] if m != REGULAR), key=mode_order)
    regular = st[st["mode_label"] == REGULAR]
    reg = per_offered(regular, [f"busy_{h}" for h in hosts]) if not regular.empty else pd.DataFrame()
    fig, axes = _grid(len(modes) * len(configs), ncols=len(configs), h=2.7)
    for r, mode in enumerate(modes):
        for c, cfg in enumerate(configs):
            ax = axes[r * len(configs) + c]
            cdf = st[(st["mode_label"] == mode) & (st["config_label"] == cfg)]
            ax.set_title(f"{mode}" + (f", {cfg}" if cfg else ""), fontsize=8)
            if cdf.empty:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="grey")
                continue
            df = per_offered(cdf, [f"busy_{n}" for n in nics + hosts] + [f"linkutil_{l}" for l in links])
            for h in hosts:
                if not reg.empty and f"busy_{h}" in reg:
                    ax.plot(reg["offered"], reg[f"busy_{h}"], color="grey", linewidth=0.9, linestyle="-.")
            for n in nics + hosts:
                if f"busy_{n}" in df:
                    ax.plot(df["offered"], df[f"busy_{n}"], marker="o", markersize=3,
                            color=_node_color(n, roles, nodes))
            for l in links:
                if f"linkutil_{l}" in df:
                    ax.plot(df["offered"], df[f"linkutil_{l}"], linestyle="--", color=ROLE_COLORS["link"])
            ax.axhline(SATURATED_UTIL, color="tab:red", linewidth=0.7, linestyle=(0, (6, 3)), alpha=0.5)
            _bottleneck_strip(ax, df)
            ax.set_ylim(0, 1.18)
            ax.set_xlim(left=0)
            ax.set_xlabel("offered load (requests/s)", fontsize=7)
            ax.set_ylabel("utilization", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    fig.suptitle("I-NIC: NIC, host and I/O link utilization against offered load, per NIC:host ratio",
                 fontsize=10)
    legend = [Line2D([], [], color=_node_color(n, roles, nodes), marker="o", markersize=3,
                     label=f"{n} ({node_role(n, roles)})") for n in nics + hosts]
    legend += [Line2D([], [], color=ROLE_COLORS["link"], linestyle="--", label="I/O link (of its rate)"),
               Line2D([], [], color="grey", linestyle="-.", label="Regular TCP's host"),
               Line2D([], [], linestyle="none", marker="$N$", color="black",
                      label="top: what saturated (H, N, L, G)")]
    return _finish(fig, out, "inic_util.png", legend)


def draw_all(prep: Prepared, out: Path, runs: list[Any]) -> dict[str, str]:
    """Every figure this module draws for the runs; a failing one is logged and left out."""
    out.mkdir(parents=True, exist_ok=True)
    roles = roles_of(runs)
    topologies = {str(r.manifest.get("topology")) for r in runs}
    figs: dict[str, str] = {}
    jobs = [("node_util", lambda: node_utilization(prep, out, roles))]
    if "smp" in topologies:
        jobs.append(("smp_cpu", lambda: smp_cpu(prep, out, roles)))
    if any(r == "nic" for r in roles.values()):
        jobs.append(("inic_util", lambda: inic_util(prep, out, roles)))
    for key, fn in jobs:
        try:
            res = fn()
            for i, name in enumerate(res if isinstance(res, list) else [res]):
                figs[f"{key}_{i}" if isinstance(res, list) else key] = name
        except Exception:  # one broken figure must not cost the user the whole report
            log.exception("figure %s failed", key)
            plt.close("all")
    return figs

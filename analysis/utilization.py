"""Where each node's time goes, per step, and what saturated first (the paper's per-node figures).

``add_columns(steps, samples, point)`` is called once per point from
``tables.step_metrics``, over the same measured windows as the node CPU columns. It adds,
per node (cores are CPU-seconds per second):

- ``capacity_<node>``: the cores the node may use: its CFS quota, else the CPUs of its
  cpuset, else every CPU;
- ``busy_<node>``: ``cpu_<node> / capacity_<node>``, the utilization of its budget;
- ``idle_<node>``: ``1 - busy`` clipped to [0, 1], the share of its budget left unused
  (the paper's "host idle time");
- ``split_user_<node>``, ``split_system_<node>``, ``split_softirq_<node>``: the node's CPU
  split into user, system and softirq (cores; rule below);

per link of the topology:

- ``linkmbit_<link>``: the busier direction's throughput in Mbit/s (bytes sent by each
  veth end: each end's tbf shapes its own egress);
- ``linkutil_<link>``: that over the link's rate, for rate-limited links only;

and per step:

- ``busiest``, ``busiest_util``: the server-side resource (a budgeted node whose role is
  not ``client``, or a rate-limited link) with the highest utilization, and that value;
- ``bottleneck``: what saturated (``host``, ``tcpserver``, ``nic``, ``link``,
  ``generator`` or ``none``) and ``bottleneck_at``: the node or link it names.

**Bottleneck rule.** ``generator`` when the step is ``generator_bound`` (the load was not
offered as asked; past a server's knee this is often the in-flight pool filling up
behind it, so read a curve's bottleneck at its knee, which ``first_bottleneck`` does).
Otherwise, when the step is saturated (the load generator's ``saturated`` flag when
present, else replies under ``KNEE_FRACTION`` of the offered rate) and the busiest
resource used at least ``SATURATED_UTIL`` of its budget or rate: that resource's role
(``link`` for a link). Otherwise ``none``: nothing saturated, or what saturated is not a
budget this testbed measures (a single-threaded process, a CFS burst).

**Softirq rule.** cgroups count user and system time only; softirq time is known per
CPU (/proc/stat). The softirq that ran on a CPU is shared among the nodes whose cpuset
holds that CPU, in proportion to their system time (the kernel runs softirq in the
context of whoever was running, which for network work is mostly system time). Without
IRQ time accounting (this kernel, ``CONFIG_IRQ_TIME_ACCOUNTING`` unset, and when unknown)
that time was charged to the nodes' cgroups as system time: ``split_softirq`` is carved
out of ``split_system`` and user + system + softirq = ``cpu_<node>``. With IRQ time
accounting the kernel charged it to no cgroup: ``split_softirq`` comes on top of
``cpu_<node>`` (and of the budget, which the quota does not enforce on it). Either way it
is softirq that ran *on the node's CPUs*, not network work done *for* the node: a veth
receive runs on the sender's CPU, so the client's CPU pays for packets the TCP server
receives.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .frames import KNEE_FRACTION, REGULAR
from .run import irq_time_accounting_of

log = logging.getLogger(__name__)

SATURATED_UTIL = 0.9  # a budget (or link rate) used to 90% or more counts as saturated
KINDS = ("host", "tcpserver", "nic", "link", "generator", "none")


class _Series:
    """Cumulative counters of one sampled entity as arrays, interpolated at window edges
    (built once per point: a per-step DataFrame filter would cost more than the tables)."""

    def __init__(self, df: pd.DataFrame):
        self.df = df
        self._cols: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def window(self, column: str, t0: float, t1: float) -> float:
        if column not in self._cols:
            if column not in self.df:
                return float("nan")
            v = pd.to_numeric(self.df[column], errors="coerce").to_numpy(dtype=float)
            ok = ~np.isnan(v)
            self._cols[column] = (self.df["t"].to_numpy(dtype=float)[ok], v[ok])
        t, v = self._cols[column]
        if len(t) == 0:
            return float("nan")
        return float(np.interp(t1, t, v) - np.interp(t0, t, v))


def _series(df: pd.DataFrame, key: str) -> dict[Any, _Series]:
    return {k: _Series(g.sort_values("t")) for k, g in df.groupby(key)} if not df.empty else {}


def cpus_in(cpuset: Any, ncpus: int) -> list[int]:
    """CPU numbers of a cpuset string ("1", "0-1", "0,2"); every CPU when unset."""
    if cpuset is None or (isinstance(cpuset, float) and np.isnan(cpuset)) or str(cpuset).strip() == "":
        return list(range(ncpus))
    from testbed.describe import cpulist
    return sorted(cpulist.parse(str(cpuset)))


@functools.lru_cache(maxsize=32)
def _manifest(run_dir: str) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def links_of(point: dict[str, Any], manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{link: {"mbit": rate or None, "interfaces": {netns: ifname}}} of the point's
    topology. ``point["links"]`` (tests, other backends) wins; else the topology is loaded
    again from the manifest's name and the point's parameters, as the runner built it."""
    if point.get("links") is not None:
        return point["links"]
    topo_name = manifest.get("topology")
    if not topo_name:
        return {}
    try:
        from testbed.describe.machines import machine
        from testbed.describe.topology import load_topology, plan_addresses
        params = {k: ("none" if v is None else str(v)) for k, v in (point.get("params") or {}).items()}
        # the machines its nodes ran on, as the point recorded them (placement needs them listed)
        machines = [machine(name, f["ssh"], f["address"]) for name, f in (point.get("machines") or {}).items()]
        plan = plan_addresses(load_topology(topo_name, params, machines))
    except Exception as e:  # a topology renamed since the run: no link columns, not no tables
        log.info("links of %s: topology %s not loadable (%s)", point.get("point"), topo_name, e)
        return {}
    return {lp.link.name: {"mbit": lp.link.mbit, "interfaces": dict(lp.interfaces)} for lp in plan.links}


def softirq_charged_to_cgroups(manifest: dict[str, Any]) -> bool:
    """True unless the run's kernel is known to account IRQ time separately."""
    return irq_time_accounting_of(manifest) is not True


def add_columns(steps: pd.DataFrame, samples: pd.DataFrame, point: dict[str, Any],
                manifest: dict[str, Any] | None = None) -> pd.DataFrame:
    """The module's columns added to a point's enriched steps (see the module docstring)."""
    if steps.empty or samples.empty:
        return steps
    if manifest is None:
        manifest = _manifest(str(Path(point["dir"]).parent.parent)) if point.get("dir") else {}
    steps = steps.copy()
    nodes = samples[samples["kind"] == "node"]
    cpus = samples[samples["kind"] == "cpu"]
    cpu_names = [c for c in cpus["node"].unique() if c != "cpu"] if not cpus.empty else []
    node_series, cpu_series = _series(nodes, "node"), _series(cpus, "node")
    ncpus = len(cpu_names) or int((manifest.get("machine") or {}).get("cpus") or 1)
    info = point.get("nodes") or {}
    role: dict[str, str] = {}
    budget: dict[str, float | None] = {}
    node_cpus: dict[str, list[int]] = {}
    for n, nd in nodes.groupby("node"):  # the point's own record first, the samples' else
        first = lambda col: nd[col].dropna().iloc[0] if col in nd and nd[col].notna().any() else None  # noqa: E731
        i = info.get(n) or {}
        role[n] = i.get("role") or first("role") or ""
        budget[n] = i["cpu"] if "cpu" in i else first("budget_cpu")
        node_cpus[n] = cpus_in(i["cpuset"] if "cpuset" in i else first("cpuset"), ncpus)
    in_cgroups = softirq_charged_to_cgroups(manifest)
    links = links_of(point, manifest)
    link_rows = samples[samples["kind"] == "link"] if "ifname" in samples else samples.iloc[0:0]
    link_series = {(ns, ifn): _Series(g.sort_values("t")) for (ns, ifn), g in
                   link_rows.groupby(["node", "ifname"])} if not link_rows.empty else {}
    rows = []
    for _, st in steps.iterrows():
        t0, t1 = float(st["t_start"]), float(st["t_end"])
        dur = max(t1 - t0, 1e-9)
        out: dict[str, Any] = {}
        resources: list[tuple[str, str, float]] = []  # (name, kind, utilization)
        # per node: exact total from cpu_, its user/system proportion from the ticks
        split: dict[str, tuple[float, float]] = {}
        for n, nd in node_series.items():
            total = float(st.get(f"cpu_{n}", np.nan))
            if np.isnan(total):
                total = nd.window("cpu_s", t0, t1) / dur
            u, s = nd.window("user_s", t0, t1) / dur, nd.window("system_s", t0, t1) / dur
            share = u / (u + s) if (u + s) > 0 else 0.0
            split[n] = (total * share, total * (1.0 - share))
            cores = len(node_cpus[n])
            cap = min(float(budget[n]), cores) if budget.get(n) else float(cores)
            out[f"capacity_{n}"] = cap
            busy = total / cap if cap > 0 else float("nan")
            out[f"busy_{n}"] = busy
            out[f"idle_{n}"] = float(np.clip(1.0 - busy, 0.0, 1.0)) if not np.isnan(busy) else float("nan")
            if budget.get(n) and role.get(n) != "client":
                resources.append((n, role.get(n) or "host", busy))
        # softirq per CPU shared among the nodes on it, in proportion to their system time
        soft = {n: 0.0 for n in split}
        for c in cpu_names:
            sirq = cpu_series[c].window("softirq_s", t0, t1) / dur
            idx = int(c[3:]) if c[3:].isdigit() else -1
            on = [n for n in split if idx in node_cpus[n]]
            sys_total = sum(split[n][1] for n in on)
            for n in on:
                if sys_total > 0 and sirq > 0:
                    soft[n] += sirq * split[n][1] / sys_total
        for n, (user, system) in split.items():
            sirq = min(soft[n], system) if in_cgroups else soft[n]
            out[f"split_user_{n}"] = user
            out[f"split_system_{n}"] = system - sirq if in_cgroups else system
            out[f"split_softirq_{n}"] = sirq
        for name, link in links.items():
            mbit = _link_mbit(link_series, link.get("interfaces") or {}, t0, t1, dur)
            out[f"linkmbit_{name}"] = mbit
            if link.get("mbit"):
                util = mbit / float(link["mbit"])
                out[f"linkutil_{name}"] = util
                resources.append((name, "link", util))
        out.update(_bottleneck(st, resources))
        rows.append(out)
    extra = pd.DataFrame(rows, index=steps.index)
    steps = steps.drop(columns=[c for c in extra.columns if c in steps.columns])
    return pd.concat([steps, extra], axis=1)


def _link_mbit(link_series: dict[tuple[str, str], _Series], interfaces: dict[str, str], t0: float,
               t1: float, dur: float) -> float:
    """The busier direction of a link: the most any of its ends sent or received (Mbit/s)."""
    best = float("nan")
    for ns, ifname in interfaces.items():
        s = link_series.get((ns, ifname))
        if s is None:
            continue
        for col in ("tx_bytes", "rx_bytes"):
            v = s.window(col, t0, t1) * 8 / dur / 1e6
            if not np.isnan(v):
                best = v if np.isnan(best) else max(best, v)
    return best


def _is_saturated(st: pd.Series) -> bool:
    flag = st.get("saturated")
    if flag is not None and not (isinstance(flag, float) and np.isnan(flag)):
        return bool(flag)
    offered = float(st.get("offered_rate", np.nan))
    replies = float(st.get("reply_rate_avg", np.nan))
    return bool(offered > 0 and replies < KNEE_FRACTION * offered)


def _bottleneck(st: pd.Series, resources: list[tuple[str, str, float]]) -> dict[str, Any]:
    known = [r for r in resources if not np.isnan(r[2])]
    name, kind, util = max(known, key=lambda r: r[2]) if known else ("", "none", float("nan"))
    out = {"busiest": name, "busiest_util": util}
    gb = st.get("generator_bound")
    if gb is not None and not (isinstance(gb, float) and np.isnan(gb)) and bool(gb):
        return {**out, "bottleneck": "generator", "bottleneck_at": "client"}
    if known and _is_saturated(st) and util >= SATURATED_UTIL:
        return {**out, "bottleneck": kind if kind in KINDS else "host", "bottleneck_at": name}
    return {**out, "bottleneck": "none", "bottleneck_at": ""}


# --------------------------------------------------------------------------- per curve


def mode_order(mode: str) -> tuple[int, str]:
    """Sort key: Regular TCP first, then the paper's variants in its order, then the rest."""
    from testbed.offload.modes import MODES  # the one table of modes
    order = [REGULAR] + [m for m in MODES if m != REGULAR]
    base = mode.split(":")[0]
    return (order.index(base) if base in order else len(order), mode)


def node_names(steps: pd.DataFrame) -> list[str]:
    """Nodes with utilization columns, client last."""
    names = sorted({c[len("busy_"):] for c in steps.columns if c.startswith("busy_")})
    return sorted(names, key=lambda n: (n == "client", n))


def link_names(steps: pd.DataFrame, limited_only: bool = True) -> list[str]:
    prefix = "linkutil_" if limited_only else "linkmbit_"
    return sorted(c[len(prefix):] for c in steps.columns if c.startswith(prefix))


def first_bottleneck(curve_steps: pd.DataFrame) -> tuple[str, str, float]:
    """What saturated first on a curve: (kind, node or link, offered rate) of the lowest
    offered step (over repetitions, the most common answer at that rate) whose bottleneck
    is a server-side resource; ('none', '', nan) when none is, ('generator', ...) when the
    only saturated steps were generator-bound. Interfered steps are left out: another
    program's CPU can saturate a node the testbed alone would not have."""
    if "bottleneck" not in curve_steps or curve_steps.empty:
        return "none", "", float("nan")
    offered = "offered" if "offered" in curve_steps else "offered_rate"
    df = curve_steps
    if "interfered" in df:
        df = df[~df["interfered"].fillna(False).astype(bool)]
    df = df.sort_values(offered)
    named = df[~df["bottleneck"].isin(["none", "generator"])]
    if named.empty:
        gen = df[df["bottleneck"] == "generator"]
        return ("generator", "client", float(gen[offered].iloc[0])) if not gen.empty else ("none", "", float("nan"))
    rate = float(named[offered].iloc[0])
    at = named[named[offered] == rate]
    top = at.groupby(["bottleneck", "bottleneck_at"]).size().sort_values(ascending=False)
    kind, name = top.index[0]
    return str(kind), str(name), rate

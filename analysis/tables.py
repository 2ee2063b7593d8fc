"""From a run's raw files to tidy tables: one row per step, per sample, per point.

``balance``: every decision of the balancing controller (inputs, split, reason), per point.

``steps``: every offered-load step of every point, joined with the point's mode,
workload and budgets, each node's CPU over the step's measured window (from the 1 s
cgroup samples), CPU per reply, and the fidelity flags:

- ``generator_bound`` (from the load generator: it could not offer the load) and
  ``saturated`` (past the server's knee: the server's answer, kept everywhere);
- ``oversubscribed``: the machine had less idle CPU than ``min_idle`` (the manifest's
  fidelity threshold), or a budgeted node used under 90% of its budget while the CPUs of
  its cpuset had no idle time left (it wanted more and did not get it);
- ``interfered``: something outside the testbed took the machine: the CPU busy on all
  CPUs minus what the testbed's own cgroups used (``foreign_cpu``, cores) was above
  ``max_foreign_cpu``. Both sides count softirq and irq: the machine's busy time is every
  /proc/stat field but idle and iowait (``(1 - machine_idle) x CPUs``), because a cgroup's
  exact CPU time includes the softirq the kernel ran in its tasks' context. What remains
  is the runner and softirq charged to no cgroup (run on an idle CPU or in ksoftirqd);
- ``slowed``: the machine itself ran slow (``testbed.measure.probe``: a fixed work timed on each
  CPU once a second; ``slowdown`` is its worst CPU's median over the run's baseline, NaN
  without probe data, as in every run before the probe);
- ``faithful`` = none of generator_bound, oversubscribed, interfered, slowed: the steps a
  peak may come from.

``reply_rate_own`` is the reply rate a step is credited with: the replies completed in its
window (``reply_rate_avg``, what the server did then), but no more than its *own* requests
got (those intended in the window, answered whenever: ``replies / window_s``). Completed
replies alone can exceed the offered rate (the previous step's backlog answered inside
this window: up to 1.08x in the shipped runs); own replies alone cannot show a knee (a
queue answers every request eventually, seconds late). Peaks, knees and gains use it; CPU
per reply keeps ``reply_rate_avg``, the replies of the window the CPU was measured over.

``apply_rules`` recomputes these derived columns from the stored ones, so a shipped
table made under an older rule is read under today's (``analysis.load`` calls it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from testbed.measure import probe as _probe

from . import utilization

STARVED_USE = 0.9  # a node under 90% of its budget ...
STARVED_IDLE = 0.02  # ... while its CPUs were under 2% idle was starved, not limited


def _read_points(run_dir: Path) -> list[dict[str, Any]]:
    points = []
    for pj in sorted((run_dir / "points").glob("*/point.json")):
        try:
            info = json.loads(pj.read_text())
        except ValueError:
            continue
        info["dir"] = str(pj.parent)
        points.append(info)
    return points


def _interp(samples: pd.DataFrame, column: str, t: float) -> float:
    s = samples.dropna(subset=[column])
    if s.empty:
        return float("nan")
    return float(np.interp(t, s["t"].to_numpy(), s[column].to_numpy()))


def _window(samples: pd.DataFrame, column: str, t0: float, t1: float) -> float:
    return _interp(samples, column, t1) - _interp(samples, column, t0)


def _cpu_idle_fraction(cpu: pd.DataFrame, t0: float, t1: float) -> float:
    fields = [c for c in ("user_s", "nice_s", "system_s", "idle_s", "iowait_s", "irq_s", "softirq_s", "steal_s")
              if c in cpu]
    total = sum(_window(cpu, c, t0, t1) for c in fields)
    return _window(cpu, "idle_s", t0, t1) / total if total > 0 else float("nan")


def step_metrics(steps: pd.DataFrame, samples: pd.DataFrame, point: dict[str, Any],
                 min_idle: float, max_foreign_cpu: float = 0.25,
                 readings: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 base: dict[str, float] | None = None) -> pd.DataFrame:
    """Add per-node CPU over each step window and the fidelity flags; ``readings`` and
    ``base``: the run's probe readings and their baselines (``testbed.measure.probe``), if any."""
    steps = steps.copy()
    nodes = samples[samples["kind"] == "node"] if not samples.empty else samples
    cpus = samples[samples["kind"] == "cpu"] if not samples.empty else samples
    ncpus = len([c for c in cpus["node"].unique() if c != "cpu"]) if not cpus.empty else 1
    node_info = point.get("nodes", {})
    rows = []
    for _, st in steps.iterrows():
        t0, t1 = float(st["t_start"]), float(st["t_end"])
        dur = max(t1 - t0, 1e-9)
        # replies that completed inside the window: past saturation, `replies` also counts
        # answers to the window's requests that came after it, which would flatter CPU/reply
        replies = float(st.get("reply_rate_avg", 0)) * dur
        extra: dict[str, Any] = {"duration_s": dur}
        machine = cpus[cpus["node"] == "cpu"] if not cpus.empty else cpus
        idle = _cpu_idle_fraction(machine, t0, t1) if not machine.empty else float("nan")
        extra["machine_idle"] = idle
        # time the hypervisor gave to others while this machine wanted to run: not a program
        # here, so not interference; kept as a column of its own (cores, machine-wide)
        extra["steal_cores"] = (_window(machine, "steal_s", t0, t1) / dur
                                if not machine.empty and "steal_s" in machine else float("nan"))
        for cpu_name in sorted(c for c in (cpus["node"].unique() if not cpus.empty else []) if c != "cpu"):
            c = cpus[cpus["node"] == cpu_name]
            extra[f"softirq_{cpu_name}"] = _window(c, "softirq_s", t0, t1) / dur
            extra[f"idle_{cpu_name}"] = _cpu_idle_fraction(c, t0, t1)
        starved = []
        server_cpu = 0.0
        for node, nd in nodes.groupby("node") if not nodes.empty else []:
            used = _window(nd, "cpu_s", t0, t1) / dur
            extra[f"cpu_{node}"] = used
            extra[f"user_{node}"] = _window(nd, "user_s", t0, t1) / dur
            extra[f"system_{node}"] = _window(nd, "system_s", t0, t1) / dur
            extra[f"throttled_{node}"] = _window(nd, "throttled_s", t0, t1) / dur
            extra[f"nr_throttled_{node}"] = (_window(nd, "nr_throttled", t0, t1) if "nr_throttled" in nd
                                             else float("nan"))
            budget = node_info.get(node, {}).get("cpu")
            extra[f"budget_{node}"] = budget
            extra[f"cpu_us_per_reply_{node}"] = used * dur / replies * 1e6 if replies > 0 else float("nan")
            role = node_info.get(node, {}).get("role", nd["role"].iloc[0] if "role" in nd else "")
            if role != "client":
                server_cpu += used
            if budget:
                extra[f"util_{node}"] = used / budget
                idle_own = np.nanmean([extra.get(f"idle_cpu{c}", np.nan)
                                       for c in utilization.cpus_in(node_info.get(node, {}).get("cpuset"), ncpus)])
                if used < STARVED_USE * budget and idle_own < STARVED_IDLE:
                    starved.append(node)
        extra["slowdown"] = (_probe.slowdown(readings, base or {}, t0, t1) if readings
                             else float("nan"))
        extra["cpu_servers"] = server_cpu
        extra["cpu_us_per_reply_servers"] = server_cpu * dur / replies * 1e6 if replies > 0 else float("nan")
        extra["starved_nodes"] = ",".join(starved)
        extra["oversubscribed"] = bool((not np.isnan(idle) and idle < min_idle) or starved)
        rows.append(extra)
    enriched = pd.concat([steps.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
    enriched = apply_rules(enriched, max_foreign_cpu, ncpus=ncpus)
    return utilization.add_columns(enriched, samples, point)  # per-node time, links, bottleneck


def _cgroup_cpu_columns(steps: pd.DataFrame) -> list[str]:
    return [c for c in steps.columns if c.startswith("cpu_") and not c.startswith("cpu_us")
            and c != "cpu_servers"]


def foreign_cpu(steps: pd.DataFrame, ncpus: int | None = None) -> pd.Series:
    """Cores busy outside the testbed's cgroups: every CPU's busy time (all of /proc/stat
    but idle and iowait, so irq and softirq count) minus the hypervisor's steal time (no
    program here ran then; ``steal_cores``, 0 where a table predates it) minus every node's
    cgroup CPU, which includes the softirq run in its tasks' context. NaN without the
    machine's idle share."""
    n = ncpus or len([c for c in steps.columns if c.startswith("softirq_cpu")]) or 1
    idle = pd.to_numeric(steps["machine_idle"], errors="coerce") if "machine_idle" in steps \
        else pd.Series(np.nan, index=steps.index)
    steal = pd.to_numeric(steps["steal_cores"], errors="coerce").fillna(0.0) if "steal_cores" in steps else 0.0
    cgroups = steps[_cgroup_cpu_columns(steps)].apply(pd.to_numeric, errors="coerce").sum(axis=1)
    return (1.0 - idle) * n - steal - cgroups


def apply_rules(steps: pd.DataFrame, max_foreign_cpu: float = 0.25, ncpus: int | None = None) -> pd.DataFrame:
    """The derived columns of a steps table, recomputed from its stored columns under
    today's rules: ``foreign_cpu`` and ``interfered``, ``reply_rate_own``, ``slowdown``
    (NaN when the table has none) and ``slowed``, ``nr_throttled_<node>`` (NaN when the
    samples did not carry it) and ``faithful``. Idempotent; a table without the machine's
    CPU columns (a bare load-generator table) keeps its flags."""
    if steps.empty:
        return steps
    steps = steps.copy()
    if "machine_idle" in steps:
        steps["foreign_cpu"] = foreign_cpu(steps, ncpus)
        steps["interfered"] = (steps["foreign_cpu"] > max_foreign_cpu).fillna(False).astype(bool)
    if "replies" in steps and "window_s" in steps and "reply_rate_avg" in steps:
        win = pd.to_numeric(steps["window_s"], errors="coerce")
        own = pd.to_numeric(steps["replies"], errors="coerce") / win.where(win > 0)
        steps["reply_rate_own"] = np.fmin(pd.to_numeric(steps["reply_rate_avg"], errors="coerce"), own)
    if "slowdown" not in steps:
        steps["slowdown"] = np.nan
    steps["slowdown"] = pd.to_numeric(steps["slowdown"], errors="coerce")
    steps["slowed"] = [_probe.is_slowed(r) for r in steps["slowdown"]]
    for c in [c for c in steps.columns if c.startswith("throttled_")]:
        if f"nr_{c}" not in steps:
            steps[f"nr_{c}"] = np.nan
    flags = [f for f in ("generator_bound", "oversubscribed", "interfered", "slowed") if f in steps]
    if flags:
        bad = np.zeros(len(steps), dtype=bool)
        for f in flags:
            bad |= steps[f].fillna(False).astype(bool).to_numpy()
        steps["faithful"] = ~bad
    return steps


def build_tables(run_dir: Path | str) -> dict[str, pd.DataFrame]:
    """Write steps/samples/points Parquet tables for a run and return them."""
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    min_idle = float(manifest.get("fidelity", {}).get("min_idle", 0.05))
    max_foreign = float(manifest.get("fidelity", {}).get("max_foreign_cpu", 0.25))
    all_steps, all_samples, point_rows, decisions = [], [], [], []
    readings = _probe.read(run_dir)  # {} for runs before the probe: slowdown stays NaN
    base = _probe.baselines(readings)
    for point in _read_points(run_dir):
        pdir = Path(point["dir"])
        meta = {"point": point["point"], "mode": point["mode"], "workload": point["workload"],
                "repetition": point["repetition"], "balance": point.get("balance"),
                "budgets": point.get("budgets"),
                **{f"param_{k}": v for k, v in (point.get("params") or {}).items()},
                **{f"config_{k}": v for k, v in (point.get("config") or {}).items()}}
        point_rows.append({**meta, "status": point.get("status"), "error": point.get("error"),
                           "started": point.get("started"), "finished": point.get("finished")})
        samples = pd.read_parquet(pdir / "samples.parquet") if (pdir / "samples.parquet").exists() else pd.DataFrame()
        if not samples.empty:
            all_samples.append(samples.assign(point=point["point"]))
        balance_log = pdir / "logs" / "balance.jsonl"
        if balance_log.exists():
            rows = [json.loads(line) for line in balance_log.read_text().splitlines() if line.strip()]
            if rows:
                decisions.append(pd.DataFrame(rows).assign(point=point["point"], mode=point["mode"],
                                                           balance=point.get("balance"),
                                                           workload=point["workload"]))
        # one steps.csv per load-generator run: the sweep's, or one per phase (shifting mix)
        frames = []
        for steps_csv in sorted((pdir / "load").glob("**/steps.csv")):
            if steps_csv.stat().st_size > 0:
                part = pd.read_csv(steps_csv)
                phase = steps_csv.parent.name
                frames.append(part.assign(phase=int(phase[5:]) if phase.startswith("phase") else None))
        if frames:
            steps = pd.concat(frames, ignore_index=True)
            if not steps.empty:
                enriched = (step_metrics(steps, samples, point, min_idle, max_foreign, readings, base)
                            if not samples.empty else apply_rules(steps, max_foreign))
                all_steps.append(enriched.assign(**meta))
    tables = {
        "steps": pd.concat(all_steps, ignore_index=True) if all_steps else pd.DataFrame(),
        "samples": pd.concat(all_samples, ignore_index=True) if all_samples else pd.DataFrame(),
        "points": pd.DataFrame(point_rows),
        "balance": pd.concat(decisions, ignore_index=True) if decisions else pd.DataFrame(),
    }
    for name, df in tables.items():
        df.to_parquet(run_dir / f"{name}.parquet", index=False)
    return tables

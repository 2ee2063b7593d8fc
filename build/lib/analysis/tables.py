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
  ``max_foreign_cpu``. It includes the runner and softirq work the kernel charged to no
  cgroup, so the threshold sits above what a quiet run shows (see docs/results.md);
- ``faithful`` = none of generator_bound, oversubscribed, interfered: the steps a peak
  may come from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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
                 min_idle: float, max_foreign_cpu: float = 0.25) -> pd.DataFrame:
    """Add per-node CPU over each step window and the fidelity flags."""
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
        # task time (not irq/softirq, which the kernel charges to no cgroup or to whoever ran)
        # outside the testbed's cgroups, plus time a hypervisor stole
        all_nodes = sum(v for k, v in extra.items() if k.startswith("cpu_") and not k.startswith("cpu_us"))
        busy = sum(_window(machine, c, t0, t1) for c in ("user_s", "nice_s", "system_s", "steal_s")
                   if c in machine) / dur if not machine.empty else float("nan")
        extra["foreign_cpu"] = busy - all_nodes
        extra["interfered"] = bool(extra["foreign_cpu"] > max_foreign_cpu)
        extra["cpu_servers"] = server_cpu
        extra["cpu_us_per_reply_servers"] = server_cpu * dur / replies * 1e6 if replies > 0 else float("nan")
        extra["starved_nodes"] = ",".join(starved)
        extra["oversubscribed"] = bool((not np.isnan(idle) and idle < min_idle) or starved)
        rows.append(extra)
    enriched = pd.concat([steps.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
    gb = enriched["generator_bound"].astype(bool) if "generator_bound" in enriched else False
    enriched["faithful"] = ~(gb | enriched["oversubscribed"].astype(bool) | enriched["interfered"].astype(bool))
    return utilization.add_columns(enriched, samples, point)  # per-node time, links, bottleneck


def build_tables(run_dir: Path | str) -> dict[str, pd.DataFrame]:
    """Write steps/samples/points Parquet tables for a run and return them."""
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    min_idle = float(manifest.get("fidelity", {}).get("min_idle", 0.05))
    max_foreign = float(manifest.get("fidelity", {}).get("max_foreign_cpu", 0.25))
    all_steps, all_samples, point_rows, decisions = [], [], [], []
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
                enriched = step_metrics(steps, samples, point, min_idle, max_foreign) if not samples.empty else steps
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

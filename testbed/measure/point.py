"""One point measured: its testbed up, its samples taken, the load generator run in its
client node, and its record on disk (``points/<id>/``), whatever happens.

    points/<point-id>/   point.json (status), load/ (the load generator's steps.csv,
                         requests.parquet, summary.json; one directory per run of it),
                         samples.parquet, logs/

The runner (testbed.measure.runner) decides which points run when; a point is measured either
alone, sweeping all its rates (``run_point``), or beside others of its round, one rate at a
time (testbed.measure.interleave); both go through ``PointRun``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import TestbedError
from ..describe.experiment import Experiment, Point
from ..system.lifecycle import Testbed
from ..system.files import write_json
from .metrics import Sampler, offload_flags, sysctls_of, write_rows
from ..describe.topology import DEFAULT_SUBNET

if TYPE_CHECKING:
    from loadgen.config import SweepConfig

ROOT = Path(__file__).resolve().parents[2]
RECORDED_SYSCTLS = ("net.ipv4.ip_forward", "net.ipv4.tcp_tw_reuse", "net.ipv4.ip_local_port_range",
                    "net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_congestion_control",
                    "net.netfilter.nf_conntrack_tcp_timeout_time_wait")
STEP_START_S = 3.0  # a load generator started for one step: its master and workers up, ready


def point_seconds(exp: Experiment, workload: str | None = None) -> float:
    """About how long one point's load runs (for progress and the dry run's estimate)."""
    load = exp.load
    if workload == "shifting":
        return sum(ph.seconds + load.warmup_seconds + 3 for ph in exp.phases)
    workloads = [workload] if workload else [w for w in exp.workloads if w != "shifting"]
    longest = max((len(exp.rates_for(w)) for w in workloads), default=1)
    per_step = load.step_seconds + load.warmup_seconds
    if exp.fidelity.pairing == "step":  # one load generator per step, knee-search turns at most
        return (longest + exp.fidelity.refine) * (per_step + STEP_START_S) + 5
    return longest * per_step + 5


def point_dir(run_dir: Path, p: Point) -> Path:
    return run_dir / "points" / p.id


def point_status(run_dir: Path, p: Point) -> str:
    try:
        return json.loads((point_dir(run_dir, p) / "point.json").read_text()).get("status", "unknown")
    except (OSError, ValueError):
        return "missing"


def sweep_config(exp: Experiment, p: Point, url: str, out: Path, rates: Sequence[float] | None = None,
                 **override: Any) -> "SweepConfig":
    """The load generator's configuration for point ``p``: all its rates unless ``rates``;
    ``override`` sets a phase's own (step_seconds, mix)."""
    from loadgen.config import SweepConfig
    load = exp.load
    kw: dict[str, Any] = {
        "target": url, "rates": list(rates if rates is not None else exp.rates_for(p.workload)), "out": out,
        "workload": p.workload, "step_seconds": load.step_seconds, "warmup": load.warmup_seconds,
        "processes": load.processes, "seed": exp.seed + p.repetition, "latency_target_ms": load.latency_target_ms,
        "keepalive": load.keepalive, "poisson": load.poisson}
    if p.workload == "mixed" and load.mix is not None:
        kw["mix"] = load.mix
    if load.dynamic_cost_us is not None:
        kw["dynamic_cost_us"] = load.dynamic_cost_us
    return SweepConfig(**{**kw, **override})


class PointRun:
    """One point's testbed from up to down, with its sampler and its ``point.json``.

    ``start()`` builds the testbed (False, the point recorded as failed, when it cannot be);
    ``load()`` runs the load generator in its client node; ``close()`` always ends it: the
    samples and logs written, the testbed down, the status recorded."""

    def __init__(self, exp: Experiment, p: Point, run_dir: Path, name: str, subnet: str = DEFAULT_SUBNET):
        self.exp, self.p, self.name, self.subnet = exp, p, name, subnet
        self.out = point_dir(run_dir, p)
        self.tb: Testbed | None = None
        self.sampler: Sampler | None = None
        self.code: int | None = None
        self.info: dict[str, Any] = {}

    def start(self) -> bool:
        exp, p, out = self.exp, self.p, self.out
        if out.exists():
            shutil.rmtree(out)  # a point cut short is measured again from its start
        (out / "load").mkdir(parents=True)
        params = exp.topology_params(p)
        self.info = {"point": p.id, "mode": p.mode, "workload": p.workload,
                     "repetition": p.repetition, "config": p.config, "balance": p.balance,
                     "params": params, "budgets": exp.budgets, "status": "running",
                     "started": time.time()}
        self._save()
        try:
            topo = exp.topology_for(params)
            self.info["nodes"] = {n.name: {"role": n.role, "cpu": n.cpu, "cpuset": n.cpuset} for n in topo.nodes}
            service = exp.service_options(p)  # the point's balancing policy included
            self.info["service"] = service.to_values()
            from ..system.kernel import pid_start_time
            tb = Testbed(topo, self.name, mode=p.mode, subnet=self.subnet, start_services=True,
                         service_options=service, backend=exp.backend)
            tb.recorded["owner"] = {"by": "runner", "pid": os.getpid(), "start_time": pid_start_time(os.getpid())}
            tb.up()
            self.tb = tb
            self.info["offloads"] = offload_flags(tb)
            self.info["sysctls"] = sysctls_of(tb, RECORDED_SYSCTLS)
            self.info["service_url"] = tb.service_url
            # how the budgets were enforced (read back against these at up)
            self.info["cfs_period_us"] = tb.topology.budget.period_us
            self.info["cfs_burst_pct"] = tb.topology.budget.burst_pct
            if tb.remotes:  # where each machine's nodes ran, and its clock against this one's
                self.info["machines"] = tb.recorded.get("machines", {})
            self._save()
            self.sampler = Sampler(tb, interval=1.0).__enter__()
            return True
        except TestbedError as e:
            self.fail(str(e))
            return False

    def load(self, cfg: "SweepConfig", prefix: str = "") -> int:
        """Run the load generator with ``cfg`` in the point's client node; its exit status."""
        assert self.tb is not None
        return run_loadgen(self.tb, cfg, self.out, prefix, self.exp.load.timeout_s)

    def sweep(self, out: Path, rates: Sequence[float] | None = None, **override: Any) -> "SweepConfig":
        assert self.tb is not None
        return sweep_config(self.exp, self.p, self.tb.service_url, out, rates, **override)

    def fail(self, error: str) -> None:
        self.info["status"] = "failed"
        self.info["error"] = error
        print(f"    {self.p.id} failed: {error}", file=sys.stderr)

    def close(self, interrupted: bool = False) -> str:
        """End the point; its status: done, failed or interrupted."""
        if self.sampler is not None:
            self.sampler.stop()
            if self.sampler.rows:
                write_rows(self.sampler.rows, self.out / "samples.parquet")
        if self.tb is not None:
            try:
                _collect(self.tb, self.out)
            finally:
                self.tb.down()
                self.tb = None
        if interrupted:
            self.info["status"] = "interrupted"
        elif self.info.get("status") == "running":
            self.info["loadgen_exit"] = self.code
            self.info["status"] = "done" if self.code == 0 else "failed"
            if self.code != 0:
                self.info["error"] = _tail(self.out / "loadgen.log")
        self.info["finished"] = time.time()
        self._save()
        return str(self.info["status"])

    def _save(self) -> None:
        if self.info:
            write_record(self.out / "point.json", self.info)


def run_point(exp: Experiment, p: Point, run_dir: Path, name: str) -> str:
    """Measure one point alone: its testbed up, every rate swept, down; its status."""
    run = PointRun(exp, p, run_dir, name)
    interrupted = False
    try:
        if run.start():
            run.code = drive_load(run, prefix="    ")
    except KeyboardInterrupt:
        interrupted = True
        raise
    except TestbedError as e:
        run.fail(str(e))
    finally:
        status = run.close(interrupted)
    return status


def drive_load(run: PointRun, prefix: str = "") -> int:
    """Run the sweep inside the client node; the ``shifting`` workload runs one mixed-load
    phase after another (the static share changing) while the testbed keeps running."""
    exp, p, out = run.exp, run.p, run.out
    assert run.tb is not None
    if p.workload != "shifting":
        return run.load(run.sweep(out / "load"), prefix)
    for i, phase in enumerate(exp.phases):
        cfg = sweep_config(exp, replace(p, workload="mixed"), run.tb.service_url, out / "load" / f"phase{i}",
                           [phase.rate], step_seconds=phase.seconds, mix=phase.mix)
        print(f"{prefix}phase {i + 1}/{len(exp.phases)}: static share {phase.mix:g}, "
              f"{phase.rate:g} req/s for {phase.seconds:g} s", flush=True)
        code = run.load(cfg, prefix)
        if code != 0:
            return code
    return 0


def run_loadgen(tb: Testbed, cfg: "SweepConfig", out: Path, prefix: str, slack_s: float = 60.0) -> int:
    """Run one load-generator invocation in the client node, relaying its progress lines;
    stopped past twice its steps' time (each with its start and its requests' time-out)
    and ``slack_s`` more (the experiment's ``load.timeout_s``)."""
    argv = [sys.executable, "-m", "loadgen", "sweep", *cfg.to_argv()]
    timeout = 2 * len(cfg.rates) * (cfg.step_seconds + cfg.timeout + STEP_START_S) + slack_s + 30 * cfg.processes
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = tb.popen(tb.topology.by_role("client")[0].name, argv, log_name="loadgen", stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, env=env, cwd=str(ROOT), text=True)
    deadline = time.monotonic() + timeout
    with open(out / "loadgen.log", "a") as logf:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                logf.write(line)
                print(prefix + line.rstrip(), flush=True)
                if time.monotonic() > deadline:
                    raise TimeoutError
            return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except (TimeoutError, subprocess.TimeoutExpired):
            logf.write(f"runner: load generator exceeded {timeout:.0f} s; stopped\n")
            return 124
        finally:
            if proc.poll() is None:
                from ..system.processes import stop
                stop(proc.pid, None, timeout=3)


def _collect(tb: Testbed, out: Path) -> None:
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    for f in tb.store.logs.glob("*.log"):
        shutil.copy2(f, logs / f.name)
    for f in [*tb.store.dir.glob("*.json"), *tb.store.dir.glob("*.jsonl")]:
        if f.name != "state.json":
            shutil.copy2(f, logs / f.name)
    for p in tb.processes:  # the logs of processes on other machines, fetched from there
        if p.machine:
            try:
                text = tb.remotes[p.machine].call("read", {"testbed": tb.name, "file": str(
                    Path(p.log).relative_to(tb.store.dir))}).get("text")
            except (TestbedError, ValueError) as e:
                text = f"(not fetched from machine {p.machine}: {e})"
            (logs / f"{p.machine}-{Path(p.log).name}").write_text(text or "")


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def set_aside(run_dir: Path, src: Path, name: str) -> str | None:
    """Move a spoiled attempt ``src`` to ``remeasured/NAME`` (kept for inspection, replacing
    an older one there); its path in the run (None: nothing at ``src``)."""
    dest = run_dir / "remeasured" / name
    kept = None
    if src.exists():
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), dest)
        kept = str(dest.relative_to(run_dir))
    return kept


def write_record(path: Path, data: dict[str, Any]) -> None:
    """A point's or run's record (point.json, manifest.json), whole or not at all."""
    write_json(path, data, indent=2, default=str)

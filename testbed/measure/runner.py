"""The experiment runner: every point of the matrix on a fresh testbed, results on disk.

    results/<run-id>/
      manifest.json          experiment, versions, commit, kernel, cgroups, sysctls, seeds, machine
      experiment.yaml        the description as run
      points/<point-id>/     point.json (status), load/ (the load generator's steps.csv,
                             requests.parquet, summary.json), samples.parquet, logs/
      steps.parquet, samples.parquet, points.parquet   tidy tables for analysis.load()

A point is written as soon as it ends; Ctrl-C or a crash keeps every finished point
(and the steps of the one interrupted), tears the testbed down, and ``--resume RUN_DIR``
runs only what is missing.

Progress: on a terminal, a rich progress display (points done, the current point, time
left counting down); in a pipe or a file, one ``[i/n] POINT ...`` line as each point
starts and ends, so logs stay greppable.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from dataclasses import asdict, replace
from typing import Any

from ..system import cgroups as cg
from . import guard, precision, probe
from ..errors import TestbedError
from ..describe.experiment import Experiment, Point, load_experiment
from .interleave import run_side_by_side
from .point import RECORDED_SYSCTLS, ROOT, point_dir, point_seconds, point_status, run_point, set_aside, write_record

log = logging.getLogger(__name__)


def run_experiment_cli(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "experiment.yaml").exists():
            raise TestbedError(f"{run_dir} is not a run directory (no experiment.yaml)")
        manifest = json.loads((run_dir / "manifest.json").read_text())
        exp = load_experiment(str(run_dir / "experiment.yaml"), quick=manifest.get("quick", False))
    else:
        exp = load_experiment(args.experiment, quick=args.quick)
        run_dir = new_run_dir(Path(args.results), exp.name)
    code = run_experiment(exp, run_dir, quick=args.quick)
    if not args.no_report and any((run_dir / "points").glob("*/load/**/steps.csv")):
        from analysis.report import summary_of, write_report
        report = write_report(run_dir)  # also for an interrupted run: what was measured
        print(summary_of(run_dir))
        print(f"report: {report}")
    return code


def new_run_dir(results: Path, name: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = results / f"{name}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def run_experiment(exp: Experiment, run_dir: Path, quick: bool = False) -> int:
    """Run every point not yet done, round by round; returns 0 when all are done, 130 when
    interrupted, 1 when some failed (named on stderr; the others are measured and kept).

    Around the whole run the probe (testbed.measure.probe) times a fixed work on each CPU. A round's
    points of one workload are measured side by side, taking turns at each rate
    (``fidelity.pairing: step``, testbed.measure.interleave), or one after another (``round``).
    Before each turn or point the guard waits for a quiet machine; with ``fidelity.remeasure``
    a turn or point with slowed or interfered steps is measured again (the spoiled steps kept
    under remeasured/, the reason in the manifest). With ``precision`` rounds are added until
    the headline gains are precise enough (testbed.measure.precision)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "experiment.yaml").exists():
        import yaml
        (run_dir / "experiment.yaml").write_text(yaml.safe_dump(exp.raw, sort_keys=False))
    manifest = write_manifest(exp, run_dir, quick)
    remove_orphans()
    max_rounds = exp.precision.max_rounds if exp.precision else exp.repetitions
    points = replace(exp, repetitions=max_rounds).points()
    rounds = {r: [p for p in points if p.repetition == r] for r in range(1, max_rounds + 1)}
    planned = [p for p in points if p.repetition <= exp.repetitions]
    todo = [p for p in planned if point_status(run_dir, p) != "done"]
    total_s = sum(point_seconds(exp, p.workload) + 8 for p in todo)
    more = f", then rounds until {exp.precision.half_width_pct:g}-point precision (at most " \
           f"{exp.precision.max_rounds} rounds, {exp.precision.minutes:g} min)" if exp.precision else ""
    print(f"experiment {exp.name}: {len(planned)} points, {len(planned) - len(todo)} already done "
          f"({exp.repetitions} rounds{more}), about {total_s / 60:.1f} min to go -> {run_dir}")
    attempts: dict[str, int] = {}
    for rec in manifest.get("remeasured", []):
        if "point" not in rec:
            continue  # a rate's turn measured again side by side (testbed.measure.interleave)
        attempts[rec["point"]] = max(attempts.get(rec["point"], 0), int(rec["attempt"]))
    ran: list[Point] = []
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        started = time.monotonic()
        done_before = len(planned) - len(todo)
        display = points_display() if sys.stdout.isatty() else None
        with display or contextlib.nullcontext(), probe.Probe(run_dir):
            task = display.add_task("", total=len(planned), completed=done_before, left_s=total_s,
                                    since=started) if display else None
            count, rounds_here = done_before, 0
            for r, round_points in rounds.items():
                if r > exp.repetitions:
                    assert exp.precision is not None
                    used_min = (time.monotonic() - started) / 60
                    # minutes per round as measured here (a resumed run's earlier rounds took none
                    # of this process's time), else the estimate
                    per_round = used_min / rounds_here if rounds_here else \
                        sum(point_seconds(exp, p.workload) + 8 for p in round_points) / 60
                    widths = precision.headline_half_widths(run_dir)
                    stop = precision.decide(widths, exp.precision, r - 1, used_min, per_round)
                    manifest["precision"] = {**asdict(exp.precision), "rounds": r - 1, "stopped": stop,
                                             "half_widths": widths}
                    if stop:
                        print(f"rounds stop after {r - 1}: {stop}", flush=True)
                        break
                    worst = max(widths.values(), default=float("nan"))
                    print(f"round {r}: the widest headline gain is ±{worst:.1f} points "
                          f"(target ±{exp.precision.half_width_pct:g})", flush=True)
                    if display is not None and task is not None:
                        display.update(task, total=len(planned) + len(round_points))
                    planned += round_points
                queue = [p for p in round_points if point_status(run_dir, p) != "done"]
                ran += [p for p in round_points if p not in queue]
                rounds_here += bool(queue)
                for k, batch in enumerate(batches(exp, queue)):
                    left = sum(point_seconds(exp, q.workload) + 8 for b in batches(exp, queue)[k:] for q in b)
                    what = batch[0].id if len(batch) == 1 else f"round {r}: {len(batch)} {batch[0].workload} points side by side"
                    if display is not None and task is not None:
                        display.update(task, description=what, completed=count, left_s=left, since=time.monotonic())
                    else:
                        span = f"{count + 1}" if len(batch) == 1 else f"{count + 1}-{count + len(batch)}"
                        print(f"[{span}/{len(planned)}] {what}  (elapsed {(time.monotonic() - started) / 60:.1f} "
                              f"min, about {left / 60:.1f} min left in this round)", flush=True)
                    if len(batch) == 1:  # side by side, each turn waits for a quiet machine itself
                        guard.wait_for_quiet(exp.fidelity.max_foreign_cpu)
                        statuses = {batch[0].id: _run_alone(exp, batch[0], run_dir, manifest, attempts)}
                    else:
                        statuses = run_side_by_side(exp, batch, run_dir, manifest,
                                                    lambda: _save_manifest(run_dir, manifest))
                    for p in batch:
                        count += 1
                        print(f"[{count}/{len(planned)}] {p.id}: {statuses.get(p.id, 'failed')}", flush=True)
                        ran.append(p)
            if display is not None and task is not None:
                display.update(task, completed=count, left_s=0)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: finished points are kept; resume with "
              f"`sudo testbed run --resume {run_dir} {exp.name}`", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
        manifest["finished"] = time.time()
        run_points = [p for p in points if p in ran or p.repetition <= exp.repetitions]
        manifest["order"] = [p.id for p in run_points]
        manifest["repetitions"] = max((p.repetition for p in run_points), default=exp.repetitions)
        manifest["points"] = {p.id: point_status(run_dir, p) for p in run_points}
        _save_manifest(run_dir, manifest)
        from analysis.tables import build_tables
        try:
            build_tables(run_dir)
        except Exception as e:  # tables can be rebuilt by analysis.load later
            log.warning("could not build tables: %s", e)
    if interrupted:
        return 130
    failed = [pid for pid, status in manifest["points"].items() if status == "failed"]
    if failed:
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        print(f"{len(failed)} of {len(manifest['points'])} points failed: {shown} "
              f"(their errors: points/<id>/point.json)", file=sys.stderr)
        return 1
    return 0


def batches(exp: Experiment, queue: list[Point]) -> list[list[Point]]:
    """How a round's points are measured: with ``pairing: step`` the points of one workload
    together (testbed.measure.interleave), else one by one; also one by one under step
    pairing: a shifting mix (its phases are one timeline) and an adaptive balancer (it
    follows the load it sees, and taking turns would show it idle gaps between steps)."""
    if exp.fidelity.pairing != "step":
        return [[p] for p in queue]
    groups: dict[str, list[Point]] = {}
    alone: list[list[Point]] = []
    for p in queue:
        if p.workload == "shifting" or (p.balance is not None and p.balance.adapts):
            alone.append([p])
        else:
            groups.setdefault(p.workload, []).append(p)
    return [*groups.values(), *alone]


def _run_alone(exp: Experiment, p: Point, run_dir: Path, manifest: dict[str, Any], attempts: dict[str, int]) -> str:
    """One point on its own testbed; measured again (``fidelity.remeasure`` times at most)
    while its steps come out slowed or interfered, the spoiled attempts set aside."""
    limit = exp.fidelity.remeasure
    while True:
        if limit:
            guard.wait_for_speed(run_dir)
        status = run_point(exp, p, run_dir, name=f"r{os.getpid() % 100000}")
        if status != "done":
            return status
        judged = guard.judge_point(run_dir, point_dir(run_dir, p), manifest)
        if not judged.reason:
            return status
        if attempts.get(p.id, 0) >= limit:
            print(f"    {judged.reason}: kept, flagged, after {attempts.get(p.id, 0) + 1} attempts", flush=True)
            return status
        attempts[p.id] = attempts.get(p.id, 0) + 1
        _set_aside(run_dir, p, attempts[p.id], judged, manifest)
        print(f"    {judged.reason}: measured again (attempt {attempts[p.id] + 1} of at most {limit + 1})", flush=True)


def _set_aside(run_dir: Path, p: Point, attempt: int, judged: "guard.Judgement", manifest: dict[str, Any]) -> None:
    """Move a spoiled attempt out of points/ (kept for inspection) and record why."""
    kept = set_aside(run_dir, point_dir(run_dir, p), f"{p.id}.a{attempt}")
    manifest.setdefault("remeasured", []).append(
        {"point": p.id, "attempt": attempt, "reason": judged.reason, "slowed_steps": judged.slowed_steps,
         "interfered_steps": judged.interfered_steps, "steps": judged.steps, "kept_in": kept})
    _save_manifest(run_dir, manifest)


def _save_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    write_record(run_dir / "manifest.json", manifest)


def points_display() -> Any:
    """A rich progress display for a terminal: the point running, points done of all, the
    time left (the estimate made as the point started, counting down) and the time spent.
    Lines printed meanwhile appear above it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class TimeLeft(ProgressColumn):
        def render(self, task: Any) -> Text:
            left = max(0.0, task.fields["left_s"] - (time.monotonic() - task.fields["since"]))
            return Text(f"about {left / 60:.1f} min left")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("points"),
                    TimeLeft(), TimeElapsedColumn(), refresh_per_second=2)


def remove_orphans() -> None:
    """Tear down testbeds left by a runner that crashed or was killed (its pid is gone)."""
    from ..system.kernel import pid_alive
    from ..system.lifecycle import teardown
    from ..system.state import StateStore, list_testbeds
    for name in list_testbeds():
        try:
            owner = StateStore(name).load().get("owner") or {}
        except TestbedError:
            continue
        if owner.get("by") == "runner" and not pid_alive(owner["pid"], owner.get("start_time")):
            teardown(name)
            print(f"removed testbed {name} left by a runner that died (pid {owner['pid']})")


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def write_manifest(exp: Experiment, run_dir: Path, quick: bool) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    if path.exists():
        manifest = json.loads(path.read_text())
        manifest.setdefault("resumed", []).append(time.time())
    else:
        manifest = {"experiment": exp.name, "source": exp.source, "quick": quick,
                    "description": exp.description, "budgets": exp.budgets,
                    "started": time.time(), "seed": exp.seed, "repetitions": exp.repetitions,
                    "order_seed": exp.seed if exp.order_seed is None else exp.order_seed,
                    "order": [p.id for p in exp.points()],
                    "latency_target_ms": exp.load.latency_target_ms,
                    "load": exp.load.to_values(), "topology": exp.topology, "params": exp.params,
                    "sweep": exp.sweep, "modes": exp.modes, "workloads": exp.workloads,
                    "fidelity": exp.fidelity.to_dict(), "equivalence_pct": exp.equivalence_pct,
                    **environment()}
    path.write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def environment() -> dict[str, Any]:
    """What a reader needs to reproduce or doubt a result: code, software, kernel, machine."""
    def cmd(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=10).stdout.strip()
        except OSError:
            return ""
    versions = {"python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version
    for pkg in ("pyroute2", "locust", "gevent", "uvloop", "httptools", "pandas", "pyarrow", "matplotlib"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    cpu_model = ""
    try:
        cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
    except OSError:
        pass
    from ..system.kernel import irq_time_accounting, read_sysctl
    return {
        "irq_time_accounting": irq_time_accounting(),
        "versions": versions,
        # dirty: a tracked file changed, or a file the code could import is untracked (an
        # untracked log or venv link beside the checkout changes nothing that runs)
        "commit": cmd("git", "rev-parse", "HEAD"),
        "dirty": bool(cmd("git", "status", "--porcelain", "--untracked-files=no")
                      or cmd("git", "status", "--porcelain", "--", "testbed", "loadgen", "analysis")),
        "kernel": platform.release(), "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model,
                                                  "arch": platform.machine(), "hostname": platform.node(),
                                                  "mem_kb": _meminfo_kb()},
        "cgroup_version": cg.detect().version,
        "host_sysctls": {k: read_sysctl(k) for k in RECORDED_SYSCTLS},
        "clock": "time.time() epoch seconds; 1 s metric samples",
    }


def _meminfo_kb() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        return None

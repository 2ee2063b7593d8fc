"""A guard against the machine's unseen slowdowns: a fixed work timed on each CPU.

This machine slows down from outside for minutes at a time: both CPUs run the same code
20-70% slower while /proc/stat counts almost no steal time, and a point measured in such a
window loses a fifth of its peak. Steal time misses it; the time a fixed piece of work takes
sees it. So one small process per CPU, pinned there and outside every testbed cgroup, runs
a fixed pure-Python loop ``REPS`` times each second and reports the fastest run in
milliseconds of its own CPU time. CPU time, not wall time: our own nodes keeping the same
CPU busy delay the probe but do not lengthen the CPU time its loop takes, while a slower
processor does. The fastest of a few short runs drops an interrupt landing in one of them.

The probes write ``probe.csv`` (t, cpu, work_ms) in the run directory. A step's slowdown
is, on its worst CPU, the median of its readings over that CPU's baseline (the median
of the whole run's readings); a step at or above ``SLOWED_RATIO`` is *slowed*: the runner
measures its point again, and the analysis leaves it out of peaks like an interfered step.
The rule lives here, once, for both.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Iterable

import numpy as np

PROBE_FILE = "probe.csv"
INTERVAL_S = 1.0
REPS = 5
LOOP = 20_000  # iterations of the fixed work: about 1.4 ms of CPU per run on this machine
SLOWED_RATIO = 1.2
# The baseline is the run's median reading per CPU, not a low percentile: on this machine
# (2 vCPUs, 2026-12-03) an idle CPU's readings are bimodal, second by second, about 1.0 ms
# and 1.5 ms with the slower state the more common (median 1.50, 10th percentile 1.02 over a
# minute with nothing else running): a low percentile named the rare fast state normal and
# judged most steps slowed. Against the median, a step is slowed when its CPU ran 1.2x
# slower than it usually does during the run.
BASELINE_PERCENTILE = 50
MIN_READINGS = 3  # per CPU within a step, below which the step is not judged


def work_ms(loop: int = LOOP, reps: int = REPS) -> float:
    """The fastest of ``reps`` runs of the fixed work, in ms of this thread's CPU time."""
    best = float("inf")
    for _ in range(reps):
        c0 = time.thread_time()
        x = 0
        for i in range(loop):
            x += i * i % 7
        best = min(best, time.thread_time() - c0)
    return best * 1000.0


def _probe_main(cpu: int) -> None:
    """The probe process: pinned to ``cpu``, one line per second on stdout until stdin closes."""
    os.sched_setaffinity(0, {cpu})
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    next_t = time.monotonic()
    while not stop.is_set():
        ms = work_ms()
        print(f"{time.time():.3f},cpu{cpu},{ms:.4f}", flush=True)
        next_t += INTERVAL_S
        stop.wait(max(0.0, next_t - time.monotonic()))


class Probe:
    """The probes of one run, one process per CPU, appending to ``run_dir/probe.csv``."""

    def __init__(self, run_dir: Path, cpus: Iterable[int] | None = None):
        self.path = Path(run_dir) / PROBE_FILE
        self.cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
        self._procs: list[subprocess.Popen[str]] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._out: IO[str] | None = None

    def __enter__(self) -> "Probe":
        new = not self.path.exists()
        self._out = open(self.path, "a")
        if new:
            self._out.write("t,cpu,work_ms\n")
            self._out.flush()
        for cpu in self.cpus:
            proc = subprocess.Popen([sys.executable, "-c", f"from testbed.measure.probe import _probe_main; _probe_main({cpu})"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    cwd=str(Path(__file__).resolve().parents[2]))
            self._procs.append(proc)
            t = threading.Thread(target=self._relay, args=(proc,), name=f"probe-cpu{cpu}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _relay(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                if self._out is not None:
                    self._out.write(line)
                    self._out.flush()

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            try:
                assert proc.stdin is not None
                proc.stdin.close()  # the probe's signal to stop
            except OSError:
                pass
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for t in self._threads:
            t.join(timeout=2)
        with self._lock:
            if self._out is not None:
                self._out.close()
                self._out = None


def read(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``probe.csv`` of a run as {cpu: (t, work_ms)}, each sorted by time; {} without one."""
    path = Path(run_dir) / PROBE_FILE
    by_cpu: dict[str, tuple[list[float], list[float]]] = {}
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return {}
    for line in lines:
        parts = line.split(",")
        if len(parts) != 3:
            continue  # a line cut short when the run was killed
        try:
            t, ms = float(parts[0]), float(parts[2])
        except ValueError:
            continue
        ts, vs = by_cpu.setdefault(parts[1], ([], []))
        ts.append(t)
        vs.append(ms)
    out = {}
    for cpu, (ts, vs) in by_cpu.items():
        order = np.argsort(ts)
        out[cpu] = (np.asarray(ts)[order], np.asarray(vs)[order])
    return out


def baselines(readings: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Each CPU's usual time for the fixed work during the run: the median of its readings."""
    return {cpu: float(np.percentile(v, BASELINE_PERCENTILE)) for cpu, (_, v) in readings.items() if len(v)}


def slowdown(readings: dict[str, tuple[np.ndarray, np.ndarray]], base: dict[str, float],
             t0: float, t1: float) -> float:
    """How much slower than its baseline the worst CPU ran in [t0, t1] (median reading over
    baseline; 1.0 = as fast as it usually ran), NaN with too few readings."""
    worst = float("nan")
    for cpu, (t, v) in readings.items():
        window = v[(t >= t0) & (t <= t1)]
        if len(window) < MIN_READINGS or not base.get(cpu):
            continue
        ratio = float(np.median(window)) / base[cpu]
        worst = ratio if not (worst >= ratio) else worst
    return worst


def is_slowed(ratio: float) -> bool:
    return bool(ratio >= SLOWED_RATIO)

"""A sweep's settings: ``SweepConfig``, checked before anything starts, and its command line.

Pure (no gevent, no Locust): the testbed's runner and shell build a sweep's argv from a
``SweepConfig`` (``to_argv``) and ``python -m loadgen sweep`` reads it back (``from_args``),
so one form of each setting travels from the experiment to the generator.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .schedule import check_rate
from .stats import DEFAULT_LATENCY_TARGET_MS
from .workload import WORKLOADS

log = logging.getLogger(__name__)

LOCUST_EVENT_MODES = ("step", "inline", "off")
MAX_PROCESSES = 64


class SweepError(RuntimeError):
    """The sweep cannot start or cannot go on; steps already measured stay on disk."""


#: options whose flag is not the field's name
_FLAGS = {"warmup": "--warmup", "worker_wait_s": "--worker-wait", "pause_s": "--pause"}


@dataclass
class SweepConfig:
    target: str
    rates: list[float]
    out: Path
    workload: str = "static"
    step_seconds: float = 10.0
    warmup: float = 2.0
    processes: int = 1
    poisson: bool = False
    keepalive: bool = False
    mix: float = 0.8
    dynamic_cost_us: int = 1000
    seed: int = 1
    timeout: float = 5.0
    max_inflight: int = 0             # per process; 0: sized from rate x timeout (inflight_per_process)
    latency_target_ms: float = DEFAULT_LATENCY_TARGET_MS  # p99 above it: the step is saturated
    cpus: list[int] | None = None     # pin local workers, round-robin over these CPUs
    expect_workers: int = 0           # workers from elsewhere, on top of ``processes``
    master_bind: str = "127.0.0.1"
    master_port: int = 0              # 0: any free port
    worker_wait_s: float = 30.0
    locust_events: str = "step"       # step | inline | off
    pause_s: float = 0.0              # idle time between steps (lets TIME_WAIT drain)

    def to_argv(self) -> list[str]:
        """The ``sweep`` verb's options for this configuration (``from_args`` reads them
        back from the parsed command line); options at their defaults are left out."""
        argv = ["--target", self.target, "--rates", ",".join(f"{r:g}" for r in self.rates), "--out", str(self.out)]
        for f in fields(self):
            if f.name in ("target", "rates", "out"):
                continue
            v = getattr(self, f.name)
            if v is None or v == f.default:
                continue
            flag = _FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
            if isinstance(v, bool):
                argv.append(flag)
            elif f.name == "cpus":
                argv += [flag, ",".join(map(str, v))]
            else:
                argv += [flag, f"{v:g}" if isinstance(v, float) else str(v)]
        return argv

    @classmethod
    def from_args(cls, a: Any, rates: list[float]) -> "SweepConfig":
        """The configuration of a parsed ``sweep`` command line (``rates`` already parsed)."""
        kw = {f.name: getattr(a, _FLAGS.get(f.name, "--" + f.name)[2:].replace("-", "_"))
              for f in fields(cls) if f.name not in ("rates",)}
        return cls(rates=rates, **kw)

    def validate(self) -> None:
        if self.workload not in WORKLOADS:
            raise SweepError(f"unknown workload {self.workload!r}; choose one of {', '.join(WORKLOADS)}")
        if not self.rates:
            raise SweepError("no rates given")
        for r in self.rates:
            check_rate(r)
        if not (0 < self.step_seconds <= 86400):
            raise SweepError(f"--step-seconds {self.step_seconds:g}: must be above 0 (and under a day)")
        if not (0 <= self.warmup < self.step_seconds):
            raise SweepError(f"--warmup {self.warmup:g}: must be 0 or more and shorter than the step "
                             f"({self.step_seconds:g} s)")
        if self.step_seconds - self.warmup < 1.0:
            log.warning("measured window under 1 s: reply rates are scaled from less than one sample")
        if not (0 <= self.processes <= MAX_PROCESSES) or self.processes + self.expect_workers < 1:
            raise SweepError(f"--processes {self.processes}: need 1 to {MAX_PROCESSES} worker processes in all")
        if self.expect_workers < 0:
            raise SweepError("--expect-workers must be 0 or more")
        if not 0.0 <= self.mix <= 1.0:
            raise SweepError(f"--mix {self.mix:g}: the static share must be between 0 and 1")
        if self.dynamic_cost_us < 0:
            raise SweepError("--dynamic-cost-us must be 0 or more")
        if self.timeout <= 0:
            raise SweepError("--timeout must be positive")
        if self.max_inflight < 0:
            raise SweepError("--max-inflight must be 0 (sized from rate x timeout) or more")
        if not (self.latency_target_ms > 0 and math.isfinite(self.latency_target_ms)):
            raise SweepError(f"--latency-target-ms {self.latency_target_ms:g}: must be a positive number")
        if self.locust_events not in LOCUST_EVENT_MODES:
            raise SweepError(f"--locust-events {self.locust_events!r}: one of {', '.join(LOCUST_EVENT_MODES)}")
        ncpu = os.cpu_count() or 1
        for c in self.cpus or []:
            if not 0 <= c < ncpu:
                raise SweepError(f"--cpus {c}: this machine has CPUs 0-{ncpu - 1}")

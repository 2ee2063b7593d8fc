"""An open-loop offered-load sweep: a Locust master driving worker processes step by step.

    sweep = Sweep(SweepConfig(target="http://10.77.255.1/", rates=[500, 1000], out=Path("r")))
    summary = sweep.run()

The master (this process) starts ``processes`` local workers (``python -m loadgen worker``)
and, with ``expect_workers``, waits for more from other machines; every worker gets an
equal share of each step's rate (see ``schedule.send_times``). All workers start a step
at the same epoch instant chosen by the master; each sends its per-request arrays back,
and the master writes, per step and before the next one starts:

- ``steps.csv``: one row (``stats.STEP_COLUMNS``), appended, flushed and fsynced;
- ``requests.parts/step-NNN.parquet``: one row per request; merged into
  ``requests.parquet`` when the sweep ends (or is cut short), parts kept if merging fails;

and at the end ``summary.json`` plus Locust's own ``locust_stats.csv``,
``locust_failures.csv`` and ``locust_report.html`` (from the ``events.request`` hooks the
workers fire).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import gevent
import numpy as np
from testbed.system.files import write_json

from . import sysinfo
from .config import SweepConfig, SweepError
from .engine import ERROR_KINDS
from .stats import STEP_COLUMNS, summarize
from .target import Target, TargetError, check_reachable, parse_target
from .workload import WorkloadError, load_manifest, make_workload
from .worker import decode_arrays

log = logging.getLogger(__name__)

STEP_LEAD_S = 0.3  # between the master's "go" and the step's start: lets every worker arm


def inflight_per_process(max_rate: float, workers: int, timeout: float) -> int:
    """In-flight capacity that a server which stops answering cannot exhaust: every request
    sent in the last ``timeout`` seconds may still be open, plus a margin for bursts."""
    return int(math.ceil(max_rate / max(workers, 1) * (timeout + 1.0) * 1.25)) + 64


@dataclass
class WorkerInfo:
    client_id: str
    share: int
    info: dict[str, Any] = field(default_factory=dict)


class Sweep:
    """Runs one sweep; ``on_step(row)`` and ``on_tick(progress)`` report to a front end."""

    def __init__(self, config: SweepConfig, on_step: Callable[[dict[str, Any]], None] | None = None,
                 on_tick: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.cfg = config
        self.on_step = on_step or (lambda row: None)
        self.on_tick = on_tick or (lambda p: None)
        self.target: Target | None = None
        self.manifest: dict | None = None
        self.rows: list[dict[str, Any]] = []
        self.workers: list[WorkerInfo] = []
        self._procs: list[subprocess.Popen] = []
        self._ready: dict[str, dict[str, Any]] = {}
        self._results: dict[str, dict[str, Any]] = {}
        self._progress: dict[str, dict[str, Any]] = {}
        self._env: Any = None
        self._t0 = 0.0

    # -- checks that need no worker ------------------------------------------------------

    def prepare(self) -> None:
        """Validate everything that can be validated before starting processes."""
        self.cfg.validate()
        try:
            self.target = parse_target(self.cfg.target)
            check_reachable(self.target)
        except TargetError as e:
            raise SweepError(str(e)) from None
        if self.cfg.workload in ("static", "mixed"):
            try:
                self.manifest = load_manifest(self.target.url)
                make_workload(self.cfg.workload, self.target.url, mix=self.cfg.mix,
                              dynamic_cost_us=self.cfg.dynamic_cost_us, manifest=self.manifest)
            except (WorkloadError, OSError) as e:
                raise SweepError(f"cannot build the {self.cfg.workload} workload: {e}") from None

    # -- the run -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        if self.target is None:
            self.prepare()
        out = self.cfg.out
        out.mkdir(parents=True, exist_ok=True)
        self._t0 = time.time()
        status, error = "complete", None
        try:
            self._start_master()
            self._start_local_workers()
            self._wait_for_workers()
            self._size_inflight()
            self._setup_workers()
            for k, rate in enumerate(self.cfg.rates):
                if k and self.cfg.pause_s:
                    gevent.sleep(self.cfg.pause_s)
                self._run_step(k, rate)
        except KeyboardInterrupt:
            status, error = "interrupted", "interrupted by the user"
            raise
        except SweepError as e:
            status, error = "failed", str(e)
            raise
        except Exception as e:
            status, error = "failed", f"{type(e).__name__}: {e}"
            raise
        finally:
            self._stop()
            merge_requests(out)
            self._write_locust_stats()
            summary = self._write_summary(status, error)
        return summary

    def _start_master(self) -> None:
        from locust import events
        from locust.env import Environment

        port = self.cfg.master_port or _free_port(self.cfg.master_bind)
        self.cfg.master_port = port
        self._env = Environment(user_classes=[], events=events)
        runner = self._env.create_master_runner(master_bind_host=self.cfg.master_bind, master_bind_port=port)
        runner.register_message("loadgen_ready", self._on_ready)
        runner.register_message("loadgen_result", self._on_result)
        runner.register_message("loadgen_progress", self._on_progress)

    def _start_local_workers(self) -> None:
        host = "127.0.0.1" if self.cfg.master_bind in ("*", "0.0.0.0", "") else self.cfg.master_bind
        pkg_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")])))
        logs = self.cfg.out / "workers"
        if self.cfg.processes:
            logs.mkdir(exist_ok=True)
        for i in range(self.cfg.processes):
            argv = [sys.executable, "-m", "loadgen", "worker", "--master-host", host,
                    "--master-port", str(self.cfg.master_port)]
            if self.cfg.cpus:
                argv += ["--cpus", str(self.cfg.cpus[i % len(self.cfg.cpus)])]
            with open(logs / f"worker-{i}.log", "wb") as logf:
                self._procs.append(subprocess.Popen(argv, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL))

    def _wait_for_workers(self) -> None:
        want = self.cfg.processes + self.cfg.expect_workers
        runner = self._env.runner
        end = time.monotonic() + self.cfg.worker_wait_s
        while time.monotonic() < end:
            ready = [c.id for c in runner.clients.ready]
            if len(ready) >= want:
                self.workers = [WorkerInfo(cid, i) for i, cid in enumerate(sorted(ready)[:want])]
                return
            for p in self._procs:
                if p.poll() is not None:
                    raise SweepError(f"a local worker exited with status {p.returncode} before the sweep "
                                     f"(see {self.cfg.out / 'workers'})")
            gevent.sleep(0.05)
        have = len(runner.clients.ready)
        raise SweepError(f"only {have} of {want} workers connected to the master on "
                         f"{self.cfg.master_bind}:{self.cfg.master_port} within {self.cfg.worker_wait_s:g} s")

    def _size_inflight(self) -> None:
        """Per-process in-flight capacity; a warning when ports would run short first."""
        if not self.cfg.max_inflight:
            self.cfg.max_inflight = inflight_per_process(max(self.cfg.rates), len(self.workers), self.cfg.timeout)
        lo, hi = sysinfo.port_range()
        need = max(self.cfg.rates) * self.cfg.timeout
        if need > (hi - lo + 1):
            log.warning("up to %.0f connections may be open at once (rate x timeout), more than the %d local "
                        "ports of one client address: add client addresses or shorten --timeout", need, hi - lo + 1)

    def _setup_workers(self) -> None:
        """Send each worker its set-up, again every second until it answers.

        A Locust worker announces itself to the master before its own message handlers are
        registered, so a set-up sent at once can arrive first and be dropped ("Unknown
        message type"); set-up is idempotent on the worker, so resending is safe.
        """
        runner = self._env.runner
        t = self.target
        limit = 60.0  # a hang detector, not a performance bound
        end = time.monotonic() + limit
        while True:
            missing = [w for w in self.workers if w.client_id not in self._ready]
            if not missing:
                break
            if time.monotonic() > end:
                raise SweepError(f"worker(s) {sorted(w.share for w in missing)} did not set up within {limit:g} s")
            for w in missing:
                runner.send_message("loadgen_setup", {
                    "target": asdict(t), "workload": self.cfg.workload, "mix": self.cfg.mix,
                    "dynamic_cost_us": self.cfg.dynamic_cost_us, "manifest": self.manifest,
                    "keepalive": self.cfg.keepalive, "timeout": self.cfg.timeout,
                    "max_inflight": self.cfg.max_inflight, "locust_events": self.cfg.locust_events,
                    "share": w.share, "shares": len(self.workers), "seed": self.cfg.seed}, client_id=w.client_id)
            self._wait(self._ready, 1.0, "set up", give_up=False)
        for w in self.workers:
            r = self._ready[w.client_id]
            if not r.get("ok"):
                raise SweepError(f"worker {w.share} could not set up: {r.get('error')}")
            w.info = r

    def _wait(self, box: dict[str, Any], limit: float, what: str, give_up: bool = True) -> None:
        """Until every worker has answered in ``box``; after ``limit`` s a SweepError, or
        (``give_up=False``) just return. A dead local worker is an error either way."""
        end = time.monotonic() + limit
        ids = {w.client_id for w in self.workers}
        while not ids <= box.keys():
            if time.monotonic() > end:
                if not give_up:
                    return
                missing = sorted(w.share for w in self.workers if w.client_id not in box)
                raise SweepError(f"worker(s) {missing} did not {what} within {limit:g} s")
            for p in self._procs:
                if p.poll() is not None and p.returncode != 0:
                    raise SweepError(f"a local worker died (status {p.returncode}); see {self.cfg.out / 'workers'}")
            gevent.sleep(0.02)

    def _run_step(self, k: int, rate: float) -> None:
        cfg = self.cfg
        self._results.clear()
        self._progress.clear()
        start = time.time() + STEP_LEAD_S
        for w in self.workers:
            self._env.runner.send_message("loadgen_step", {
                "step": k, "rate": rate, "duration": cfg.step_seconds, "warmup": cfg.warmup,
                "start_epoch": start, "poisson": cfg.poisson}, client_id=w.client_id)
        ticker = gevent.spawn(self._tick, k, rate, start)
        try:
            self._wait(self._results, STEP_LEAD_S + cfg.step_seconds + cfg.timeout + 30.0, f"finish step {k}")
        finally:
            ticker.kill()
        parts, infos = [], []
        for w in self.workers:
            r = self._results[w.client_id]
            if not r.get("ok"):
                raise SweepError(f"worker {w.share} failed in step {k}: {r.get('error')}")
            arrays = decode_arrays(r["arrays"])
            arrays["process"] = np.full(len(arrays["intended"]), w.share, np.int16)
            parts.append(arrays)
            infos.append(r)
        merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        order = np.argsort(merged["intended"], kind="stable")
        merged = {key: v[order] for key, v in merged.items()}
        t_start, t_end = start + cfg.warmup, start + cfg.step_seconds
        row = summarize(k, rate, t_start, t_end, merged, infos, latency_target_ms=cfg.latency_target_ms,
                        max_inflight=cfg.max_inflight)
        # requests first: a step listed in steps.csv always has its requests on disk
        write_requests_part(cfg.out, k, merged, t_start, t_end, self._request_names())
        append_step_row(cfg.out / "steps.csv", row)
        self.rows.append(row)
        self.on_step(row)

    def _request_names(self) -> list[str]:
        wl = make_workload(self.cfg.workload, self.target.url, mix=self.cfg.mix,
                           dynamic_cost_us=self.cfg.dynamic_cost_us, manifest=self.manifest)
        return wl.paths

    def _tick(self, k: int, rate: float, start: float) -> None:
        gevent.sleep(max(0.0, start - time.time()))
        while True:
            gevent.sleep(1.0)
            p = list(self._progress.values())
            self.on_tick({"step": k, "steps": len(self.cfg.rates), "rate": rate,
                          "elapsed": time.time() - start, "step_seconds": self.cfg.step_seconds,
                          "sent_1s": sum(x["sent_1s"] for x in p), "replies_1s": sum(x["replies_1s"] for x in p),
                          "errors_1s": sum(x["errors_1s"] for x in p), "inflight": sum(x["inflight"] for x in p)})

    # -- messages from workers (run in the master's receive greenlet) ----------------------

    def _on_ready(self, environment: Any, msg: Any, **kw: Any) -> None:
        self._ready[msg.node_id] = msg.data

    def _on_result(self, environment: Any, msg: Any, **kw: Any) -> None:
        self._results[msg.node_id] = msg.data

    def _on_progress(self, environment: Any, msg: Any, **kw: Any) -> None:
        self._progress[msg.node_id] = msg.data

    # -- the end ---------------------------------------------------------------------------

    def _stop(self) -> None:
        runner = self._env.runner if self._env is not None else None
        if runner is not None:
            try:
                runner.quit()  # tells every worker (ours and remote ones) to quit
            except Exception:
                log.debug("master quit", exc_info=True)
        for p in self._procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.terminate()  # only the workers this sweep started, by their pid
                try:
                    p.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=3)

    def _write_locust_stats(self) -> None:
        if self._env is None or self._env.runner is None:
            return
        try:
            from locust.html import get_html_report
            from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

            writer = StatsCSV(self._env, PERCENTILES_TO_REPORT)
            with open(self.cfg.out / "locust_stats.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(writer.requests_csv_columns)
                writer._requests_data_rows(w)
            with open(self.cfg.out / "locust_failures.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(writer.failures_columns)
                writer._failures_data_rows(w)
            (self.cfg.out / "locust_report.html").write_text(get_html_report(self._env, show_download_link=False))
        except Exception as e:  # Locust's extras must never cost the sweep's own outputs
            log.warning("could not write Locust's CSV/HTML stats: %s", e)

    def _write_summary(self, status: str, error: str | None) -> dict[str, Any]:
        cfg = self.cfg
        valid = [r for r in self.rows if not r["generator_bound"]]
        bound = [r["step"] for r in self.rows if r["generator_bound"]]
        saturated = [r["step"] for r in self.rows if r["saturated"]]
        at_target = [r for r in valid if not r["saturated"]]
        summary = {
            "status": status, "error": error,
            "steps_planned": len(cfg.rates), "steps_measured": len(self.rows),
            "generator_bound_steps": bound,
            "saturated_steps": saturated,
            "note": (f"steps {bound} were limited by the generator, not the server: do not plot them "
                     "as the server's answer" if bound else "no step was generator-bound"),
            "max_valid_offered_rate": max((r["offered_rate"] for r in valid), default=None),
            "max_reply_rate": max((r["reply_rate_avg"] for r in valid), default=None),
            # the highest offered load served within the latency target, errors <= 1%
            "capacity_at_target": max((r["offered_rate"] for r in at_target), default=None),
            "latency_target_ms": cfg.latency_target_ms,
            "config": {**asdict(cfg), "out": str(cfg.out)},
            "target": asdict(self.target) if self.target else None,
            "workers": [{"share": w.share, **{k: v for k, v in w.info.items() if k != "ok"}} for w in self.workers],
            "started": self._t0, "finished": time.time(),
            "versions": versions(), "host": socket.gethostname(), "kernel": platform.release(),
            "port_range": sysinfo.port_range(),
            "locust_events": {"step": "fired per request, batched after each step (not timed live)",
                              "inline": "fired per request as it completes", "off": "not fired"}[cfg.locust_events],
            "steps": self.rows,
        }
        write_json(cfg.out / "summary.json", summary, indent=1, default=_json_default)
        return summary


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1" if host in ("*", "0.0.0.0", "") else host, 0))
        return s.getsockname()[1]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("locust", "gevent", "numpy", "pyarrow"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out


# -- outputs ---------------------------------------------------------------------------------

def append_step_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row; the file is complete and on disk after every step."""
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=STEP_COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
        f.flush()
        os.fsync(f.fileno())


REQUEST_COLUMNS = ("step", "process", "intended", "sent", "done", "status", "bytes", "error",
                   "request", "measured")


def write_requests_part(out: Path, step: int, a: dict[str, np.ndarray], t_start: float, t_end: float,
                        names: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = out / "requests.parts"
    parts.mkdir(exist_ok=True)
    n = len(a["intended"])
    kinds = pa.array(list(ERROR_KINDS), pa.string())
    reqs = pa.array(names, pa.string())
    table = pa.table({
        "step": pa.array(np.full(n, step, np.int32)),
        "process": pa.array(a["process"]),
        "intended": pa.array(a["intended"]),
        "sent": pa.array(a["sent"], from_pandas=True),
        "done": pa.array(a["done"], from_pandas=True),
        "status": pa.array(a["status"]),
        "bytes": pa.array(a["nbytes"]),
        "error": pa.DictionaryArray.from_arrays(pa.array(a["error"].astype(np.int32)), kinds),
        "request": pa.DictionaryArray.from_arrays(pa.array(a["item"].astype(np.int32)), reqs),
        "measured": pa.array((a["intended"] >= t_start) & (a["intended"] < t_end)),
    })
    path = parts / f"step-{step:04d}.parquet"
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return path


def merge_requests(out: Path) -> Path | None:
    """Join the per-step parts into requests.parquet (one row group per step)."""
    import pyarrow.parquet as pq

    parts_dir = out / "requests.parts"
    parts = sorted(parts_dir.glob("step-*.parquet")) if parts_dir.is_dir() else []
    if not parts:
        return None
    target = out / "requests.parquet"
    tmp = out / "requests.parquet.tmp"
    try:
        writer = None
        for p in parts:
            t = pq.read_table(p)
            if writer is None:
                writer = pq.ParquetWriter(tmp, t.schema, compression="zstd")
            writer.write_table(t)
        writer.close()
        os.replace(tmp, target)
        shutil.rmtree(parts_dir, ignore_errors=True)
        return target
    except Exception as e:
        log.warning("could not merge %s (the per-step parts stay there): %s", parts_dir, e)
        return None

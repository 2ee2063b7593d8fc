"""A sweep worker: a Locust worker process that runs its share of each open-loop step.

The master (``loadgen.sweep``) sends custom Locust messages:

- ``loadgen_setup``  {target, workload, mix, dynamic_cost_us, manifest, keepalive, timeout,
  max_inflight, locust_events, share, shares, seed}
- ``loadgen_step``   {step, rate, duration, warmup, start_epoch, poisson}

and each worker answers ``loadgen_result`` with its per-request arrays (epoch seconds)
and what it measured of itself (CPU in the measured window, TIME_WAIT, ...), and sends
``loadgen_progress`` about once a second while a step runs.

Workers on other machines run the same code: ``python -m loadgen worker --master-host H``
or ``locust -f loadgen/locustfile.py --worker --master-host H``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass
from typing import Any

import gevent
import numpy as np

from . import sysinfo
from .engine import ERR, ERROR_KINDS, Engine, StepArrays
from .schedule import send_times
from .target import Target
from .workload import Workload, make_workload

log = logging.getLogger(__name__)

ARRAY_FIELDS = ("intended", "sent", "done", "status", "nbytes", "error", "item")
NOT_SENT = (ERR["overflow"], ERR["unsent"])
STOP_GRACE_S = 1.0  # a step's sends may lag its end by this much before the rest are dropped


def encode_arrays(a: StepArrays, offset: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ARRAY_FIELDS:
        arr = getattr(a, name)
        if name in ("intended", "sent", "done"):
            arr = arr + offset  # monotonic -> epoch, with this process's own offset
        out[name] = {"dtype": arr.dtype.str, "data": arr.tobytes()}
    return out


def decode_arrays(d: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.frombuffer(v["data"], dtype=np.dtype(v["dtype"])) for k, v in d.items()}


@dataclass
class Setup:
    target: Target
    workload: Workload
    requests: list[bytes]
    names: list[str]
    keepalive: bool
    timeout: float
    max_inflight: int
    locust_events: str
    share: int
    shares: int
    seed: int


class SweepWorker:
    """Holds the engine between steps; driven by the master's messages."""

    def __init__(self, environment: Any) -> None:
        self.env = environment
        self.setup: Setup | None = None
        self.engine: Engine | None = None
        self.busy = False

    def register(self, runner: Any) -> None:
        runner.register_message("loadgen_setup", self.on_setup)
        runner.register_message("loadgen_step", self.on_step, concurrent=True)

    # -- messages ------------------------------------------------------------------------

    def on_setup(self, environment: Any, msg: Any, **kw: Any) -> None:
        d = msg.data
        try:
            t = Target(**d["target"])
            wl = make_workload(d["workload"], t.url, mix=d["mix"], dynamic_cost_us=d["dynamic_cost_us"],
                               manifest=d.get("manifest"))
            names = [request_name(p, c) for p, c in zip(wl.paths, wl.classes or [None] * len(wl.paths))]
            self.setup = Setup(t, wl, wl.requests(t.host_header, d["keepalive"]), names, d["keepalive"],
                               d["timeout"], d["max_inflight"], d["locust_events"], d["share"],
                               d["shares"], d["seed"])
            if self.engine is not None:
                self.engine.close()
            self.engine = Engine(t.addr, keepalive=d["keepalive"], max_inflight=d["max_inflight"],
                                 timeout=d["timeout"])
            reply = {"share": d["share"], "ok": True, "pid": os.getpid(), "host": socket.gethostname(),
                     "netns": sysinfo.netns_inode(), "cpus": sorted(os.sched_getaffinity(0)),
                     "nofile": sysinfo.raise_nofile(), "port_range": sysinfo.port_range()}
        except Exception as e:  # reported to the master, which stops the sweep with the reason
            log.exception("setup failed")
            reply = {"share": d.get("share"), "ok": False, "error": f"{type(e).__name__}: {e}"}
        self.env.runner.send_message("loadgen_ready", reply)

    def on_step(self, environment: Any, msg: Any, **kw: Any) -> None:
        d = msg.data
        try:
            result = self.run_step(d)
        except Exception as e:
            log.exception("step failed")
            result = {"step": d.get("step"), "ok": False, "error": f"{type(e).__name__}: {e}",
                      "trace": traceback.format_exc()}
        self.env.runner.send_message("loadgen_result", result)

    # -- one step ------------------------------------------------------------------------

    def run_step(self, d: dict[str, Any]) -> dict[str, Any]:
        s, eng = self.setup, self.engine
        if s is None or eng is None:
            raise RuntimeError("step before setup")
        offset = time.time() - time.monotonic()
        start = d["start_epoch"] - offset
        rel = send_times(d["rate"], d["duration"], share=s.share, shares=s.shares,
                         poisson=d["poisson"], seed=s.seed * 100_003 + d["step"])
        rng = np.random.default_rng([s.seed, d["step"], s.share, 7])
        items = s.workload.draw(len(rel), rng)
        m_start, m_end = start + d["warmup"], start + d["duration"]
        sampler = gevent.spawn(self._sample, m_start, m_end)
        progress = gevent.spawn(self._progress, d["step"], start, m_end)
        eng.on_done = self._inline_event if s.locust_events == "inline" else None
        try:
            arrays = eng.run(start + rel, items, s.requests, stop_at=start + d["duration"] + STOP_GRACE_S)
        finally:
            progress.kill()
        sampler.join(timeout=5)
        meas = sampler.value if sampler.successful() else {}
        if s.locust_events == "step":
            self._fire_events(arrays)
        send_stats = getattr(self.env.runner, "_send_stats", None)
        if send_stats is not None:  # push Locust's stats now rather than in up to 3 s
            send_stats()
        return {"step": d["step"], "ok": True, "share": s.share, "arrays": encode_arrays(arrays, offset),
                "connections_opened": eng.connections_opened, "inflight_max": eng.inflight_max,
                "cpu_group": sysinfo.cpu_group(), "cpu_capacity": sysinfo.cpu_capacity(), **meas}

    def _sample(self, m_start: float, m_end: float) -> dict[str, Any]:
        """CPU and TCP socket counts over the measured window of the step."""
        gevent.sleep(max(0.0, m_start - time.monotonic()))
        cpu0, w0 = sysinfo.cpu_seconds(), time.monotonic()
        tw_max, inuse_max, orphan_max = 0, 0, 0
        while True:
            st = sysinfo.sockstat()
            tw_max = max(tw_max, st.get("tcp_tw", 0))
            inuse_max = max(inuse_max, st.get("tcp_inuse", 0))
            orphan_max = max(orphan_max, st.get("tcp_orphan", 0))
            left = m_end - time.monotonic()
            if left <= 0:
                break
            gevent.sleep(min(0.5, left))
        cpu1, w1 = sysinfo.cpu_seconds(), time.monotonic()
        return {"cpu_s": cpu1 - cpu0, "cpu_wall_s": w1 - w0, "cpu_frac": (cpu1 - cpu0) / max(w1 - w0, 1e-9),
                "tcp_tw_max": tw_max, "tcp_inuse_max": inuse_max, "tcp_orphan_max": orphan_max}

    def _progress(self, step: int, start: float, end: float) -> None:
        eng = self.engine
        gevent.sleep(max(0.0, start - time.monotonic()))
        while time.monotonic() < end:
            gevent.sleep(1.0)
            a = eng.arrays if eng is not None else None
            if a is None:
                return
            now = time.monotonic()
            last = (a.done > now - 1.0) & (a.done <= now)
            self.env.runner.send_message("loadgen_progress", {
                "step": step, "share": self.setup.share if self.setup else 0,
                "sent_1s": int(((a.sent > now - 1.0) & (a.sent <= now)).sum()),
                "replies_1s": int((last & (a.error == 0)).sum()),
                "errors_1s": int((last & (a.error > 0)).sum()), "inflight": eng.inflight})

    # -- Locust's event hooks ------------------------------------------------------------

    def _inline_event(self, item: int, sent: float, done: float, status: int, nbytes: int, err: int) -> None:
        fire_request(self.env, self.setup.names[item], sent, done, status, nbytes, err)

    def _fire_events(self, a: StepArrays) -> None:
        """Batched: every request of the step, after the step (Locust's totals and
        percentiles are right; its per-second charts show the step's requests at its end)."""
        s = self.setup
        names = s.names
        for item, sent, done, status, nbytes, err in zip(
                a.item.tolist(), a.sent.tolist(), a.done.tolist(),
                a.status.tolist(), a.nbytes.tolist(), a.error.tolist()):
            fire_request(self.env, names[item], sent, done, status, nbytes, err)


def request_name(path: str, cls: int | None) -> str:
    if path.startswith("/dynamic"):
        return "dynamic"
    return f"static class{cls}" if cls is not None and cls >= 0 else path


class HTTPError(Exception):
    pass


class TransportError(Exception):
    pass


def fire_request(env: Any, name: str, sent: float, done: float, status: int, nbytes: int, err: int) -> None:
    if err in NOT_SENT:  # never sent, so not a request for Locust
        exc: Exception | None = TransportError(f"{ERROR_KINDS[err]} (not sent)")
        rt = 0.0
    else:
        rt = (done - sent) * 1000.0 if done == done and sent == sent else 0.0
        if err:
            exc = TransportError(ERROR_KINDS[err])
        elif status >= 400:
            exc = HTTPError(f"HTTP {status}")
        else:
            exc = None
    env.events.request.fire(request_type="GET", name=name, response_time=rt, response_length=nbytes,
                            exception=exc, context={}, url=None, response=None, start_time=sent)


def worker_main(master_host: str, master_port: int, cpus: list[int] | None = None) -> int:
    """Entry point of ``python -m loadgen worker``: serve steps until the master quits."""
    from locust import events
    from locust.env import Environment

    if cpus:
        sysinfo.pin(cpus)
    sysinfo.raise_nofile()
    env = Environment(user_classes=[], events=events)
    runner = env.create_worker_runner(master_host, master_port)
    SweepWorker(env).register(runner)
    runner.greenlet.join()
    return 0

"""Locust users for the testbed's workloads, for plain ``locust -f`` runs (web UI or headless).

    locust -f loadgen/locustfile.py --host http://10.77.255.1/ StaticUser
    locust -f loadgen/locustfile.py --host http://127.0.0.1:8080/ --headless -u 20 -r 20 -t 30s MixedUser

- ``StaticUser``, ``DynamicUser``, ``MixedUser``: closed loop, as Locust users are (each
  user waits for its reply, then sends again); a new connection per request
  (``Connection: close``) unless ``--loadgen-keepalive``.
- ``OpenLoopUser``: each user offers ``--rate-per-user`` requests/s on a schedule,
  whatever the replies do (the sweep's engine), so users x rate = offered load; pick it by
  name, and see ``loadgen/locustfile_sweep.py`` for a stepped shape.

The workload comes from the target's ``/manifest.json`` (static, mixed) and
``/dynamic?cost_us=N`` (dynamic, mixed); options: ``--mix``, ``--dynamic-cost-us``,
``--poisson``, ``--rate-per-user``, ``--loadgen-keepalive``.

Started as ``locust -f loadgen/locustfile.py --worker``, the process also serves the
open-loop sweeps of ``python -m loadgen sweep --expect-workers N`` (other machines).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import urllib.parse

if __package__ in (None, ""):  # loaded by path by `locust -f`: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gevent
import numpy as np
from locust import FastHttpUser, User, constant, events, task

from loadgen import sysinfo
from loadgen.engine import Engine
from loadgen.schedule import send_times
from loadgen.target import parse_target
from loadgen.worker import SweepWorker, fire_request, request_name
from loadgen.workload import Workload, make_workload

log = logging.getLogger(__name__)

_workloads: dict[tuple, Workload] = {}


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    g = parser
    g.add_argument("--mix", type=float, default=0.8,
                   help="static share of MixedUser's requests")
    g.add_argument("--dynamic-cost-us", type=int, default=1000)
    g.add_argument("--rate-per-user", type=float, default=10.0,
                   help="OpenLoopUser: requests/s each user offers")
    g.add_argument("--poisson", action="store_true", default=False, help="OpenLoopUser: exponential gaps")
    g.add_argument("--loadgen-keepalive", action="store_true", default=False,
                   help="keep connections open (default: a new connection per request)")
    g.add_argument("--loadgen-timeout", type=float, default=5.0)


@events.init.add_listener
def _init(environment, **kw) -> None:
    sysinfo.raise_nofile()
    runner = environment.runner
    from locust.runners import WorkerRunner
    if isinstance(runner, WorkerRunner):
        SweepWorker(environment).register(runner)


def workload_for(environment, name: str) -> Workload:
    opts = environment.parsed_options
    mix = getattr(opts, "mix", 0.8) if opts else 0.8
    cost = getattr(opts, "dynamic_cost_us", 1000) if opts else 1000
    key = (environment.host, name, mix, cost)
    if key not in _workloads:
        parse_target(environment.host or "")  # refuses targets that are not ours
        _workloads[key] = make_workload(name, environment.host, mix=mix, dynamic_cost_us=cost)
    return _workloads[key]


def _keepalive(environment) -> bool:
    opts = environment.parsed_options
    return bool(opts and getattr(opts, "loadgen_keepalive", False))


class _WorkloadUser(FastHttpUser):
    """Closed loop over one workload; Locust's own client and statistics."""

    abstract = True
    workload_name = "static"
    wait_time = constant(0)

    def on_start(self) -> None:
        self.wl = workload_for(self.environment, self.workload_name)
        self.rng = np.random.default_rng()
        self.names = [request_name(p, c) for p, c in
                      zip(self.wl.paths, self.wl.classes or [None] * len(self.wl.paths))]
        self.headers = {} if _keepalive(self.environment) else {"Connection": "close"}
        base = (self.environment.host or "").rstrip("/")  # a host ending in "/" would give "//path"
        self.urls = [base + p for p in self.wl.paths]

    @task
    def fetch(self) -> None:
        i = int(self.wl.draw(1, self.rng)[0])
        self.client.get(self.urls[i], name=self.names[i], headers=self.headers)


class StaticUser(_WorkloadUser):
    workload_name = "static"


class DynamicUser(_WorkloadUser):
    workload_name = "dynamic"


class MixedUser(_WorkloadUser):
    workload_name = "mixed"


class OpenLoopUser(User):
    """Offers ``rate_per_user`` requests/s on a schedule (fixed or Poisson gaps) with the
    sweep's lean engine; every request fires ``events.request`` as it completes."""

    abstract = True  # concrete in locustfile_openloop.py / locustfile_sweep.py
    workload_name = "static"
    chunk_s = 1.0

    def on_start(self) -> None:
        env = self.environment
        opts = env.parsed_options
        self.rate = float(getattr(opts, "rate_per_user", 10.0) if opts else 10.0)
        self.poisson = bool(opts and getattr(opts, "poisson", False))
        self.wl = workload_for(env, self.workload_name)
        t = parse_target(env.host or "")
        keep = _keepalive(env)
        self.requests = self.wl.requests(t.host_header, keep)
        names = [request_name(p, c) for p, c in zip(self.wl.paths, self.wl.classes or [None] * len(self.wl.paths))]
        self.engine = Engine(t.addr, keepalive=keep, timeout=float(getattr(opts, "loadgen_timeout", 5.0) if opts else 5.0),
                             on_done=lambda item, sent, done, st, nb, err: fire_request(
                                 env, names[item], sent, done, st, nb, err))
        self.rng = np.random.default_rng()
        # a random phase, so many users at fixed gaps do not all send at the same instant
        self.next_start = time.monotonic() + float(self.rng.uniform(0, 1.0 / self.rate))

    @task
    def offer(self) -> None:
        start = self.next_start
        # about a second of schedule at a time, a whole number of fixed gaps long
        chunk = max(1, round(self.rate * self.chunk_s)) / self.rate
        rel = send_times(self.rate, chunk, poisson=self.poisson, seed=int(self.rng.integers(1 << 31)))
        items = self.wl.draw(len(rel), self.rng)
        self.engine.run(start + rel, items, self.requests, drain=False)
        self.next_start = start + chunk
        gevent.sleep(max(0.0, self.next_start - time.monotonic() - 0.002))

    def on_stop(self) -> None:
        self.engine.close()

    wait_time = constant(0)

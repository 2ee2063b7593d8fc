"""A stepped offered-load sweep for plain Locust runs (a LoadTestShape over open-loop users).

    locust -f loadgen/locustfile_sweep.py --host http://10.77.255.1/ --headless \\
        --sweep-rates 200:1000:200 --sweep-step-seconds 10 --rate-per-user 20 --csv out/run

Each step sets the user count to rate / rate-per-user (rounded; the offered rate is
quantised by --rate-per-user), every user offering its rate on a schedule. This is the
Locust-native view (web UI charts, --csv); ``python -m loadgen sweep`` is the measuring
tool: per-step windows, validity flags, per-request data.
"""

from __future__ import annotations

import math
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from locust import LoadTestShape, events  # noqa: E402

from loadgen.locustfile_openloop import OpenLoopStaticUser  # noqa: E402,F401
from loadgen.schedule import parse_rates  # noqa: E402


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    g = parser
    g.add_argument("--sweep-rates", default="100:500:100",
                   help="offered rates: START:STOP:STEP or R1,R2,...")
    g.add_argument("--sweep-step-seconds", type=float, default=10.0)


class OpenLoopSweep(LoadTestShape):
    """Steps through --sweep-rates, one --sweep-step-seconds each, then stops."""

    def tick(self):
        opts = self.runner.environment.parsed_options
        rates = parse_rates(getattr(opts, "sweep_rates", "100:500:100"))
        step_s = float(getattr(opts, "sweep_step_seconds", 10.0))
        per_user = float(getattr(opts, "rate_per_user", 10.0))
        k = int(self.get_run_time() // step_s)
        if k >= len(rates):
            return None
        users = max(1, round(rates[k] / per_user))
        return users, max(users, 1000)

"""Open-loop users for plain Locust: each user offers ``--rate-per-user`` requests/s.

    locust -f loadgen/locustfile_openloop.py --host http://10.77.255.1/ --rate-per-user 50
    (web UI: 20 users = 1,000 req/s offered; headless: -u 20 -r 20 -t 60s)

Users are spread over workers in master/worker mode, so the rate is shared by machines.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadgen.locustfile import OpenLoopUser as _Base  # noqa: E402  (also registers options)


class OpenLoopStaticUser(_Base):
    workload_name = "static"


class OpenLoopDynamicUser(_Base):
    workload_name = "dynamic"
    weight = 0  # pick it by name


class OpenLoopMixedUser(_Base):
    workload_name = "mixed"
    weight = 0

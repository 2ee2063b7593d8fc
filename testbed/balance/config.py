"""The balancing controller's settings: ``ControllerConfig``, checked when made, and its
command line.

The service plan builds the controller's argv from a ``ControllerConfig`` (``to_argv``) and
the controller reads it back with the same table (``from_argv``), as the application does
(testbed/app/config.py): no I/O here, so the plan stays pure.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .policy import KNOBS


@dataclass(frozen=True)
class ControllerConfig:
    knob: str                            # work | cpu | place
    policy: str                          # adaptive | fixed:SPLIT (testbed/balance/policy.py)
    net_cgroup: str                      # the TCP server's cgroup (relative name)
    app_cgroups: tuple[str, ...]         # the hosts' cgroups behind that TCP server
    state_dir: Path                      # balance.json is written here
    total_cpu: float | None = None       # cpu knob: the fixed total shared by both sides
    vip: str | None = None               # work knob: the service address ...
    port: int = 80                       # ... and port whose new connections are split
    hosts: tuple[str, ...] = ()          # work knob: the hosts' addresses for pass-through
    placement_file: Path | None = None   # place knob: the TCP server's control file
    duration: float | None = None        # seconds to run (None: until stopped)

    def __post_init__(self) -> None:
        """One line naming the option and its rule (ValueError)."""
        if self.knob not in KNOBS:
            raise ValueError(f"--knob must be one of {', '.join(KNOBS)}, not {self.knob!r}")
        if not self.app_cgroups:
            raise ValueError("--app-cgroup is needed at least once")
        if self.knob == "place" and self.placement_file is None:
            raise ValueError("the place knob needs --placement-file (the TCP server's control file)")
        if self.knob == "work" and (not self.vip or not self.hosts):
            raise ValueError("the work knob needs --vip and --hosts")
        if self.knob == "cpu" and not (self.total_cpu and self.total_cpu > 0):
            raise ValueError("the cpu knob needs --total-cpu, a CPU count > 0")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be a TCP port (1-65535), not {self.port}")
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"--duration must be seconds > 0, not {self.duration}")

    def to_argv(self) -> list[str]:
        """The controller's arguments (``from_argv`` reads them back)."""
        argv = ["--knob", self.knob, "--policy", self.policy, "--net-cgroup", self.net_cgroup,
                "--state-dir", str(self.state_dir)]
        for group in self.app_cgroups:
            argv += ["--app-cgroup", group]
        if self.total_cpu is not None:
            argv += ["--total-cpu", f"{self.total_cpu:g}"]
        if self.vip is not None:
            argv += ["--vip", self.vip]
        if self.port != 80:
            argv += ["--port", str(self.port)]
        if self.hosts:
            argv += ["--hosts", ",".join(self.hosts)]
        if self.placement_file is not None:
            argv += ["--placement-file", str(self.placement_file)]
        if self.duration is not None:
            argv += ["--duration", f"{self.duration:g}"]
        return argv

    @classmethod
    def from_argv(cls, argv: Sequence[str] | None = None, description: str | None = None) -> "ControllerConfig":
        """Parse the controller's command line (argparse exits on a malformed one; its help
        shows ``description``) and check it (ValueError naming the option)."""
        a = parser(description).parse_args(argv)
        return cls(knob=a.knob, policy=a.policy, net_cgroup=a.net_cgroup, app_cgroups=tuple(a.app_cgroup),
                   state_dir=a.state_dir, total_cpu=a.total_cpu, vip=a.vip, port=a.port,
                   hosts=tuple(h for h in (a.hosts or "").split(",") if h),
                   placement_file=a.placement_file, duration=a.duration)


def parser(description: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m testbed.balance.controller", description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="adaptive")
    ap.add_argument("--knob", required=True, help=" | ".join(KNOBS))
    ap.add_argument("--net-cgroup", required=True)
    ap.add_argument("--app-cgroup", action="append", required=True)
    ap.add_argument("--total-cpu", type=float, help="cpu knob: the fixed total shared by both sides")
    ap.add_argument("--vip")
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--hosts", help="work knob: comma-separated host addresses for pass-through")
    ap.add_argument("--placement-file", type=Path, help="place knob: the TCP server's control file")
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument("--duration", type=float)
    return ap

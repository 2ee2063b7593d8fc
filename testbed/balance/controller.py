"""The balancing controller: samples both sides, decides, moves the knob, logs it all.

It runs as a supervised process inside the TCP-server node (so its own CPU is charged to
the network side, and `nft` acts on that node's namespace):

    python -m testbed.balance.controller --knob work --policy adaptive \\
        --net-cgroup tcps-tb/tcpserver --app-cgroup tcps-tb/host1 \\
        --vip 10.77.255.1 --port 80 --hosts 10.77.1.2 --state-dir /run/tcps/tb

Actuators:

- work split: an nftables rule in the TCP-server node DNATs a random share (1 - split) of
  new connections to the service straight to the hosts' kernel TCP; conntrack keeps every
  connection on the path it started on, and the TCP server does no relay work for them.
- CPU split: the quotas of the network and application cgroups are rewritten so that
  their sum stays the fixed total; every value is read back.
- placement: the share of new connections whose cacheable static requests the TCP
  server answers itself, written atomically to its control file (``--placement-file``,
  which the TCP server polls every 100 ms) and read back.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..system import cgroups as cg
from ..errors import TestbedError
from ..system.files import write_json
from .config import ControllerConfig
from .policy import Decision, Policy, Sample, State, decide, parse_policy

log = logging.getLogger("testbed.balance")
TABLE = "tcps_balance"
RANDOM_SCALE = 10000  # numgen draws 0..9999: the split's resolution is 0.01%
TIME_WAIT_TIMEOUT = "10"  # conntrack keeps TIME_WAIT entries 120 s by default: at 10k conn/s that fills it


class WorkSplit:
    """Share of new connections tunneled by the TCP server; the rest pass through in-kernel."""

    def __init__(self, vip: str, port: int, hosts: list[str]):
        self.vip, self.port, self.hosts = vip, port, hosts

    def ruleset(self, split: float) -> str:
        passthrough = round((1.0 - split) * RANDOM_SCALE)
        target = (f"dnat to {self.hosts[0]}" if len(self.hosts) == 1 else
                  "dnat to numgen inc mod {} map {{ {} }}".format(
                      len(self.hosts), ", ".join(f"{i} : {h}" for i, h in enumerate(self.hosts))))
        match = f"ip daddr {self.vip} tcp dport {self.port} ct state new"
        if passthrough <= 0:
            rule = ""
        elif passthrough >= RANDOM_SCALE:  # `numgen ... < 10000` is refused: all needs its own rule
            rule = f"{match} {target}"
        else:
            rule = f"{match} numgen random mod {RANDOM_SCALE} < {passthrough} {target}"
        # one transaction: the table is replaced atomically, never half-applied
        return (f"table ip {TABLE} {{}}\ndelete table ip {TABLE}\n"
                f"table ip {TABLE} {{\n  chain prerouting {{\n"
                f"    type nat hook prerouting priority dstnat; policy accept;\n    {rule}\n  }}\n}}\n")

    def apply(self, split: float) -> None:
        script = self.ruleset(split)
        res = subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True)
        if res.returncode != 0:
            raise TestbedError(f"nft refused the work split {split:.3f}: {res.stderr.strip()}")
        listed = subprocess.run(["nft", "list", "table", "ip", TABLE], text=True, capture_output=True).stdout
        passthrough = round((1.0 - split) * RANDOM_SCALE)
        expect = (f"< {passthrough}" if 0 < passthrough < RANDOM_SCALE else
                  ("dnat" if passthrough >= RANDOM_SCALE else None))
        if expect and expect not in listed or (expect is None and "dnat" in listed):
            raise TestbedError(f"work split {split:.3f}: nft reads back\n{listed}")
        tw = Path("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait")
        if tw.exists() and tw.read_text().strip() != TIME_WAIT_TIMEOUT:
            tw.write_text(TIME_WAIT_TIMEOUT)  # this namespace's conntrack only

    def remove(self) -> None:
        subprocess.run(["nft", "delete", "table", "ip", TABLE], capture_output=True)


class CpuSplit:
    """Share of a fixed CPU total given to the network (TCP-server) cgroup."""

    def __init__(self, groups: cg.Cgroups, net: str, apps: list[str], total: float):
        self.groups, self.net, self.apps, self.total = groups, net, apps, total

    def apply(self, split: float) -> None:
        net_cpu = split * self.total
        app_cpu = (1.0 - split) * self.total / len(self.apps)
        # shrink first, then grow: the sum never exceeds the total, even for a moment
        order = [(self.net, net_cpu)] + [(a, app_cpu) for a in self.apps]
        current = {g: self.groups.limits(g)["cpu"] or 0.0 for g, _ in order}
        for group, cpu in sorted(order, key=lambda gc: gc[1] - float(current[gc[0]])):  # type: ignore[arg-type]
            self.groups.set_cpu(group, cpu)

    def remove(self) -> None:
        pass


class Placement:
    """Share of new connections whose static requests the TCP server answers itself."""

    def __init__(self, path: Path):
        self.path = path

    def apply(self, split: float) -> None:
        share = round(split, 4)
        write_json(self.path, {"share": share})  # the TCP server never reads a half-written file
        try:
            back = float(json.loads(self.path.read_text())["share"])
        except (OSError, ValueError, KeyError) as e:
            raise TestbedError(f"placement share {share}: {self.path} reads back badly ({e})") from None
        if back != share:
            raise TestbedError(f"placement share {share}: {self.path} reads back {back}")

    def remove(self) -> None:
        pass


class SideMeter:
    """CPU use over budget and throttled fraction of some cgroups, between two calls."""

    def __init__(self, groups: cg.Cgroups, names: list[str]):
        self.groups, self.names = groups, names
        self.last = self._read()

    def _read(self) -> tuple[float, dict[str, cg.CpuUsage]]:
        return time.monotonic(), {n: self.groups.usage(n) for n in self.names}

    def measure(self) -> tuple[float, float]:
        t0, before = self.last
        self.last = t1, after = self._read()
        dt = max(t1 - t0, 1e-6)
        utils, throttled = [], []
        for n in self.names:
            budget = self.groups.limits(n)["cpu"] or 1.0
            utils.append((after[n].total_s - before[n].total_s) / dt / float(budget))  # type: ignore[arg-type]
            throttled.append((after[n].throttled_s - before[n].throttled_s) / dt)
        return sum(utils) / len(utils), sum(throttled) / len(throttled)


def run(policy: Policy, knob: str, actuator: WorkSplit | CpuSplit | Placement, net: SideMeter, app: SideMeter,
        state_dir: Path, duration: float | None = None) -> None:
    state = State(split=policy.split)
    actuator.apply(state.split)
    log_path = state_dir / "balance.jsonl"
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    started = time.monotonic()
    next_t = started + policy.interval
    _publish(state_dir, knob, policy, state, None)
    while not stop["now"] and (duration is None or time.monotonic() - started < duration):
        time.sleep(max(0.0, next_t - time.monotonic()))
        next_t += policy.interval
        net_util, net_thr = net.measure()
        app_util, app_thr = app.measure()
        sample = Sample(net_util, app_util, net_thr, app_thr)
        state, decision = decide(policy, knob, state, sample)
        if decision.moved:
            try:
                actuator.apply(state.split)
            except TestbedError as e:
                log.error("%s", e)
        with open(log_path, "a") as f:
            f.write(json.dumps({"t": time.time(), "knob": knob, **asdict(sample), **asdict(decision),
                                "reversals": state.reversals, "moves": state.moves}) + "\n")
        _publish(state_dir, knob, policy, state, decision)


def _publish(state_dir: Path, knob: str, policy: Policy, state: State, decision: Decision | None) -> None:
    write_json(state_dir / "balance.json", {
        "knob": knob, "policy": policy.describe(), "split": round(state.split, 4), "moves": state.moves,
        "reversals": state.reversals, "t": time.time(), "last_decision": asdict(decision) if decision else None})


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = ControllerConfig.from_argv(argv, description=__doc__)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        policy = parse_policy(cfg.policy, cfg.knob)
        groups = cg.detect()
        actuator: WorkSplit | CpuSplit | Placement
        if cfg.knob == "place":
            assert cfg.placement_file is not None  # ControllerConfig's rule
            actuator = Placement(cfg.placement_file)
        elif cfg.knob == "work":
            assert cfg.vip is not None
            actuator = WorkSplit(cfg.vip, cfg.port, list(cfg.hosts))
        else:
            assert cfg.total_cpu is not None
            actuator = CpuSplit(groups, cfg.net_cgroup, list(cfg.app_cgroups), cfg.total_cpu)
        run(policy, cfg.knob, actuator, SideMeter(groups, [cfg.net_cgroup]),
            SideMeter(groups, list(cfg.app_cgroups)), cfg.state_dir, cfg.duration)
    except TestbedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

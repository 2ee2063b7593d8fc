"""Where the engine's CPU goes: py-spy samples of the TCP server and the host under load.

One ``cluster`` testbed per configuration (``MODE[/variant...]`` as in ``bench.offload``:
``eager-accept``, ``eager-accept/shm/poll=2000/hostpoll=2000`` ...), httperf offering
``--rate`` new connections per second for ``--seconds`` while py-spy samples both
processes from outside (no change to them; only samples where a thread runs, so waiting
in epoll or sleeping out a polling period does not count). Prints, per process, the
functions with the most samples on top of the stack (self) and on the stack at all
(inclusive), as shares of its samples: the numbers docs/performance.md quotes.

Run (root; py-spy from the dev extras): ``python -m bench.profile [--rate 3000]
[--seconds 8] [--configs eager-accept,eager-accept/shm/poll=2000/hostpoll=2000]``
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.offload import _client_tw_cap, _httperf, variant_options


def _collapse(path: Path) -> tuple[collections.Counter, collections.Counter, int]:
    """py-spy's raw format: ``frame;frame;...;leaf COUNT`` per line."""
    self_c: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";") if f]
        if frames:
            self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return self_c, incl, total


def _short(frame: str) -> str:
    """``data_received (testbed/offload/hostside.py:118)`` -> ``hostside.py:data_received``."""
    name, _, where = frame.partition(" (")
    file = where.split(":")[0].rstrip(")")
    return f"{os.path.basename(file)}:{name}" if file else name


def profile(config: str, a: argparse.Namespace, out_dir: Path) -> str:
    from testbed.lifecycle import Testbed
    from testbed.spec import load_topology

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    mode, *variant = config.split("/")
    params = {"host_cpu": str(a.cpu), "tcpserver_cpu": str(a.cpu)}
    opts = {"docroot_dirs": 1, "dynamic_cost_us": 0, **variant_options(variant)}
    lines = [f"== {config}: httperf {a.rate}/s for {a.seconds} s, {a.file}"]
    with Testbed(load_topology("cluster", params), name=f"p{os.getpid() % 100000}", mode=mode,
                 start_services=True, service_options=opts) as tb:
        _client_tw_cap(tb)
        _httperf(tb, a.file, a.rate, a.rate, tb.plan.service_address, 80)  # warm-up
        procs = {p.name: p.pid for p in tb.processes if p.name in ("tcpserver", "app")}
        spies = {}
        for name, pid in procs.items():
            raw = out_dir / f"{config.replace('/', '_')}-{name}.txt"
            spies[name] = (raw, subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--duration", str(int(a.seconds)), "--rate", "250",
                 "--format", "raw", "--output", str(raw), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        hp = _httperf(tb, a.file, a.rate, int(a.rate * a.seconds), tb.plan.service_address, 80)
        lines.append(f"   replies {hp['replies']}, errors {hp['errors']}")
        for name, (raw, sp) in spies.items():
            _, err = sp.communicate(timeout=a.seconds + 30)
            if not raw.exists():
                lines.append(f"   {name}: py-spy wrote nothing ({err.strip()[-200:]})")
                continue
            self_c, incl, total = _collapse(raw)
            lines.append(f"   {name} ({total} samples): self | inclusive")
            inner = [(g, m) for g, m in incl.most_common() if m < 0.9 * total]  # not the loop's roots
            for (f, n), (g, m) in zip(self_c.most_common(a.top), inner[:a.top]):
                lines.append(f"     {n / total:6.1%} {f:48.48} | {m / total:6.1%} {g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="eager-accept,eager-accept/shm/poll=2000/hostpoll=2000")
    ap.add_argument("--rate", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--file", default="/dir0/class1_5", help="URI (6 KiB by default)")
    ap.add_argument("--cpu", type=float, default=0.4, help="each server node's CPU budget")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--keep", type=Path, help="keep py-spy's raw stacks in this directory")
    a = ap.parse_args(argv)
    out_dir = a.keep or Path(tempfile.mkdtemp(prefix="tcps-profile-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    for config in a.configs.split(","):
        print(profile(config, a, out_dir), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the engine's CPU goes: py-spy samples of the TCP server and the host under load.

One ``cluster`` testbed per configuration (``MODE[/variant...]`` as in ``bench.offload``:
``eager-accept``, ``eager-accept/shm/poll=2000/hostpoll=2000`` ...), httperf offering
``--rate`` new connections per second for ``--seconds`` while py-spy samples both
processes from outside (no change to them). py-spy's idle detection does not see a
thread blocked in uvloop's epoll_wait or in the pacer's sleep here, so samples whose
innermost Python frame is the loop's ``Runner.run`` (uvloop's C code: mostly the wait,
also its dispatch) or ``PollingPacer._tick`` (the sleep) are counted as waiting, and the
rest as work. Prints, per process, the functions with the most work samples on top of the
stack (self: the function's own code and the system calls it makes) and on the stack at
all (inclusive), as shares of the work samples: the numbers docs/performance.md quotes.
``--analyze DIR`` prints the same from raw stacks kept earlier with ``--keep DIR``.

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


WAITING = ("runners.py:Runner.run", "polling.py:PollingPacer._tick")


def _collapse(path: Path) -> tuple[collections.Counter, collections.Counter, int, int]:
    """py-spy's raw format: ``frame;frame;...;leaf COUNT`` per line. Returns self and
    inclusive counts of the work samples, their number, and all samples'."""
    self_c: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    work = total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames or frames[-1] in WAITING:
            continue
        work += n
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return self_c, incl, work, total


def summarize(name: str, raw: Path, top: int) -> list[str]:
    self_c, incl, work, total = _collapse(raw)
    lines = [f"   {name}: {work} work samples of {total} ({work / max(1, total):.0%}); "
             f"shares of the work samples, self | inclusive"]
    inner = [(g, m) for g, m in incl.most_common() if m < 0.95 * work and g not in WAITING]
    for (f, n), (g, m) in zip(self_c.most_common(top), inner[:top]):
        lines.append(f"     {n / work:6.1%} {f:48.48} | {m / work:6.1%} {g}")
    return lines


def _short(frame: str) -> str:
    """``data_received (testbed/offload/hostside.py:118)`` -> ``hostside.py:data_received``."""
    name, _, where = frame.partition(" (")
    file = where.split(":")[0].rstrip(")")
    return f"{os.path.basename(file)}:{name}" if file else name


def profile(config: str, a: argparse.Namespace, out_dir: Path) -> str:
    from testbed.system.lifecycle import Testbed
    from testbed.describe.topology import load_topology

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    mode, *variant = config.split("/")
    params = {"host_cpu": str(a.cpu), "tcpserver_cpu": str(a.cpu)}
    opts = {"docroot_dirs": 1, "dynamic_cost_us": 0, **variant_options(variant)}
    lines = [f"== {config}: httperf {a.rate}/s for {a.seconds} s, {a.file}"]
    with Testbed(load_topology("cluster", params), name=f"p{os.getpid() % 100000}", mode=mode,
                 start_services=True, service_options=opts) as tb:
        _client_tw_cap(tb)
        _httperf(tb, a.file, a.rate, a.rate, tb.addresses.service_address, 80)  # warm-up
        procs = {p.name: p.pid for p in tb.processes if p.name in ("tcpserver", "app")}
        spies = {}
        for name, pid in procs.items():
            raw = out_dir / f"{config.replace('/', '_')}-{name}.txt"
            spies[name] = (raw, subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--duration", str(int(a.seconds)), "--rate", "250",
                 "--format", "raw", "--output", str(raw), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        hp = _httperf(tb, a.file, a.rate, int(a.rate * a.seconds), tb.addresses.service_address, 80)
        lines.append(f"   replies {hp['replies']}, errors {hp['errors']}")
        for name, (raw, sp) in spies.items():
            _, err = sp.communicate(timeout=a.seconds + 30)
            if not raw.exists():
                lines.append(f"   {name}: py-spy wrote nothing ({err.strip()[-200:]})")
                continue
            lines += summarize(name, raw, a.top)
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
    ap.add_argument("--analyze", type=Path, metavar="DIR", help="only summarize the raw stacks kept in DIR")
    a = ap.parse_args(argv)
    if a.analyze:
        for raw in sorted(a.analyze.glob("*.txt")):
            print(f"== {raw.stem}", *summarize(raw.stem.rsplit("-", 1)[-1], raw, a.top), sep="\n")
        return 0
    out_dir = a.keep or Path(tempfile.mkdtemp(prefix="tcps-profile-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    for config in a.configs.split(","):
        print(profile(config, a, out_dir), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

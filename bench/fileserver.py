"""Benchmark of direct communication with the file server, side by side on ``multitier``.

Three configurations of the same multi-tier testbed (client, TCP server, host, file
server on the SAN), each serving one file size at a time at a fixed offered load well
below saturation:

- ``regular``: Regular TCP; the host reads each body from the file server and sends it;
- ``relayed``: Eager Accept; the host reads each body and sends it through the TCP server
  (the body crosses the host twice);
- ``direct``: Eager Accept with ``direct_files``; the host sends the head and a FETCH, the
  TCP server reads the body from the file server and sends it (the body never reaches the
  host).

CPU is each node's cgroup usage over the measured window (cpuacct, softirq included where
the kernel charged it to the node's processes), per reply and per megabyte of body. Every
round runs every configuration, in an order reversed every other round; the ratios are
taken round by round (the same round's numbers against each other) and printed as median
[min-max]. The three server nodes share one core, a third each, and the offered loads
stay below what a third admits (the throttled time is printed): the question is where the
work goes, not how much a budget admits.

Run (root): ``python -m bench.fileserver [--repeat 3] [--seconds 4]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.offload import _measure

CONFIGS = {"regular": ("regular", False), "relayed": ("eager-accept", False), "direct": ("eager-accept", True)}
# (URI, size, offered req/s): 6 KiB, 100 KiB and 900 KiB of the SPECweb99 classes
FILES = [("/dir0/class1_5", 6 * 1024, 400), ("/dir0/class3_0", 100 * 1024, 200), ("/dir0/class3_8", 900 * 1024, 60)]
NODES = ["host1", "tcpserver", "files"]


def _one(config: str, seconds: float, name: str) -> dict[str, dict[str, Any]]:
    from testbed.describe.topology import load_topology
    from testbed.system.lifecycle import Testbed

    mode, direct = CONFIGS[config]
    topo = load_topology("multitier", {"host_cpu": "0.33", "tcpserver_cpu": "0.33", "fileserver_cpu": "0.33"})
    out = {}
    with Testbed(topo, name, mode=mode, start_services=True,
                 service_options={"docroot_dirs": 1, "direct_files": direct}) as tb:
        tb.run("client", ["sysctl", "-q", "-w", "net.ipv4.tcp_max_tw_buckets=2000"], check=True)
        for uri, size, rate in FILES:
            hp = _measure(tb, NODES, uri, rate, seconds, tb.addresses.service_address, 80)
            hp["size"] = size
            out[uri] = hp
    return out


def _stats(values: list[float], fmt: str = "{:.2f}") -> str:
    v = [x for x in values if x == x]
    if not v:
        return "-"
    return f"{fmt.format(statistics.median(v))} [{fmt.format(min(v))}-{fmt.format(max(v))}]"


def report(rounds: list[dict[str, dict[str, dict[str, Any]]]]) -> str:
    lines = []
    for uri, size, rate in FILES:
        lines.append(f"\n{uri} ({size // 1024} KiB) at {rate} req/s offered: CPU per reply (us) and per MB of body "
                     "(ms), median [min-max] over rounds")
        lines.append(f"{'config':<10}{'replies':>8}{'err':>5}" + "".join(f"{n + ' us':>22}" for n in NODES)
                     + f"{'host1 ms/MB':>20}{'tcpserver ms/MB':>20}")
        for config in CONFIGS:
            col = [r[config][uri] for r in rounds if config in r]
            last = col[-1]
            per_mb = {n: [c[f"{n}_us_per_req"] / 1000 / (size / 1e6) for c in col] for n in ("host1", "tcpserver")}
            throttled = max(c[f"{n}_throttled_s"] for c in col for n in NODES)
            lines.append(f"{config:<10}{last['replies']:>8}{last['errors']:>5}"
                         + "".join(f"{_stats([c[f'{n}_us_per_req'] for c in col], '{:.0f}'):>22}" for n in NODES)
                         + f"{_stats(per_mb['host1']):>20}{_stats(per_mb['tcpserver']):>20}"
                         + f"   throttled at most {throttled:.2f} s")
        pairs = [("host1", "direct", "regular"), ("host1", "direct", "relayed"), ("tcpserver", "direct", "relayed"),
                 ("files", "direct", "regular")]
        for node, a, b in pairs:
            ratio = [r[a][uri][f"{node}_us_per_req"] / r[b][uri][f"{node}_us_per_req"]
                     for r in rounds if a in r and b in r and r[b][uri][f"{node}_us_per_req"] > 0]
            lines.append(f"  {node} CPU per reply, {a}/{b}: {_stats(ratio)}")
    lines.append("\nratios: the same round's CPU per reply of one configuration over another's; host1 is the "
                 "application host, tcpserver the TCP server's node (in regular it only forwards IP), files "
                 "nginx. replies/err: the last round.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fileserver", description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="rounds over every configuration")
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per file size")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    a = ap.parse_args(argv)
    if a.repeat < 1 or a.seconds <= 0:
        print("bench.fileserver: --repeat must be >= 1 and --seconds > 0", file=sys.stderr)
        return 2
    rounds: list[dict[str, Any]] = []
    for r in range(a.repeat):
        order = list(CONFIGS) if r % 2 == 0 else list(reversed(CONFIGS))
        res = {}
        for config in order:
            print(f"round {r + 1}/{a.repeat}: {config}", flush=True)
            res[config] = _one(config, a.seconds, f"bfs{r}{config[:3]}")
        rounds.append(res)
    text = report(rounds)
    print(text)
    if a.json:
        a.json.write_text(json.dumps(rounds, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

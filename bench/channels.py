"""SAN channel benchmark on the ``smp`` topology: ``unix:PATH`` against ``shm:NAME``.

Same topology, CPU budgets, mode and offered load for both channels; rounds alternate
(unix, shm, unix, shm ...) so slow drifts of a shared machine spread over both alike.
Per configuration: replies, errors, and CPU per request of the host application and of
the TCP server (cgroup cpuacct, as in ``bench.offload``). Load is httperf, open loop, a
new connection per request.

Run (root): ``python -m bench.channels [--mode eager-accept] [--rates 2000,4000]
[--seconds 3] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from bench.offload import _client_tw_cap, _measure, _stats

CHANNELS = ("unix", "shm")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from testbed.system.lifecycle import Testbed
    from testbed.describe.topology import load_topology

    params = {"host_cpu": str(args.host_cpu), "tcpserver_cpu": str(args.tcpserver_cpu)}
    res: dict[str, Any] = {ch: [] for ch in CHANNELS}
    for rnd in range(args.repeat):
        for ch in CHANNELS:
            print(f"[round {rnd + 1}/{args.repeat}, {ch}] building the smp testbed ...", file=sys.stderr, flush=True)
            with Testbed(load_topology("smp", params), name=f"c{os.getpid() % 100000}", mode=args.mode,
                         start_services=True,
                         service_options={"docroot_dirs": 1, "dynamic_cost_us": 0, "channel": ch}) as tb:
                _client_tw_cap(tb)
                res[ch].append({str(rate): _measure(tb, ["tcpserver", "host1"], args.file, rate, args.seconds,
                                                    tb.addresses.service_address, 80) for rate in args.rates})
    return res


def report(res: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"smp topology, mode {args.mode}: host {args.host_cpu} CPU, tcpserver {args.tcpserver_cpu} CPU "
             f"(one cpuset); httperf {args.seconds} s of {args.file}, new connection each; "
             f"{args.repeat} round(s): median [min-max]",
             f"{'rate':>6} {'channel':8} {'replies/s':>18} {'errors':>7} {'host us/req':>18} {'tcpserver us/req':>18}"]
    for rate in map(str, args.rates):
        for ch in CHANNELS:
            rounds = [r[rate] for r in res[ch] if r[rate].get("replies")]
            rps = [r["replies"] / r["duration_s"] for r in rounds if r["duration_s"]]
            errs = sum(max(0, r["errors"]) for r in rounds)
            lines.append(f"{rate:>6} {ch:8} {_stats(rps):>18} {errs:>7} "
                         f"{_stats([r['host1_us_per_req'] for r in rounds]):>18} "
                         f"{_stats([r['tcpserver_us_per_req'] for r in rounds]):>18}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.channels", description=__doc__.split("\n")[0])
    ap.add_argument("--mode", default="eager-accept")
    ap.add_argument("--rates", default="2000,4000", help="offered loads, req/s")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--file", default="/dir0/class1_5", help="URI (6 KiB by default)")
    ap.add_argument("--host-cpu", type=float, default=0.4)
    ap.add_argument("--tcpserver-cpu", type=float, default=0.4)
    args = ap.parse_args(argv)
    args.rates = [int(r) for r in str(args.rates).split(",")]
    print(report(run(args), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

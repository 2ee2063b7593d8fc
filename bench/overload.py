"""Goodput past saturation, per mode, with and without the TCP server's overload control.

Before the control: measured open loop (two 0.1-CPU nodes, static load, a new connection per
request), the modes in which hosts pull connections kept a sixth to two fifths of their
goodput at 2.5x capacity, while Regular TCP kept 0.9-1.07. This benchmark measures, for
every mode, goodput (replies completed per second, the sweep's ``reply_rate_avg``) at
about 2.5x the mode's capacity against its peak:

1. calibration (skipped with ``--capacity``): each mode with the control on, a short
   ladder of offered rates; its capacity C is the highest goodput seen;
2. ``--repeat`` rounds; in each, every configuration in turn (``regular``, then per
   offloaded mode ``control`` = the daemon's defaults and, for ``--none-modes``, ``none``
   = ``--overload-control off --backlog 4096 --listen-backlog 4096``, the daemon before
   the control), each in a fresh testbed, offered C then 2.5C: peak = the larger
   goodput of the two, ratio = goodput at 2.5C / peak.

The load is the project's generator (``python -m loadgen sweep``, its 5 s request
timeout: a client gives up and resets), inside the cluster's client node. Rounds run the
configurations in alternation so that drifts of a shared machine spread over all alike;
the report gives median [min-max] over the rounds.

Run (root): ``python -m bench.overload [--repeat 3] [--step-seconds 6] [--json FILE]``
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from testbed.offload.modes import MODES as MODE_TABLE  # the one table of modes

ROOT = Path(__file__).resolve().parents[1]
MODES = list(MODE_TABLE)
# the TCP server without the control: queue and kernel backlog as deep as before, no deadline
CONFIGS = {"control": {}, "none": {"overload_control": False, "backlog": 4096, "listen_backlog": 4096}}


def sweep(tb, rates: list[int], step: float, warmup: float, out: Path) -> list[dict]:
    """One loadgen sweep in the client node; the steps' rows."""
    argv = [sys.executable, "-m", "loadgen", "sweep", "--target", tb.service_url, "--workload", "static",
            "--rates", ",".join(map(str, rates)), "--step-seconds", str(step), "--warmup", str(warmup),
            "--processes", "2", "--cpus", "0", "--out", str(out), "-q"]
    r = tb.run("client", argv, text=True, timeout=60 + len(rates) * (step + 15), cwd=str(ROOT))
    if r.returncode != 0:
        raise RuntimeError(f"loadgen sweep failed ({r.returncode}): {r.stderr[-2000:]}")
    with open(out / "steps.csv") as f:
        return list(csv.DictReader(f))


def run_config(args, mode: str, config: str, rates: list[int], tag: str) -> dict:
    from testbed.system.lifecycle import Testbed
    from testbed.describe.topology import load_topology

    params = {"host_cpu": str(args.host_cpu), "tcpserver_cpu": str(args.tcpserver_cpu)}
    opts: dict[str, Any] = {"docroot_dirs": 1, "dynamic_cost_us": 0, **CONFIGS[config]}
    out = Path(args.out) / f"{tag}-{mode}-{config}"
    print(f"[{tag}] {mode}/{config}: rates {rates}", file=sys.stderr, flush=True)
    with Testbed(load_topology("cluster", params), name=f"ov{os.getpid() % 100000}", mode=mode,
                 start_services=True, service_options=opts) as tb:
        rows = sweep(tb, rates, args.step_seconds, args.warmup, out)
        stats = {}
        if MODE_TABLE[mode].offloaded:
            try:
                stats = json.loads((tb.store.dir / "stats-tcpserver.json").read_text())
            except (OSError, ValueError):
                pass
    steps = [{"offered": float(r["offered_rate"]), "goodput": float(r["reply_rate_avg"]),
              "timeouts": int(float(r.get("err_timeout") or 0)), "resets": int(float(r.get("err_reset") or 0)),
              "p50_ms": float(r["lat_p50_ms"] or "nan"), "generator_bound": r["generator_bound"] in ("True", "true", "1"),
              "bound_reasons": r.get("bound_reasons", "")} for r in rows]
    keep = ("connections_total", "queued_total", "shed", "stale", "listener_pauses", "connections_refused")
    return {"steps": steps, "tcpserver": {k: stats.get(k) for k in keep}}


def calibrate(args) -> dict[str, float]:
    caps = {}
    for mode in args.modes:
        rates = [int(r) for r in args.ladder.split(",")]
        short = argparse.Namespace(**{**vars(args), "step_seconds": args.cal_step, "warmup": 1.0})
        res = run_config(short, mode, "control", rates, "cal")
        caps[mode] = max(s["goodput"] for s in res["steps"])
        print(f"[cal] {mode}: capacity {caps[mode]:.0f} replies/s", file=sys.stderr, flush=True)
    return caps


def run(args) -> dict:
    caps = dict(args.capacity) if args.capacity else {}
    missing = [m for m in args.modes if m not in caps]
    if missing:
        args_cal = argparse.Namespace(**{**vars(args), "modes": missing})
        caps.update(calibrate(args_cal))
    res: dict[str, Any] = {"config": {k: v for k, v in vars(args).items() if k != "capacity"},
                           "capacity": caps, "runs": {}}
    for rnd in range(args.repeat):
        for mode in args.modes:
            c = caps[mode]
            rates = [int(round(c)), int(round(c * args.factor))]
            configs = list(CONFIGS) if MODE_TABLE[mode].offloaded else ["control"]
            if mode not in args.none_modes:
                configs = ["control"]
            for config in configs:
                key = f"{mode}/{config}"
                try:
                    r = run_config(args, mode, config, rates, f"r{rnd + 1}")
                except (RuntimeError, OSError, subprocess.SubprocessError) as e:  # one run, not the rest
                    print(f"[r{rnd + 1}] {key}: failed ({e}); skipped", file=sys.stderr, flush=True)
                    continue
                g = [s["goodput"] for s in r["steps"]]
                r["peak"] = max(g)
                r["ratio"] = g[-1] / r["peak"] if r["peak"] else 0.0
                res["runs"].setdefault(key, []).append(r)
                print(f"[r{rnd + 1}] {key}: goodput {g[0]:.0f} at {rates[0]}/s, {g[-1]:.0f} at "
                      f"{rates[-1]}/s: ratio {r['ratio']:.2f}", file=sys.stderr, flush=True)
    return res


def _stats(vals: list[float]) -> str:
    vals = sorted(vals)
    if not vals:
        return "-"
    n = len(vals)
    med = vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2
    return f"{med:.2f} [{vals[0]:.2f}-{vals[-1]:.2f}]"


def report(res: dict) -> str:
    cfg = res["config"]
    lines = [f"cluster, host {cfg['host_cpu']} CPU, tcpserver {cfg['tcpserver_cpu']} CPU, static load, a new "
             f"connection per request, steps of {cfg['step_seconds']} s ({cfg['warmup']} s warm-up), "
             f"offered C then {cfg['factor']}x C; {cfg['repeat']} round(s), median [min-max]",
             f"{'mode/config':<28}{'C':>7}{'peak replies/s':>22}{'at ' + str(cfg['factor']) + 'x':>22}"
             f"{'ratio':>22}{'shed':>8}{'stale':>8}{'pauses':>8}"]
    for key, runs in res["runs"].items():
        mode = key.split("/")[0]
        peaks = [r["peak"] for r in runs]
        over = [r["steps"][-1]["goodput"] for r in runs]
        ratios = [r["ratio"] for r in runs]
        ts = runs[-1].get("tcpserver") or {}
        fmt = lambda v: f"{sorted(v)[len(v) // 2]:.0f} [{min(v):.0f}-{max(v):.0f}]"  # noqa: E731
        bound = " (generator-bound steps)" if any(s["generator_bound"] for r in runs for s in r["steps"]) else ""
        lines.append(f"{key:<28}{res['capacity'][mode]:>7.0f}{fmt(peaks):>22}{fmt(over):>22}{_stats(ratios):>22}"
                     f"{str(ts.get('shed', '-')):>8}{str(ts.get('stale', '-')):>8}"
                     f"{str(ts.get('listener_pauses', '-')):>8}{bound}")
    lines.append("\ndone when: every mode's ratio >= 0.90 with the control (docs/limits.md, Overload). shed/stale/pauses: "
                 "the TCP server's counters after the last round's run.")
    return "\n".join(lines)


def _capacity(s: str) -> dict[str, float]:
    out = {}
    for part in s.split(","):
        m, _, v = part.partition("=")
        out[m.strip()] = float(v)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__.split("\n")[0])
    ap.add_argument("--modes", nargs="+", default=MODES)
    ap.add_argument("--host-cpu", type=float, default=0.1)
    ap.add_argument("--tcpserver-cpu", type=float, default=0.1)
    ap.add_argument("--factor", type=float, default=2.5, help="overload as a multiple of the capacity")
    ap.add_argument("--step-seconds", type=float, default=6.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--none-modes", nargs="*",
                    default=[n for n, m in MODE_TABLE.items() if m.offloaded and not m.push_accept],
                    help="modes also run without the control (default: the pull modes, which "
                         "collapsed before it; the push modes did not)")
    ap.add_argument("--cal-step", type=float, default=4.0, help="calibration step seconds")
    ap.add_argument("--ladder", default="800,1200,1600,2200",
                    help="calibration rates (control on): the capacity is the best goodput")
    ap.add_argument("--capacity", type=_capacity, help="skip calibration: MODE=REPLIES_PER_S,...")
    ap.add_argument("--out", default=f"/tmp/tcps-bench-overload-{os.getpid()}", help="loadgen outputs")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    a = ap.parse_args(argv)
    t0 = time.time()
    res = run(a)
    res["seconds"] = time.time() - t0
    print(report(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

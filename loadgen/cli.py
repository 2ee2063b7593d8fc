"""Command line of the load generator; the only module that talks to the user.

    python -m loadgen sweep --target URL --workload static|dynamic|mixed --rates 100:1000:100
                            --step-seconds S --warmup S --processes N --out DIR
                            [--poisson] [--keepalive] [--mix 0.8] [--dynamic-cost-us N] [--seed S]
                            [--cpus 0] [--timeout S] [--max-inflight N]
                            [--master-bind ADDR --master-port P --expect-workers M]
    python -m loadgen worker --master-host H [--master-port P] [--cpus 0]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path
from typing import Any, Sequence


def parse_cpus(text: str) -> list[int]:
    from testbed.describe import cpulist
    try:
        cpus = sorted(cpulist.parse(text))
    except ValueError:
        cpus = []
    if not cpus:
        raise argparse.ArgumentTypeError(f"--cpus {text!r}: use a list like 0 or 0,1 or 0-3")
    return cpus


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"loadgen: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m loadgen", description="Open-loop load generation on Locust")
    sub = ap.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    s = sub.add_parser("sweep", help="an offered-load sweep, one step per rate")
    s.add_argument("--target", required=True, help="base URL, e.g. http://10.77.255.1/")
    s.add_argument("--workload", default="static", help="static | dynamic | mixed")
    s.add_argument("--rates", required=True, help="START:STOP:STEP (stop included) or R1,R2,...")
    s.add_argument("--step-seconds", type=float, default=10.0)
    s.add_argument("--warmup", type=float, default=2.0, help="seconds at the start of each step not measured")
    s.add_argument("--processes", type=int, default=1, help="local worker processes sharing the rate")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--poisson", action="store_true", help="exponential gaps (default: fixed)")
    s.add_argument("--keepalive", action="store_true", help="HTTP/1.1 persistent connections "
                   "(default: a new connection per request, HTTP/1.0 with Connection: close)")
    s.add_argument("--mix", type=float, default=0.8, help="static share of the mixed workload")
    s.add_argument("--dynamic-cost-us", type=int, default=1000)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--timeout", type=float, default=5.0, help="seconds before a request counts as timed out")
    s.add_argument("--max-inflight", type=int, default=0, help="per process; beyond it requests "
                   "are counted as overflow, not sent (default 0: sized from rate x timeout)")
    s.add_argument("--latency-target-ms", type=float, default=200.0,
                   help="a step whose p99 latency exceeds it counts as saturated (default 200)")
    s.add_argument("--cpus", type=parse_cpus, help="pin local workers to these CPUs (round-robin)")
    s.add_argument("--pause", type=float, default=0.0, help="seconds idle between steps")
    s.add_argument("--locust-events", default="step", help="fire Locust's events.request: step "
                   "(batched after each step, default) | inline (as each request completes) | off")
    s.add_argument("--master-bind", default="127.0.0.1", help="where remote workers connect ('*' for all)")
    s.add_argument("--master-port", type=int, default=0, help="0: a free port")
    s.add_argument("--expect-workers", type=int, default=0, help="workers from other machines to wait for")
    s.add_argument("--worker-wait", type=float, default=30.0)
    s.add_argument("-q", "--quiet", action="store_true")
    w = sub.add_parser("worker", help="a worker process for a sweep master (here or on another machine)")
    w.add_argument("--master-host", required=True)
    w.add_argument("--master-port", type=int, default=5557)
    w.add_argument("--cpus", type=parse_cpus)
    return ap


def _fmt_row(row: dict[str, Any], steps: int) -> str:
    flag = f"  GENERATOR-BOUND ({row['bound_reasons']})" if row["generator_bound"] else ""
    if row["saturated"]:
        flag += f"  saturated ({row['saturated_reasons']})"
    p99 = row["lat_p99_ms"]
    return (f"step {row['step'] + 1}/{steps}  offered {row['offered_rate']:.0f}/s  sent {row['achieved_rate']:.1f}/s  "
            f"replies {row['reply_rate_avg']:.1f}/s  errors {row['errors_total']}  "
            f"p99 {p99 if p99 == p99 else float('nan'):.2f} ms  gen cpu {row['gen_cpu_max']:.0%}{flag}")


def sweep_display() -> Any:
    """Steps done and time left on stderr, refreshed by the sweep's own once-a-second tick;
    the step rows printed to a terminal stdout appear above it."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[left]}"),
                    TextColumn("{task.fields[now]}"), console=Console(file=sys.stderr, soft_wrap=True),
                    auto_refresh=False, redirect_stdout=sys.stdout.isatty(), redirect_stderr=False)


def cmd_sweep(a: argparse.Namespace) -> int:
    from .schedule import ScheduleError, parse_rates
    from .config import SweepConfig, SweepError
    from .sweep import Sweep

    try:
        rates = parse_rates(a.rates)
        cfg = SweepConfig.from_args(a, rates)
        # a live display only for a person at a terminal; pipes and files get the step rows alone
        display = sweep_display() if sys.stderr.isatty() and not a.quiet else None
        task = display.add_task("", total=len(rates) * a.step_seconds, left="", now="") if display else None

        def on_tick(p: dict[str, Any]) -> None:
            if display is None or task is None:
                return
            within = min(p["elapsed"], p["step_seconds"])
            left = (p["steps"] - p["step"]) * p["step_seconds"] - within
            display.update(task, completed=p["step"] * p["step_seconds"] + within,
                           description=f"step {p['step'] + 1}/{p['steps']}  {p['rate']:.0f}/s",
                           left=f"{left:.0f} s left",
                           now=f"sent {p['sent_1s']}/s  replies {p['replies_1s']}/s  "
                               f"errors {p['errors_1s']}/s  in flight {p['inflight']}")
            display.refresh()  # no refresh thread: the sweep's timing runs on gevent

        def on_step(row: dict[str, Any]) -> None:
            if display is not None and task is not None:
                left = (len(rates) - row["step"] - 1) * a.step_seconds
                display.update(task, completed=(row["step"] + 1) * a.step_seconds, left=f"{left:.0f} s left")
            if not a.quiet:
                print(_fmt_row(row, len(rates)), flush=True)  # above the display, if there is one

        sweep = Sweep(cfg, on_step=on_step, on_tick=on_tick)
        sweep.prepare()
        if not a.quiet:
            print(f"sweep: {len(rates)} steps of {a.step_seconds:g} s ({a.warmup:g} s warm-up) against "
                  f"{sweep.target.url}, {a.workload}, {a.processes} process(es), "
                  f"{'keep-alive' if a.keepalive else 'new connection per request'}, "
                  f"{'Poisson' if a.poisson else 'fixed'} gaps -> {a.out}", flush=True)
        with display or contextlib.nullcontext():
            summary = sweep.run()
    except (ScheduleError, SweepError) as e:
        print(f"loadgen: {e}", file=sys.stderr)
        _say_kept(a.out)
        return 2
    except KeyboardInterrupt:
        print("\nloadgen: interrupted", file=sys.stderr)
        _say_kept(a.out)
        return 130
    if not a.quiet:
        print(f"done: {summary['steps_measured']} steps -> {a.out}/steps.csv, requests.parquet, summary.json")
        if summary["generator_bound_steps"]:
            print(f"warning: {summary['note']}")
        cap = summary["capacity_at_target"]
        print(f"capacity at target (p99 <= {summary['latency_target_ms']:g} ms, errors <= 1%): "
              + (f"{cap:g} req/s" if cap is not None else "no step met it"))
    return 0


def _say_kept(out: Path) -> None:
    steps = out / "steps.csv"
    if steps.exists():
        n = max(0, len(steps.read_text().splitlines()) - 1)
        print(f"loadgen: {n} measured step(s) kept in {out}", file=sys.stderr)


def cmd_worker(a: argparse.Namespace) -> int:
    from .worker import worker_main
    return worker_main(a.master_host, a.master_port, a.cpus)


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if a.verb == "sweep":
        return cmd_sweep(a)
    return cmd_worker(a)

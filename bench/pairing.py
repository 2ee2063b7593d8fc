"""Does pairing by step move a gain? The same experiment, on one commit, run whole with each
pairing in turn (step, round, round, step, ...), one round per run.

- ``step``: the configurations' testbeds are all up at once and take turns at each rate;
- ``round``: one testbed at a time, each sweeping all its rates.

Knee search (``refine``) is off in both, so that the pairing is the only difference. Each
run gives one peak gain per offloaded curve over Regular TCP; the printout gives, per
curve, every run's gain, each pairing's mean and spread, and step minus round with its
95% interval (Welch): the bias of step pairing against runs in which nothing else is up.
It also gives each pairing's interval half-width per hour of machine time.

Run (root): ``python -m bench.pairing [--experiment san-cost] [--pairs 4] [--configs 0,3]``
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from testbed.describe.experiment import EXPERIMENT_DIR, available_experiments, experiment_from_dict

PAIRINGS = ("step", "round")


def _variant(raw: dict[str, Any], pairing: str, configs: list[int] | None) -> dict[str, Any]:
    out = dict(raw)
    out["name"] = f"{raw['name']}-{pairing}"
    out["repetitions"] = 1
    out.pop("precision", None)
    out.pop("quick", None)
    out["fidelity"] = {**(raw.get("fidelity") or {}), "pairing": pairing, "refine": 0}
    if configs is not None and "configs" in raw:
        out["configs"] = [raw["configs"][i] for i in configs]
    return out


def _gains(run_dir: Path) -> tuple[dict[str, float], float]:
    """Each offloaded curve's peak gain (%) in this one-round run, and the run's minutes."""
    from analysis.run import RunInfo, prepare_runs
    from analysis.summary import summary

    info = RunInfo.load(run_dir)
    s = summary(prepare_runs([info]), info.manifest)
    gains = {c["curve"]: c["peak_gain_pct"]["mean"] for c in s["curves"]
             if c["mode"] != "regular" and c["peak_gain_pct"]["mean"] is not None}
    return gains, float(s["minutes"] or 0.0)


def _interval(a: list[float], b: list[float]) -> tuple[float, float]:
    """mean(a) - mean(b) and its 95% half-width (Welch)."""
    from scipy import stats

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1)) + (vb ** 2 / (len(b) - 1))) if se > 0 else 1.0
    return statistics.mean(a) - statistics.mean(b), float(stats.t.ppf(0.975, df)) * se


def _half_width(xs: list[float]) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, len(xs) - 1)) * statistics.stdev(xs) / math.sqrt(len(xs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pairing", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="san-cost", help="a shipped experiment (default: san-cost)")
    ap.add_argument("--pairs", type=int, default=4, help="runs per pairing, at least 2 (default: 4)")
    ap.add_argument("--configs", default="0,3", help="indexes of the experiment's configs to keep (default: 0,3)")
    ap.add_argument("--results", default="results/pairing", help="where the runs go")
    args = ap.parse_args(argv)
    if args.pairs < 2:
        ap.error("--pairs must be at least 2 (a spread needs two runs)")
    if args.experiment not in available_experiments():
        ap.error(f"--experiment: one of {', '.join(available_experiments())}")
    raw = yaml.safe_load((EXPERIMENT_DIR / f"{args.experiment}.yaml").read_text())
    try:
        configs = [int(i) for i in args.configs.split(",")] if args.configs else None
        if configs is not None:
            [raw["configs"][i] for i in configs]
    except (ValueError, IndexError, KeyError):
        ap.error(f"--configs: comma-separated indexes into {args.experiment}'s configs")
    for pairing in PAIRINGS:  # both variants checked before the first run
        experiment_from_dict(_variant(raw, pairing, configs), source=f"{args.experiment} ({pairing} pairing)")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    # ABBA: step, round, round, step, ...: a drift over the whole bench lands on both alike
    order = [PAIRINGS[(i + 1) // 2 % 2] for i in range(2 * args.pairs)]
    runs: dict[str, list[tuple[dict[str, float], float]]] = {p: [] for p in PAIRINGS}
    with tempfile.TemporaryDirectory(prefix="tcps-pairing-") as tmp:
        for i, pairing in enumerate(order, 1):
            spec = Path(tmp) / f"{args.experiment}-{pairing}.yaml"
            spec.write_text(yaml.safe_dump(_variant(raw, pairing, configs), sort_keys=False))
            before = set(results.iterdir())
            print(f"[{i}/{len(order)}] {pairing} pairing ({time.strftime('%H:%M:%S')})", flush=True)
            rc = subprocess.run([sys.executable, "-m", "testbed", "run", str(spec), "--results", str(results),
                                 "--no-report"], stdout=subprocess.DEVNULL).returncode
            new = sorted(set(results.iterdir()) - before)
            if rc != 0 or not new:
                print(f"  the run failed (exit {rc}); stopping", file=sys.stderr)
                break
            gains, minutes = _gains(new[-1])
            runs[pairing].append((gains, minutes))
            print("  " + ", ".join(f"{c.split(' / ')[-2] if c.count(' / ') > 1 else c}: {g:+.1f}%"
                                   for c, g in gains.items()) + f" ({minutes:.1f} min, {new[-1].name})", flush=True)
    if min(len(v) for v in runs.values()) < 2:
        return 1
    curves = sorted({c for g, _ in runs["step"] for c in g} & {c for g, _ in runs["round"] for c in g})
    print(f"\n{args.experiment}: peak gain over Regular TCP (%), one round per run, "
          f"{len(runs['step'])} step and {len(runs['round'])} round runs alternated")
    print("curve | step runs | round runs | step mean ± 95% | round mean ± 95% | step - round [95%]")
    for c in curves:
        s = [g[c] for g, _ in runs["step"] if c in g]
        r = [g[c] for g, _ in runs["round"] if c in g]
        d, hw = _interval(s, r)
        print(f"{c} | {', '.join(f'{x:+.1f}' for x in s)} | {', '.join(f'{x:+.1f}' for x in r)} | "
              f"{statistics.mean(s):+.1f} ± {_half_width(s):.1f} | {statistics.mean(r):+.1f} ± {_half_width(r):.1f} | "
              f"{d:+.1f} [{d - hw:+.1f}, {d + hw:+.1f}]")
    for p in PAIRINGS:
        hours = sum(m for _, m in runs[p]) / 60.0
        widths = [_half_width([g[c] for g, _ in runs[p] if c in g]) for c in curves]
        # a half-width shrinks as 1/sqrt(runs): scaled to one hour of runs of this pairing
        per_hour = statistics.median(widths) * math.sqrt(hours)
        print(f"{p}: {hours * 60:.0f} min of runs; median half-width {statistics.median(widths):.1f} points, "
              f"{per_hour:.1f} for one hour of runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

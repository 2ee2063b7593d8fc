"""Does pairing by step move a gain? The same experiment, on one commit, run whole with each
pairing in turn (step, round, round, step, ...), one round per run.

- ``step``: the configurations' testbeds are all up at once and take turns at each rate;
- ``round``: one testbed at a time, each sweeping all its rates.

Knee search (``refine``) is off in both, so that the pairing is the only difference. Each
run gives one peak gain per offloaded curve over Regular TCP; the printout gives, per
curve, every run's gain, each pairing's mean and spread, and step minus round with its
95% interval (Welch): the bias of step pairing against runs in which nothing else is up.
It also gives each pairing's interval half-width per hour of machine time.

Run (root): ``python -m bench.pairing [--experiment san-cost] [--pairs 4] [--configs 0,3]``;
``--from RESULTS`` compares runs already made there instead. The gains go to ``--out``
(docs/bench/pairing/pairing.json), which docs/measurement.md quotes (analysis/pairing.py).
"""

from __future__ import annotations

import argparse
import json
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


def collect(results: Path, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Each run's pairing, gains, minutes and start, from its directory (``names``: only those)."""
    out = []
    for d in sorted(p for p in results.iterdir() if (p / "manifest.json").exists()):
        if names is not None and d.name not in names:
            continue
        manifest = json.loads((d / "manifest.json").read_text())
        gains, minutes = _gains(d)
        out.append({"run": d.name, "pairing": (manifest.get("fidelity") or {}).get("pairing", "round"),
                    "started": manifest.get("started"), "commit": manifest.get("commit"),
                    "minutes": minutes, "gains": gains})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pairing", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="san-cost", help="a shipped experiment (default: san-cost)")
    ap.add_argument("--pairs", type=int, default=4, help="runs per pairing, at least 2 (default: 4)")
    ap.add_argument("--configs", default="0,3", help="indexes of the experiment's configs to keep (default: 0,3)")
    ap.add_argument("--results", default="results/pairing", help="where the runs go")
    ap.add_argument("--from", dest="from_results", metavar="RESULTS", help="compare the runs already in RESULTS")
    ap.add_argument("--out", default="docs/bench/pairing", help="where pairing.json goes")
    args = ap.parse_args(argv)
    if args.from_results:
        return report(collect(Path(args.from_results)), args.experiment, Path(args.out))
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
    made: list[str] = []
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
            made.append(new[-1].name)
            print("  " + ", ".join(f"{c.split(' / ')[-2] if c.count(' / ') > 1 else c}: {g:+.1f}%"
                                   for c, g in gains.items()) + f" ({minutes:.1f} min, {new[-1].name})", flush=True)
    return report(collect(results, made), args.experiment, Path(args.out))


def report(runs: list[dict[str, Any]], experiment: str, out: Path) -> int:
    """Print the comparison and write the runs' gains beside it (pairing.json)."""
    from analysis.pairing import table
    if min(sum(r["pairing"] == p for r in runs) for p in PAIRINGS) < 2:
        print("fewer than two runs of a pairing: nothing to compare", file=sys.stderr)
        return 1
    commits = {r["commit"] for r in runs}
    data = {"experiment": experiment, "commit": commits.pop() if len(commits) == 1 else sorted(commits),
            "runs": runs}
    print("\n" + table(data))
    out.mkdir(parents=True, exist_ok=True)
    (out / "pairing.json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"written: {out / 'pairing.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

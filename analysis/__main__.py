"""The analysis CLI.

    python -m analysis report RUN_DIR            # RUN_DIR/report/index.html + summary on the terminal
    python -m analysis compare RUN_DIR... [--out DIR]
    python -m analysis tables RUN_DIR            # rebuild steps/samples/points.parquet
    python -m analysis publish RUN_DIR docs/reports/NAME   # a report that carries its data
    python -m analysis report docs/reports/NAME  # rebuild a published report from its data
    python -m analysis signals RUN_DIR           # which per-step signal tells a slow step
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)
    rep = sub.add_parser("report", help="write RUN_DIR/report/index.html and print the summary")
    rep.add_argument("run_dir")
    rep.add_argument("--rebuild", action="store_true", help="rebuild the tidy tables from the raw files first")
    cmp_ = sub.add_parser("compare", help="one report over several runs, side by side")
    cmp_.add_argument("run_dirs", nargs="+")
    cmp_.add_argument("--out", help="output directory (default: compare-<time> beside the first run)")
    tab = sub.add_parser("tables", help="rebuild the tidy Parquet tables of a run")
    tab.add_argument("run_dir")
    q = sub.add_parser("quotes", help="check (or --write) the numbers README and docs quote from shipped reports")
    q.add_argument("--write", action="store_true")
    sig = sub.add_parser("signals", help="which per-step signal (steal, the probe, other CPU) tells a slow "
                         "step, and whether a step's place in its turn moves it")
    sig.add_argument("run_dir")
    pub = sub.add_parser("publish", help="copy a run's tables into DEST and build its report there")
    pub.add_argument("run_dir")
    pub.add_argument("dest")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.cmd == "signals":
        from .signals import report
        try:
            print(report(Path(args.run_dir)))
        except FileNotFoundError as e:
            print(f"analysis: {e}", file=sys.stderr)
            return 2
        return 0
    if args.cmd == "quotes":
        from .quotes import stale_blocks, unquoted_gains
        stale = stale_blocks(write=args.write)
        problems = ([] if args.write else stale) + unquoted_gains()
        for p in problems:
            print(p)
        if args.write and stale:
            print(f"rewrote {len(stale)} block(s)")
        return 1 if problems else 0
    from .report import build_report, summary_text
    from .tables import build_tables
    try:
        from .published import is_published
        if args.cmd in ("tables", "report") and is_published(Path(args.run_dir)) \
                and (args.cmd == "tables" or args.rebuild):
            print(f"analysis: {args.run_dir} is a published report: its tables are its data, "
                  "there are no raw points to rebuild them from", file=sys.stderr)
            return 2
        if args.cmd == "tables" or (args.cmd == "report" and args.rebuild):
            build_tables(Path(args.run_dir))
            if args.cmd == "tables":
                print(f"tables rebuilt in {args.run_dir}")
                return 0
        if args.cmd == "publish":
            from .publish import publish
            from .report import summary_of
            path = publish(args.run_dir, args.dest)
            print(summary_of(args.dest))
            print(f"\nreport: {path}\nsummary: {Path(args.dest) / 'summary.json'}")
            return 0
        if args.cmd == "report":
            from .report import report_dir_of
            path, prep, runs = build_report([args.run_dir], report_dir_of(args.run_dir))
        else:
            from .compare import compare
            path, prep, runs = compare(args.run_dirs, args.out)
    except FileNotFoundError as e:
        print(f"analysis: {e}", file=sys.stderr)
        return 2
    print(summary_text(prep, runs))
    print(f"\nreport: {path}")
    return 0


if __name__ == "__main__":
    from testbed._venv import ensure_environment
    ensure_environment("analysis", ("pandas", "matplotlib"))
    sys.exit(main())

"""The analysis CLI.

    python -m analysis report RUN_DIR            # RUN_DIR/report/index.html + summary on the terminal
    python -m analysis compare RUN_DIR... [--out DIR]
    python -m analysis tables RUN_DIR            # rebuild steps/samples/points.parquet
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
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from .report import build_report, summary_text
    from .tables import build_tables
    try:
        if args.cmd == "tables" or (args.cmd == "report" and args.rebuild):
            build_tables(Path(args.run_dir))
            if args.cmd == "tables":
                print(f"tables rebuilt in {args.run_dir}")
                return 0
        if args.cmd == "report":
            path, prep, runs = build_report([args.run_dir], Path(args.run_dir) / "report")
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
    sys.exit(main())

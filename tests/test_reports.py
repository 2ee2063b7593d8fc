"""Shipped reports carry their data and rebuild from it; README and docs quote only them.

Every docs/reports/<name>/ with a summary.json gives the same summary again from the data
beside it (numbers and all); one of them is rebuilt in full, figures included, with
`python -m analysis report DIR` as a user would (drawing every report's figures would
cost the suite about a minute each)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

REPORTS = ROOT / "docs" / "reports"
# the reports quoted today, and those kept from before step pairing (round-paired/), which the
# precision table compares with them
PUBLISHED = sorted(str(p.parent.relative_to(REPORTS))
                   for p in [*REPORTS.glob("*/summary.json"), *REPORTS.glob("round-paired/*/summary.json")])
MAX_REPORT_BYTES = 5 * 1024 * 1024


def test_at_least_one_shipped_report_carries_its_data() -> None:
    assert PUBLISHED, "no report under docs/reports carries summary.json and its tables"


FULL_REBUILD = "paper-mixed"  # a small one


def _check_shipped(name: str) -> dict:
    src = REPORTS / name
    for f in ("manifest.json", "steps.parquet", "points.json", "index.html"):
        assert (src / f).exists(), f"{name}: {f} missing"
    manifest = json.loads((src / "manifest.json").read_text())
    assert manifest.get("commit") and manifest.get("dirty") is False, f"{name}: not made on a clean tree"
    assert sum(f.stat().st_size for f in src.iterdir()) < MAX_REPORT_BYTES
    shipped = json.loads((src / "summary.json").read_text())
    assert shipped["curves"] and all(c["repetitions"] >= 3 for c in shipped["curves"]), \
        f"{name}: shipped reports need at least 3 interleaved repetitions"
    return shipped


@pytest.mark.parametrize("name", PUBLISHED)
def test_a_shipped_summary_rebuilds_from_its_data(name: str) -> None:
    from analysis.report import RunInfo, prepare_runs
    from analysis.summary import summary
    shipped = _check_shipped(name)
    run = RunInfo.load(REPORTS / name)
    again = json.loads(json.dumps(summary(prepare_runs([run]), run.manifest)))
    assert again == shipped


def test_a_shipped_report_rebuilds_in_full_from_its_data(tmp_path: Path) -> None:
    name = FULL_REBUILD if FULL_REBUILD in PUBLISHED else PUBLISHED[0]
    src = REPORTS / name
    shipped = _check_shipped(name)
    work = tmp_path / name
    shutil.copytree(src, work)
    (work / "summary.json").unlink()
    for png in work.glob("*.png"):
        png.unlink()
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", str(work)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((work / "summary.json").read_text()) == shipped
    assert sorted(p.name for p in work.glob("*.png")) == sorted(p.name for p in src.glob("*.png"))


def test_readme_and_docs_quote_only_shipped_numbers() -> None:
    from analysis.quotes import stale_blocks, unquoted_gains
    assert stale_blocks() == []
    assert unquoted_gains() == []


def test_a_tail_quote_counts_each_curves_steps_that_kept_up() -> None:
    import analysis
    from analysis.quotes import render
    name = "san-cost" if "san-cost" in PUBLISHED else PUBLISHED[0]
    text = render(f"tail.{name}")
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| static")]
    st = analysis.load(REPORTS / name)["steps"]
    kept = st[st["faithful"] & (st["reply_rate_own"] >= 0.95 * st["offered_rate"])]
    assert sum(int(r[3]) for r in rows) == len(kept) > 0
    assert {r[2] for r in rows} == set(st["mode"])
    with pytest.raises(FileNotFoundError, match="no shipped summary"):
        render("tail.no-such-report")

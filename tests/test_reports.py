"""Shipped reports carry their data and rebuild from it; README and docs quote only them.

Every docs/reports/<name>/ with a summary.json is rebuilt into a scratch copy with
`python -m analysis report DIR` and must give the same summary, numbers and all."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

REPORTS = ROOT / "docs" / "reports"
PUBLISHED = sorted(p.parent.name for p in REPORTS.glob("*/summary.json"))
MAX_REPORT_BYTES = 5 * 1024 * 1024


def test_at_least_one_shipped_report_carries_its_data() -> None:
    assert PUBLISHED, "no report under docs/reports carries summary.json and its tables"


@pytest.mark.parametrize("name", PUBLISHED)
def test_a_shipped_report_rebuilds_from_its_data_with_the_same_summary(name: str, tmp_path: Path) -> None:
    src = REPORTS / name
    for f in ("manifest.json", "steps.parquet", "points.json", "index.html"):
        assert (src / f).exists(), f"{name}: {f} missing"
    manifest = json.loads((src / "manifest.json").read_text())
    assert manifest.get("commit") and manifest.get("dirty") is False, f"{name}: not made on a clean tree"
    assert sum(f.stat().st_size for f in src.iterdir()) < MAX_REPORT_BYTES
    work = tmp_path / name
    shutil.copytree(src, work)
    (work / "summary.json").unlink()
    for png in work.glob("*.png"):
        png.unlink()
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", str(work)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((work / "summary.json").read_text()) == json.loads((src / "summary.json").read_text())
    assert sorted(p.name for p in work.glob("*.png")) == sorted(p.name for p in src.glob("*.png"))
    shipped = json.loads((src / "summary.json").read_text())
    assert shipped["curves"] and all(c["repetitions"] >= 3 for c in shipped["curves"]), \
        f"{name}: shipped reports need at least 3 interleaved repetitions"


def test_readme_and_docs_quote_only_shipped_numbers() -> None:
    from analysis.quotes import stale_blocks, unquoted_gains
    assert stale_blocks() == []
    assert unquoted_gains() == []

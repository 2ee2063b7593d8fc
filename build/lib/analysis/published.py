"""The layout of a published report directory (``analysis.publish``): its tables, its
points and its manifest beside the page, and no raw points to rebuild them from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

DATA_FILES = ("manifest.json", "steps.parquet", "points.parquet", "balance.parquet", "points.json")


def is_published(report_dir: Path) -> bool:
    """A published report: the tables beside the page, no raw points."""
    return (report_dir / "steps.parquet").exists() and not (report_dir / "points").is_dir()


def load_published(report_dir: Path) -> dict[str, Any]:
    """The tables of a published report (missing ones empty)."""
    tables: dict[str, Any] = {}
    for name in ("steps", "samples", "points", "balance"):
        p = report_dir / f"{name}.parquet"
        tables[name] = pd.read_parquet(p) if p.exists() else pd.DataFrame()
    tables["manifest"] = json.loads((report_dir / "manifest.json").read_text())
    return tables


def points_of(report_dir: Path) -> list[dict[str, Any]]:
    p = report_dir / "points.json"
    return json.loads(p.read_text()) if p.exists() else []

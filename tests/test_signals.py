"""The signals report on a shipped run: it finds the candidates the run recorded and says
whether a step's place in its turn moved it (computed, not written by hand)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_signals_of_a_shipped_step_paired_run() -> None:
    proc = subprocess.run([sys.executable, "-m", "analysis", "signals", "docs/reports/paper-cluster"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "steal_cores  rank correlation" in proc.stdout and "slowdown     rank correlation" in proc.stdout
    assert "position in a rate's turn" in proc.stdout


def test_a_missing_run_is_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "analysis", "signals", "/nonexistent"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr

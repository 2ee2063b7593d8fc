"""The balancing part of the report on a real tiny run: Regular TCP, a fixed work
split and the adaptive controller on static load and on a two-phase shifting mix, on the
cluster topology with two equal nodes. The report's balancing section is opened in headless
Chromium; every number checked here is recomputed from the run's own tables.

No result table is written by hand (hence root). The run takes about 1.5 minutes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_analysis import _open_in_chromium, _table_rows

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

BALANCED = {
    "name": "tinybal", "topology": "cluster", "params": {"host_cpu": 0.1, "tcpserver_cpu": 0.1},
    "modes": ["regular", "eager-accept"], "balance": ["fixed:0.5", "adaptive:start=1.0"],
    "workloads": ["static", "shifting"],
    # two generator processes and modest rates: a phase flagged generator-bound on a busy
    # machine would (rightly) leave the report without numbers to check
    "load": {"rates": {"static": [1500, 3000]}, "step_seconds": 2, "warmup_seconds": 0.5, "processes": 2,
             "dynamic_cost_us": 200},
    "phases": [{"mix": 1.0, "rate": 1500, "seconds": 3}, {"mix": 0.5, "rate": 1500, "seconds": 3}],
    "service": {"dynamic_cost_us": 200}, "repetitions": 1, "seed": 1,
    # the adaptive controller follows the load it sees: each point sweeps its rates in one go
    "fidelity": {"pairing": "round"},
}
ADAPTIVE, FIXED = "adaptive:start=1.0", "fixed:0.5"


@pytest.fixture(scope="module")
def balanced_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testbed.describe.experiment import experiment_from_dict
    from testbed.measure.runner import run_experiment
    run_dir = tmp_path_factory.mktemp("runs") / "balanced"
    assert run_experiment(experiment_from_dict(BALANCED), run_dir) == 0
    return run_dir


@pytest.fixture(scope="module")
def report_dom(balanced_run: Path) -> str:
    from analysis.report import write_report
    return _open_in_chromium(write_report(balanced_run))


def test_section_figures_load_in_browser(balanced_run: Path, report_dom: str) -> None:
    dom = report_dom
    assert "Balancing host and TCP server" in dom
    pngs = sorted(p.name for p in (balanced_run / "report").glob("balance_*.png"))
    assert pngs == ["balance_shifting_eager-accept.png", "balance_static_eager-accept.png"], pngs
    imgs = re.findall(r"<img [^>]*>", dom)
    assert len(imgs) >= 6 + 2  # main figures, balance figures, and per-node ones
    assert all('data-loaded="yes"' in i for i in imgs), imgs
    for name in pngs:
        assert any(f'src="{name}"' in i for i in imgs), name
    # the section comes before the run's limits and steps: it is the headline of such a run
    assert dom.index("Balancing host and TCP server") < dom.index("What these numbers depend on")


def test_table_has_a_row_per_workload(report_dom: str) -> None:
    rows = _table_rows(report_dom, "balance")
    assert len(rows) == 2, rows
    static = next(r for r in rows if "<td>static</td>" in r)
    shifting = next(r for r in rows if "<td>shifting</td>" in r)
    for r in (static, shifting):
        assert FIXED in r and ADAPTIVE in r and "eager-accept" in r
    assert "peak replies/s" in static and "mean replies/s over phases" in shifting
    for wl in ("static", "shifting"):
        points = _table_rows(report_dom, f"balance-{wl}-eager-accept-points")
        assert len(points) == 3, points  # Regular TCP, the fixed split, the adaptive controller
        assert "Regular TCP" in points[0] and any("best fixed" in p for p in points)
    head = re.search(r'<table id="balance-shifting-eager-accept-points">(.*?)</tbody>', report_dom, re.S)
    assert head and "phase 0" in head.group(1) and "phase 1" in head.group(1)


def test_results_stated_as_comparisons_with_intervals(report_dom: str) -> None:
    """Results, not goals: each comparison is a paired gain with its interval and verdict,
    and nothing says MET, MISSED or "Goal:"."""
    dom = report_dom
    verdicts = r"(higher|lower|no difference|not resolved)"
    interval = r"[+-]\d+\.\d% \[[+-]\d+\.\d, [+-]\d+\.\d\] over \d+ paired rounds, "
    assert re.search(r"against the best fixed split fixed:0\.5, peak: " + interval + verdicts, dom) or \
        re.search(r"against the best fixed split fixed:0\.5, peak: [+-]\d+\.\d% in one round: no interval", dom)
    assert re.search(r"against the best fixed split fixed:0\.5, mean reply rate over the phases: ", dom)
    assert re.search(r"on static load with two equal nodes \([\d.]+ CPU each\), peak: against Regular TCP ", dom) \
        or "the nodes were not equal" in dom
    for word in ("Goal:", "MET", "MISSED", "short of the goal", "points to spare"):
        assert word not in dom, word
    # no fixed:1.0 point ran: that comparison is said to be missing, not silently dropped
    assert "against full offload (fixed:1.0): not run" in dom or "the nodes were not equal" in dom
    assert "not to the TCP server&#x27;s cgroup" in dom or "not to the TCP server's cgroup" in dom


def test_numbers_come_from_the_run(balanced_run: Path) -> None:
    """The balancing results are the report's own numbers and the controller's own log
    (the rules behind them are checked on a fixed table in test_analysis_rules)."""
    import analysis
    from analysis.balance import comparisons
    from analysis.report import RunInfo, prepare_runs
    tables = analysis.load(balanced_run)
    steps, decisions = tables["steps"], tables["balance"]
    run = RunInfo.load(balanced_run)
    prep = prepare_runs([run])
    comps = {c.workload: c for c in comparisons(prep, run.tables["balance"])}
    assert set(comps) == {"static", "shifting"}

    st = comps["static"]
    peaks = prep.saturation[prep.saturation["workload"] == "static"].set_index("mode_label")["peak_mean"]
    for res, label in ((st.adaptive[0], f"eager-accept:{ADAPTIVE}"), (st.fixed[0], f"eager-accept:{FIXED}"),
                       (st.regular, "regular")):
        assert res.value == pytest.approx(peaks[label])  # the gain table's peak, not a number of its own
    sh = comps["shifting"]
    for res, bal in ((sh.adaptive[0], ADAPTIVE), (sh.fixed[0], FIXED), (sh.regular, None)):
        mine = steps[steps["workload"] == "shifting"]
        mine = (mine[mine["balance"] == bal] if bal else mine[mine["mode"] == "regular"]).sort_values("phase")
        # one measured window per phase, credited with no more replies than its own requests got
        assert res.phases == pytest.approx(list(mine["reply_rate_own"]))
    assert sh.best_fixed is sh.fixed[0] and st.best_fixed is st.fixed[0]
    for c in (st, sh):
        a = c.adaptive[0]
        log = decisions[decisions["point"].isin(a.points)].sort_values("t")
        last = log.iloc[-1]
        assert (a.moves, a.reversals, a.final_split) == (last["moves"], last["reversals"], pytest.approx(last["split"]))
        assert a.knob == "work"
        # a fixed policy never moves
        f = c.fixed[0]
        assert f.moves == 0 and f.final_split == pytest.approx(0.5)
    # the adaptive controller did act: it starts at 1.0 under a saturating static load, so the
    # split in its log left 1.0, and the analysis counts those moves and reports where it ended
    a = st.adaptive[0]
    log = decisions[decisions["point"].isin(a.points)].sort_values("t")
    assert (log["split"] < 1.0).any(), list(log["split"])
    changes = int((log["split"].diff().fillna(0) != 0).sum())  # moves between logged decisions
    assert a.moves >= max(changes, 1)
    assert a.final_split == pytest.approx(log["split"].iloc[-1])


def test_balance_summary_and_cli(balanced_run: Path) -> None:
    from analysis.balance import balance_summary
    text = balance_summary(balanced_run)
    assert text.startswith("Balancing host and TCP server")
    assert "adaptive / best fixed" in text and "adaptive / Regular" in text and "final split" in text
    assert re.search(r"^\s*static\s+eager-accept\s+fixed:0\.5", text, re.M)
    assert re.search(r"^\s*shifting\s+eager-accept\s+fixed:0\.5", text, re.M)
    assert "against the best fixed split fixed:0.5, peak:" in text
    assert "against the best fixed split fixed:0.5, mean reply rate over the phases:" in text
    assert "Goal" not in text and "MET" not in text and "MISSED" not in text
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", str(balanced_run)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Balancing host and TCP server" in proc.stdout and "against the best fixed split" in proc.stdout
    assert "Goal" not in proc.stdout and "MISSED" not in proc.stdout


def test_no_section_without_balance(balanced_run: Path, tmp_path: Path) -> None:
    """The same run with its balance points and decisions left out has no balancing section."""
    import shutil

    import pandas as pd

    from analysis.balance import balance_summary
    from analysis.report import write_report
    copy = tmp_path / "unbalanced"
    shutil.copytree(balanced_run, copy, ignore=shutil.ignore_patterns("report", "requests.parquet"))
    for pdir in (copy / "points").iterdir():
        if "fixed" in pdir.name or "adaptive" in pdir.name:
            shutil.rmtree(pdir)
    for name in ("steps", "samples", "points", "balance"):
        (copy / f"{name}.parquet").unlink()
    assert pd.read_parquet(balanced_run / "balance.parquet").shape[0] > 0
    index = write_report(copy)
    assert "Balancing host and TCP server" not in index.read_text()
    assert balance_summary(copy) == ""

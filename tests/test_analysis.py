"""Analysis and runner on real, small runs: a tiny experiment end to end, its report opened
in headless Chromium, resume after an interrupted run, and a comparison of the two.

No result table here is written by hand: every number comes from a run on namespaces
(hence root). The two runs together take well under a minute on this machine. The rules
behind the numbers (peak, capacity, knee, gains) are checked on fixed tables with
hand-worked answers in test_analysis_rules.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, RUNNER, interruptible, leftovers

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
from testbed.describe.experiment import experiment_from_dict

TINY = {
    "name": "tiny", "topology": "cluster", "params": {"host_cpu": 0.3, "tcpserver_cpu": 0.3},
    "budgets": "extra", "modes": ["regular", "eager-accept"], "workloads": ["static"],
    "load": {"rates": [200, 400], "step_seconds": 2, "warmup_seconds": 1}, "repetitions": 1, "seed": 1,
}
# three points, one after another (so one can be done when the run is cut short); a fidelity
# threshold no machine meets flags every step as oversubscribed, so the flag marks are
# exercised on real data
INTERRUPTED = {**TINY, "name": "interrupted", "modes": ["regular", "eager-accept", "split"],
               "fidelity": {"min_idle": 0.99, "pairing": "round"}}
# points run in a shuffled order (interleaved rounds): the first is whatever the seed gives
FIRST = experiment_from_dict(INTERRUPTED).points()[0].id



def _run_runner(exp: dict, run_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUNNER, json.dumps(exp), str(run_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _status(run_dir: Path) -> dict[str, dict]:
    out = {}
    for pj in sorted((run_dir / "points").glob("*/point.json")):
        out[pj.parent.name] = json.loads(pj.read_text())
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    proc = _run_runner(TINY, run_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """Interrupt the runner (SIGINT, as Ctrl-C) once its first point is done, then resume.
    Returns the run, the first point's point.json before the resume, and the resume's output."""
    run_dir = tmp_path_factory.mktemp("runs") / "interrupted"
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(INTERRUPTED), str(run_dir)], cwd=ROOT,
                            preexec_fn=interruptible,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = run_dir / "points" / FIRST / "point.json"
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            try:
                if json.loads(first.read_text()).get("status") == "done":
                    break
            except (OSError, ValueError):
                pass
            assert proc.poll() is None, f"runner ended early: {proc.stdout.read() if proc.stdout else ''}"
            time.sleep(0.1)
        else:
            pytest.fail("the first point never finished")
        time.sleep(1.5)  # into the second point, so something is really cut short
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out
    assert leftovers(f"r{proc.pid % 100000}") == [], "the interrupted run left kernel state behind"
    before = _status(run_dir)
    assert before[FIRST]["status"] == "done"
    assert all(p["status"] != "done" for k, p in before.items() if k != FIRST), before
    resumed = _run_runner(INTERRUPTED, run_dir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return run_dir, before[FIRST], resumed.stdout


def _open_in_chromium(index: Path) -> str:
    """The report's DOM after load, with each <img> marked by whether it decoded."""
    probe = index.with_name("_probe.html")
    script = ("<script>window.addEventListener('load',()=>{for(const i of document.images)"
              "{i.setAttribute('data-loaded',i.complete&&i.naturalWidth>0?'yes':'no')}"
              "document.body.setAttribute('data-probed','1')});</script>")
    probe.write_text(index.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--allow-file-access-from-files", "--virtual-time-budget=5000",
             "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=90)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        probe.unlink(missing_ok=True)
    assert 'data-probed="1"' in proc.stdout, f"chromium did not load the page: {proc.stderr[-2000:]}"
    return proc.stdout


def _table_rows(dom: str, table_id: str) -> list[str]:
    m = re.search(rf'<table id="{table_id}">(.*?)</table>', dom, re.S)
    assert m, f"table #{table_id} missing"
    return re.findall(r"<tr[^>]*>.*?</tr>", m.group(1).split("<tbody>", 1)[1], re.S)


def test_tiny_run_report_opens_in_browser(tiny_run: Path) -> None:
    from analysis.report import write_report
    index = write_report(tiny_run)
    assert index == tiny_run / "report" / "index.html"
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    for name in ("reply_rate.png", "gain.png", "cpu_breakdown.png", "cpu_per_request.png", "latency.png",
                 "errors.png"):
        assert name in pngs
    dom = _open_in_chromium(index)
    imgs = re.findall(r"<img [^>]*>", dom)
    assert len(imgs) >= 6  # the six main figures, and the per-node ones where drawn
    assert all('data-loaded="yes"' in i for i in imgs), imgs
    assert all(not re.search(r'src="(/|file:|http)', i) for i in imgs), "figures must be linked relatively"
    rows = _table_rows(dom, "summary")
    assert len(rows) == 2 and any("regular" in r for r in rows) and any("eager-accept" in r for r in rows)
    # the limits are stated next to the numbers
    for needle in ("on top of", "IRQ time accounting", "idle CPU", "Generator-bound steps", "NIC offloads",
                   "commit"):
        assert needle in dom, needle


def test_report_cli_prints_summary(tiny_run: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", str(tiny_run)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"regular\s", proc.stdout) and "eager-accept" in proc.stdout
    assert "peak replies/s" in proc.stdout and "budgets: extra" in proc.stdout
    assert str(tiny_run / "report" / "index.html") in proc.stdout


def test_resume_runs_only_the_missing_points(resumed_run: tuple[Path, dict, str]) -> None:
    run_dir, first_before, out = resumed_run
    assert "3 points, 1 already done" in out
    assert FIRST not in out  # the finished point was not run again
    after = _status(run_dir)
    assert all(p["status"] == "done" for p in after.values()), {k: p["status"] for k, p in after.items()}
    assert after[FIRST]["started"] == first_before["started"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(manifest.get("resumed", [])) == 1
    import analysis
    steps = analysis.load(run_dir)["steps"]
    assert sorted(steps["mode"].unique()) == ["eager-accept", "regular", "split"]
    assert len(steps) == 6  # each point's steps once: the cut-short point was measured afresh


def test_flagged_steps_are_marked_everywhere(resumed_run: tuple[Path, dict, str]) -> None:
    from analysis.report import write_report
    run_dir = resumed_run[0]
    dom = _open_in_chromium(write_report(run_dir))
    assert "0.99" in dom or "99%" in dom  # the threshold used is stated
    steps = _table_rows(dom, "steps")
    assert len(steps) == 6 and all("class=\"flagged\"" in r or "class=flagged" in r for r in steps)
    assert all("oversubscribed" in r for r in _table_rows(dom, "flagged"))
    assert all("⚑" in r for r in _table_rows(dom, "summary"))
    assert "6 of 6 steps are flagged" in dom
    assert all('data-loaded="yes"' in i for i in re.findall(r"<img [^>]*>", dom))


def test_compare_sets_runs_side_by_side(tiny_run: Path, resumed_run: tuple[Path, dict, str],
                                        tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, "-m", "analysis", "compare", str(tiny_run), str(resumed_run[0]),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    dom = _open_in_chromium(out / "index.html")
    rows = _table_rows(dom, "side-by-side")
    assert len(rows) == 3  # regular, eager-accept, split
    assert "tiny" in dom and "interrupted" in dom
    assert all('data-loaded="yes"' in i for i in re.findall(r"<img [^>]*>", dom))

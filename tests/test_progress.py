"""Progress and tables drawn with rich on a terminal, and the plain lines that logs, pipes
and the runner's relay read when the output is not one."""

from __future__ import annotations

import http.server
import os
import pty
import re
import select
import subprocess
import sys
import threading
import time
from functools import partial

import pytest

from .conftest import ROOT

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ROW = re.compile(r"^step 2/2  offered 40/s  sent [\d.]+/s  replies [\d.]+/s  errors 0  p99 [\d.]+ ms  gen cpu \d+%$", re.M)


@pytest.fixture
def docroot_server(tmp_path):
    """The project's document root served on loopback by the standard library."""
    subprocess.run([sys.executable, "-m", "testbed.app.docroot", str(tmp_path / "www"), "--dirs", "1"],
                   cwd=ROOT, check=True, capture_output=True)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def sweep(url: str, out) -> list[str]:
    return [sys.executable, "-m", "loadgen", "sweep", "--target", url, "--workload", "static", "--rates", "20,40",
            "--step-seconds", "2", "--warmup", "0.5", "--out", str(out)]


def run_in_terminal(argv: list[str], timeout: float = 60, columns: int = 200, term: str = "xterm") -> str:
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
                            env={**os.environ, "TERM": term, "COLUMNS": str(columns)})
    os.close(slave)
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.5)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(10) == 0, buf.decode(errors="replace")
    return buf.decode(errors="replace")


def test_sweep_on_a_terminal_shows_steps_and_time_left_and_keeps_its_rows(docroot_server, tmp_path):
    shown = run_in_terminal(sweep(docroot_server, tmp_path / "tty"))
    assert "\x1b[" in shown, "a live display draws with escape codes"
    frames = ANSI.sub("", shown).replace("\r", "\n")
    assert re.search(r"step 1/2  20/s .* \d+ s left .*in flight", frames), frames
    assert ROW.search(frames), frames


def test_sweep_into_a_pipe_prints_plain_rows_only(docroot_server, tmp_path):
    p = subprocess.run(sweep(docroot_server, tmp_path / "pipe"), cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert "\x1b" not in p.stdout + p.stderr and "s left" not in p.stdout + p.stderr
    assert ROW.search(p.stdout), p.stdout


def test_status_table_in_a_pipe_is_plain_columns_two_spaces_apart():
    code = ("from testbed.commands.status import print_table\n"
            "print_table(('NODE', 'ROLE', 'CPU'), [('client', 'client', 'unlimited'), ('tcpserver', 'tcpserver', '0.4')])")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert p.stdout == ("NODE       ROLE       CPU\n"
                        "client     client     unlimited\n"
                        "tcpserver  tcpserver  0.4\n")


def test_status_table_on_a_terminal_has_a_ruled_bold_header():
    code = ("from testbed.commands.status import print_table\n"
            "print_table(('NODE', 'ROLE'), [('tcpserver', 'tcpserver')])")
    shown = run_in_terminal([sys.executable, "-c", code])
    assert "\x1b[1m" in shown and "─" in shown
    assert re.search(r"tcpserver\s+tcpserver", ANSI.sub("", shown))


@pytest.mark.parametrize("term", ["xterm", "dumb"])  # rich sizes a dumb terminal its own way
def test_status_table_on_a_narrow_terminal_keeps_every_name_whole(term: str):
    code = ("from testbed.commands.status import print_table\n"
            "print_table(('NODE', 'NAMESPACE', 'ADDRESSES'), "
            "[('tcpserver', 'tcps-lead-tcpserver', '10.77.0.2(public) 10.77.1.1(san) 10.77.2.1(san2) 10.77.3.1(san3)')])")
    shown = ANSI.sub("", run_in_terminal([sys.executable, "-c", code], columns=40, term=term))
    assert "…" not in shown
    assert re.search(r"tcpserver\s+tcps-lead-tcpserver\s+10\.77\.0\.2\(public\) 10\.77\.1\.1\(san\) 10\.77\.2\.1\(san2\) 10\.77\.3\.1\(san3\)", shown)


def test_runner_display_counts_the_time_left_down_from_the_points_estimate():
    from testbed.measure.runner import points_display
    display = points_display()
    task = display.add_task("p1", total=4, left_s=600.0, since=time.monotonic() - 60.0)
    left = display.columns[4].render(display.tasks[task])
    assert str(left) == "about 9.0 min left"
    display.update(task, left_s=30.0, since=time.monotonic() - 90.0)
    assert str(display.columns[4].render(display.tasks[task])) == "about 0.0 min left"

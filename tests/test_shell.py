"""`testbed shell` driven through a pseudo-terminal, as a user types into it."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from testbed.lifecycle import Testbed
from testbed.spec import load_topology

from .conftest import ROOT

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]


class Terminal:
    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env,
                                     start_new_session=True)
        os.close(slave)
        self.buf = b""

    def read_until(self, marker: bytes, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} in time; got:\n{self.buf.decode(errors='replace')}"
            r, _, _ = select.select([self.master], [], [], left)
            if r:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                self.buf += chunk
        out, _, self.buf = self.buf.partition(marker)
        return out.decode(errors="replace").replace("\r", "")

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())


def test_shell_through_a_pseudo_terminal(tb_name, tmp_path):
    topo = load_topology("cluster", {"host_cpu": "0.3", "tcpserver_cpu": "0.3"})
    with Testbed(topo, tb_name, mode="eager-accept", start_services=True,
                 service_options={"docroot_dirs": 1, "dynamic_cost_us": 0}):
        env = {**os.environ, "HOME": str(tmp_path), "TERM": "dumb"}
        term = Terminal([sys.executable, "-m", "testbed", "shell", tb_name], env)
        prompt = f"testbed:{tb_name}> ".encode()
        assert "NODE CMD" in term.read_until(prompt)
        term.type("nodes\n")
        out = term.read_until(prompt)
        assert re.search(r"tcpserver\s+tcpserver\s+tcps-", out) and "host1" in out and "0.3 CPU" in out
        term.type("links\n")
        assert "san" in term.read_until(prompt)
        term.type("client curl -s http://10.77.255.1/manifest.json | grep -c sha256\n")
        assert re.search(r"^\d+$", term.read_until(prompt), re.M)  # a pipe, run by a shell in the node
        term.type("pingall\n")
        out = term.read_until(prompt)
        m = re.search(r"pingall: (\d+)/(\d+) reached", out)
        assert m and m.group(1) == m.group(2) and int(m.group(2)) >= 5, out
        term.type("load 200 2\n")
        out = term.read_until(prompt, 60)
        m = re.search(r"offered 200/s\s+replies ([\d.]+)/s\s+errors (\d+)", out)
        assert m and float(m.group(1)) > 150 and m.group(2) == "0", out
        term.type("frobnicate\n")
        assert "unknown command or node 'frobnicate'" in term.read_until(prompt)
        term.type("hos\t ip -br addr\n")  # Tab completes the node name
        assert "host1-eth0" in term.read_until(prompt)
        term.type("exit\n")
        assert term.proc.wait(10) == 0
        os.close(term.master)
        history = (tmp_path / ".testbed_history").read_text()
        assert "pingall" in history and "load 200 2" in history

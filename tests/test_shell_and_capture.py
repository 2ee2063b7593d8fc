"""`testbed shell` driven through a pseudo-terminal, and `testbed capture`, as a user types them."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from testbed.system.lifecycle import Testbed
from testbed.describe.topology import load_topology

from .conftest import ROOT, interruptible

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
        assert re.search(r"tcpserver\s+tcpserver\s+tcps-", out) and re.search(r"host1\s+\S+\s+tcps-\S+\s+0\.3\s", out), out
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


def _pcap_packets(path) -> int:
    """Packets in a classic pcap file (tcpdump -w), counted from the record headers."""
    import struct
    data = path.read_bytes()
    magic = data[:4]
    assert magic in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"), magic
    order = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    n, off = 0, 24
    while off + 16 <= len(data):
        incl = struct.unpack(order + "I", data[off + 8:off + 12])[0]
        off += 16 + incl
        n += 1
    return n


@pytest.mark.skipif(not __import__("shutil").which("tcpdump"), reason="needs tcpdump (scripts/setup.sh installs it)")
def test_capture_writes_a_pcap_of_the_nodes_traffic(tb_name, tmp_path):
    from .conftest import run_cli
    topo = load_topology("cluster", {"host_cpu": "0.3", "tcpserver_cpu": "0.3"})
    with Testbed(topo, tb_name, mode="regular", start_services=True,
                 service_options={"docroot_dirs": 1, "dynamic_cost_us": 0}) as tb:
        pcap = tmp_path / "host1.pcap"
        cap = subprocess.Popen([sys.executable, "-m", "testbed", "capture", "--name", tb_name, "host1",
                                "-w", str(pcap), "--seconds", "4", "tcp", "port", "80"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)  # tcpdump is listening
        for _ in range(3):
            tb.run("client", ["curl", "-s", "-o", "/dev/null", tb.service_url + "manifest.json"], check=True)
        _, err = cap.communicate(timeout=30)
        assert cap.returncode == 0, err
        assert _pcap_packets(pcap) >= 3 * 6, err  # handshake, request, reply, close per curl
        read = subprocess.run(["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True)
        assert read.returncode == 0 and read.stdout.count(".80:") + read.stdout.count(".80 >") >= 18, read
        # a link by name (its first end, the client's); -c stops it
        lcap = subprocess.Popen([sys.executable, "-m", "testbed", "capture", "--name", tb_name, "public",
                                 "-c", "4", "-w", str(tmp_path / "public.pcap"), "icmp"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        tb.run("client", ["ping", "-c", "3", "-i", "0.2", tb.addresses.service_address], check=True)
        _, err = lcap.communicate(timeout=20)
        assert lcap.returncode == 0 and _pcap_packets(tmp_path / "public.pcap") == 4, err
        bad = run_cli("capture", "--name", tb_name, "nosuchnode", check=False)
        assert bad.returncode == 2 and "no node or link 'nosuchnode'" in bad.stderr


def test_locust_web_ui_is_reachable_from_the_machine(tb_name):
    """`testbed locust`: Locust in the client node, its UI on this machine's loopback; a
    swarm started through the UI reaches the service."""
    import json
    import signal
    import socket
    import urllib.request

    from .offload_helpers import free_port
    port = free_port()
    topo = load_topology("cluster", {"host_cpu": "0.3", "tcpserver_cpu": "0.3"})
    with Testbed(topo, tb_name, mode="eager-accept", start_services=True,
                 service_options={"docroot_dirs": 1, "dynamic_cost_us": 0}):
        proc = subprocess.Popen([sys.executable, "-m", "testbed", "locust", "--name", tb_name, "--port", str(port),
                                 "--", "StaticUser"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=interruptible)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 40
            page = ""
            while time.monotonic() < deadline:
                try:
                    page = urllib.request.urlopen(base + "/", timeout=2).read().decode(errors="replace")
                    break
                except (OSError, socket.timeout):
                    time.sleep(0.5)
            assert "locust" in page.lower(), page[:300]
            body = b"user_count=4&spawn_rate=4&host=http%3A%2F%2F10.77.255.1%2F"
            req = urllib.request.Request(base + "/swarm", data=body, method="POST",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert json.loads(urllib.request.urlopen(req, timeout=5).read())["success"]
            time.sleep(4)
            stats = json.loads(urllib.request.urlopen(base + "/stats/requests", timeout=5).read())
            total = [s for s in stats["stats"] if s["name"] == "Aggregated"][0]
            assert total["num_requests"] > 20 and total["num_failures"] == 0, total
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:  # Ctrl-C did not stop it: fail, leaving nothing running
                proc.kill()
                out, err = proc.communicate()
                raise AssertionError(f"testbed locust did not stop on SIGINT within 30 s:\n{err[-2000:]}")
        assert proc.returncode == 0, err
        assert "web UI: http://127.0.0.1:" in out
        # headless, as Locust users also run it: it ends by itself and reports its requests
        from .conftest import run_cli
        head = run_cli("locust", "--name", tb_name, "--port", str(free_port()), "--", "--headless", "-u", "2",
                       "-r", "2", "-t", "3s", "--only-summary", "StaticUser", timeout=90)
        report = head.stdout + head.stderr
        m = re.search(r"Aggregated\s+(\d+)\s+(\d+)", report)
        assert m and int(m.group(1)) > 10 and m.group(2) == "0", report[-2000:]

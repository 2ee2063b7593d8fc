"""One remote machine, reached over one multiplexed SSH connection, running the project's agent.

Mininet's cluster edition reaches each server the same way (ssh with ControlMaster, then a
command per operation); here the command is this project's agent (``agent.py``), run with
the project's own interpreter on that machine, a JSON request on its stdin and a JSON
answer on its last line of stdout. The user's SSH configuration (keys, known hosts,
ProxyJump) applies as it is; BatchMode keeps ssh from ever prompting. The master
connection is started on its own (``ssh -M -f -N``, its output in a file: a master that
goes to the background holding a pipe would keep a caller waiting for the pipe's end), its
socket under the run directory; every command then goes through it, the master is asked
to exit at ``down`` and exits by itself after ``CONTROL_PERSIST_S`` idle.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ...describe.machines import Machine
from ...errors import TestbedError
from ..state import run_root

CONNECT_TIMEOUT_S = 5
CONTROL_PERSIST_S = 120
AGENT = "testbed.system.remote.agent"


@dataclass(frozen=True)
class Clock:
    """This machine's clock against another's, read over the open connection."""
    offset_s: float  # the other machine's time minus this one's
    rtt_s: float  # the bound on the offset's error is half of it

    def to_dict(self) -> dict[str, float]:
        return {"offset_s": round(self.offset_s, 6), "rtt_s": round(self.rtt_s, 6)}


class Remote:
    def __init__(self, machine: Machine):
        self.machine = machine
        self._connected = False

    @property
    def name(self) -> str:
        return self.machine.name

    def _control_dir(self) -> Path:
        d = run_root() / ".ssh"
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return d

    def _options(self) -> list[str]:
        return ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                "-o", f"ControlPath={self._control_dir()}/%C", "-p", str(self.machine.port)]

    def connect(self) -> None:
        """The master connection, started once (reused if one is already running)."""
        if self._connected:
            return
        try:
            if subprocess.run(["ssh", *self._options(), "-O", "check", self.machine.ssh],
                              capture_output=True, timeout=10).returncode != 0:
                with tempfile.TemporaryFile() as err:
                    rc = subprocess.run(["ssh", *self._options(), "-M", "-f", "-N", "-o",
                                         f"ControlPersist={CONTROL_PERSIST_S}", self.machine.ssh],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                        timeout=CONNECT_TIMEOUT_S + 60).returncode
                    if rc != 0:
                        err.seek(0)
                        raise self._unreachable(_last(err.read().decode(errors="replace")) or f"exit {rc}")
        except FileNotFoundError:
            raise TestbedError("ssh is not installed here: apt-get install openssh-client "
                               "(scripts/setup.sh installs it)") from None
        except subprocess.TimeoutExpired:
            raise self._unreachable(f"no answer within {CONNECT_TIMEOUT_S + 60} s") from None
        self._connected = True

    def _unreachable(self, detail: str) -> TestbedError:
        return TestbedError(f"machine {self.name} ({self.machine.ssh}): unreachable over SSH ({detail}): check "
                            "that it is on, its address, and that this machine's key is in its root's "
                            "authorized_keys")

    def ssh_argv(self, *, tty: bool = False) -> list[str]:
        """ssh through the master connection (or straight, should the master be gone)."""
        self.connect()
        return ["ssh", *(["-t"] if tty else ["-T"]), *self._options(), "-o", "ControlMaster=no",
                self.machine.ssh]

    def agent_argv(self, verb: str, *args: str) -> list[str]:
        """The remote command (ssh hands it to the login shell as one line): from the
        project's folder, with its interpreter; 127 when either is missing."""
        m = self.machine
        return [f"cd {shlex.quote(m.project)} 2>/dev/null || exit 127; exec {shlex.quote(m.python)} -m {AGENT} "
                + " ".join(shlex.quote(a) for a in (verb, *args))]

    def call(self, verb: str, payload: dict[str, Any] | None = None, timeout: float = 120) -> dict[str, Any]:
        """Run one agent verb there; its answer, or a TestbedError naming the machine."""
        argv = [*self.ssh_argv(), "--", *self.agent_argv(verb)]
        try:
            res = subprocess.run(argv, input=json.dumps(payload or {}).encode(), capture_output=True,
                                 timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TestbedError(f"machine {self.name} ({self.machine.ssh}): `{verb}` did not answer "
                               f"within {timeout:.0f} s") from None
        out, err = res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace").strip()
        if res.returncode == 255:
            raise self._unreachable(_last(err) or "exit 255")
        if res.returncode == 127:
            raise TestbedError(f"machine {self.name}: no project at {self.machine.project} "
                               f"({self.machine.python} missing): install it there with the README's "
                               "set-up (bash scripts/setup.sh), or name its path with project=")
        answer = _answer(out)
        if answer is None:
            raise TestbedError(f"machine {self.name}: the agent's `{verb}` gave no answer (exit "
                               f"{res.returncode}): {_last(err) or _last(out) or 'no output'}")
        if not answer.get("ok"):
            raise TestbedError(f"machine {self.name}: {answer.get('error', 'failed')}")
        return answer

    def clock(self, samples: int = 5) -> Clock:
        """The other clock's offset, from the sample with the shortest round trip."""
        best: Clock | None = None
        for _ in range(samples):
            t0 = time.time()
            res = subprocess.run([*self.ssh_argv(), "--", "date", "+%s.%N"], capture_output=True, timeout=30)
            t1 = time.time()
            try:
                there = float(res.stdout.decode().strip())
            except ValueError:
                raise TestbedError(f"machine {self.name}: cannot read its clock "
                                   f"({_last(res.stderr.decode(errors='replace')) or 'no answer'})") from None
            c = Clock(there - (t0 + t1) / 2, t1 - t0)
            if best is None or c.rtt_s < best.rtt_s:
                best = c
        assert best is not None
        return best

    def interactive(self, verb: str, args: Sequence[str], tty: bool) -> int:
        """An agent verb with this terminal attached (exec, shell): its exit status."""
        return subprocess.call([*self.ssh_argv(tty=tty), "--", *self.agent_argv(verb, *args)])

    def close(self) -> None:
        """Ask the master connection to exit (nothing happens if there is none)."""
        subprocess.run(["ssh", *self._options(), "-O", "exit", self.machine.ssh], capture_output=True, timeout=10)
        self._connected = False


def _answer(out: str) -> dict[str, Any] | None:
    for line in reversed(out.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "ok" in value:
            return value
    return None


def _last(text: str) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1][:300] if lines else ""


def route_source(address: str) -> str:
    """This machine's address toward ``address`` (the other end of its tunnels)."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=address)
        except Exception as e:  # noqa: BLE001  (netlink's own error, reported as one line)
            raise TestbedError(f"no route from this machine to {address}: {e}") from None
        for r in routes:
            src = r.get_attr("RTA_PREFSRC")
            if src:
                return str(src)
    raise TestbedError(f"no source address on this machine toward {address}")


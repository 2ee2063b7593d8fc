"""``testbed shell``: an interactive prompt into a running testbed, in the Mininet manner.

    testbed> nodes                      # name, role, namespace, addresses, budget
    testbed> links                      # name, kind, ends with addresses, rate
    testbed> client curl -s http://10.77.255.1/manifest.json
    testbed> host1 ip -br addr          # NODE CMD...: runs in that node (namespace + cgroup)
    testbed> pingall                    # every pair of nodes that share a link, both ways
    testbed> status                     # the status table
    testbed> load 500 5                 # one open-loop step: 500 req/s for 5 s, its result
    testbed> exit

``NODE CMD`` runs through ``sh -c`` inside the node, so pipes and quotes work as in a
shell there. History is kept in ``~/.testbed_history``; Tab completes commands and node
names. The shell only attaches: it never builds or removes anything (``up``/``down`` do).
"""

from __future__ import annotations

import cmd
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import TestbedError
from ..system.lifecycle import Testbed
from ..system.processes import ctrl_c_goes_to, spawn
from .status import print_table

HISTORY = Path.home() / ".testbed_history"
MAX_LOAD_RATE = 100_000  # req/s: a typo guard for `load`
MAX_LOAD_SECONDS = 600


class TestbedShell(cmd.Cmd):
    intro = 'testbed shell: "help" lists the commands, "NODE CMD..." runs CMD in a node, "exit" leaves.'

    def __init__(self, tb: Testbed, stdin: Any = None, stdout: Any = None) -> None:
        super().__init__(stdin=stdin, stdout=stdout)
        self.tb = tb
        self.prompt = f"testbed:{tb.name}> "
        self.node_names = [n.name for n in tb.topology.nodes]

    # -- commands ------------------------------------------------------------------------
    def default(self, line: str) -> None:
        word, _, rest = line.strip().partition(" ")
        if word in ("EOF",):
            return
        if word not in self.node_names:
            self._say(f"unknown command or node {word!r}: nodes are {', '.join(self.node_names)}; "
                      '"help" lists the commands')
            return
        if not rest.strip():
            self._say(f"usage: {word} CMD...")
            return
        self.run_in(word, ["sh", "-c", rest])

    def do_nodes(self, arg: str) -> None:
        """nodes: every node with its role, namespace, addresses and CPU budget."""
        addrs = self.tb.addresses
        rows = [(n.name, n.role, self.tb.netns(n.name), "unlimited" if n.cpu is None else f"{n.cpu:g}",
                 " ".join(f"{a}({l})" for l, a in addrs.addresses_of(n.netns_key)))
                for n in self.tb.topology.nodes]
        print_table(("NODE", "ROLE", "NAMESPACE", "CPU", "ADDRESSES (LINK)"), rows, out=self.stdout)

    def do_links(self, arg: str) -> None:
        """links: every link with its ends (node:interface address) and rate."""
        rows = [(lp.link.name, lp.link.kind, f"{lp.link.mbit:g} Mbit/s" if lp.link.mbit else "unlimited",
                 " ".join(f"{k}:{lp.interfaces[k]}={lp.addresses[k]}" for k in lp.addresses))
                for lp in self.tb.addresses.links]
        print_table(("LINK", "KIND", "RATE", "ENDS (NODE:INTERFACE=ADDRESS)"), rows, out=self.stdout)

    def do_pingall(self, arg: str) -> None:
        """pingall: one ping between every pair of nodes that share a link, both ways, and
        from the client to the service address."""
        pairs = []
        for lp in self.tb.addresses.links:
            keys = list(lp.addresses)
            pairs += [(a, b, lp.addresses[b]) for a in keys for b in keys if a != b]
        client = [n.netns_key for n in self.tb.topology.by_role("client")]
        if client and self.tb.recorded.get("docroot"):  # services run: the service address answers
            pairs.append((client[0], "service", self.tb.addresses.service_address))
        ok = 0
        for src, dst, addr in pairs:
            node = self._node_of(src)
            res = self.tb.run(node, ["ping", "-c1", "-W1", "-q", addr], check=False, timeout=5)
            good = res.returncode == 0
            ok += good
            self._say(f"{src:10} -> {dst:10} {addr:15} {'ok' if good else 'FAILED'}")
        self._say(f"pingall: {ok}/{len(pairs)} reached")

    def do_status(self, arg: str) -> None:
        """status: the status table of this testbed."""
        from .status import print_status, status_of
        out = sys.stdout
        sys.stdout = self.stdout
        try:
            print_status(status_of(self.tb.name))
        finally:
            sys.stdout = out

    def do_load(self, arg: str) -> None:
        """load RATE SECONDS [static|dynamic]: offer RATE new-connection requests per
        second for SECONDS from the client node (open loop), then print the step's result."""
        try:
            words = shlex.split(arg)
            rate, seconds = float(words[0]), float(words[1])
            workload = words[2] if len(words) > 2 else "static"
        except (ValueError, IndexError):
            self._say("usage: load RATE SECONDS [static|dynamic]   e.g. load 500 5")
            return
        if not (0 < rate <= MAX_LOAD_RATE and 1 <= seconds <= MAX_LOAD_SECONDS):
            self._say(f"load: RATE must be in (0, {MAX_LOAD_RATE}] req/s and SECONDS in [1, {MAX_LOAD_SECONDS}]")
            return
        if workload not in ("static", "dynamic"):
            self._say("load: the workload is static or dynamic")
            return
        url = self.tb.service_url
        with tempfile.TemporaryDirectory(prefix="tcps-shell-") as out:
            from loadgen.config import SweepConfig
            cfg = SweepConfig(target=url, rates=[rate], out=Path(out), workload=workload,
                              step_seconds=seconds + 1, warmup=1.0)
            argv = [sys.executable, "-m", "loadgen", "sweep", *cfg.to_argv(), "-q"]
            code = self.run_in(self.tb.topology.by_role("client")[0].name, argv)
            steps = Path(out) / "summary.json"
            if code != 0 or not steps.exists():
                self._say(f"load: the generator failed (exit {code})")
                return
            summary = json.loads(steps.read_text())
            for st in summary.get("steps", []):
                flags = [k for k in ("saturated", "generator_bound") if st.get(k)]
                self._say(f"offered {st.get('offered_rate', rate):g}/s  replies {st.get('reply_rate_avg', 0):.1f}/s  "
                          f"errors {st.get('errors_total', 0)}  p50 {st.get('lat_p50_ms', float('nan')):.2f} ms  "
                          f"p99 {st.get('lat_p99_ms', float('nan')):.2f} ms"
                          + (f"  ({', '.join(flags)})" if flags else ""))

    def do_exit(self, arg: str) -> bool:
        """exit: leave the shell (the testbed keeps running)."""
        return True

    do_quit = do_exit

    def do_EOF(self, arg: str) -> bool:  # noqa: N802 (cmd's name for Ctrl-D)
        self._say("")
        return True

    def emptyline(self) -> bool:
        return False  # an empty line does nothing (cmd's default repeats the last command)

    # -- completion ----------------------------------------------------------------------
    def completenames(self, text: str, *ignored: Any) -> list[str]:
        return [n for n in self.node_names if n.startswith(text)] + super().completenames(text, *ignored)

    # -- helpers -------------------------------------------------------------------------
    def run_in(self, node: str, argv: list[str]) -> int:
        """Run argv in the node with the terminal's output; Ctrl-C goes to it, not to us."""
        self.stdout.flush()
        remote = self.tb.remote_of(node)
        if remote is not None:  # on the node's machine, its output on this terminal
            return remote.interactive("exec", [self.tb.name, node, *argv], tty=False)
        proc = spawn(self.tb.netns(node), self.tb.cgroups.procs_files(self.tb.cgroup(node)), argv,
                     stdin=subprocess.DEVNULL, stdout=self.stdout, stderr=subprocess.STDOUT)
        with ctrl_c_goes_to(proc):
            return proc.wait()

    def _node_of(self, netns_key: str) -> str:
        return next(n.name for n in self.tb.topology.nodes if n.netns_key == netns_key)

    def _say(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()


def run_shell(name: str) -> int:
    tb = Testbed.attach(name)
    sh = TestbedShell(tb)
    try:
        import readline
        readline.set_completer_delims(" \t\n")
        if HISTORY.exists():
            readline.read_history_file(HISTORY)
    except (ImportError, OSError):
        readline = None  # type: ignore[assignment]
    try:
        while True:
            try:
                sh.cmdloop()
                break
            except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh prompt, as in a shell
                sh.intro = None
                sh.stdout.write("^C\n")
            except TestbedError as e:
                sh.intro = None
                sh.stdout.write(f"error: {e}\n")
    finally:
        if readline is not None:
            try:
                readline.set_history_length(1000)
                readline.write_history_file(HISTORY)
            except OSError:
                pass
    return 0

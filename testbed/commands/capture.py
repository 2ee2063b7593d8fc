"""``testbed capture NODE|LINK``: tcpdump inside the right namespace, as pcap for Wireshark.

tcpdump runs in the node's network namespace but in none of its cgroups: capturing must
not spend the CPU budget of the node it watches. A link is captured on its first end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from typing import TYPE_CHECKING

from ..errors import TestbedError
from ..system.processes import ctrl_c_goes_to, spawn

if TYPE_CHECKING:
    from ..system.lifecycle import Testbed


def capture(tb: "Testbed", target: str, *, interface: str | None = None, write: str | None = None,
            count: int | None = None, seconds: float | None = None, pcap_filter: list[str] | None = None) -> int:
    """Run tcpdump until ``count`` packets, ``seconds``, or Ctrl-C; its exit status."""
    if count is not None and count < 1:
        raise TestbedError("capture --count must be at least 1")
    if seconds is not None and not 0 < seconds <= 86400:
        raise TestbedError("capture --seconds must be in (0, 86400]")
    nodes = [n.name for n in tb.topology.nodes]
    links = {lp.link.name: lp for lp in tb.addresses.links}
    if target in nodes:
        node, iface = target, interface or "any"
    elif target in links:
        if interface:
            raise TestbedError("capture: -i is for a node; a link is captured on its first end's interface")
        key, iface = next(iter(links[target].interfaces.items()))
        node = next(n.name for n in tb.topology.nodes if n.netns_key == key)
    else:
        raise TestbedError(f"no node or link {target!r}; nodes: {', '.join(nodes)}; links: {', '.join(links)}")
    remote = tb.remote_of(node)
    tcpdump = "tcpdump" if remote is not None else shutil.which("tcpdump")
    if tcpdump is None:
        raise TestbedError("capture needs tcpdump (Debian package tcpdump; scripts/setup.sh installs it)")
    argv = [tcpdump, "-n", "-i", iface, "-U"]  # -U: each packet reaches the file at once
    if write:
        argv += ["-w", write]
    if count:
        argv += ["-c", str(count)]
    argv += pcap_filter or []
    if remote is not None:  # on the node's machine (a -w file is written there)
        if seconds is not None:
            argv = ["timeout", "-s", "INT", f"{seconds:g}", *argv]
        return remote.interactive("capture", [tb.name, node, *argv], tty=False)
    proc = spawn(tb.netns(node), [], argv, stdin=None, stdout=None, stderr=None)
    with ctrl_c_goes_to(proc):
        try:
            return proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:  # --seconds passed: stop it as Ctrl-C would (the file is flushed)
            os.killpg(proc.pid, signal.SIGINT)
            return 0 if proc.wait() in (0, -signal.SIGINT) else proc.returncode

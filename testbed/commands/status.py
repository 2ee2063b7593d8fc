"""A running testbed's status: its recorded state with live counters, and the table ``status`` prints."""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence, TextIO

from ..describe.budget import BudgetShape
from ..describe.machines import LOCAL


def status_of(name: str) -> dict[str, Any]:
    """The state ``up`` recorded, with each node's CPU used so far, which processes are
    alive, which of the backend's namespaces and links are still there, the TCP servers'
    live counters and the balancer's split."""
    from ..system import cgroups
    from ..system.backends import make_backend
    from ..system.backends.base import BuiltTopology
    from ..system.kernel import pid_alive
    from ..describe.names import cgroup_name
    from ..system.state import StateStore
    state = StateStore(name).load()
    groups = cgroups.detect()
    built = BuiltTopology.from_dict(state.get("network", {}))
    network = make_backend(state.get("backend", "netns"), name).status(built)
    state["network"] = {**built.to_dict(), "missing": list(network.missing)}
    remote = _remote_status(name, state)
    for node, info in state["nodes"].items():
        group = cgroup_name(name, node)
        if info.get("machine", LOCAL) != LOCAL:
            info.update(remote.get(node, {}))
            continue
        try:
            u = groups.usage(group)
            info["cpu_used_s"] = round(u.total_s, 3)
            info["throttled_s"] = round(u.throttled_s, 3)
        except OSError:
            info["cpu_used_s"] = None
    for p in state.get("processes", []):
        if p.get("machine"):
            p["alive"] = remote.get(f"pid {p['machine']} {p['pid']}", {}).get("alive")
        else:
            p["alive"] = pid_alive(p["pid"], p.get("start_time"))
    stats = {}
    run_dir = StateStore(name).dir
    for f in run_dir.glob("stats-*.json"):
        try:
            stats[f.stem[len("stats-"):]] = json.loads(f.read_text())
        except ValueError:
            pass
    state["tcpserver_stats"] = stats
    balance = run_dir / "balance.json"
    if balance.exists():
        try:
            state["balance"] = json.loads(balance.read_text())
        except ValueError:
            pass
    return state


def _remote_status(name: str, state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per node on another machine: its budget read back there, its CPU used so far; per
    process ("pid MACHINE PID"): whether it runs. A machine that cannot answer is said so."""
    from ..describe.machines import Machine
    from ..errors import TestbedError
    from ..system.remote.ssh import Remote
    out: dict[str, dict[str, Any]] = {}
    for mname, spec in (state["topology"].get("machines") or {}).items():
        if mname not in state.get("machines", {}):
            continue  # listed, but holds no node of this testbed
        try:
            got = Remote(Machine(name=mname, **spec)).call("status", {"testbed": name}, timeout=60)
        except TestbedError as e:
            state.setdefault("network", {}).setdefault("missing", []).append(f"machine {mname} ({e})")
            continue
        for node, limits in got["budgets"].items():
            out[node] = {"budget_read_back": limits, "cpu_used_s": limits.get("used_s"),
                         "throttled_s": limits.get("throttled_s")}
        for p in got["processes"]:
            out[f"pid {mname} {p['pid']}"] = {"alive": p["alive"]}
        state["network"]["missing"].extend(f"{mname}: {m}" for m in got["missing"])
    return out


def print_status(state: dict[str, Any]) -> None:
    """The human form of ``status_of``: one row per node, then warnings and hints."""
    print(f"testbed {state['name']}: topology {state['topology']['name']}, mode {state['mode']}, "
          f"backend {state.get('backend', 'netns')}, cgroup v{state['cgroup_version']}, "
          f"built in {state['build_seconds'] * 1000:.0f} ms")
    rows = []
    for node, info in state["nodes"].items():
        addrs = " ".join(f"{a}({l})" for l, a in info["addresses"].items())
        cpu = "unlimited" if info["cpu"] is None else f"{info['cpu']:g}"
        pids = ",".join(str(p["pid"]) for p in state.get("processes", []) if p["node"] == node)
        row = (node, info["role"], info["netns"], addrs, cpu, info["cpuset"] or "all", pids or "-")
        rows.append(row + ((info.get("machine", LOCAL),) if state.get("machines") else ()))
    print_table(("NODE", "ROLE", "NAMESPACE", "ADDRESSES", "CPU", "CPUSET", "PIDS")
                + (("MACHINE",) if state.get("machines") else ()), rows)
    shape = BudgetShape.from_params(state["topology"].get("params", {}), "state")
    if not shape.is_default:
        print(f"budgets: each quota per {shape.period_ms:g} ms CFS period"
              + (f", a burst of {shape.burst_pct:g}% of it" if shape.burst_pct else ""))
    for mname, facts in (state.get("machines") or {}).items():
        clock = facts.get("clock", {})
        print(f"machine {mname}: {facts.get('ssh')} ({facts.get('hostname')}, kernel {facts.get('kernel')}, "
              f"cgroup v{facts.get('cgroup_version')}), tunnels to {facts.get('address')} from "
              f"{facts.get('source')}, clock {clock.get('offset_s', 0):+.3f} s (±{clock.get('rtt_s', 0) / 2:.3f})")
    for gone in state.get("network", {}).get("missing", []):
        print(f"warning: {gone} of this testbed is gone (removed by hand?); `sudo testbed down "
              f"{state['name']}` and up again")
    for p in state.get("processes", []):
        if p.get("alive") is False:  # (None: its machine did not answer, said above)
            print(f"warning: {p['name']} in {p['node']} (pid {p['pid']}) is not running; log: {p['log']}")
    if state.get("balance"):
        b = state["balance"]
        print(f"balance: {b.get('knob')} split {b.get('split')} (network side's share), policy {b.get('policy')}, "
              f"{b.get('moves', 0)} moves")
    if "docroot" in state:
        print(f"service: {state['service_url']}   dynamic: {state.get('dynamic_url', '-')}")
        print(f"document root: {state['docroot']}")
    client, host = node_of_role(state, "client"), node_of_role(state, "host")
    print(f"reach it:  sudo testbed exec {client} -- curl -s {state['service_url']}manifest.json")
    print(f"           sudo testbed exec {host} -- ip -br addr")
    print(f"stop it:   sudo testbed down {state['name']}")


def node_of_role(state: dict[str, Any], role: str) -> str:
    """The first node of ``role`` in this testbed (hints name the topology's own nodes:
    a user's Mininet Topo calls its client h1, not client)."""
    return next((n for n, info in state["nodes"].items() if info["role"] == role), role)


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO | None = None) -> None:
    """A table with rich on ``out`` (standard output by default): a ruled, bold header on a
    terminal; in a pipe or a file the same columns, two spaces apart, no colour and no
    wrapping, for grep and awk."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    out = out or sys.stdout
    tty = out.isatty()
    table = Table(box=box.SIMPLE_HEAD if tty else None, pad_edge=False, padding=(0, 1),
                  show_edge=False, header_style="bold" if tty else "")
    cells = [[str(c) for c in r] for r in rows]
    for h in header:
        table.add_column(h, no_wrap=True)
    for r in cells:
        table.add_row(*r)
    if tty:
        # never cut a name to "tcps…": a terminal narrower than the table wraps its lines,
        # as it did the hand-padded table
        from rich.measure import Measurement
        console = Console(file=out, highlight=False)
        wide = console.options.update(max_width=10_000)
        # size, not width: under TERM=dumb rich keeps 80 columns unless both are set
        console.size = (max(console.width, Measurement.get(console, wide, table).maximum), console.height)
        console.print(table)
        return
    console = Console(file=out, width=10_000, color_system=None, highlight=False)
    with console.capture() as captured:
        console.print(table)
    for line in captured.get().splitlines():
        print(line[1:].rstrip() if line.startswith(" ") else line.rstrip(), file=out)

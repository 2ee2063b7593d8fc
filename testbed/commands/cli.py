"""The lifecycle verbs: up, status, exec, shell, down, clean, run, topologies. Nothing else prints.

    sudo testbed up [TOPOLOGY|FILE] [--name NAME] [--mode MODE] [-p key=value]...
    sudo testbed status [NAME] [--json]
    sudo testbed exec [--name NAME] NODE -- CMD...
    sudo testbed shell [NAME]
    sudo testbed locust [--name NAME] [--port 8089] [-- LOCUST ARGS...]
    sudo testbed capture [--name NAME] NODE|LINK [-i IFACE] [-w FILE.pcap] [-c N] [--seconds S] [FILTER...]
    sudo testbed down [NAME]
    sudo testbed clean [--force]
    sudo testbed run EXPERIMENT [--quick]

``testbed`` is the console script scripts/setup.sh puts in /usr/local/bin; ``sudo python3
-m testbed ...`` from the repository does the same (it re-executes in .venv).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

from ..system.backends import BACKENDS
from ..errors import TestbedError
from ..offload.modes import MODES, get_mode
from ..describe.options import ServiceOptions
from .status import print_status, status_of


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `testbed status | head`: the reader left, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except TestbedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="testbed",
                                description="TCP-server offload testbed (namespaces + cgroups)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="verb", required=True)

    up = sub.add_parser("up", help="build a topology and start the mode's services")
    up.add_argument("topology", nargs="?", default="cluster",
                    help="shipped name, YAML file, or a Mininet Topo class as module:Class (default: cluster)")
    up.add_argument("--role", action="append", default=[], metavar="ROLE=NODE[,NODE]",
                    help="with a Mininet Topo: which of its nodes play which role, e.g. "
                    "--role client=h1 --role tcpserver=s1 --role host=h2,h3")
    up.add_argument("--custom", metavar="FILE", help="Mininet's convention: a Python file defining "
                    "topos = {'name': TopoClass}; pick one with --topo")
    up.add_argument("--topo", metavar="NAME[,ARG...]", help="with --custom: the Topo and its arguments")
    up.add_argument("--name", default="tb", help="testbed name (default: tb)")
    up.add_argument("--mode", default="regular", help=f"{', '.join(MODES)} (default: regular)")
    up.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a topology parameter, e.g. -p hosts=4 -p host_cpu=0.25")
    up.add_argument("--subnet", default=None, help="address block (default 10.77.0.0/16)")
    up.add_argument("--backend", default="netns", choices=BACKENDS,
                    help="how nodes and links are built (default: netns, via pyroute2)")
    up.add_argument("--no-services", action="store_true", help="only nodes and links, no app or TCP server")
    up.add_argument("--machine", action="append", default=[], metavar="NAME=USER@HOST[,address=IP,port=N,project=PATH]",
                    help="another machine nodes may be placed on (machine: NAME in the topology, or a "
                    "parameter such as -p host_machine=NAME); docs/cluster.md")
    # the service options: declared, typed and checked by testbed/describe/options.py
    ServiceOptions.add_arguments(up.add_argument_group(
        "service options (the TCP server's overload control defaults to the daemon's; docs/modes.md)"))
    up.add_argument("--json", action="store_true", help="print the status as JSON when up")
    up.set_defaults(func=cmd_up)

    st = sub.add_parser("status", help="what runs: nodes, addresses, budgets, processes")
    st.add_argument("name", nargs="?")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    ex = sub.add_parser("exec", help="run a command inside a node (netns + cgroup)")
    ex.add_argument("--name", default=None)
    ex.add_argument("node")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)

    dn = sub.add_parser("down", help="stop and remove a testbed")
    dn.add_argument("name", nargs="?")
    dn.set_defaults(func=cmd_down)

    cap = sub.add_parser("capture", help="tcpdump inside a node's namespace, or on a link (outside any CPU budget)")
    cap.add_argument("--name", default=None)
    _capture_options(cap)
    cap.add_argument("node", metavar="NODE|LINK", help="a node (all its interfaces) or a link (its first end)")
    cap.add_argument("filter", nargs=argparse.REMAINDER,
                     help="a pcap filter, e.g. tcp port 80 (options may come before or after NODE)")
    cap.set_defaults(func=cmd_capture)
    lo = sub.add_parser("locust", help="Locust's web UI on a running testbed: Locust runs in the client "
                                       "node, its UI is forwarded to http://127.0.0.1:PORT")
    lo.add_argument("--name", default=None)
    lo.add_argument("--port", type=int, default=8089, help="the UI's port on this machine (default 8089)")
    lo.add_argument("-f", "--locustfile", default=None, help="default: loadgen/locustfile.py")
    lo.add_argument("locust_args", nargs=argparse.REMAINDER,
                    help="more Locust options and User classes (default: --class-picker)")
    lo.set_defaults(func=cmd_locust)
    sh = sub.add_parser("shell", help="an interactive prompt into a running testbed (NODE CMD..., nodes, "
                                      "links, pingall, status, load RATE SECONDS)")
    sh.add_argument("name", nargs="?")
    sh.set_defaults(func=cmd_shell)
    cl = sub.add_parser("clean", help="remove what testbeds left (by their journals), also after a crash")
    cl.add_argument("--force", action="store_true",
                    help="also remove tcps-* namespaces, cgroups and shm files that no journal names")
    cl.set_defaults(func=cmd_clean)

    tp = sub.add_parser("topologies", help="list shipped topologies and their parameters")
    tp.set_defaults(func=cmd_topologies)

    rn = sub.add_parser("run", help="run an experiment: whole matrix -> results/<run-id>/")
    rn.add_argument("experiment", help="shipped name (quick, paper-cluster, ...) or YAML file")
    rn.add_argument("--quick", action="store_true", help="shorter steps and fewer rates")
    rn.add_argument("--results", default="results", help="results directory (default: results)")
    rn.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    rn.add_argument("--no-report", action="store_true")
    rn.add_argument("--dry-run", action="store_true",
                    help="check the experiment and list its points and load time; run nothing")
    rn.set_defaults(func=cmd_run)
    return p


def _require_root() -> None:
    from ..system.lifecycle import require_root
    require_root()


def _pick(name: str | None) -> str:
    from ..system.state import list_testbeds
    if name:
        return name
    running = list_testbeds()
    if len(running) == 1:
        return running[0]
    if not running:
        raise TestbedError("no testbed is running: `sudo testbed up` builds one")
    raise TestbedError(f"several testbeds run ({', '.join(running)}): name one")


def cmd_up(args: argparse.Namespace) -> int:
    from ..system.lifecycle import Testbed
    from ..describe.topology import DEFAULT_SUBNET, load_topology, parse_params
    _require_root()
    try:
        mode = get_mode(args.mode)
    except ValueError as e:
        raise TestbedError(f"--mode: {e}") from None
    options = ServiceOptions.from_args(args)  # every bad option: one line now, before anything is built
    if options.balance_knob and not options.balance:
        raise TestbedError("--knob chooses what --balance moves: give --balance adaptive|fixed:SPLIT too")
    from ..describe.mininet_topo import is_mininet_ref, load_custom_topology, load_mininet_topology
    if bool(args.custom) != bool(args.topo):
        raise TestbedError("--custom FILE and --topo NAME go together (Mininet's convention)")
    from ..describe.machines import parse_machine_flag
    machines = [parse_machine_flag(m) for m in args.machine]
    if args.custom:
        if args.topology != "cluster":
            raise TestbedError("give either a topology or --custom/--topo, not both")
        topo = load_custom_topology(args.custom, args.topo, args.role, parse_params(args.param), machines)
    elif is_mininet_ref(args.topology):  # module:Class, a Mininet Topo
        topo = load_mininet_topology(args.topology, args.role, parse_params(args.param), machines)
    elif args.role:
        raise TestbedError("--role is for Mininet Topo classes (module:Class); shipped topologies "
                           "and YAML files name their roles themselves")
    else:
        topo = load_topology(args.topology, parse_params(args.param), machines)
    tb = Testbed(topo, args.name, mode=mode, subnet=args.subnet or DEFAULT_SUBNET,
                 start_services=not args.no_services, service_options=options, backend=args.backend)
    tb.up()
    for w in tb.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(status_of(tb.name), indent=2))
    else:
        print_status(status_of(tb.name))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ..system.state import list_testbeds
    if not args.name and not list_testbeds():
        if args.json:
            print(json.dumps({"testbeds": []}))
        else:
            print("no testbed is running")
        return 0
    state = status_of(_pick(args.name))
    if args.json:
        print(json.dumps(state, indent=2, sort_keys=True))
    else:
        print_status(state)
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    from ..system.lifecycle import Testbed
    from ..system.processes import ctrl_c_goes_to, spawn
    _require_root()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise TestbedError("exec needs a command: exec NODE -- CMD...")
    tb = Testbed.attach(_pick(args.name))
    remote = tb.remote_of(args.node)
    if remote is not None:  # the node's machine runs it, with this terminal
        return remote.interactive("exec", [tb.name, args.node, *command], tty=sys.stdin.isatty())
    proc = spawn(tb.netns(args.node), tb.cgroups.procs_files(tb.cgroup(args.node)), command,
                 stdin=None, stdout=None, stderr=None)
    with ctrl_c_goes_to(proc):
        return proc.wait()


def _capture_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--interface", default=None, help="with a node: one of its interfaces (default: any)")
    p.add_argument("-w", "--write", metavar="FILE.pcap", help="write packets to a pcap file (for Wireshark)")
    p.add_argument("-c", "--count", type=int, default=None, help="stop after this many packets")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")


def cmd_capture(args: argparse.Namespace) -> int:
    from .capture import capture
    from ..system.lifecycle import Testbed
    _require_root()
    # options after NODE (`capture host1 -w f.pcap tcp port 80`), as tcpdump takes them
    after = argparse.ArgumentParser(prog="testbed capture NODE", add_help=False)
    _capture_options(after)
    after.set_defaults(**{k: getattr(args, k) for k in ("interface", "write", "count", "seconds")})
    opts, words = after.parse_known_args([a for a in args.filter if a != "--"])
    bad = [w for w in words if w.startswith("-")]
    if bad:
        raise TestbedError(f"capture: unknown option {bad[0]} (options: -i, -w, -c, --seconds)")
    tb = Testbed.attach(_pick(args.name))
    return capture(tb, args.node, interface=opts.interface, write=opts.write, count=opts.count,
                   seconds=opts.seconds, pcap_filter=words)


def cmd_locust(args: argparse.Namespace) -> int:
    from .locust_ui import run_locust
    from ..system.lifecycle import Testbed
    _require_root()
    tb = Testbed.attach(_pick(args.name))
    return run_locust(tb, args.port, args.locustfile, [a for a in args.locust_args if a != "--"])


def cmd_shell(args: argparse.Namespace) -> int:
    from .shell import run_shell
    _require_root()
    return run_shell(_pick(args.name))


def cmd_down(args: argparse.Namespace) -> int:
    from ..system.lifecycle import teardown
    _require_root()
    name = _pick(args.name)
    removed = teardown(name)
    print(f"testbed {name} removed ({len(removed)} objects)")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from ..system.clean import clean_all
    _require_root()
    res = clean_all(force=args.force)
    for r in res.removed:
        print(f"removed {r}")
    for r in res.left_alone:
        print(f"left alone {r}: no testbed journal names it (--force removes it)")
    for r in res.failed:
        print(f"could not remove {r}", file=sys.stderr)
    print(f"clean: {len(res.removed)} objects removed" if res.removed else "clean: nothing to remove")
    return 1 if res.failed else 0


def cmd_topologies(args: argparse.Namespace) -> int:
    from ..describe.topology import available_topologies, load_topology
    for name in available_topologies():
        t = load_topology(name)
        params = " ".join(f"{k}={v}" for k, v in t.params.items())
        print(f"{name:10} {t.description[:70]}\n{'':10} params: {params}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _dry_run(args)
    from ..measure.runner import run_experiment_cli
    _require_root()
    return run_experiment_cli(args)


def _dry_run(args: argparse.Namespace) -> int:
    """The experiment checked as ``run`` checks it, its points listed, its load time summed."""
    from ..describe.experiment import load_experiment
    from ..measure.runner import point_seconds
    exp = load_experiment(args.experiment, quick=args.quick)
    points = exp.points()
    load_s = sum(point_seconds(exp, p.workload) for p in points)  # the runner's own estimate
    for p in points:
        extra = {k: v for k, v in exp.service_options(p).changed().items() if k != "seed"}
        print(f"  {p.index:3d} round {p.repetition} {p.mode.name:18} {p.workload:8} "
              f"{exp.topology_params(p)} {extra or ''}")
    print(f"{exp.name}: {len(points)} points, {load_s / 60:.0f} min of offered load "
          f"(plus testbed set-up, about half a minute per point)")
    return 0

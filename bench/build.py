"""Build-and-remove speed of a topology, side by side in one run:

- the testbed's namespace backend (pyroute2, one process, no forks);
- an ``ip -batch`` script generated from the same description: the kernel's own pace,
  as iproute2 runs it with the fewest `ip` runs (`ip -batch` has no per-line namespace;
  sysctls, which `ip` cannot set, are written in-process as the testbed does);
- Mininet's Python API building the same nodes and links (Linux bridge for LANs, no
  controller, no CPU limits: Debian's Mininet needs cgroup-tools for those), where installed.

    python -m bench.build [--repeat 3] [--hosts 32]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from typing import Callable

from testbed.system.backends.netns import BASE_SYSCTLS, FRONT_SYSCTLS, netns_name, switch_netns_name
from testbed.system.lifecycle import Testbed, teardown
from testbed.describe.topology import FRONT_ROLES, Topology, default_gateways, load_topology, plan_addresses


Script = list[tuple[str | None, list[str]]]  # (namespace for `ip -n`, batch lines)


def ip_batch_scripts(topo: Topology, name: str) -> tuple[Script, Script, list[tuple[str, dict]]]:
    """Build and removal scripts for `ip [-n NS] -batch`, plus per-namespace sysctls.

    `ip -batch` takes no per-line namespace, so there is one batch for the root namespace
    (namespace creation), one per namespace for the links it creates, and one per
    namespace for addresses, bridge ports and routes: the fewest `ip` runs possible."""
    plan = plan_addresses(topo)
    roles = {n.netns_key: n.role for n in topo.nodes}
    root: list[str] = []
    create: dict[str, list[str]] = {}
    config: dict[str, list[str]] = {}
    sysctls, remove_root = [], []
    for key in topo.namespaces:
        ns = netns_name(name, key)
        root.append(f"netns add {ns}")
        config.setdefault(ns, []).append("link set lo up")
        sysctls.append((ns, {**BASE_SYSCTLS, **(FRONT_SYSCTLS if roles[key] in FRONT_ROLES else {})}))
        remove_root.append(f"netns del {ns}")
    for lp in plan.links:
        ends = [(netns_name(name, k), i, lp.addresses[k]) for k, i in lp.interfaces.items()]
        if lp.link.is_lan:
            sw, br = switch_netns_name(name, lp.link.name), f"br-{lp.link.name}"
            root.append(f"netns add {sw}")
            remove_root.append(f"netns del {sw}")
            config.setdefault(sw, []).extend([f"link add {br} type bridge", f"link set {br} up"])
            for k, (ns, ifname, _) in enumerate(ends):
                port = f"p{k}-{lp.link.name}"
                create.setdefault(ns, []).append(f"link add {ifname} type veth peer name {port} netns {sw}")
                config[sw].append(f"link set {port} master {br} up")
        else:
            (a, ia, _), (b, ib, _) = ends
            create.setdefault(a, []).append(f"link add {ia} type veth peer name {ib} netns {b}")
        for ns, ifname, addr in ends:
            config.setdefault(ns, []).extend([f"addr add {addr}/24 dev {ifname}", f"link set {ifname} up"])
    for key, gw in default_gateways(topo, plan).items():
        config[netns_name(name, key)].append(f"route add default via {gw}")
    build: Script = [(None, root)] + list(create.items()) + list(config.items())
    removal: Script = [(None, remove_root)]  # the kernel deletes the interfaces with them
    return build, removal, sysctls


def _run_batches(script: Script, force: bool = False) -> None:
    for ns, lines in script:
        with tempfile.NamedTemporaryFile("w", prefix="tcps-bench-", suffix=".ip") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            cmd = ["ip"] + (["-n", ns] if ns else []) + (["-force"] if force else []) + ["-batch", f.name]
            subprocess.run(cmd, check=True)


def time_ip_batch(topo: Topology, name: str) -> tuple[float, float]:
    build, remove, sysctls = ip_batch_scripts(topo, name)
    t0 = time.perf_counter()
    _run_batches(build)
    _write_sysctls(sysctls)  # `ip` cannot set sysctls; written in-process as the testbed does
    t1 = time.perf_counter()
    _run_batches(remove, force=True)
    return t1 - t0, time.perf_counter() - t1


def _write_sysctls(sysctls: list[tuple[str, dict]]) -> None:
    from testbed.system.kernel import in_netns, write_sysctl
    for ns, values in sysctls:
        with in_netns(ns):
            for k, v in values.items():
                write_sysctl(k, v)


def time_netns_backend(topo: Topology, name: str) -> tuple[float, float]:
    """Only what `ip -batch` also does: namespaces, links, addresses, routes, sysctls."""
    from testbed.system.backends.netns import NetnsBackend
    plan = plan_addresses(topo)
    t0 = time.perf_counter()
    backend = NetnsBackend(name)
    built = backend.build(topo, plan)
    t1 = time.perf_counter()
    backend.teardown(("netns", ns) for ns in built.namespaces)
    return t1 - t0, time.perf_counter() - t1


def time_testbed(topo: Topology, name: str) -> tuple[float, float]:
    """The whole `up`/`down`: also cgroups (written and read back), journal and state."""
    t0 = time.perf_counter()
    tb = Testbed(topo, name).up()
    t1 = time.perf_counter()
    tb.down()
    return t1 - t0, time.perf_counter() - t1


def time_mininet(topo: Topology, name: str) -> tuple[float, float] | None:
    try:
        from testbed.system.backends.mininet import MininetBackend
    except ImportError:
        return None
    try:
        return MininetBackend.time_build(topo, name)
    except Exception as e:  # not installed or not working here: say so, do not fake a number
        print(f"  mininet: not measured ({e})")
        return None


def median_of(fn: Callable[[], tuple[float, float] | None], repeat: int) -> tuple[float, float] | None:
    runs = [fn() for _ in range(repeat)]
    if any(r is None for r in runs):
        return None
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))  # type: ignore[index]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--hosts", type=int, default=32)
    args = ap.parse_args(argv)
    cases = [("cluster", load_topology("cluster")),
             (f"multihost-{args.hosts}", load_topology("multihost", {"hosts": str(args.hosts), "host_cpu": "none"}))]
    print(f"build + remove, median of {args.repeat} (seconds; ratio = testbed / ip -batch)")
    print(f"{'topology':16} {'what':8} {'testbed':>9} {'ip-batch':>9} {'ratio':>6} {'mininet':>9} {'vs mininet':>10}")
    for label, topo in cases:
        net = median_of(lambda: time_netns_backend(topo, "benchnet"), args.repeat)
        full = median_of(lambda: time_testbed(topo, "bench"), args.repeat)
        assert net and full
        print(f"{label:16} {'network':8} {sum(net):9.3f}  (namespaces, links, addresses, routes: "
              f"the part ip -batch does)")
        print(f"{label:16} {'full up':8} {sum(full):9.3f}  (+ cgroups read back, journal, state)")
        tb = net
        ip = median_of(lambda: time_ip_batch(topo, "benchip"), args.repeat)
        mn = median_of(lambda: time_mininet(topo, "benchmn"), args.repeat)
        assert tb and ip
        for i, what in enumerate(("build", "remove")):
            mn_s = f"{mn[i]:9.3f}" if mn else f"{'n/a':>9}"
            vs = f"{mn[i] / tb[i]:9.1f}x" if mn else f"{'':>10}"
            print(f"{label:16} {what:8} {tb[i]:9.3f} {ip[i]:9.3f} {tb[i] / ip[i]:6.2f} {mn_s} {vs}")
        total_tb, total_ip = sum(tb), sum(ip)
        print(f"{label:16} {'total':8} {total_tb:9.3f} {total_ip:9.3f} {total_tb / total_ip:6.2f}"
              + (f" {sum(mn):9.3f} {sum(mn) / total_tb:9.1f}x" if mn else ""))
    teardown("bench")


if __name__ == "__main__":
    main()

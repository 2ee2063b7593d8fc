"""The Mininet backend: the same topology built with Mininet's Python API.

Mininet (Debian's package, 2.3.0) creates the nodes and links: one Mininet ``Host`` per
network namespace of the topology (nodes that share a namespace share a host), a direct
host-to-host veth for a two-member link, a ``LinuxBridge`` switch in the root namespace
for a LAN, ``TCLink`` where a rate is set, no controller. Interface names and addresses
follow the testbed's address plan, so the result looks exactly like the netns backend's
from inside the nodes.

Each host's namespace is then *attached* under /run/netns/tcps-<testbed>-<key> (a bind
mount, like `ip netns attach`), and Mininet's helper shells are stopped: the namespaces,
links and bridges live on in the kernel, and everything else in the testbed (processes,
cgroups, services, routes, metrics, teardown) works on them unchanged.

Where Mininet falls short here, this module does it differently:

- ``Mininet.init()`` raises host-wide sysctls (fs.file-max, net.core.*, kernel.pty.max):
  it is skipped; sysctls are written per namespace only, as the netns backend does.
- Its tc and ifconfig failures are only logged: every address, route, qdisc and bridge
  port is read back over netlink and a mismatch raises.
- Delay and loss need netem, which Mininet silently skips when missing: refused clearly.
- Rates above 1000 Mbit/s are ignored by Mininet's TCIntf: allowed here (same htb).
- CPU budgets stay with the testbed's own cgroups (no CPULimitedHost, which needs
  cgroup-tools and leaves cpuacct/cpuset groups behind on cgroup v1).
- Cleanup is by exact name from the journal: never `mn -c`, never by process name.
  Root-namespace bridges and ports are named ``tcps<6 hex>`` / ``tcps<6 hex>-p<k>``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ... import PREFIX
from ...errors import KernelFeatureMissing, TestbedError
from ..kernel import attach_netns, in_netns, pid_start_time, write_sysctl
from ...describe.names import netns_name
from ...describe.topology import FRONT_ROLES, AddressPlan, LinkPlan, Topology, default_gateways
from .base import Backend, BuiltTopology, Journal, remove_namespaces
from .netns import BASE_SYSCTLS, FRONT_SYSCTLS, NetnsBackend

log = logging.getLogger(__name__)

INSTALL_HINT = ("install Debian's package: `apt-get install --no-install-recommends mininet "
                "bridge-utils iputils-ping` (or run scripts/setup.sh); PyPI's mininet lacks mnexec")
#: programs Mininet runs through its shells; its own check would call exit() instead of raising
REQUIRED_TOOLS = {"mnexec": "mininet", "ifconfig": "net-tools", "brctl": "bridge-utils",
                  "tc": "iproute2", "ethtool": "ethtool"}


def bridge_name(testbed: str, link: str) -> str:
    """Root-namespace bridge of a LAN: 10 characters, so ports ``<bridge>-p<k>`` fit IFNAMSIZ."""
    return PREFIX + hashlib.sha1(f"{testbed}/{link}".encode()).hexdigest()[:6]


def _import_mininet() -> dict[str, Any]:
    try:
        from mininet.link import Link, TCIntf
        from mininet.net import Mininet
        from mininet.node import Host
        from mininet.nodelib import LinuxBridge
    except ImportError as e:
        raise TestbedError(f"the mininet backend needs Mininet ({e}): {INSTALL_HINT}") from None
    missing = [f"{tool} ({pkg})" for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise TestbedError(f"the mininet backend needs {', '.join(missing)}: {INSTALL_HINT}")

    class WideTCIntf(TCIntf):  # type: ignore[misc, valid-type]
        """TCIntf ignores rates above 1000 Mbit/s (with only a log line); inic's I/O link is 2000."""
        bwParamMax = 100_000

    class ShapedLink(Link):  # type: ignore[misc, valid-type]
        """TCLink with the wider interface class (TCLink only swaps the interface class too)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("cls1", WideTCIntf)
            kwargs.setdefault("cls2", WideTCIntf)
            Link.__init__(self, *args, **kwargs)

    return {"Mininet": Mininet, "Host": Host, "Link": Link, "ShapedLink": ShapedLink,
            "LinuxBridge": LinuxBridge}


class MininetBackend(Backend):
    name = "mininet"

    def __init__(self, testbed: str, journal: Journal | None = None):
        super().__init__(testbed, journal)
        self.net: Any = None
        self.links: list[str] = []  # root-namespace bridges and ports, in creation order

    # -- building ------------------------------------------------------------------------

    def build(self, topo: Topology, plan: AddressPlan) -> BuiltTopology:
        """Build with Mininet, attach the namespaces, check everything, stop the shells.
        Raises on the first error; the caller tears down what the journal recorded."""
        mn = _import_mininet()
        self._refuse_unsupported(topo)
        mn["Mininet"].inited = True  # skip Mininet.init(): fixLimits() raises host-wide sysctls
        net = self.net = mn["Mininet"](topo=None, controller=None, switch=mn["LinuxBridge"],
                                       host=mn["Host"], link=mn["Link"], build=False)
        namespaces: list[str] = []
        with _mininet_logs_to_ours():
            self._build(net, topo, plan, namespaces, mn)
        return BuiltTopology(tuple(namespaces), tuple(self.links))

    def _build(self, net: Any, topo: Topology, plan: AddressPlan, namespaces: list[str],
               mn: dict[str, Any]) -> None:
        roles = {n.netns_key: n.role for n in topo.nodes}
        sysctls: dict[str, dict[str, str]] = {}
        for n in topo.nodes:
            sysctls.setdefault(n.netns_key, {}).update(n.sysctls)
        try:
            hosts = {}
            for key in topo.namespaces:
                ns = netns_name(self.testbed, key)
                self._journal("netns", ns)
                hosts[key] = net.addHost(key, ip=None)  # ip=None: no address from Mininet's 10/8 plan
                self._journal_pid(hosts[key].pid)
                attach_netns(ns, hosts[key].pid)
                namespaces.append(ns)
                with in_netns(ns):
                    for k, v in {**BASE_SYSCTLS, **(FRONT_SYSCTLS if roles[key] in FRONT_ROLES else {}),
                                 **sysctls.get(key, {})}.items():
                        write_sysctl(k, v)
            switches = []
            for lp in plan.links:
                if lp.link.is_lan:
                    switches.append(self._build_lan(mn, lp, hosts))
                else:
                    self._build_p2p(mn, lp, hosts)
            for sw in switches:
                sw.start([])
            gateways = default_gateways(topo, plan)
            for key, host in hosts.items():
                route = {"defaultRoute": f"via {gateways[key]}"} if key in gateways else {}
                host.config(lo="up", **route)
            self._verify(topo, plan, gateways)
        finally:
            self._stop_shells()

    def _journal_pid(self, pid: int) -> None:
        self._journal("pid", f"{pid}:{pid_start_time(pid)}")

    def _refuse_unsupported(self, topo: Topology) -> None:
        if any(l.delay_ms or l.loss_pct for l in topo.links):
            # Mininet's TCIntf logs netem's failure and goes on without the delay: probe first
            NetnsBackend(self.testbed, self._journal)._require_netem(topo)

    def _link_cls(self, mn: dict[str, Any], lp: LinkPlan) -> tuple[Any, dict[str, Any]]:
        """Plain veths unless the link is shaped; then TCLink's htb (and netem, if present)."""
        link = lp.link
        opts: dict[str, Any] = {}
        if link.mbit:
            opts["bw"] = link.mbit
        if link.delay_ms:
            opts["delay"] = f"{link.delay_ms}ms"
        if link.loss_pct:
            opts["loss"] = link.loss_pct
        return (mn["ShapedLink"] if opts else mn["Link"]), opts

    def _build_p2p(self, mn: dict[str, Any], lp: LinkPlan, hosts: dict[str, Any]) -> None:
        (a, if_a), (b, if_b) = lp.interfaces.items()
        cls, opts = self._link_cls(mn, lp)
        # node1's shell creates the pair inside node1's namespace with the peer in node2's:
        # no interface ever appears in the root namespace
        self.net.addLink(hosts[a], hosts[b], cls=cls, intfName1=if_a, intfName2=if_b,
                         params1={"ip": f"{lp.addresses[a]}/{lp.subnet.prefixlen}"},
                         params2={"ip": f"{lp.addresses[b]}/{lp.subnet.prefixlen}"}, **opts)

    def _build_lan(self, mn: dict[str, Any], lp: LinkPlan, hosts: dict[str, Any]) -> Any:
        br = bridge_name(self.testbed, lp.link.name)
        ports = [f"{br}-p{k}" for k in range(len(lp.interfaces))]
        taken = [n for n in [br, *ports] if _root_link_exists(n)]
        if taken:
            # LinuxBridge.start() would `brctl delbr` an existing bridge: never touch another's
            raise TestbedError(f"link {lp.link.name}: interface(s) {', '.join(taken)} already exist in "
                               "the root namespace (another testbed's, or left over: "
                               "`sudo testbed down NAME` removes a testbed's own)")
        self._journal("link", br)
        self.links.append(br)
        sw = self.net.addSwitch(br, cls=mn["LinuxBridge"], dpid=br[len(PREFIX):], inNamespace=False)
        self._journal_pid(sw.pid)
        cls, opts = self._link_cls(mn, lp)
        for port, (key, ifname) in zip(ports, lp.interfaces.items()):
            self._journal("link", port)
            self.links.append(port)
            # port names contain the bridge's name: that is how LinuxBridge.start() finds them
            self.net.addLink(hosts[key], sw, cls=cls, intfName1=ifname, intfName2=port,
                             params1={"ip": f"{lp.addresses[key]}/{lp.subnet.prefixlen}"}, **opts)
        return sw

    def _verify(self, topo: Topology, plan: AddressPlan, gateways: dict[str, str]) -> None:
        """Read back over netlink what Mininet's shells were asked to do (they only log errors)."""
        for key in topo.namespaces:
            ns = netns_name(self.testbed, key)
            with in_netns(ns), IPRoute() as ipr:
                for lp in plan.links:
                    if key not in lp.interfaces:
                        continue
                    ifname = lp.interfaces[key]
                    found = ipr.link_lookup(ifname=ifname)
                    if not found:
                        raise TestbedError(f"mininet: {ns} has no interface {ifname}")
                    idx = found[0]
                    addrs = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=2)}
                    if lp.addresses[key] not in addrs:
                        raise TestbedError(f"mininet: {ns}/{ifname} has {sorted(addrs)}, "
                                           f"not {lp.addresses[key]}")
                    if not ipr.get_links(idx)[0]["flags"] & 1:  # IFF_UP
                        raise TestbedError(f"mininet: {ns}/{ifname} is not up")
                    if lp.link.mbit:
                        _check_rate(ipr, idx, lp.link.mbit, f"{ns}/{ifname}", lp.link.name)
                    if (lp.link.delay_ms or lp.link.loss_pct) and not any(
                            q.get_attr("TCA_KIND") == "netem" for q in ipr.get_qdiscs(index=idx)):
                        raise KernelFeatureMissing(f"link {lp.link.name}: {ns}/{ifname} has no netem "
                                                   "qdisc for its delay/loss")
                if key in gateways:
                    gws = {r.get_attr("RTA_GATEWAY") for r in ipr.get_default_routes(family=2)}
                    if gws != {gateways[key]}:
                        raise TestbedError(f"mininet: {ns} default route via {sorted(filter(None, gws))}, "
                                           f"not {gateways[key]}")
        with IPRoute() as ipr:
            bridges = {n: ipr.link_lookup(ifname=n) for n in self.links if not _is_port(n)}
            for name in self.links:
                found = ipr.link_lookup(ifname=name)
                if not found:
                    raise TestbedError(f"mininet: root-namespace interface {name} is missing")
                if _is_port(name):
                    master = ipr.get_links(found[0])[0].get_attr("IFLA_MASTER")
                    if master != bridges[name.split("-p")[0]][0]:
                        raise TestbedError(f"mininet: port {name} is not on its bridge")

    def _stop_shells(self) -> None:
        """Stop Mininet's shells: the namespaces are held by their /run/netns mounts now."""
        if self.net is None:
            return
        for node in [*self.net.hosts, *self.net.switches]:
            try:
                node.terminate()  # SIGHUP to the shell's own process group, then wait for it
            except OSError as e:
                log.warning("mininet: stopping the shell of %s: %s", node.name, e)

    # -- teardown ------------------------------------------------------------------------

    def teardown(self, journal: Iterable[tuple[str, str]]) -> list[str]:
        """The namespaces first, then the root-namespace bridges and ports (see teardown_links)."""
        entries = list(journal)
        removed = [f"netns {ns}" for ns in remove_namespaces(n for kind, n in entries if kind == "netns")]
        return removed + [f"link {n}" for n in self.teardown_links([n for kind, n in entries if kind == "link"])]

    @staticmethod
    def teardown_links(names: list[str], wait_s: float = 3.0) -> list[str]:
        """Delete root-namespace bridges and ports by exact name. Call it after the nodes'
        namespaces are removed: each port's veth peer then dies with its namespace in
        the kernel's batched cleanup (deleting 33 ports one by one took 0.66 s here, the
        batch 0.1 s); a port still there after ``wait_s`` is deleted by name."""
        ours = [n for n in names if n.startswith(PREFIX)]  # never anything not ours by name
        removed = []
        deadline = time.monotonic() + wait_s  # one wait for all ports: they go in one batch
        with IPRoute() as ipr:
            for name in [n for n in ours if not _is_port(n)] + [n for n in ours if _is_port(n)]:
                if _is_port(name):
                    while ipr.link_lookup(ifname=name) and time.monotonic() < deadline:
                        time.sleep(0.005)
                found = ipr.link_lookup(ifname=name)
                if not found:
                    removed.append(name)  # gone with its peer's namespace
                    continue
                try:
                    ipr.link("del", index=found[0])
                    removed.append(name)
                except NetlinkError as e:
                    if e.code != 19:  # ENODEV: went away meanwhile
                        raise
        return removed

    # -- benchmark -----------------------------------------------------------------------

    @classmethod
    def time_build(cls, topo: Topology, name: str) -> tuple[float, float]:
        """(build seconds, removal seconds) of the network part, as bench.build measures
        the netns backend: namespaces, links, addresses, routes, sysctls."""
        from ...describe.topology import plan_addresses
        plan = plan_addresses(topo)
        journal: list[tuple[str, str]] = []
        backend = cls(name, journal=lambda kind, n: journal.append((kind, n)))
        t0 = time.perf_counter()
        try:
            backend.build(topo, plan)
        finally:
            t1 = time.perf_counter()
            backend.teardown(journal)
        return t1 - t0, time.perf_counter() - t1


def _is_port(name: str) -> bool:
    return "-p" in name


@contextmanager
def _mininet_logs_to_ours() -> Iterator[None]:
    """Mininet prints through a handler of its own (and logs tc warnings as errors); we read
    back everything it does, so its messages go to this module's debug log instead."""
    from mininet.log import lg

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log.debug("mininet: %s", record.getMessage().strip())

    saved = (lg.handlers[:], lg.propagate)
    lg.handlers[:] = [Forward()]
    lg.propagate = False
    try:
        yield
    finally:
        lg.handlers[:], lg.propagate = saved


def _root_link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def _check_rate(ipr: IPRoute, idx: int, mbit: float, where: str, link: str) -> None:
    rates = []
    for c in ipr.get_classes(index=idx):
        opts = c.get_attr("TCA_OPTIONS")
        params = opts.get_attr("TCA_HTB_PARMS") if opts is not None else None
        if params:
            rates.append(params["rate"] * 8)  # bytes/s -> bit/s
    want = mbit * 1e6
    if not any(abs(r - want) <= 0.01 * want for r in rates):
        raise KernelFeatureMissing(f"link {link}: {where} has no htb rate {mbit:g} Mbit/s "
                                   f"(read back: {[f'{r / 1e6:g}' for r in rates] or 'none'})")

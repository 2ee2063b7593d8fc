"""The namespace backend: a topology becomes network namespaces, veth pairs and bridges.

Everything goes through netlink (pyroute2), one socket per namespace opened from inside
it, in one process and without forks. Interfaces are created directly inside their
namespaces (``<node>-eth<k>``), so none ever appears in the root namespace and names
cannot collide with the machine's own or with a testbed being torn down.

A LAN (a link of more than two nodes) is a bridge in a switch namespace of its own,
``tcps-<testbed>-sw-<link>``, with one veth per member.

With nodes on several machines (describe/machines.py) each machine builds its own share:
the namespaces of its nodes, the bridge of a LAN whose first member it holds, a veth where
both ends are here, and where the other end is on another machine a VXLAN tunnel to that
machine's address (created in this machine's own namespace under a journaled
``tcps-v<vni>`` name, then moved into the node's namespace and renamed: its UDP socket
stays in the machine's namespace). Every interface of a link that crosses machines gets
``TUNNEL_MTU``.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Mapping

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ...errors import KernelFeatureMissing, TestbedError
from ..kernel import create_netns, in_netns, netns_path, remove_netns, write_sysctl
from ...describe.machines import LOCAL, TUNNEL_MTU, VXLAN_PORT, tunnel_name, vni
from ...describe.names import netns_name, switch_netns_name
from ...describe.topology import FRONT_ROLES, AddressPlan, Link, LinkPlan, Topology, default_gateways
from .base import Backend, BuiltTopology, Journal, remove_namespaces

log = logging.getLogger(__name__)

#: sysctls every namespace gets; they are per namespace, never host-wide
BASE_SYSCTLS = {
    "net.ipv4.ip_local_port_range": "1024 65000",
    "net.ipv4.tcp_tw_reuse": "1",
}
FRONT_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    # spread multipath routes (several hosts or NICs) per connection, not per destination
    "net.ipv4.fib_multipath_hash_policy": "1",
}


__all__ = ["NetnsBackend", "BuiltTopology", "netns_name", "switch_netns_name"]


class NetnsBackend(Backend):
    name = "netns"

    def __init__(self, testbed: str, journal: Journal | None = None, here: str = LOCAL,
                 peers: Mapping[str, str] | None = None):
        super().__init__(testbed, journal)
        self.here = here
        self.peers = dict(peers or {})  # machine name -> the address its tunnels end at
        self._ipr: dict[str, IPRoute] = {}
        self._fds: dict[str, int] = {}
        self._topo: Topology | None = None

    def _mine(self, key: str) -> bool:
        assert self._topo is not None
        return self._topo.machine_of(key) == self.here

    def _peer(self, key: str) -> str:
        """The address of the machine that holds namespace ``key``."""
        assert self._topo is not None
        machine = self._topo.machine_of(key)
        if machine not in self.peers:
            raise TestbedError(f"no address for machine {machine} (holding {key}) on machine {self.here}")
        return self.peers[machine]

    # -- building ------------------------------------------------------------------------

    def build(self, topo: Topology, plan: AddressPlan) -> BuiltTopology:
        """Create every namespace, link, address and base route. Raises on the first error;
        the caller tears down what the journal recorded."""
        namespaces: list[str] = []
        self._topo = topo
        if any(l.delay_ms or l.loss_pct for l in topo.links):
            self._require_netem(topo)
        roles = {n.netns_key: n.role for n in topo.nodes}
        sysctls: dict[str, dict[str, str]] = {}
        for n in topo.nodes:
            sysctls.setdefault(n.netns_key, {}).update(n.sysctls)
        try:
            for key in (k for k in topo.namespaces if self._mine(k)):
                ns = netns_name(self.testbed, key)
                wanted = {**BASE_SYSCTLS, **(FRONT_SYSCTLS if roles[key] in FRONT_ROLES else {}),
                          **sysctls.get(key, {})}
                self._new_namespace(ns, key, wanted)
                namespaces.append(ns)
            for lp in plan.links:
                keys = list(lp.interfaces)
                if not any(self._mine(k) for k in keys):
                    continue
                if lp.link.is_lan:
                    # the bridge lives with the first member; members elsewhere tunnel to it
                    home = self._mine(keys[0])
                    sw = switch_netns_name(self.testbed, lp.link.name)
                    if home:
                        self._new_namespace(sw, sw, {})
                        namespaces.append(sw)
                    self._build_lan(lp, sw, home)
                else:
                    self._build_p2p(lp)
                self._address_and_shape(lp)
            self._default_routes(topo, plan)
        finally:
            self.close()
        return BuiltTopology(tuple(namespaces))

    def _new_namespace(self, ns: str, key: str, sysctls: dict[str, str]) -> None:
        self._journal("netns", ns)
        create_netns(ns)
        self._fds[key] = os.open(netns_path(ns), os.O_RDONLY)
        with in_netns(ns):
            self._ipr[key] = IPRoute()  # the socket stays bound to this namespace
            for k, v in sysctls.items():
                write_sysctl(k, v)
        ipr = self._ipr[key]
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    def _build_p2p(self, lp: LinkPlan) -> None:
        (a, if_a), (b, if_b) = lp.interfaces.items()
        if self._mine(a) and self._mine(b):
            self._veth(a, if_a, b, if_b, lp.link)
        else:  # one end here: a tunnel to the other end's machine (the same id on both)
            mine, other = (a, b) if self._mine(a) else (b, a)
            self._tunnel(mine, lp.interfaces[mine], vni(self.testbed, lp.link.name, 0), self._peer(other), lp.link)

    def _build_lan(self, lp: LinkPlan, sw: str, home: bool) -> None:
        keys = list(lp.interfaces)
        if not home:  # our members reach the bridge on the first member's machine
            for k, (key, ifname) in enumerate(lp.interfaces.items()):
                if self._mine(key):
                    self._tunnel(key, ifname, vni(self.testbed, lp.link.name, k), self._peer(keys[0]), lp.link)
            return
        ipr = self._ipr[sw]
        bridge = f"br-{lp.link.name}"
        ipr.link("add", ifname=bridge, kind="bridge")
        br_index = ipr.link_lookup(ifname=bridge)[0]
        ipr.link("set", index=br_index, state="up")
        for k, (key, ifname) in enumerate(lp.interfaces.items()):
            port = f"p{k}-{lp.link.name}"
            if self._mine(key):
                self._veth(key, ifname, sw, port, lp.link)
            else:
                self._tunnel(sw, port, vni(self.testbed, lp.link.name, k), self._peer(key), lp.link)
            idx = ipr.link_lookup(ifname=port)[0]
            ipr.link("set", index=idx, master=br_index, state="up",
                     **({"mtu": TUNNEL_MTU} if self._crosses(lp) else {}))

    def _crosses(self, lp: LinkPlan) -> bool:
        return len({self._topo.machine_of(k) for k in lp.interfaces}) > 1  # type: ignore[union-attr]

    def _tunnel(self, key: str, ifname: str, vni_: int, remote: str, link: Link) -> None:
        """A VXLAN device to ``remote``, made in this machine's namespace (journaled first),
        then moved into ``key``'s namespace as ``ifname``."""
        name = tunnel_name(vni_)
        self._journal("tunnel", name)
        with IPRoute() as root:
            try:
                root.link("add", ifname=name, kind="vxlan", vxlan_id=vni_, vxlan_group=remote,
                          vxlan_port=VXLAN_PORT, vxlan_learning=0)
            except NetlinkError as e:
                raise TestbedError(f"link {link.name}: cannot create VXLAN tunnel {name} (id {vni_}) to "
                                   f"{remote}: {e}") from None
            idx = root.link_lookup(ifname=name)[0]
            root.link("set", index=idx, net_ns_fd=self._fds[key], ifname=ifname)

    def _veth(self, a: str, if_a: str, b: str, if_b: str, link: Link) -> None:
        try:
            self._ipr[a].link("add", ifname=if_a, kind="veth",
                              peer={"ifname": if_b, "net_ns_fd": self._fds[b]})
        except NetlinkError as e:
            raise TestbedError(f"link {link.name}: cannot create veth {if_a}<->{if_b}: {e}") from None

    def _address_and_shape(self, lp: LinkPlan) -> None:
        for key, ifname in lp.interfaces.items():
            if not self._mine(key):
                continue
            ipr = self._ipr[key]
            idx = ipr.link_lookup(ifname=ifname)[0]
            if self._crosses(lp):
                ipr.link("set", index=idx, mtu=TUNNEL_MTU)
            ipr.addr("add", index=idx, address=lp.addresses[key], prefixlen=lp.subnet.prefixlen)
            if lp.link.delay_ms or lp.link.loss_pct:
                self._netem(ipr, idx, lp.link)
            elif lp.link.mbit:
                self._shape(ipr, idx, lp.link)
            ipr.link("set", index=idx, state="up")

    def _shape(self, ipr: IPRoute, idx: int, link: Link) -> None:
        """Rate-limit the egress of one veth end (each end limits its own direction)."""
        rate_bps = int(link.mbit * 1e6)  # type: ignore[operator]
        # burst: at least one 64 KiB GSO super-packet, or 1 ms at line rate
        burst = max(65536 + 1514, rate_bps // 8 // 1000)
        try:
            ipr.tc("add", "tbf", index=idx, handle=0x10000, rate=f"{rate_bps}bit",
                   burst=burst, latency="50ms")
        except NetlinkError as e:
            raise KernelFeatureMissing(f"link {link.name}: cannot apply tbf rate {link.mbit} Mbit/s "
                                       f"(sch_tbf): {e}") from None

    def _netem(self, ipr: IPRoute, idx: int, link: Link) -> None:
        """Delay and loss (and the rate, if any) in one netem qdisc per direction.
        Only reached where the netem probe succeeded: tested in the Debian 12 VM (tests/vm)."""
        kw: dict = {"delay": int((link.delay_ms or 0) * 1000), "loss": link.loss_pct or 0}
        if link.mbit:
            kw["rate"] = f"{int(link.mbit * 1e6)}bit"
        try:
            ipr.tc("add", "netem", index=idx, handle=0x10000, **kw)
        except NetlinkError as e:
            raise KernelFeatureMissing(f"link {link.name}: cannot apply netem {kw}: {e}") from None
        kinds = [q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(index=idx)]
        if "netem" not in kinds:
            raise TestbedError(f"link {link.name}: netem was accepted but reads back as {kinds}")

    def _default_routes(self, topo: Topology, plan: AddressPlan) -> None:
        for key, gw in default_gateways(topo, plan).items():
            if self._mine(key):
                self._ipr[key].route("add", dst="0.0.0.0/0", gateway=gw)

    def _require_netem(self, topo: Topology) -> None:
        probe = netns_name(self.testbed, "probe")
        self._journal("netns", probe)
        create_netns(probe)
        try:
            with in_netns(probe), IPRoute() as ipr:
                ipr.link("add", ifname="probe0", kind="veth", peer="probe1")
                idx = ipr.link_lookup(ifname="probe0")[0]
                try:
                    ipr.tc("add", "netem", index=idx, handle=0x10000, delay=1000)
                except NetlinkError:
                    bad = [f"{l.name} ({'delay_ms' if l.delay_ms else 'loss_pct'})"
                           for l in topo.links if l.delay_ms or l.loss_pct]
                    raise KernelFeatureMissing(
                        "netem is not available in this kernel (sch_netem): delay and loss need it; "
                        f"remove delay_ms/loss_pct from link(s) {', '.join(bad)} or load the module"
                    ) from None
        finally:
            remove_netns(probe)

    # -- teardown ------------------------------------------------------------------------

    def teardown(self, journal: Iterable[tuple[str, str]]) -> list[str]:
        """Remove the journaled namespaces (their interfaces, tunnels included, go with them
        in one batch), then any journaled tunnel still in this machine's own namespace (a
        build stopped between making it and moving it)."""
        journal = list(journal)
        removed = [f"netns {ns}" for ns in remove_namespaces(n for kind, n in journal if kind == "netns")]
        tunnels = [n for kind, n in journal if kind == "tunnel"]
        if tunnels:
            with IPRoute() as root:
                for name in tunnels:
                    for idx in root.link_lookup(ifname=name):
                        root.link("del", index=idx)
                        removed.append(f"link {name}")
        return removed

    def close(self) -> None:
        for ipr in self._ipr.values():
            ipr.close()
        for fd in self._fds.values():
            os.close(fd)
        self._ipr.clear()
        self._fds.clear()

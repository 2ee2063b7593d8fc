"""The backend contract: what lifecycle and services ask of whatever builds nodes and links.

Two backends build a topology: ``netns`` (pyroute2, netns.py) and ``mininet`` (Mininet's
Python API, mininet.py); ``testbed.system.backends.make_backend`` chooses one by name. Both leave
the same thing in the kernel: every node's network namespace under
/run/netns/tcps-<testbed>-<key>, with the address plan's interfaces, addresses, qdiscs and
default routes. Everything after the build (processes through ``nodes.spawn``, cgroups,
the service address and its routes, metrics) therefore works on namespaces by name,
whatever built them; the address and route operations below are the same netlink calls
for both, made from inside the namespace.

A backend journals each object before it creates it (``netns`` names, ``link`` names of
interfaces it makes in the machine's own namespace, ``pid`` "PID:STARTTIME" of helper
processes it leaves running), so ``teardown`` works from the journal alone, also after a
crash half-way through ``build``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Sequence

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..kernel import in_netns, netns_path, remove_netns
from ...describe.topology import AddressPlan, Topology

#: ``journal(kind, name)``: record an object before it is created (StateStore.journal)
Journal = Callable[[str, str], None]
EEXIST = 17


@dataclass(frozen=True)
class BuiltTopology:
    """What a build made, in the order it made it: the namespaces (nodes' and switches'),
    and interfaces in the machine's own namespace (Mininet's LAN bridges and ports)."""
    namespaces: tuple[str, ...] = ()
    links: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, list[str]]:
        return {"namespaces": list(self.namespaces), "links": list(self.links)}

    @classmethod
    def from_dict(cls, raw: dict[str, Sequence[str]]) -> "BuiltTopology":
        return cls(tuple(raw.get("namespaces", ())), tuple(raw.get("links", ())))


@dataclass(frozen=True)
class NetworkStatus:
    """Which of the objects a build made are still in the kernel ("netns NAME", "link NAME")."""
    present: tuple[str, ...]
    missing: tuple[str, ...]


class Backend(abc.ABC):
    """Builds a topology into namespaces, changes addresses and routes in them while the
    testbed runs, reports what of it still exists, and removes it by exact name."""

    name: ClassVar[str]

    def __init__(self, testbed: str, journal: Journal | None = None):
        self.testbed = testbed
        self._journal: Journal = journal or (lambda kind, name: None)

    # -- building ------------------------------------------------------------------------

    @abc.abstractmethod
    def build(self, topo: Topology, plan: AddressPlan) -> BuiltTopology:
        """Create every namespace, link, address and default route of ``plan``, journaling
        each object first. Raises on the first error; the caller then calls ``teardown``
        with the journal."""

    # -- run-time changes ----------------------------------------------------------------

    def add_local_address(self, ns: str, address: str) -> None:
        """Put a /32 on the namespace's loopback (the service address); already there is fine."""
        with in_netns(ns), IPRoute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            try:
                ipr.addr("add", index=lo, address=address, prefixlen=32)
            except NetlinkError as e:
                if e.code != EEXIST:
                    raise

    def set_route(self, ns: str, dst: str, gateways: Sequence[str], replace: bool = True) -> None:
        """Route ``dst`` via one gateway, or spread over several (multipath, hashed per flow)."""
        with in_netns(ns), IPRoute() as ipr:
            kw: dict = {"dst": dst}
            if len(gateways) == 1:
                kw["gateway"] = gateways[0]
            else:
                kw["multipath"] = [{"gateway": g} for g in gateways]
            ipr.route("replace" if replace else "add", **kw)

    # -- status and teardown -------------------------------------------------------------

    def status(self, built: BuiltTopology) -> NetworkStatus:
        """Read back which namespaces and root-namespace interfaces of ``built`` exist."""
        present: list[str] = []
        missing: list[str] = []
        for ns in built.namespaces:
            (present if netns_path(ns).exists() else missing).append(f"netns {ns}")
        if built.links:
            with IPRoute() as ipr:
                for link in built.links:
                    (present if ipr.link_lookup(ifname=link) else missing).append(f"link {link}")
        return NetworkStatus(tuple(present), tuple(missing))

    @abc.abstractmethod
    def teardown(self, journal: Iterable[tuple[str, str]]) -> list[str]:
        """Remove what the journal's ``netns`` and ``link`` entries name, by exact name;
        returns what was removed ("netns NAME", "link NAME"). Safe on half-built or
        already-removed state. Processes (``pid`` entries) are the caller's to stop first."""


def remove_namespaces(namespaces: Iterable[str]) -> list[str]:
    """Remove the namespaces; the kernel then destroys their interfaces in one batch.

    Deleting veths one by one costs a network-wide RCU wait each (about 30 ms here);
    since every interface lives only inside these namespaces, no name can outlive
    them and collide. Returns those that existed."""
    return [ns for ns in dict.fromkeys(namespaces) if remove_netns(ns)]

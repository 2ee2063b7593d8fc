"""Where nodes run: the machines of a topology and the links that cross between them. Pure.

    machines:
      b: {ssh: root@10.99.0.2}                   # address: the ssh host when it is an IP
      c: {ssh: root@c.lab, address: 10.0.0.3, port: 2222, project: /srv/tcps}
    nodes:
      - {name: host1, role: host, machine: b}

A node without ``machine`` (or with ``machine: local``) runs on this machine, the one that
runs ``testbed``. A remote machine is reached over SSH as root and holds the project at
``project`` (default: the same path as here), installed by the README's set-up. A link
whose members sit on different machines is a VXLAN tunnel over the machines' own network
(``address``: where the other machines reach this one), MTU ``TUNNEL_MTU``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import SpecError

LOCAL = "local"  # this machine's name in a topology
MACHINE_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
SSH_TARGET = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9._:-]+$")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: 1500 minus VXLAN's 50 bytes (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14)
TUNNEL_MTU = 1450
VXLAN_PORT = 4789
#: how far a machine's clock may be from this one's before `up` refuses it
MAX_CLOCK_OFFSET_S = 0.5
_KEYS = {"ssh", "address", "port", "project"}


@dataclass(frozen=True)
class Machine:
    name: str
    ssh: str  # user@host
    address: str  # where the other machines reach it (the tunnels' underlay)
    port: int = 22
    project: str = str(PROJECT_ROOT)

    @property
    def python(self) -> str:
        return f"{self.project}/.venv/bin/python"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ssh": self.ssh, "address": self.address, "port": self.port,
                "project": self.project}


def machines_from_yaml(raw: Any, source: str) -> tuple[Machine, ...]:
    """The ``machines:`` mapping, every field checked; one line naming the field if not."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: machines is a mapping of NAME: {{ssh: user@host, ...}}")
    out = []
    for name, spec in raw.items():
        name = str(name)
        where = f"{source}: machine {name}"
        if name == LOCAL or not MACHINE_NAME.match(name):
            raise SpecError(f"{where}: a machine name is 1-12 lower-case letters/digits starting with a "
                            f"letter, and not {LOCAL!r} (this machine)")
        if not isinstance(spec, dict) or "ssh" not in spec or set(map(str, spec)) - _KEYS:
            raise SpecError(f"{where}: a mapping with ssh (user@host) and optionally address, port, project")
        out.append(machine(name, **{str(k): v for k, v in spec.items()}, where=where))
    return tuple(out)


def machine(name: str, ssh: Any, address: Any = None, port: Any = 22, project: Any = None,
            where: str = "") -> Machine:
    where = where or f"machine {name}"
    ssh = str(ssh)
    if not SSH_TARGET.match(ssh):
        raise SpecError(f"{where}: ssh must be user@host, not {ssh!r}")
    host = ssh.split("@", 1)[1]
    if address is None:
        address = host
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        raise SpecError(f"{where}: address must be an IPv4 address (where the other machines reach it); "
                        f"{ssh!r} names no address, so give one") from None
    if ip.version != 4 or ip.is_loopback or ip.is_unspecified:
        raise SpecError(f"{where}: address {address} must be another machine's IPv4 address")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise SpecError(f"{where}: port must be a TCP port number, not {port!r}")
    project = str(project) if project is not None else str(PROJECT_ROOT)
    if not project.startswith("/"):
        raise SpecError(f"{where}: project must be an absolute path, not {project!r}")
    return Machine(name, ssh, str(ip), port, project.rstrip("/") or "/")


def parse_machine_flag(text: str) -> Machine:
    """``--machine NAME=user@host[,address=IP][,port=N][,project=PATH]`` from the command line."""
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise SpecError(f"--machine {text!r}: NAME=user@host[,address=IP,port=N,project=PATH]")
    ssh, *opts = rest.split(",")
    kw: dict[str, Any] = {}
    for opt in opts:
        k, eq, v = opt.partition("=")
        if not eq or k not in _KEYS - {"ssh"}:
            raise SpecError(f"--machine {name}: {opt!r} is not address=IP, port=N or project=PATH")
        kw[k] = int(v) if k == "port" and v.isdigit() else v
    if not MACHINE_NAME.match(name) or name == LOCAL:
        raise SpecError(f"--machine {name}: a machine name is 1-12 lower-case letters/digits, not {LOCAL!r}")
    return machine(name, ssh, where=f"--machine {name}", **kw)


def check_placement(nodes: Iterable[Any], machines: Iterable[Machine], source: str) -> None:
    """Every named machine exists; nodes sharing a namespace share a machine; the client
    (the load generator's master) stays here."""
    names = {m.name for m in machines}
    where_ns: dict[str, str] = {}
    for n in nodes:
        m = n.machine or LOCAL
        if m != LOCAL and m not in names:
            raise SpecError(f"{source}: node {n.name}: machine {m!r} is not listed under machines "
                            f"({', '.join(sorted(names)) or 'none listed'})")
        if where_ns.setdefault(n.netns_key, m) != m:
            raise SpecError(f"{source}: node {n.name} shares namespace {n.netns_key} with a node on "
                            f"another machine; they must be placed together")
        if n.role == "client" and m != LOCAL:
            raise SpecError(f"{source}: node {n.name}: the client runs on this machine (the load "
                            "generator reports here); place the servers elsewhere")


def vni(testbed: str, link: str, member: int) -> int:
    """The VXLAN network id of one link member's tunnel: the same on both machines, and
    different for every testbed, link and member (24 bits, 0 and 1 left alone)."""
    digest = hashlib.sha256(f"{testbed}/{link}/{member}".encode()).digest()
    return 2 + int.from_bytes(digest[:3], "big") % (2 ** 24 - 2)


def tunnel_name(vni_: int) -> str:
    """The tunnel's name in the machine's own namespace, before it moves into its node's."""
    return f"tcps-v{vni_:06x}"

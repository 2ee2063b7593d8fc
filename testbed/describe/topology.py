"""Topology descriptions: pure dataclasses, loading from declarative files, validation.

A topology says which nodes exist (with a role and a CPU budget), which links join them
and on which subnets. Nothing here touches the kernel: building is the backends' job.

File format (YAML, see ``topologies/``)::

    name: cluster
    params: {host_cpu: 0.4, hosts: 1}          # defaults, overridable with -p key=value
    channel: tcp                               # how TCP server and hosts talk: tcp | unix | shm
    nodes:
      - {name: client, role: client, cpuset: "0"}
      - {name: "host{i}", role: host, count: hosts, cpu: host_cpu}
    links:
      - {name: san, kind: san, nodes: [tcpserver, "host{i}"], mbit: san_mbit}

Numbers may be parameter names or arithmetic on them (``host_cpu * nic_ratio``). A node
with ``count`` expands ``{i}`` from 1; a link member ``"host{i}"`` stands for all of them;
a link with ``count`` is repeated per ``i``. A link with two members is a veth pair, with
more it is a LAN around a bridge.
"""

from __future__ import annotations

import ast
import ipaddress
import operator
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import budget, cpulist
from .budget import BudgetShape
from .machines import LOCAL, Machine, check_placement, machines_from_yaml
from ..errors import SpecError

TOPOLOGY_DIR = Path(__file__).resolve().parent.parent / "topologies"  # package data (repo: topologies/ links here)
ROLES = ("client", "tcpserver", "host", "nic", "fileserver")
#: roles whose node forwards IP between the outside and the hosts behind it
FRONT_ROLES = ("tcpserver", "nic")
LINK_KINDS = ("public", "san")
CHANNELS = ("tcp", "unix", "shm")
# Interface names are "<node>-eth<k>" and must fit IFNAMSIZ-1 = 15 characters.
NODE_NAME = re.compile(r"^[a-z][a-z0-9]{0,8}$")
LINK_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")
MIN_CPU = 0.01
MAX_LINK_MEMBERS = 253  # one /24 per link, .255 broadcast and .254 left free
ADVISED_MIN_CPU = 0.1  # below this CFS bursts distort per-request cost (docs/design.md, "Facts")


@dataclass(frozen=True)
class Node:
    name: str
    role: str
    cpu: float | None = None  # in CPUs, as Docker counts: 0.5 is half of one core; None = unlimited
    cpuset: str | None = None  # e.g. "1" or "0-1"
    namespace: str | None = None  # share another node's network namespace (smp)
    sysctls: dict[str, str] = field(default_factory=dict)
    machine: str | None = None  # a name under the topology's machines; None: this machine

    @property
    def netns_key(self) -> str:
        return self.namespace or self.name


@dataclass(frozen=True)
class Link:
    name: str
    kind: str
    nodes: tuple[str, ...]
    mbit: float | None = None
    delay_ms: float | None = None
    loss_pct: float | None = None

    @property
    def is_lan(self) -> bool:
        return len(self.nodes) > 2


@dataclass(frozen=True)
class Topology:
    name: str
    nodes: tuple[Node, ...]
    links: tuple[Link, ...]
    channel: str = "tcp"
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    machines: tuple[Machine, ...] = ()
    budget: BudgetShape = field(default_factory=BudgetShape)  # how every cpu: is enforced

    def machine_of(self, node: str) -> str:
        """The machine a node (or namespace key) runs on: ``LOCAL`` or a name under machines."""
        for n in self.nodes:
            if node in (n.name, n.netns_key):
                return n.machine or LOCAL
        raise SpecError(f"no node named {node!r} in topology {self.name!r}")

    def machine(self, name: str) -> Machine:
        for m in self.machines:
            if m.name == name:
                return m
        raise SpecError(f"no machine named {name!r} in topology {self.name!r}")

    @property
    def remote_machines(self) -> list[Machine]:
        """The machines other than this one that hold at least one node."""
        used = {n.machine for n in self.nodes if n.machine and n.machine != LOCAL}
        return [m for m in self.machines if m.name in used]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise SpecError(f"no node named {name!r} in topology {self.name!r} "
                        f"(nodes: {', '.join(n.name for n in self.nodes)})")

    def by_role(self, role: str) -> list[Node]:
        return [n for n in self.nodes if n.role == role]

    @property
    def namespaces(self) -> list[str]:
        """Network namespace keys in order of first appearance (nodes may share one)."""
        seen: dict[str, None] = {}
        for n in self.nodes:
            seen.setdefault(n.netns_key, None)
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "channel": self.channel, "params": self.params,
            **({"machines": {m.name: {k: v for k, v in m.to_dict().items() if k != "name"}
                             for m in self.machines}} if self.machines else {}),
            "nodes": [n.__dict__ for n in self.nodes],
            "links": [{**l.__dict__, "nodes": list(l.nodes)} for l in self.links],
        }


# --- addresses ---------------------------------------------------------------------------

DEFAULT_SUBNET = "10.77.0.0/16"
BACKENDS = ("netns", "mininet")  # how nodes and links are built (testbed.system.backends)
SERVICE_PORT = 80


@dataclass(frozen=True)
class LinkPlan:
    link: Link
    subnet: ipaddress.IPv4Network
    addresses: dict[str, str]  # netns key -> address (without prefix length)
    interfaces: dict[str, str]  # netns key -> interface name inside that namespace


@dataclass(frozen=True)
class AddressPlan:
    base: ipaddress.IPv4Network
    links: tuple[LinkPlan, ...]
    service_address: str

    def addresses_of(self, netns_key: str) -> list[tuple[str, str]]:
        """(link name, address) pairs of one namespace, in link order."""
        return [(lp.link.name, lp.addresses[netns_key]) for lp in self.links if netns_key in lp.addresses]

    def all_addresses(self) -> set[str]:
        out = {self.service_address}
        for lp in self.links:
            out.update(lp.addresses.values())
        return out


def plan_addresses(topo: Topology, base: str = DEFAULT_SUBNET) -> AddressPlan:
    """One /24 per link in file order; members numbered from .1; the service address is .255.1."""
    try:
        net = ipaddress.ip_network(base)
    except ValueError as e:
        raise SpecError(f"subnet {base!r} is not a network: {e}") from None
    if net.version != 4 or not 8 <= net.prefixlen <= 16:
        raise SpecError(f"subnet {base} must be IPv4, from /8 to /16 (one /24 per link)")
    n_subnets = 2 ** (24 - net.prefixlen)
    if len(topo.links) >= n_subnets - 1:
        raise SpecError(f"{len(topo.links)} links do not fit in {base}")
    base_addr = net.network_address

    def sub24(i: int) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(f"{base_addr + 256 * i}/24")
    plans = []
    iface_count: dict[str, int] = {}
    for i, link in enumerate(topo.links):
        sub = sub24(i)
        addrs, ifaces = {}, {}
        for k, member in enumerate(link.nodes):
            key = topo.node(member).netns_key
            addrs[key] = str(sub.network_address + k + 1)
            idx = iface_count.get(key, 0)
            iface_count[key] = idx + 1
            ifaces[key] = f"{key}-eth{idx}"
        plans.append(LinkPlan(link, sub, addrs, ifaces))
    service = str(sub24(255 if n_subnets > 255 else n_subnets - 1).network_address + 1)
    return AddressPlan(net, tuple(plans), service)


def default_gateways(topo: Topology, plan: AddressPlan) -> dict[str, str]:
    """Namespace key -> default gateway: nodes that do not forward send everything via a
    front node (TCP server or NIC) on their first link that has one."""
    fronts = {n.netns_key for n in topo.nodes if n.role in FRONT_ROLES}
    out = {}
    for key in topo.namespaces:
        if key in fronts:
            continue
        for lp in plan.links:
            if key in lp.addresses:
                gw = next((lp.addresses[f] for f in lp.addresses if f in fronts), None)
                if gw:
                    out[key] = gw
                    break
    return out


# --- loading -----------------------------------------------------------------------------

_TOP_KEYS = {"name", "description", "params", "channel", "machines", "nodes", "links"}
_NODE_KEYS = {"name", "role", "cpu", "cpuset", "namespace", "count", "sysctls", "machine"}
_LINK_KEYS = {"name", "kind", "nodes", "mbit", "delay_ms", "loss_pct", "count"}
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.USub: operator.neg}


def available_topologies() -> list[str]:
    return sorted(p.stem for p in TOPOLOGY_DIR.glob("*.yaml"))


def load_topology(name_or_path: str | os.PathLike = "cluster",
                  params: dict[str, str] | None = None, machines: Iterable[Machine] = ()) -> Topology:
    """Load a shipped topology by name, or a file by path, with parameter overrides and
    machines added to (or replacing those of the same name in) its own."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = TOPOLOGY_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise SpecError(f"unknown topology {str(name_or_path)!r}: shipped are "
                            f"{', '.join(available_topologies())}, or give a file path")
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecError(f"cannot read topology file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    return topology_from_dict(raw, params or {}, source=str(path), machines=machines)


def parse_params(pairs: Iterable[str]) -> dict[str, str]:
    """``["hosts=4", "host_cpu=0.25"]`` -> dict; a clear error for anything else."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"parameter {pair!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def topology_from_dict(raw: Any, overrides: dict[str, Any], source: str = "<dict>",
                       machines: Iterable[Machine] = ()) -> Topology:
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a topology is a mapping with keys {sorted(_TOP_KEYS)}")
    _check_keys(raw, _TOP_KEYS, source)
    params = {**budget.PARAMS, **(raw.get("params") or {})}
    unknown = set(overrides) - set(params)
    if unknown:
        raise SpecError(f"{source}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                        f"this topology takes: {', '.join(sorted(params)) or 'none'}")
    for key, value in overrides.items():
        params[key] = _coerce(value, params[key], key)
    ev = _Evaluator(params, source)

    nodes: list[Node] = []
    templates: dict[str, list[str]] = {}  # "host{i}" -> ["host1", ...]
    for entry in _list(raw.get("nodes"), "nodes", source):
        _check_keys(entry, _NODE_KEYS, f"{source}: node {_label(entry)}")
        count = ev.integer(entry["count"], "count") if "count" in entry else None
        names = _expand(entry.get("name"), count, source)
        if count is not None:
            templates[str(entry["name"])] = names
        for i, name in enumerate(names, start=1):
            sysctls = entry.get("sysctls") or {}
            if not isinstance(sysctls, dict):
                raise SpecError(f"{source}: node {name}: sysctls must be a mapping")
            ns = entry.get("namespace")
            nodes.append(Node(
                name=name, role=str(entry.get("role", "")),
                cpu=ev.number(entry.get("cpu"), f"{name}.cpu"),
                cpuset=ev.text(entry.get("cpuset")),
                namespace=_format(str(ns), i, source) if ns is not None else None,
                sysctls={str(k): str(v) for k, v in sysctls.items()},
                machine=ev.text(entry.get("machine")),
            ))

    links: list[Link] = []
    for entry in _list(raw.get("links"), "links", source):
        _check_keys(entry, _LINK_KEYS, f"{source}: link {_label(entry)}")
        count = ev.integer(entry["count"], "count") if "count" in entry else None
        for i in (range(1, count + 1) if count is not None else [None]):
            members: list[str] = []
            for m in _list(entry.get("nodes"), "link nodes", source):
                m = str(m)
                if i is not None:
                    members.append(_format(m, i, source))
                elif m in templates:
                    members.extend(templates[m])
                else:
                    members.append(m)
            name = _format(str(entry.get("name", "")), i, source) if i is not None else str(entry.get("name", ""))
            links.append(Link(
                name=name, kind=str(entry.get("kind", "public")), nodes=tuple(members),
                mbit=ev.number(entry.get("mbit"), f"{name}.mbit"),
                delay_ms=ev.number(entry.get("delay_ms"), f"{name}.delay_ms"),
                loss_pct=ev.number(entry.get("loss_pct"), f"{name}.loss_pct"),
            ))

    topo = Topology(name=str(raw.get("name") or Path(source).stem), nodes=tuple(nodes),
                    links=tuple(links), channel=str(raw.get("channel", "tcp")),
                    description=str(raw.get("description", "")).strip(), params=params,
                    machines=_merged(machines_from_yaml(raw.get("machines"), source), machines),
                    budget=BudgetShape.from_params(params, source))
    validate(topo, source)
    return topo


def validate(topo: Topology, source: str = "<topology>") -> None:
    """Structural checks that need no machine: names, roles, link ends, channel."""
    if topo.channel not in CHANNELS:
        raise SpecError(f"{source}: channel {topo.channel!r} is not one of {', '.join(CHANNELS)}")
    seen: set[str] = set()
    for n in topo.nodes:
        if not NODE_NAME.match(n.name):
            raise SpecError(f"{source}: node name {n.name!r} must be 1-9 lower-case letters/digits "
                            "starting with a letter (interface names must fit 15 characters)")
        if n.name in seen:
            raise SpecError(f"{source}: duplicate node name {n.name!r}")
        seen.add(n.name)
        if n.role not in ROLES:
            raise SpecError(f"{source}: node {n.name}: role {n.role!r} is not one of {', '.join(ROLES)}")
        if n.cpu is not None and n.cpu < MIN_CPU:
            raise SpecError(f"{source}: node {n.name}: cpu {n.cpu} is below {MIN_CPU} CPUs")
        if n.cpu is not None and n.cpu * topo.budget.period_us < budget.MIN_QUOTA_US:
            raise SpecError(f"{source}: node {n.name}: cpu {n.cpu} per {topo.budget.period_ms:g} ms period is a quota "
                            f"below the kernel's {budget.MIN_QUOTA_US} us; raise cpu_period_ms")
        if n.cpuset is not None:
            parse_cpuset(n.cpuset, f"{source}: node {n.name}")
    keys = {n.netns_key for n in topo.nodes}
    for key in keys - seen:
        if not NODE_NAME.match(key):
            raise SpecError(f"{source}: namespace name {key!r} must look like a node name")
    link_names: set[str] = set()
    for link in topo.links:
        if not LINK_NAME.match(link.name):
            raise SpecError(f"{source}: link name {link.name!r} must be 1-8 lower-case letters/digits")
        if link.name in link_names:
            raise SpecError(f"{source}: duplicate link name {link.name!r}")
        link_names.add(link.name)
        if link.kind not in LINK_KINDS:
            raise SpecError(f"{source}: link {link.name}: kind {link.kind!r} is not one of {', '.join(LINK_KINDS)}")
        if len(link.nodes) < 2:
            raise SpecError(f"{source}: link {link.name} needs at least two nodes")
        if len(link.nodes) > MAX_LINK_MEMBERS:
            raise SpecError(f"{source}: link {link.name} has {len(link.nodes)} members; at most "
                            f"{MAX_LINK_MEMBERS} fit its /24 (addresses .1-.{MAX_LINK_MEMBERS})")
        for m in link.nodes:
            if m not in seen:
                raise SpecError(f"{source}: link {link.name} names unknown node {m!r}")
        ns_members = [topo.node(m).netns_key for m in link.nodes]
        if len(set(ns_members)) != len(ns_members):
            raise SpecError(f"{source}: link {link.name} joins a namespace to itself")
        for attr in ("mbit", "delay_ms", "loss_pct"):
            v = getattr(link, attr)
            if v is not None and v <= 0:
                raise SpecError(f"{source}: link {link.name}: {attr} must be positive, not {v}")
        if link.loss_pct is not None and link.loss_pct > 100:
            raise SpecError(f"{source}: link {link.name}: loss_pct is a percentage, at most 100, "
                            f"not {link.loss_pct}")
    check_placement(topo.nodes, topo.machines, source)
    if not topo.by_role("client"):
        raise SpecError(f"{source}: a topology needs a node with role client")
    if not topo.by_role("host"):
        raise SpecError(f"{source}: a topology needs at least one node with role host")


def check_cpu_budgets(topo: Topology, ncpus: int | None = None, machine: str = LOCAL) -> list[str]:
    """Refuse budgets the machine cannot give to the nodes placed on it; return warnings
    for budgets that distort."""
    ncpus = ncpus or os.cpu_count() or 1
    warnings = []
    all_cpus = frozenset(range(ncpus))
    groups: dict[frozenset[int], float] = {}
    nodes = [n for n in topo.nodes if (n.machine or LOCAL) == machine]
    for n in nodes:
        cpus = all_cpus
        if n.cpuset is not None:
            cpus = parse_cpuset(n.cpuset, f"node {n.name}")
            missing = cpus - all_cpus
            if missing:
                raise SpecError(f"node {n.name}: cpuset {n.cpuset} names CPU(s) "
                                f"{', '.join(map(str, sorted(missing)))}, but {'this machine' if machine == LOCAL else 'machine ' + machine} has {ncpus} "
                                f"(0-{ncpus - 1}); override it, e.g. -p server_cpuset=0")
        if n.cpu is not None:
            if n.cpu > len(cpus):
                raise SpecError(f"node {n.name}: cpu {n.cpu} is more than its {len(cpus)} CPU(s)")
            if n.cpu < ADVISED_MIN_CPU:
                warnings.append(f"node {n.name}: cpu {n.cpu} is below {ADVISED_MIN_CPU}; CFS quotas "
                                "run tiny budgets in bursts, inflating per-request cost")
            groups[cpus] = groups.get(cpus, 0.0) + n.cpu
    for cpus, _ in groups.items():
        # every budget confined within this set must fit in it
        inside = [n for n in nodes if n.cpu is not None
                  and (parse_cpuset(n.cpuset, "") if n.cpuset else all_cpus) <= cpus]
        total = sum(n.cpu for n in inside)  # type: ignore[misc]
        if total > len(cpus) + 1e-9:
            detail = " + ".join(f"{n.name} {n.cpu:g}" for n in inside)
            where = f"CPU(s) {cpulist.format_cpus(cpus)}" if cpus != all_cpus else "the machine"
            if machine != LOCAL:
                where += f" of machine {machine}"
            raise SpecError(f"CPU budgets exceed {where}: {detail} = {total:g} CPUs, "
                            f"but only {len(cpus)} available; lower them with -p")
    return warnings


def parse_cpuset(text: str, where: str) -> frozenset[int]:
    try:
        cpus = cpulist.parse(text)
    except ValueError:
        cpus = frozenset()
    if not cpus:
        raise SpecError(f"{where}: cpuset {text!r} is not {cpulist.RULE}")
    return cpus


# --- helpers -----------------------------------------------------------------------------

def _merged(own: tuple[Machine, ...], given: Iterable[Machine]) -> tuple[Machine, ...]:
    out = {m.name: m for m in own}
    out.update((m.name, m) for m in given)
    return tuple(out.values())


def _check_keys(entry: Any, allowed: set[str], where: str) -> None:
    if not isinstance(entry, dict):
        raise SpecError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = set(map(str, entry)) - allowed
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                        f"allowed: {', '.join(sorted(allowed))}")


def _list(value: Any, what: str, source: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(f"{source}: {what} must be a list")
    return value


def _expand(name: Any, count: int | None, source: str) -> list[str]:
    if not isinstance(name, str) or not name:
        raise SpecError(f"{source}: every node needs a name")
    if count is None:
        return [name]
    if "{i}" not in name:
        raise SpecError(f"{source}: node {name!r} has a count, so its name needs '{{i}}'")
    if not 1 <= count <= MAX_LINK_MEMBERS:
        raise SpecError(f"{source}: node {name!r}: count must be from 1 to {MAX_LINK_MEMBERS}, not {count}")
    return [_format(name, i, source) for i in range(1, count + 1)]


def _label(entry: Any) -> str:
    """A node or link entry's name for an error message, whatever the entry is."""
    return str(entry.get("name", "?")) if isinstance(entry, dict) else repr(entry)[:40]


def _format(template: str, i: int, source: str) -> str:
    """``{i}`` in a name template; any other brace is an error, not a traceback."""
    try:
        return template.format(i=i)
    except (KeyError, IndexError, ValueError, AttributeError):
        raise SpecError(f"{source}: {template!r}: the only placeholder a name may hold is {{i}}") from None


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Command-line strings take the type of the parameter's default."""
    if not isinstance(value, str):
        return value
    if value.lower() in ("none", "null", ""):
        return None
    try:
        if isinstance(default, bool):
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float) or default is None:
            return float(value) if re.fullmatch(r"[-+]?[0-9.]+(e[-+]?\d+)?", value) else value
    except ValueError:
        raise SpecError(f"parameter {key}={value!r} is not a {type(default).__name__}") from None
    return value


class _Evaluator:
    """Numbers in topology files: literals, parameter names, or + - * / on them."""

    def __init__(self, params: dict[str, Any], source: str):
        self.params, self.source = params, source

    def value(self, expr: Any, what: str) -> Any:
        if expr is None or isinstance(expr, (int, float)):
            return expr
        text = str(expr).strip()
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError:
            return text
        return self._eval(tree.body, what, text)

    def _eval(self, node: ast.AST, what: str, text: str) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in self.params:
                raise SpecError(f"{self.source}: {what}: {text!r} names unknown parameter {node.id!r}")
            return self.params[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = self._eval(node.left, what, text), self._eval(node.right, what, text)
            if a is None or b is None:
                return None
            return _OPS[type(node.op)](a, b)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](self._eval(node.operand, what, text))
        raise SpecError(f"{self.source}: {what}: {text!r} is not a number, parameter or arithmetic")

    def number(self, expr: Any, what: str) -> float | None:
        v = self.value(expr, what)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpecError(f"{self.source}: {what} must be a number, not {v!r}")
        return float(v)

    def integer(self, expr: Any, what: str) -> int:
        v = self.number(expr, what)
        if v is None or v != int(v):
            raise SpecError(f"{self.source}: {what} must be a whole number, not {v!r}")
        return int(v)

    def text(self, expr: Any) -> str | None:
        if expr is None:
            return None
        v = self.params.get(expr, expr) if isinstance(expr, str) else expr
        return None if v is None else str(v)

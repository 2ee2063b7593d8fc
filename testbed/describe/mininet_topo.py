"""Bring your own Mininet topology: a Mininet ``Topo`` becomes a testbed ``Topology``.

    sudo testbed up mypkg.mytopo:MyTopo --role client=h1 --role tcpserver=r1 \\
        --role host=h2,h3 [-p n=3] [--backend mininet]
    sudo testbed up --custom mytopo.py --topo mytopo,3 --role ...     # Mininet's own convention

A Mininet ``Topo`` is a pure description (a graph of hosts, switches and links with
parameters), so it maps onto ``testbed.describe.topology.Topology`` and then builds on either backend:

- every Topo node given a role (a host, or a switch you want as a router-like node, e.g. the
  TCP server) becomes a testbed node with a network namespace of its own;
- switches without a role are layer-2 segments: switches linked to each other form one
  segment, and a segment becomes one LAN (a bridge) around the role nodes it touches
  (named after its first switch); a segment touching two role nodes is a plain veth pair;
- a direct link between two role nodes is a two-member link (``l1``, ``l2``, ...);
- link parameters: ``bw`` (Mbit/s) -> ``mbit``, ``delay`` ("5ms") -> ``delay_ms``, ``loss``
  (%) -> ``loss_pct``; a LAN takes them only if all its Topo links agree;
- host parameters: ``cpu`` (Mininet: a share of the *whole machine*) -> ``cpu`` in CPUs,
  ``cores`` -> ``cpuset``;
- a link is ``public`` if it reaches a client, else ``san``.

``-p key=value`` pairs are passed to the Topo class as keyword arguments (numbers become
numbers). Every host needs a role; the testbed's own checks then apply (a client and a
host are required; names must fit interface names: 1-9 lower-case letters/digits).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable

from ..errors import SpecError
from .budget import PARAMS, BudgetShape, split_params
from .machines import LOCAL, Machine
from .topology import LINK_NAME, ROLES, Link, Node, Topology, validate


def is_mininet_ref(topology: str) -> bool:
    """``module:Class`` or ``path/file.py:Class`` (a shipped name or YAML path has no colon)."""
    mod, sep, cls = topology.rpartition(":")
    return bool(sep and mod and cls.isidentifier())


def parse_roles(options: Iterable[str]) -> dict[str, str]:
    """``["client=h1", "host=h2,h3"]`` -> ``{"h1": "client", "h2": "host", "h3": "host"}``."""
    out: dict[str, str] = {}
    for opt in options:
        role, sep, names = opt.partition("=")
        role = role.strip()
        if not sep or role not in ROLES:
            raise SpecError(f"--role {opt!r}: expected ROLE=NODE[,NODE...] with ROLE one of "
                            f"{', '.join(ROLES)}")
        for name in filter(None, (n.strip() for n in names.split(","))):
            if name in out and out[name] != role:
                raise SpecError(f"node {name} has two roles: {out[name]} and {role}")
            out[name] = role
    return out


def load_topo_class(ref: str) -> type:
    """Import ``module:Class`` (or ``file.py:Class``) and return the class."""
    mod_name, _, cls_name = ref.rpartition(":")
    try:
        if mod_name.endswith(".py") or os.sep in mod_name:
            path = Path(mod_name)
            spec = importlib.util.spec_from_file_location(f"tcps_topo_{path.stem}", path)
            if spec is None or spec.loader is None or not path.exists():
                raise SpecError(f"{ref}: no Python file {path}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())  # `python -m testbed` from a project directory
            module = importlib.import_module(mod_name)
    except ImportError as e:
        hint = (" (Mininet's Topo comes with Debian's mininet package: scripts/setup.sh)"
                if "mininet" in str(e) else "")
        raise SpecError(f"{ref}: cannot import {mod_name}: {e}{hint}") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise SpecError(f"{ref}: module {mod_name} has no {cls_name}")
    return cls


def load_custom_topology(path: str, topo: str, roles: Iterable[str] | dict[str, str],
                         params: dict[str, str] | None = None, machines: Iterable[Machine] = ()) -> Topology:
    """Mininet's own convention: ``--custom FILE --topo NAME[,ARG...]``, where FILE defines
    ``topos = {"NAME": constructor}``; ARGs (numbers become numbers, ``k=v`` a keyword) and
    ``-p key=value`` pairs go to the constructor."""
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"--custom {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"tcps_custom_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise SpecError(f"--custom {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as e:
        raise SpecError(f"--custom {path}: {e} (Mininet's Topo comes with Debian's mininet package: "
                        "scripts/setup.sh)") from None
    topos = getattr(module, "topos", None)
    if not isinstance(topos, dict) or not topos:
        raise SpecError(f"--custom {path}: defines no `topos = {{'name': TopoClass}}` mapping, as Mininet expects")
    name, *words = [w.strip() for w in topo.split(",")]
    if name not in topos:
        raise SpecError(f"--topo {name!r}: {path} offers {', '.join(sorted(topos))}")
    args = [_literal(w) for w in words if "=" not in w]
    kwargs = {k.strip(): _literal(v) for k, _, v in (w.partition("=") for w in words if "=" in w)}
    shape, own = split_params(params or {})
    kwargs.update({k: _literal(v) for k, v in own.items()})
    try:
        built = topos[name](*args, **kwargs)
    except TypeError as e:
        raise SpecError(f"--topo {topo}: cannot build it with {args or ''}{kwargs or ''}: {e}") from None
    role_map = roles if isinstance(roles, dict) else parse_roles(roles)
    return from_mininet(built, role_map, name=name.lower(), params={**kwargs, **shape}, machines=machines)


def load_mininet_topology(ref: str, roles: Iterable[str] | dict[str, str],
                          params: dict[str, str] | None = None, machines: Iterable[Machine] = ()) -> Topology:
    """Instantiate the Topo class ``ref`` with ``params`` and convert it."""
    cls = load_topo_class(ref)
    shape, own = split_params(params or {})
    kwargs = {k: _literal(v) for k, v in own.items()}
    try:
        topo = cls(**kwargs)
    except TypeError as e:
        raise SpecError(f"{ref}: cannot build the Topo with {kwargs or 'no parameters'}: {e}") from None
    role_map = roles if isinstance(roles, dict) else parse_roles(roles)
    return from_mininet(topo, role_map, name=cls.__name__.lower(), params={**kwargs, **shape}, machines=machines)


def from_mininet(topo: Any, roles: dict[str, str], name: str = "mininet",
                 params: dict[str, Any] | None = None, machines: Iterable[Machine] = ()) -> Topology:
    """Convert a Mininet ``Topo`` instance, with a role per node that should be a node."""
    all_nodes = list(topo.hosts()) + list(topo.switches())
    unknown = sorted(set(roles) - set(all_nodes))
    if unknown:
        raise SpecError(f"--role names {', '.join(unknown)}, not in the Topo "
                        f"(hosts: {', '.join(topo.hosts()) or 'none'}; "
                        f"switches: {', '.join(topo.switches()) or 'none'})")
    missing = [h for h in topo.hosts() if h not in roles]
    if missing:
        raise SpecError(f"host(s) {', '.join(missing)} have no role: add e.g. "
                        f"--role host={','.join(missing)} (roles: {', '.join(ROLES)})")
    ncpus = os.cpu_count() or 1
    nodes = [_node(n, roles[n], topo.nodeInfo(n), ncpus) for n in all_nodes if n in roles]

    # union-find over role-less switches: each class is one layer-2 segment
    parent = {s: s for s in topo.switches() if s not in roles}

    def find(s: str) -> str:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    edges = list(topo.links(sort=False, withInfo=True))
    for a, b, info in edges:
        _check_link_params(a, b, info)
    for a, b, _ in edges:
        if a in parent and b in parent:
            parent[find(a)] = find(b)

    entries: list[tuple[str | None, list[str], list[dict]]] = []  # (segment, members, link infos)
    segments: dict[str, int] = {}
    for a, b, info in edges:
        seg_a, seg_b = (find(a) if a in parent else None), (find(b) if b in parent else None)
        if seg_a is None and seg_b is None:
            entries.append((None, [a, b], [info]))
            continue
        seg = seg_a or seg_b
        if seg not in segments:
            segments[seg] = len(entries)
            entries.append((seg, [], []))
        _, members, infos = entries[segments[seg]]
        infos.append(info)
        for end, s in ((a, seg_a), (b, seg_b)):
            if s is None and end not in members:
                members.append(end)

    links: list[Link] = []
    used: set[str] = set()
    for seg, members, infos in entries:
        if len(members) < 2:
            continue  # a switch segment reaching at most one node carries nothing
        first_switch = next((s for s in parent if find(s) == seg), "") if seg else ""
        link_name = _link_name(first_switch if seg else f"l{len(links) + 1}", used, len(links) + 1)
        kind = "public" if any(roles[m] == "client" for m in members) else "san"
        links.append(Link(name=link_name, kind=kind, nodes=tuple(members),
                          mbit=_agree(infos, "bw", link_name, float),
                          delay_ms=_agree(infos, "delay", link_name, _milliseconds),
                          loss_pct=_agree(infos, "loss", link_name, float)))

    params = {k: _literal(v) if k in PARAMS else v for k, v in (params or {}).items()}
    result = Topology(name=name, nodes=tuple(nodes), links=tuple(links),
                      description=f"converted from Mininet Topo {type(topo).__name__}",
                      params=params, machines=tuple(machines),
                      budget=BudgetShape.from_params(params, f"Mininet Topo {type(topo).__name__}"))
    validate(result, f"Mininet Topo {type(topo).__name__}")
    return result


#: Topo link keys that name or place things the testbed's address plan decides itself
_LINK_NAMING = {"node1", "node2", "port1", "port2", "key", "intfName1", "intfName2", "addr1", "addr2", "cls"}
_LINK_SHAPING = {"bw", "delay", "loss"}


def _check_link_params(a: str, b: str, info: dict[str, Any]) -> None:
    """Shaping the testbed cannot reproduce is refused, never dropped silently."""
    unsupported = sorted(k for k, v in info.items()
                         if k not in _LINK_NAMING | _LINK_SHAPING and v not in (None, False, 0))
    if unsupported:
        raise SpecError(f"Topo link {a}-{b}: {', '.join(unsupported)} cannot be converted "
                        f"(supported: bw, delay, loss); remove it from the Topo")


def _node(name: str, role: str, info: dict[str, Any], ncpus: int) -> Node:
    cpu = info.get("cpu")
    cores = info.get("cores")
    if isinstance(cores, (list, tuple)):
        cores = ",".join(str(c) for c in cores)
    server = info.get("server")  # the cluster edition's placement: a machine's name
    return Node(name=name, role=role,
                cpu=round(float(cpu) * ncpus, 4) if cpu not in (None, -1) else None,
                cpuset=str(cores) if cores is not None else None,
                machine=None if server in (None, "localhost", LOCAL) else str(server))


def _link_name(wanted: str, used: set[str], ordinal: int) -> str:
    name = re.sub(r"[^a-z0-9]", "", wanted.lower())[:8]
    if not LINK_NAME.match(name) or name in used:
        name = f"l{ordinal}"
        while name in used:
            ordinal += 1
            name = f"l{ordinal}"
    used.add(name)
    return name


def _agree(infos: list[dict], key: str, link: str, convert: Any) -> float | None:
    values = {convert(i[key]) for i in infos if i.get(key) not in (None, 0, "")}
    if len(values) > 1:
        raise SpecError(f"link {link}: its Topo links set different {key} values "
                        f"({', '.join(map(str, sorted(values)))}); a LAN has one")
    return values.pop() if values else None


def _milliseconds(value: Any) -> float:
    """Mininet's delay strings: '5ms', '100us', '1s', or a bare number of ms."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*(us|ms|s)?\s*", str(value))
    if not m:
        raise SpecError(f"delay {value!r} is not a time like '5ms'")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3, None: 1.0}[m.group(2)]
    return float(m.group(1)) * scale


def _literal(value: Any) -> Any:
    """A command-line string as the Python literal it spells; typed values (YAML) as they are."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value

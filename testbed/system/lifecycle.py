"""A running testbed: build a topology, run processes in its nodes, tear it all down.

    with Testbed(load_topology("cluster"), name="t1") as tb:
        tb.run("client", ["ping", "-c1", tb.address("host1")])

Building journals every kernel object before creating it and the state lives under
/run/tcps/<name>/, so ``Testbed.attach(name)`` works from another shell, and ``down``
(or ``clean`` after a crash) removes everything by exact name.

The nodes and links come from a backend (backends/base.py, chosen by name in
backends/__init__.py); the processes of the mode from a service plan (services.py),
computed before anything is built so that bad options cost nothing, and carried out by
starter.py once the nodes and their cgroups exist.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from pyroute2 import IPRoute

from .. import PREFIX
from . import cgroups as cg
from .backends import backend_of_journal, make_backend
from .backends.base import BuiltTopology
from ..errors import SpecError, TestbedError
from .kernel import is_root
from ..describe.names import cgroup_name, netns_name, shm_prefix
from .processes import ProcessRecord, kill_pids, record, spawn, stop
from ..offload.modes import Mode, get_mode
from ..describe.options import ServiceOptions
from ..describe.services import plan_services
from ..describe.topology import DEFAULT_SUBNET, SERVICE_PORT, Topology, check_cpu_budgets, plan_addresses
from .starter import start
from .state import StateStore

log = logging.getLogger(__name__)


def require_root() -> None:
    if not is_root():
        raise TestbedError("the testbed needs root (namespaces, cgroups): run it with sudo")


def check_subnet_free(base: str) -> None:
    """Refuse a subnet that overlaps any route or address of the machine's own namespace."""
    net = ipaddress.ip_network(base)
    with IPRoute() as ipr:
        for route in ipr.get_routes(family=2):
            dst = route.get_attr("RTA_DST")
            if dst is None or route["dst_len"] == 0:
                continue  # the default route overlaps everything by design
            other = ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False)
            if net.overlaps(other):
                raise SpecError(f"subnet {base} overlaps this machine's route to {other}; "
                                "choose another with --subnet")
        for addr in ipr.get_addr(family=2):
            a = ipaddress.ip_address(addr.get_attr("IFA_ADDRESS"))
            if a in net and not a.is_loopback:
                raise SpecError(f"subnet {base} contains this machine's address {a}; "
                                "choose another with --subnet")


class Testbed:
    """One testbed on this machine: nodes as namespaces + cgroups, links as veths."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, topology: Topology, name: str = "tb", *, mode: Mode | str = "regular",
                 subnet: str = DEFAULT_SUBNET, start_services: bool = False,
                 service_options: ServiceOptions | Mapping[str, Any] | None = None, backend: str = "netns"):
        """``mode`` and ``service_options`` may come as names and a mapping from a program:
        they are made a ``Mode`` and ``ServiceOptions`` here, checked, before anything else."""
        self.topology = topology
        self.name = name
        self.backend = backend
        self.store = StateStore(name)
        self.network = make_backend(backend, name, journal=self.store.journal)  # unknown: an error now
        self.built = BuiltTopology()
        try:
            self.mode = mode if isinstance(mode, Mode) else get_mode(mode)
        except ValueError as e:
            raise SpecError(str(e)) from None
        self.subnet = subnet
        self.start_services = start_services
        self.service_options = ServiceOptions.from_mapping(service_options or {})
        self.addresses = plan_addresses(topology, subnet)
        self.cgroups = cg.detect()
        self.processes: list[ProcessRecord] = []
        self.warnings: list[str] = []
        self.recorded: dict[str, Any] = {}  # saved with the state: the services' URLs and docroot, the runner's owner
        self.build_seconds = 0.0

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> "Testbed":
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> "Testbed":
        require_root()
        self.warnings = check_cpu_budgets(self.topology)
        if self.store.exists():
            raise TestbedError(f"a testbed named {self.name!r} already exists: "
                               f"`sudo testbed down {self.name}` first, or pick --name")
        check_subnet_free(self.subnet)
        self._check_names_free()
        services = (plan_services(self.name, self.topology, self.addresses, self.mode, self.service_options,
                                  self.store.dir) if self.start_services else None)
        t0 = time.monotonic()
        self.store.create()
        self.store.save(self._state(building=True))
        try:
            self.built = self.network.build(self.topology, self.addresses)
            self._make_cgroups()
            self.build_seconds = time.monotonic() - t0
            self.save()
            if services is not None:
                start(self, services)
                self.save()
        except BaseException:
            self.down()
            raise
        return self

    def _check_names_free(self) -> None:
        """Refuse to build over objects of our names that no journal of ours records: a
        failed ``up`` would otherwise remove (or adopt and empty) what someone else made."""
        from .kernel import list_netns
        mine = f"{PREFIX}-{self.name}"
        found = [f"netns {n}" for n in list_netns(f"{mine}-")]
        found += [f"cgroup {g}" for g in self.cgroups.list_groups(mine) if g == mine]
        if found:
            raise TestbedError(f"{', '.join(found)} already exist(s) and no testbed of this machine "
                               f"made them: pick another --name (`sudo testbed clean --force` "
                               f"removes them)")

    def _make_cgroups(self) -> None:
        self.store.journal("cgroup", cgroup_name(self.name))
        self.cgroups.create(cgroup_name(self.name), None, None)
        for n in self.topology.nodes:
            self.cgroups.create(cgroup_name(self.name, n.name), n.cpu, n.cpuset)
            limits = self.cgroups.limits(cgroup_name(self.name, n.name))
            if n.cpu is not None and abs(float(limits["cpu"]) - n.cpu) > 0.011:  # type: ignore[arg-type]
                raise TestbedError(f"node {n.name}: cgroup reads back {limits['cpu']} CPUs, not {n.cpu}")

    def down(self) -> list[str]:
        """Stop processes, remove cgroups and namespaces, forget the state. Idempotent."""
        return teardown(self.name)

    # -- processes -----------------------------------------------------------------------

    def netns(self, node: str) -> str:
        return netns_name(self.name, self.topology.node(node).netns_key)

    def cgroup(self, node: str) -> str:
        self.topology.node(node)
        return cgroup_name(self.name, node)

    def popen(self, node: str, argv: Sequence[str], log_name: str | None = None,
              supervise: bool = False, **popen_kw: Any) -> subprocess.Popen:
        """Start a process in ``node``; its output goes to the node's log unless redirected."""
        log_path = self.store.logs / f"{node}-{log_name or Path(argv[0]).name}.log"
        proc = spawn(self.netns(node), self.cgroups.procs_files(self.cgroup(node)), argv,
                     log_path=log_path, **popen_kw)
        if supervise:
            self.processes.append(record(log_name or Path(argv[0]).name, node, proc, argv, log_path))
            self.save()
        return proc

    def run(self, node: str, argv: Sequence[str], timeout: float | None = 60,
            check: bool = False, **kw: Any) -> subprocess.CompletedProcess:
        proc = spawn(self.netns(node), self.cgroups.procs_files(self.cgroup(node)), argv,
                     stdout=kw.pop("stdout", subprocess.PIPE), stderr=kw.pop("stderr", subprocess.PIPE),
                     **kw)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(proc.pid, None, timeout=1)
            raise
        result = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check:
            result.check_returncode()
        return result

    # -- addresses -----------------------------------------------------------------------

    def address(self, node: str, network: str | None = None) -> str:
        key = self.topology.node(node).netns_key
        for link, addr in self.addresses.addresses_of(key):
            if network is None or link == network:
                return addr
        raise TestbedError(f"node {node} has no address" + (f" on {network}" if network else ""))

    @property
    def service_url(self) -> str:
        port = "" if SERVICE_PORT == 80 else f":{SERVICE_PORT}"
        return f"http://{self.addresses.service_address}{port}/"

    # -- state ---------------------------------------------------------------------------

    def save(self) -> None:
        self.store.save(self._state())

    def _state(self, building: bool = False) -> dict[str, Any]:
        nodes = {}
        for n in self.topology.nodes:
            group = cgroup_name(self.name, n.name)
            nodes[n.name] = {
                "role": n.role, "cpu": n.cpu, "cpuset": n.cpuset,
                "netns": netns_name(self.name, n.netns_key),
                "addresses": dict(self.addresses.addresses_of(n.netns_key)),
                "cgroups": [str(d) for d in self.cgroups.dirs(group)],
                "pids": [p.pid for p in self.processes if p.node == n.name],
            }
        return {
            "name": self.name, "building": building, "mode": self.mode.name, "backend": self.backend,
            "network": self.built.to_dict(),
            "topology": self.topology.to_dict(), "subnet": self.subnet,
            "service_address": self.addresses.service_address, "service_url": self.service_url,
            "addresses": sorted(self.addresses.all_addresses()),
            "nodes": nodes, "processes": [p.to_dict() for p in self.processes],
            "cgroup_version": self.cgroups.version, "created": time.time(),
            "build_seconds": round(self.build_seconds, 4), "warnings": self.warnings,
            **self.recorded,
        }

    @classmethod
    def attach(cls, name: str) -> "Testbed":
        """The testbed ``name`` that some other process built (for status, exec, down)."""
        from ..describe.topology import topology_from_dict
        state = StateStore(name).load()
        raw = state["topology"]
        topo_raw = {"name": raw["name"], "channel": raw["channel"], "nodes": [
            {k: v for k, v in n.items() if k in ("name", "role", "cpu", "cpuset", "namespace", "sysctls")}
            for n in raw["nodes"]], "links": [
            {k: v for k, v in l.items() if k in ("name", "kind", "nodes", "mbit", "delay_ms", "loss_pct")}
            for l in raw["links"]]}
        tb = cls(topology_from_dict(topo_raw, {}, source=f"testbed {name}"), name,
                 mode=state.get("mode", "regular"), subnet=state.get("subnet", DEFAULT_SUBNET),
                 backend=state.get("backend", "netns"))
        tb.processes = [ProcessRecord(**p) for p in state.get("processes", [])]
        tb.built = BuiltTopology.from_dict(state.get("network", {}))
        tb.recorded = {k: v for k, v in state.items() if k not in tb._state()}
        tb.build_seconds = state.get("build_seconds", 0.0)
        return tb


def teardown(name: str) -> list[str]:
    """Remove testbed ``name`` by what its state and journal recorded. Safe after SIGKILL."""
    store = StateStore(name)
    removed: list[str] = []
    state: dict[str, Any] = {}
    try:
        state = store.load()
    except TestbedError:
        pass
    for p in state.get("processes", []):
        if stop(p["pid"], p.get("start_time")):
            removed.append(f"process {p['pid']} ({p['name']})")
    groups = cg.detect()
    journal = store.journaled()
    for kind, entry in journal:
        if kind == "pid":
            pid, _, start = entry.partition(":")
            if stop(int(pid), int(start) if start else None):
                removed.append(f"process {pid}")
    cgroup_parents = {n for kind, n in journal if kind == "cgroup"} | {cgroup_name(name)}
    # anything still inside our cgroups was started in our nodes: stop it by pid
    for parent in cgroup_parents:
        for node_dir in _child_groups(groups, parent):
            pids = groups.pids(node_dir)
            if pids:
                kill_pids(pids)
                removed.extend(f"process {p}" for p in pids)
    # the nodes' namespaces as the state names them too, should the journal have lost a line
    network = [*journal, *(("netns", n["netns"]) for n in state.get("nodes", {}).values())]
    backend = make_backend(backend_of_journal(state.get("backend"), journal), name)
    removed.extend(backend.teardown(network))
    for parent in cgroup_parents:
        if any(d.exists() for d in groups.dirs(parent)):
            groups.remove(parent)
            removed.append(f"cgroup {parent}")
    for kind, n in journal:
        if kind == "file":
            Path(n).unlink(missing_ok=True)
    # the shm channel's socket and rings (names.shm_channel_name), left behind when their
    # processes were killed; testbed names hold no '-', so this prefix is ours
    for f in shm_files(shm_prefix(name)):
        f.unlink(missing_ok=True)
        removed.append(f"file {f}")
    if store.dir.exists():
        import shutil
        shutil.rmtree(store.dir, ignore_errors=True)
    return removed


def shm_files(prefix: str) -> list[Path]:
    """Files and sockets in /dev/shm named with ``prefix``: a directory or a link there is
    not something we make."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return []
    return sorted(f for f in shm.glob(f"{prefix}*") if not f.is_dir() and not f.is_symlink())


def _child_groups(groups: cg.Cgroups, parent: str) -> list[str]:
    out = [parent]
    for base in groups.dirs(parent):
        if base.is_dir():
            out.extend(f"{parent}/{p.name}" for p in base.iterdir() if p.is_dir())
    return sorted(set(out))

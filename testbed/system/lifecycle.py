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

Nodes placed on other machines (describe/machines.py) are built there by the project's
agent over SSH (remote/): ``up`` first asks every machine whether it can (reachable, root,
the same code, its clock), then builds this machine's share, then journals each machine
(``machine`` entries: how to reach it) before asking it to build its own. The starter and
the verbs reach a node through ``run``/``popen``/``add_local_address``/``set_route``,
which go to the node's machine; ``teardown`` asks every journaled machine to tear its share
down by its own journal.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
import sys
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
from ..describe.machines import LOCAL, MAX_CLOCK_OFFSET_S, Machine
from ..describe.topology import DEFAULT_SUBNET, SERVICE_PORT, Topology, check_cpu_budgets, plan_addresses
from .remote.ssh import Remote, route_source
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
                 service_options: ServiceOptions | Mapping[str, Any] | None = None, backend: str = "netns",
                 here: str = LOCAL, peers: Mapping[str, str] | None = None):
        """``mode`` and ``service_options`` may come as names and a mapping from a program:
        they are made a ``Mode`` and ``ServiceOptions`` here, checked, before anything else.
        ``here`` is the machine whose share this object builds (the agent's; ``LOCAL`` for
        the testbed that drives all machines), ``peers`` the other machines' addresses."""
        self.topology = topology
        self.name = name
        self.backend = backend
        self.here = here
        self.store = StateStore(name)
        # the machines this testbed drives (only the one on the controlling machine drives)
        self.remotes = ({m.name: Remote(m) for m in topology.remote_machines} if here == LOCAL else {})
        if peers is None:
            peers = {m.name: m.address for m in topology.remote_machines} if here == LOCAL else {}
        self.network = make_backend(backend, name, journal=self.store.journal,  # unknown: an error now
                                    here=here, peers=peers)
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

    @property
    def local_nodes(self) -> list[str]:
        """The nodes this object builds and runs: those placed on ``here``."""
        return [n.name for n in self.topology.nodes if (n.machine or LOCAL) == self.here]

    def up(self) -> "Testbed":
        require_root()
        self.warnings = check_cpu_budgets(self.topology, machine=self.here)
        if self.store.exists():
            where = "" if self.here == LOCAL else f" on machine {self.here}"
            raise TestbedError(f"a testbed named {self.name!r} already exists{where}: "
                               f"`sudo testbed down {self.name}` first, or pick --name")
        check_subnet_free(self.subnet)
        self._check_names_free()
        services = (plan_services(self.name, self.topology, self.addresses, self.mode, self.service_options,
                                  self.store.dir) if self.start_services else None)
        facts = self._ask_machines()  # every refusal before anything is built
        t0 = time.monotonic()
        self.store.create()
        self.store.save(self._state(building=True))
        try:
            self.built = self.network.build(self.topology, self.addresses)
            self._make_cgroups()
            self._build_remote_shares(facts)
            self.build_seconds = time.monotonic() - t0
            self.save()
            if services is not None:
                start(self, services)
                self.save()
        except BaseException:
            try:
                self.down()
            except TestbedError as e:  # a machine that cannot be reached: say so, keep the cause
                log.warning("%s", e)
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

    def _ask_machines(self) -> dict[str, dict[str, Any]]:
        """Every other machine: reachable, root, the same code, its clock close to ours.
        One line naming the machine and what to do, before anything is built."""
        from .remote.identity import machine_id, source_digest
        facts: dict[str, dict[str, Any]] = {}
        mine = source_digest() if self.remotes else ""
        for name, remote in self.remotes.items():
            m = remote.machine
            hello = remote.call("hello", timeout=90)
            if hello.get("machine_id") == machine_id():
                raise TestbedError(f"machine {name}: {m.ssh} is this machine (the same machine-id): its nodes "
                                   "would share this machine's namespaces and state; leave machine unset")
            if not hello.get("root"):
                raise TestbedError(f"machine {name}: {m.ssh} is not root there (uid {hello.get('uid')}): the "
                                   "testbed needs root on every machine (namespaces, cgroups); use root@")
            if hello.get("digest") != mine:
                raise TestbedError(f"machine {name}: the project at {m.project} runs other code than this one "
                                   f"(sources {hello.get('digest')} there, {mine} here): install the same "
                                   "commit there with the README's set-up")
            clock = remote.clock()
            if abs(clock.offset_s) - clock.rtt_s / 2 > MAX_CLOCK_OFFSET_S:
                raise TestbedError(f"machine {name}: its clock is {clock.offset_s:+.2f} s from this machine's "
                                   f"(at most {MAX_CLOCK_OFFSET_S:g} s): synchronize both (systemd-timesyncd "
                                   "or chrony) so that per-node samples line up")
            facts[name] = {"ssh": m.ssh, "address": m.address, "source": route_source(m.address),
                           "clock": clock.to_dict(), "kernel": hello.get("kernel"), "cpus": hello.get("cpus"),
                           "cgroup": hello.get("cgroup"), "hostname": hello.get("hostname")}
        return facts

    def _build_remote_shares(self, facts: dict[str, dict[str, Any]]) -> None:
        """Each other machine builds its share (journaled here first: how to reach it)."""
        import uuid
        owner = uuid.uuid4().hex  # the shares are this testbed's: `down` proves it with this
        for name, remote in self.remotes.items():
            peers = {LOCAL: facts[name]["source"],
                     **{m.name: m.address for m in self.topology.remote_machines if m.name != name}}
            self.store.journal("machine", json.dumps({"machine": remote.machine.to_dict(), "owner": owner}))
            built = remote.call("build", {"testbed": self.name, "topology": self.topology.to_dict(),
                                          "mode": self.mode.name, "subnet": self.subnet, "machine": name,
                                          "peers": peers, "owner": owner}, timeout=300)
            facts[name].update(namespaces=built["namespaces"], budgets=built["budgets"],
                               cgroup_version=built["cgroup_version"])
            self.warnings.extend(f"machine {name}: {w}" for w in built.get("warnings", []))
            self.recorded.setdefault("machines", {})[name] = facts[name]
            self.save()

    def remote_of(self, node: str) -> Remote | None:
        """The machine that runs ``node``, when it is not this one."""
        machine = self.topology.machine_of(node)
        if machine == self.here:
            return None
        if machine not in self.remotes:
            raise TestbedError(f"node {node} runs on machine {machine}; this share ({self.here}) cannot reach it")
        return self.remotes[machine]

    def _make_cgroups(self) -> None:
        self.store.journal("cgroup", cgroup_name(self.name))
        self.cgroups.create(cgroup_name(self.name), None, None)
        for n in (n for n in self.topology.nodes if n.name in self.local_nodes):
            shape = self.topology.budget
            self.cgroups.create(cgroup_name(self.name, n.name), n.cpu, n.cpuset, shape)
            limits = self.cgroups.limits(cgroup_name(self.name, n.name))
            if n.cpu is not None and abs(float(limits["cpu"]) - n.cpu) > 0.011:  # type: ignore[arg-type]
                raise TestbedError(f"node {n.name}: cgroup reads back {limits['cpu']} CPUs, not {n.cpu}")
            if n.cpu is not None and (limits["period_us"], limits["burst_us"]) != (shape.period_us, shape.burst_us(n.cpu)):
                raise TestbedError(f"node {n.name}: cgroup reads back period {limits['period_us']} us and burst "
                                   f"{limits['burst_us']} us, not {shape.period_us} and {shape.burst_us(n.cpu)}")

    def down(self) -> list[str]:
        """Stop processes, remove cgroups and namespaces, forget the state. Idempotent."""
        return teardown(self.name)

    # -- processes -----------------------------------------------------------------------

    def netns(self, node: str) -> str:
        return netns_name(self.name, self.topology.node(node).netns_key)

    def cgroup(self, node: str) -> str:
        self.topology.node(node)
        return cgroup_name(self.name, node)

    def _remote_argv(self, remote: Remote, argv: Sequence[str]) -> list[str]:
        """The other machine's own interpreter in place of this one's."""
        return [remote.machine.python if a == sys.executable else a for a in argv]

    def popen(self, node: str, argv: Sequence[str], log_name: str | None = None,
              supervise: bool = False, **popen_kw: Any) -> subprocess.Popen | None:
        """Start a process in ``node``; its output goes to the node's log unless redirected.
        On another machine it is started there, supervised by that machine's share (None)."""
        remote = self.remote_of(node)
        if remote is not None:
            env = popen_kw.pop("env", None) or {}
            if popen_kw or not supervise:
                raise TestbedError(f"node {node} is on machine {remote.name}: only supervised services start there")
            name = log_name or Path(argv[0]).name
            got = remote.call("spawn", {"testbed": self.name, "node": node, "name": name,
                                        "argv": self._remote_argv(remote, argv), "env": env})
            self.processes.append(ProcessRecord(name, node, int(got["pid"]), got.get("start_time"),
                                                list(argv), str(got["log"]), machine=remote.name))
            self.save()
            return None
        if popen_kw.get("env") is not None:
            popen_kw["env"] = {**os.environ, **popen_kw["env"]}
        log_path = self.store.logs / f"{node}-{log_name or Path(argv[0]).name}.log"
        proc = spawn(self.netns(node), self.cgroups.procs_files(self.cgroup(node)), argv,
                     log_path=log_path, **popen_kw)
        if supervise:
            self.processes.append(record(log_name or Path(argv[0]).name, node, proc, argv, log_path))
            self.save()
        return proc

    def run(self, node: str, argv: Sequence[str], timeout: float | None = 60,
            check: bool = False, **kw: Any) -> subprocess.CompletedProcess:
        remote = self.remote_of(node)
        if remote is not None:
            got = remote.call("run", {"testbed": self.name, "node": node, "argv": self._remote_argv(remote, argv),
                                      "timeout": timeout or 600}, timeout=(timeout or 600) + 60)
            result = subprocess.CompletedProcess(list(argv), int(got["returncode"]), got["stdout"].encode(),
                                                 got["stderr"].encode())
            if check:
                result.check_returncode()
            return result
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

    def add_local_address(self, node: str, address: str) -> None:
        remote = self.remote_of(node)
        if remote is not None:
            remote.call("address", {"testbed": self.name, "node": node, "address": address})
        else:
            self.network.add_local_address(self.netns(node), address)

    def set_route(self, node: str, dst: str, gateways: Sequence[str]) -> None:
        remote = self.remote_of(node)
        if remote is not None:
            remote.call("route", {"testbed": self.name, "node": node, "dst": dst, "gateways": list(gateways)})
        else:
            self.network.set_route(self.netns(node), dst, gateways)

    def share_secret(self, path: Path) -> None:
        """The service token, at the same path on every other machine (0600 there too)."""
        for remote in self.remotes.values():
            remote.call("secret", {"testbed": self.name, "file": path.name, "content": path.read_text()})

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
                "role": n.role, "cpu": n.cpu, "cpuset": n.cpuset, "machine": n.machine or LOCAL,
                "netns": netns_name(self.name, n.netns_key),
                "addresses": dict(self.addresses.addresses_of(n.netns_key)),
                "cgroups": [str(d) for d in self.cgroups.dirs(group)] if n.name in self.local_nodes else [],
                "pids": [p.pid for p in self.processes if p.node == n.name],
            }
        return {
            "name": self.name, "building": building, "mode": self.mode.name, "backend": self.backend,
            "here": self.here,
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
        topo_raw = {"name": raw["name"], "channel": raw["channel"], "machines": raw.get("machines"), "nodes": [
            {k: v for k, v in n.items() if k in ("name", "role", "cpu", "cpuset", "namespace", "sysctls", "machine")}
            for n in raw["nodes"]], "links": [
            {k: v for k, v in l.items() if k in ("name", "kind", "nodes", "mbit", "delay_ms", "loss_pct")}
            for l in raw["links"]]}
        tb = cls(topology_from_dict(topo_raw, {}, source=f"testbed {name}"), name,
                 mode=state.get("mode", "regular"), subnet=state.get("subnet", DEFAULT_SUBNET),
                 backend=state.get("backend", "netns"), here=state.get("here", LOCAL))
        tb.processes = [ProcessRecord(**p) for p in state.get("processes", [])]
        tb.built = BuiltTopology.from_dict(state.get("network", {}))
        tb.recorded = {k: v for k, v in state.items() if k not in tb._state()}
        tb.build_seconds = state.get("build_seconds", 0.0)
        return tb


def teardown(name: str) -> list[str]:
    """Remove testbed ``name`` by what its state and journal recorded. Safe after SIGKILL.

    Every journaled machine tears its own share down by its own journal first; one that
    cannot be reached stays journaled here (the rest is removed) and the error says so, so
    that a later ``down`` or ``clean`` reaches it."""
    store = StateStore(name)
    removed: list[str] = []
    state: dict[str, Any] = {}
    try:
        state = store.load()
    except TestbedError:
        pass
    unreached = _teardown_machines(name, store.journaled(), removed)
    for p in state.get("processes", []):
        if p.get("machine"):
            continue  # that machine's pid, stopped by its own share above
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
    if unreached:
        store.create()
        for line, _ in unreached:
            store.journal("machine", line)
        raise TestbedError("; ".join(why for _, why in unreached) + f" (its share stays journaled: "
                           f"`sudo testbed down {name}` or `sudo testbed clean` again when it is reachable)")
    return removed


def _teardown_machines(name: str, journal: list[tuple[str, str]], removed: list[str]) -> list[tuple[str, str]]:
    """Ask each journaled machine to remove its share; the (entry, error) of those that could not."""
    unreached = []
    for kind, entry in journal:
        if kind != "machine":
            continue
        try:
            rec = json.loads(entry)
            machine, owner = Machine(**rec["machine"]), str(rec["owner"])
        except (ValueError, TypeError, KeyError):
            continue  # a line cut short by a crash: the machine was not asked to build yet
        remote = Remote(machine)
        try:
            got = remote.call("down", {"testbed": name, "owner": owner}, timeout=120)
            removed.extend(f"{machine.name}: {r}" for r in got.get("removed", []))
            remote.close()
        except TestbedError as e:
            unreached.append((entry, str(e)))
    return unreached


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

"""Experiment descriptions: what to compare, under which budgets, with which load.

    name: quick
    topology: cluster
    params: {host_cpu: 0.3, tcpserver_cpu: 0.3}
    budgets: extra            # extra: the TCP server's CPU comes on top of the host's
                              # same-total: Regular TCP's host gets host_cpu + tcpserver_cpu
    modes: [regular, eager-accept]
    workloads: [static]       # static | dynamic | mixed
    load: {rates: [500, 1000], step_seconds: 5, warmup_seconds: 1, processes: 1}
                              # also: keepalive, poisson, mix, dynamic_cost_us, latency_target_ms,
                              # timeout_s (a LoadPlan: testbed.describe.load)
    repetitions: 3            # rounds; each round runs every configuration once
    precision: {half_width_pct: 5, max_rounds: 10, minutes: 60}   # optional: more rounds
                              # until every headline gain is that precise (testbed.measure.precision)
    equivalence_pct: 5        # a gain inside ± this is "no difference" (else "not resolved")
    fidelity: {pairing: step, remeasure: 2}   # optional: how rounds are paired in time and how
                              # often a spoiled part is measured again (testbed.describe.fidelity)
    seed: 1                   # also shuffles the order within each round (order_seed overrides)
    sweep: {tcpserver_cpu: [0.15, 0.3]}   # optional: crossed with everything else
    configs: [{tcpserver_cpu: 0.1, host_cpu: 0.3}, ...]   # optional: explicit parameter sets
    sweep_modes: [eager-accept]           # optional: only these modes run every configuration
    quick: {load: {step_seconds: 3}}      # overrides for --quick

The matrix is sweep configurations x modes x workloads x repetitions; each element is a
*point*: one testbed, one offered-load sweep. Repetitions are *interleaved*: round r runs
every configuration once, in an order shuffled with the recorded ``order_seed``. Within a
round, by default (``fidelity.pairing: step``) the configurations of one workload are up at
once and take turns at each offered rate, so every mode's step is measured seconds from
Regular TCP's at the same rate, and a slowdown of the machine lasting minutes hits both.
"""

from __future__ import annotations

import copy
import itertools
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import SpecError
from .fidelity import Fidelity, Precision
from ..offload.modes import MODES, Mode, get_mode
from .load import LoadPlan, Phase
from .machines import Machine, machines_from_yaml
from .options import BalanceSpec, OptionError, ServiceOptions

if TYPE_CHECKING:
    from .topology import Topology

EXPERIMENT_DIR = Path(__file__).resolve().parent.parent / "experiments"  # package data (repo: experiments/ links here)
WORKLOADS = ("static", "dynamic", "mixed", "shifting")  # shifting: mixed load in `phases`
BUDGETS = ("extra", "same-total")
_KEYS = {"machines", "configs", "sweep_modes", "name", "description", "topology", "roles", "params", "budgets", "modes", "workloads", "load",
         "repetitions", "seed", "sweep", "quick", "fidelity", "service", "balance", "balance_knob", "phases",
         "per_mode_params", "backend", "order_seed", "precision", "equivalence_pct"}
SERVICE_PREFIX = "service."  # sweep/configs keys that set service options, not topology parameters


_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")


@dataclass(frozen=True)
class Point:
    """One element of the matrix: a testbed configuration under one mode and workload."""
    index: int
    config: dict[str, Any]  # topology parameters of this sweep configuration
    mode: Mode
    workload: str
    repetition: int
    balance: BalanceSpec | None = None

    @property
    def id(self) -> str:
        cfg = "-".join(f"{k}{v}" for k, v in sorted(self.config.items())) or "base"
        bal = f"-{self.balance.text.replace(':', '')}" if self.balance else ""
        # a directory name under results/: a swept value such as "../x" or "a/b" must not
        # leave it, so anything but letters, digits, '.', '_' and '-' becomes '_'
        cfg = _UNSAFE.sub("_", cfg).replace("..", "_")
        return f"{self.index:03d}-{cfg}-{self.mode.name}{bal}-{self.workload}-r{self.repetition}"


@dataclass
class Experiment:
    name: str
    topology: str
    params: dict[str, Any]
    budgets: str
    modes: list[Mode]
    workloads: list[str]
    load: LoadPlan
    repetitions: int = 1
    seed: int = 1
    order_seed: int | None = None   # None: ``seed``
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    configs: list[dict[str, Any]] = field(default_factory=list)
    sweep_modes: list[str] | None = None
    per_mode_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    fidelity: Fidelity = field(default_factory=Fidelity)
    equivalence_pct: float = 5.0  # a gain whose interval lies inside ± this is "no difference"
    service: ServiceOptions = field(default_factory=ServiceOptions)
    balance: list[BalanceSpec | None] = field(default_factory=list)  # None: a point without
    phases: list[Phase] = field(default_factory=list)
    backend: str = "netns"
    precision: Precision | None = None
    roles: list[str] = field(default_factory=list)  # ROLE=NODE[,NODE] for a Mininet Topo topology
    machines: tuple[Machine, ...] = ()  # other machines its nodes may be placed on (describe/machines.py)
    description: str = ""
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    def points(self) -> list[Point]:
        """Every point, round by round; within a round in a shuffled order (``order_seed``)."""
        keys = sorted(self.sweep)
        combos = [dict(zip(keys, values)) for values in itertools.product(*(self.sweep[k] for k in keys))]
        combos = [{**c, **extra} for c in (combos or [{}]) for extra in (self.configs or [{}])]
        balances: list[BalanceSpec | None] = list(self.balance) or [None]
        one_round = []
        for wl in self.workloads:
            for mode in self.modes:
                swept = self.sweep_modes is None or mode.name in self.sweep_modes
                for cfg in combos if swept else [{}]:
                    for bal in balances if mode.offloaded else [None]:
                        one_round.append((cfg, mode, wl, bal))
        out: list[Point] = []
        seed = self.seed if self.order_seed is None else self.order_seed
        for rep in range(1, self.repetitions + 1):
            order = list(one_round)
            random.Random(seed * 1_000_003 + rep).shuffle(order)
            for cfg, mode, wl, bal in order:
                out.append(Point(len(out), cfg, mode, wl, rep, bal))
        return out

    def rates_for(self, workload: str) -> list[float]:
        try:
            return self.load.rates_for(workload)
        except SpecError as e:
            raise SpecError(f"{self.source}: {e}") from None

    def topology_for(self, params: dict[str, str]) -> "Topology":
        """The topology of one configuration: a shipped name or YAML file, or a Mininet
        ``Topo`` given as ``module:Class`` / ``file.py:Class`` with ``roles``."""
        from .topology import load_topology
        from .mininet_topo import is_mininet_ref, load_mininet_topology
        if is_mininet_ref(self.topology):
            return load_mininet_topology(self.topology, self.roles, params, self.machines)
        return load_topology(self.topology, params, self.machines)

    def topology_params(self, point: Point) -> dict[str, Any]:
        """Parameters for the point's testbed, with the budget comparison applied."""
        topo_cfg = {k: v for k, v in point.config.items() if not k.startswith(SERVICE_PREFIX)}
        params = {**self.params, **topo_cfg, **self.per_mode_params.get(point.mode.name, {})}
        if self.budgets == "same-total" and not point.mode.offloaded:
            host, tcp = params.get("host_cpu"), params.get("tcpserver_cpu")
            if host is not None and tcp is not None:
                params["host_cpu"] = round(float(host) + float(tcp), 4)
        return params

    def service_options(self, point: Point) -> ServiceOptions:
        """The experiment's ``service:`` options, with the point's ``service.KEY`` sweep
        values and its balancing policy (checked when the experiment was loaded)."""
        swept = {k[len(SERVICE_PREFIX):]: v for k, v in point.config.items() if k.startswith(SERVICE_PREFIX)}
        if point.balance is not None:
            swept["balance"] = point.balance
        return self.service.with_values(swept, f"{self.source}: point {point.id}: ") if swept else self.service


def available_experiments() -> list[str]:
    return sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml"))


def load_experiment(name_or_path: str, quick: bool = False) -> Experiment:
    path = Path(name_or_path)
    if not path.exists():
        path = EXPERIMENT_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise SpecError(f"unknown experiment {name_or_path!r}: shipped are "
                            f"{', '.join(available_experiments())}, or give a file path")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    return experiment_from_dict(raw, quick=quick, source=str(path))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def experiment_from_dict(raw: Any, quick: bool = False, source: str = "<dict>") -> Experiment:
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: an experiment is a mapping")
    unknown = set(raw) - _KEYS
    if unknown:
        raise SpecError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_KEYS))}")
    if quick and raw.get("quick"):
        raw = _merge(raw, raw["quick"])
    load = LoadPlan.from_yaml(raw.get("load"), source)
    names = raw.get("modes") or ["regular"]
    if not isinstance(names, list):
        raise SpecError(f"{source}: modes is a list of modes: {', '.join(MODES)}")
    modes = []
    for m in names:
        if not isinstance(m, str) or m not in MODES:
            raise SpecError(f"{source}: unknown mode {m!r}; modes: {', '.join(MODES)}")
        modes.append(get_mode(m))
    workloads = list(raw.get("workloads") or ["static"])
    for w in workloads:
        if w not in WORKLOADS:
            raise SpecError(f"{source}: unknown workload {w!r}; workloads: {', '.join(WORKLOADS)}")
    raw_phases = raw.get("phases") or []
    if not isinstance(raw_phases, list):
        raise SpecError(f"{source}: phases is a list of {{mix, rate, seconds}}")
    phases = [Phase.from_yaml(ph, f"{source}: phases[{i}]") for i, ph in enumerate(raw_phases)]
    if "shifting" in workloads and not phases:
        raise SpecError(f"{source}: the shifting workload needs phases: [{{mix, rate, seconds}}, ...]")
    budgets = str(raw.get("budgets", "extra"))
    if budgets not in BUDGETS:
        raise SpecError(f"{source}: budgets must be one of {', '.join(BUDGETS)}, not {budgets!r}")
    sweep = raw.get("sweep") or {}
    if not isinstance(sweep, dict) or not all(isinstance(v, list) and v for v in sweep.values()):
        raise SpecError(f"{source}: sweep maps parameter names to non-empty lists of values")
    configs = raw.get("configs") or []
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise SpecError(f"{source}: configs is a list of parameter mappings")
    sweep_modes = raw.get("sweep_modes")
    for m in sweep_modes or []:
        if m not in names:
            raise SpecError(f"{source}: sweep_modes names {m!r}, which is not in modes")
    reps = raw.get("repetitions", 1)
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise SpecError(f"{source}: repetitions must be a whole number >= 1")
    order_seed = raw.get("order_seed")
    if order_seed is not None and (isinstance(order_seed, bool) or not isinstance(order_seed, int)):
        raise SpecError(f"{source}: order_seed must be a whole number")
    raw_balance = raw.get("balance") or []
    raw_balance = [raw_balance] if isinstance(raw_balance, str) else raw_balance
    if not isinstance(raw_balance, list):
        raise SpecError(f"{source}: balance is a policy or a list of policies (adaptive, fixed:SPLIT)")
    try:
        balance = [None if b is None else BalanceSpec(b) for b in raw_balance]  # null: no balancer
    except OptionError as e:
        raise e.where(f"{source}: balance: ") from None
    if not isinstance(raw.get("service") or {}, dict):
        raise SpecError(f"{source}: service is a mapping of service options (e.g. {{dynamic_cost_us: 100}})")
    given = dict(raw.get("service") or {})
    if raw.get("balance_knob") is not None:  # passed to the services like any service option
        if "balance_knob" in given:
            raise SpecError(f"{source}: balance_knob is given twice (top level and service:)")
        given["balance_knob"] = raw["balance_knob"]
    service = ServiceOptions.from_mapping({"seed": int(raw.get("seed", 1)), **given}, f"{source}: service: ")
    for b in filter(None, balance):  # the knob's own limits, when the experiment names the knob
        service.with_values({"balance": b}, f"{source}: balance: ")
    swept = [(k, v) for k, vs in sweep.items() for v in vs] + [kv for c in configs for kv in c.items()]
    for k, v in swept:
        if k.startswith(SERVICE_PREFIX):
            service.with_values({k[len(SERVICE_PREFIX):]: v}, f"{source}: sweep/configs {k}: ")
    from .topology import BACKENDS
    if str(raw.get("backend", "netns")) not in BACKENDS:
        raise SpecError(f"{source}: backend must be one of {', '.join(BACKENDS)}, not {raw['backend']!r}")
    roles = _roles(raw.get("roles"), str(raw.get("topology", "cluster")), source)
    precision = Precision.from_yaml(raw.get("precision"), source, reps)
    fidelity = Fidelity.from_yaml(raw.get("fidelity"), source)
    eq = raw.get("equivalence_pct", 5.0)
    if isinstance(eq, bool) or not isinstance(eq, (int, float)) or not 0 < eq <= 100:
        raise SpecError(f"{source}: equivalence_pct must be percentage points in (0, 100], not {eq!r}")
    exp = Experiment(
        name=str(raw.get("name") or Path(source).stem), topology=str(raw.get("topology", "cluster")),
        params=dict(raw.get("params") or {}), budgets=budgets, modes=modes, workloads=workloads,
        load=load, repetitions=reps, seed=int(raw.get("seed", 1)), order_seed=order_seed,
        sweep=sweep, configs=configs,
        sweep_modes=list(sweep_modes) if sweep_modes is not None else None,
        per_mode_params=dict(raw.get("per_mode_params") or {}), fidelity=fidelity,
        equivalence_pct=float(eq),
        service=service, balance=balance, phases=phases,
        backend=str(raw.get("backend", "netns")), roles=roles, precision=precision,
        machines=machines_from_yaml(raw.get("machines"), source),
        description=str(raw.get("description", "")).strip(), source=source, raw=raw)
    for wl in workloads:
        if wl != "shifting":
            exp.rates_for(wl)
    _check_topologies(exp, source)
    return exp


def _roles(raw: Any, topology: str, source: str) -> list[str]:
    """``roles: {client: h1, tcpserver: t1, host: [h2, h3]}`` as ``--role`` strings; only
    for a Mininet Topo topology (shipped topologies name their roles themselves)."""
    from .mininet_topo import is_mininet_ref
    if raw is None:
        if is_mininet_ref(topology):
            raise SpecError(f"{source}: topology {topology} is a Mininet Topo: give roles, e.g. "
                            "roles: {client: h1, tcpserver: t1, host: [h2, h3]}")
        return []
    if not is_mininet_ref(topology):
        raise SpecError(f"{source}: roles are for a Mininet Topo topology (module:Class); {topology} "
                        "names its roles itself")
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: roles is a mapping ROLE: NODE or ROLE: [NODE, ...]")
    out = []
    for role, nodes in raw.items():
        names = nodes if isinstance(nodes, list) else [nodes]
        out.append(f"{role}={','.join(str(n) for n in names)}")
    return out


def _check_topologies(exp: Experiment, source: str) -> None:
    """Every point's topology must load and fit this machine, and its services must plan
    (a balancing knob its topology can move, ...), before anything runs."""
    from ..errors import TestbedError
    from .services import plan_services
    from .topology import check_cpu_budgets, plan_addresses
    topologies: dict[str, Topology] = {}
    planned = set()
    for p in exp.points():
        params = exp.topology_params(p)  # typed as the YAML gave them; spec checks each
        key = repr(sorted(params.items()))
        try:
            if key not in topologies:
                topologies[key] = exp.topology_for(params)
                check_cpu_budgets(topologies[key])
            topo = topologies[key]
            options = exp.service_options(p)
            if (key, p.mode, options) not in planned:
                planned.add((key, p.mode, options))
                plan_services("check", topo, plan_addresses(topo), p.mode, options, Path("/nonexistent"))
        except TestbedError as e:
            raise SpecError(f"{source}: point {p.id}: {e}") from None

"""Samplers: one row per node per second of what each node used and what crossed its links.

Every sample records cumulative counters (rates are differences, taken in analysis):

- each node's cgroup CPU (user, system, total, throttled time) and its budget;
- the machine's per-CPU times from /proc/stat (user, system, softirq, irq, idle), so
  softirq work charged to whichever process happened to run is visible beside cgroups;
- each namespace's TCP counters (/proc/net/snmp, /proc/net/netstat) and interface
  byte/packet counters (/proc/net/dev), read from inside the namespace;
- the TCP server's and host apps' live counters (their --stats-file JSON).

The sampler runs in a thread of the runner; it enters namespaces with setns, which
affects that thread only. Nodes on other machines are sampled there, by a sampler process
the machine's agent starts beside them (``sample-start``); at the end their rows come
back (``sample-stop``) with ``machine`` set, their times moved onto this machine's clock
by the offset measured at ``up``, and that machine's per-CPU rows kept as ``machine_cpu``
(the per-CPU rows of ``cpu`` kind stay this machine's, as the analysis reads them).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..system.kernel import in_netns

if TYPE_CHECKING:
    from ..system.lifecycle import Testbed

log = logging.getLogger(__name__)

SNMP_TCP = ("ActiveOpens", "PassiveOpens", "AttemptFails", "EstabResets", "CurrEstab",
            "InSegs", "OutSegs", "RetransSegs", "InErrs", "OutRsts")
NETSTAT_EXT = ("ListenOverflows", "ListenDrops", "TW", "TWRecycled", "PAWSEstab",
               "TCPTimeouts", "TCPAbortOnData", "TCPAbortOnClose", "TCPBacklogDrop")
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def read_proc_stat() -> dict[str, dict[str, int]]:
    """Per-CPU and total jiffies from /proc/stat: {"cpu": {...}, "cpu0": {...}, ...}."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            parts = line.split()
            out[parts[0]] = dict(zip(CPU_FIELDS, map(int, parts[1:9])))
    return out


def _read_snmp_pairs(path: str, section: str, keys: tuple[str, ...]) -> dict[str, int]:
    """/proc/net/snmp and netstat come as header/value line pairs per section."""
    out: dict[str, int] = {}
    with open(path) as f:
        lines = f.read().splitlines()
    for header, values in zip(lines[::2], lines[1::2]):
        name, _, fields = header.partition(":")
        if name != section:
            continue
        for k, v in zip(fields.split(), values.partition(":")[2].split()):
            if k in keys:
                out[k] = int(v)
    return out


def read_net_dev() -> dict[str, dict[str, int]]:
    out = {}
    with open("/proc/thread-self/net/dev") as f:
        for line in f.readlines()[2:]:
            name, _, rest = line.partition(":")
            v = rest.split()
            out[name.strip()] = {"rx_bytes": int(v[0]), "rx_packets": int(v[1]),
                                 "tx_bytes": int(v[8]), "tx_packets": int(v[9])}
    return out


def read_namespace_counters(netns: str) -> dict[str, Any]:
    """TCP counters and interface counters, as seen from inside ``netns``."""
    with in_netns(netns):
        tcp = _read_snmp_pairs("/proc/thread-self/net/snmp", "Tcp", SNMP_TCP)
        tcp.update(_read_snmp_pairs("/proc/thread-self/net/netstat", "TcpExt", NETSTAT_EXT))
        with open("/proc/thread-self/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    parts = line.split()
                    tcp["sock_tw"] = int(parts[parts.index("tw") + 1])
                    tcp["sock_inuse"] = int(parts[parts.index("inuse") + 1])
        dev = read_net_dev()
    return {"tcp": tcp, "dev": {k: v for k, v in dev.items() if k != "lo"}}


def sample(tb: "Testbed") -> list[dict[str, Any]]:
    """One timestamped snapshot of the whole testbed, as tidy rows (one per node, one
    per CPU, one per namespace interface, one per stats file)."""
    now = time.time()
    rows: list[dict[str, Any]] = []
    groups = tb.cgroups
    here = [n for n in tb.topology.nodes if n.name in tb.local_nodes]
    for n in here:
        try:
            u = groups.usage(tb.cgroup(n.name))
        except OSError:
            continue
        limits = groups.limits(tb.cgroup(n.name))
        rows.append({"t": now, "kind": "node", "node": n.name, "role": n.role,
                     "budget_cpu": limits["cpu"], "cpuset": limits["cpuset"],
                     "user_s": u.user_s, "system_s": u.system_s, "cpu_s": u.total_s,
                     "throttled_s": u.throttled_s, "nr_throttled": u.nr_throttled,
                     "nr_periods": u.nr_periods})
    hz = 100.0  # USER_HZ of /proc/stat
    for cpu, f in read_proc_stat().items():
        rows.append({"t": now, "kind": "cpu", "node": cpu,
                     **{f"{k}_s": v / hz for k, v in f.items()}})
    seen_ns: set[str] = set()
    for n in here:
        ns = tb.netns(n.name)
        if ns in seen_ns:
            continue
        seen_ns.add(ns)
        try:
            c = read_namespace_counters(ns)
        except Exception as e:  # a namespace going away mid-sample must not end sampling
            log.debug("sample %s: %s", ns, e)
            continue
        rows.append({"t": now, "kind": "tcp", "node": n.netns_key, **c["tcp"]})
        for ifname, d in c["dev"].items():
            rows.append({"t": now, "kind": "link", "node": n.netns_key, "ifname": ifname, **d})
    for f in tb.store.dir.glob("stats-*.json"):
        try:
            stats = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        flat = {k: float(v) for k, v in _flatten(stats).items() if isinstance(v, (int, float))}
        rows.append({"t": now, "kind": "stats", "node": f.stem[len("stats-"):], **flat})
    return rows


def from_machine(rows: list[dict[str, Any]], machine: str, offset_s: float) -> list[dict[str, Any]]:
    """Another machine's rows on this machine's clock, marked with where they were taken."""
    out = []
    for r in rows:
        r = {**r, "t": float(r["t"]) - offset_s, "machine": machine}
        if r.get("kind") == "cpu":
            r["kind"] = "machine_cpu"
        out.append(r)
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


class Sampler:
    """Samples a testbed every ``interval`` seconds in a background thread."""

    def __init__(self, tb: "Testbed", interval: float = 1.0):
        self.tb, self.interval = tb, interval
        self.rows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._remote: dict[str, dict[str, Any]] = {}  # machine -> its sampler's pid

    def __enter__(self) -> "Sampler":
        for name, remote in self.tb.remotes.items():
            self._remote[name] = remote.call("sample-start", {"testbed": self.tb.name, "interval": self.interval})
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=5)
            self._take()  # a last sample closes the final interval
            for name, started in self._remote.items():
                try:
                    got = self.tb.remotes[name].call("sample-stop", {"testbed": self.tb.name, **started},
                                                     timeout=300)
                except Exception as e:  # noqa: BLE001 (the point keeps this machine's samples)
                    log.warning("machine %s: its samples are lost: %s", name, e)
                    continue
                offset = float(((self.tb.recorded.get("machines") or {}).get(name) or {})
                               .get("clock", {}).get("offset_s", 0.0))
                self.rows.extend(from_machine(got["rows"], name, offset))

    def _take(self) -> None:
        try:
            self.rows.extend(sample(self.tb))
        except Exception as e:  # never let a sampling hiccup end a measurement
            log.warning("sampling failed: %s", e)

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self._take()
            next_t += self.interval
            self._stop.wait(max(0.0, next_t - time.monotonic()))


def offload_flags(tb: "Testbed") -> dict[str, dict[str, str]]:
    """TSO/GSO/GRO per interface per namespace, from `ethtool -k` run inside each node."""
    out: dict[str, dict[str, str]] = {}
    wanted = ("tcp-segmentation-offload", "generic-segmentation-offload", "generic-receive-offload")
    seen: set[str] = set()
    for n in tb.topology.nodes:
        key = n.netns_key
        if key in seen:
            continue
        seen.add(key)
        for lp in tb.addresses.links:
            ifname = lp.interfaces.get(key)
            if not ifname:
                continue
            try:
                res = tb.run(n.name, ["ethtool", "-k", ifname], timeout=10)
            except Exception as e:
                out[f"{key}/{ifname}"] = {"error": str(e)}
                continue
            flags = {}
            for line in res.stdout.decode().splitlines():
                k, _, v = line.strip().partition(":")
                if k in wanted:
                    flags[k] = v.strip().split()[0] if v.strip() else ""
            out[f"{key}/{ifname}"] = flags
    return out


def sysctls_of(tb: "Testbed", keys: tuple[str, ...]) -> dict[str, dict[str, str | None]]:
    from ..system.kernel import read_sysctl
    out: dict[str, dict[str, str | None]] = {}
    here = {tb.topology.node(n).netns_key for n in tb.local_nodes}
    for key in (k for k in tb.topology.namespaces if k in here):
        with in_netns(tb.netns(next(n.name for n in tb.topology.nodes if n.netns_key == key))):
            out[key] = {k: read_sysctl(k) for k in keys}
    return out


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    import pandas as pd
    pd.DataFrame(rows).to_parquet(path, index=False)

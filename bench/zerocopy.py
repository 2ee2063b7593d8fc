"""Benchmark of No Data Copying: the TCP server sending from the host's send area, side by side.

Two configurations of the same ``cluster`` testbed over the shm SAN channel, Async Send
(client, TCP server and host each in their own node and cgroup):

- ``copying``: the host's reply goes through the channel's ring; the TCP server takes it
  out into its own memory and writes it to the client's socket (the kernel copies it in);
- ``zero-copy``: the host puts the reply in the channel's send area; the TCP server sends
  it with MSG_ZEROCOPY and gives the region back when the kernel's completion notice
  arrives (testbed/offload/zerocopy.py).

Each serves 6 KiB, 100 KiB and 900 KiB files of the document root at fixed offered loads
well below what the budgets admit (the throttled time is printed). CPU is each node's
cgroup usage over the measured window, user and system apart, per reply and per megabyte
of body. Every round runs both configurations, in an order reversed every other round;
ratios are the same round's numbers against each other, printed as median [min-max].
The daemon's counters say how many zero-copy sends the kernel reported as copied after
all (a packet looped to a local socket: every client here is local).

Before the rounds it checks the alternative the kernel offers without completion notices:
``sendfile`` (like ``vmsplice``/``splice``) hands the socket references to the pages,
and it prints whether bytes overwritten after the send returned (and before a local client
read) reach that client: if they do, nothing tells the TCP server when the host may reuse
its buffer, so that path cannot serve byte-exact replies here.

With ``--profile`` the last round also samples the TCP server with ``perf`` while it
serves the 900 KiB file (cpu-clock: in a VM without a PMU, time spent with interrupts off,
such as a veth transmit and the receive softirq behind it, shows up where they are turned
back on) and prints each configuration's heaviest symbols.

Run (root): ``python -m bench.zerocopy [--repeat 3] [--seconds 4] [--profile]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from bench.offload import _httperf, _measure

CONFIGS = {"copying": False, "zero-copy": True}
# (URI, size, offered req/s): 6 KiB, 100 KiB and 900 KiB of the SPECweb99 classes
FILES = [("/dir0/class1_5", 6 * 1024, 400), ("/dir0/class3_0", 100 * 1024, 200), ("/dir0/class3_8", 900 * 1024, 60)]
NODES = ["host1", "tcpserver"]
MODE = "async-send"


def _one(config: str, seconds: float, name: str, profile: bool = False) -> dict[str, dict[str, Any]]:
    from testbed.describe.topology import load_topology
    from testbed.system.lifecycle import Testbed

    topo = load_topology("cluster", {"host_cpu": "0.5", "tcpserver_cpu": "0.5"})
    out = {}
    with Testbed(topo, name, mode=MODE, start_services=True,
                 service_options={"docroot_dirs": 1, "channel": "shm", "zero_copy": CONFIGS[config]}) as tb:
        tb.run("client", ["sysctl", "-q", "-w", "net.ipv4.tcp_max_tw_buckets=2000"], check=True)
        for uri, size, rate in FILES:
            before = {n: tb.cgroups.usage(tb.cgroup(n)) for n in NODES}
            s0 = _daemon_stats(tb)
            hp = _measure(tb, NODES, uri, rate, seconds, tb.addresses.service_address, 80)
            after = {n: tb.cgroups.usage(tb.cgroup(n)) for n in NODES}
            s1 = _daemon_stats(tb)
            replies = max(1, hp["replies"])
            for n in NODES:  # the user/system split (the warm-up inside _measure counts in both)
                du = after[n].user_s - before[n].user_s
                ds = after[n].system_s - before[n].system_s
                hp[f"{n}_system_share"] = ds / (du + ds) if du + ds > 0 else float("nan")
            for k in ("zero_copy_sends", "zero_copy_notices", "zero_copy_copied"):
                hp[k] = s1.get(k, 0) - s0.get(k, 0)
            hp["size"] = size
            hp["replies_n"] = replies
            out[uri] = hp
        if profile:
            out["profile"] = _profile(tb, FILES[-1][0], FILES[-1][2], seconds)  # type: ignore[assignment]
    return out


def _profile(tb, uri: str, rate: int, seconds: float) -> list[tuple[float, str]]:
    """The TCP server's heaviest symbols (share of its samples) while it serves ``uri``."""
    pid = next(p.pid for p in tb.processes if p.name == "tcpserver")
    load = threading.Thread(target=_httperf, args=(tb, uri, rate, int(rate * (seconds + 2)),
                                                   tb.addresses.service_address, 80))
    with tempfile.TemporaryDirectory(prefix="tcps-zc-perf") as d:
        data = f"{d}/perf.data"
        load.start()
        subprocess.run(["perf", "record", "-q", "-o", data, "-p", str(pid), "--", "sleep", str(seconds)],
                       check=True, capture_output=True)
        load.join()
        rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "sym"],
                             check=True, capture_output=True, text=True).stdout
    top = []
    for line in rep.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("%") and not line.startswith("#"):
            top.append((float(parts[0].rstrip("%")), " ".join(parts[1:])))
    return top[:10]


def page_reference_hazard(size: int = 256 * 1024) -> bool:
    """Send a memfd's pages with sendfile to a local socket that has not read yet, then
    overwrite them: True if the client reads the new bytes (the socket kept references to
    the pages, not a copy)."""
    import mmap
    import os
    import socket
    fd = os.memfd_create("tcps-zc-hazard")
    lst = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(lst.getsockname())
    b, _ = lst.accept()
    try:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * size)
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size)
        mm[:] = b"A" * size
        sent = 0
        while sent < size:
            sent += os.sendfile(a.fileno(), fd, sent, size - sent)
        mm[:] = b"B" * size  # after the send returned, before the client reads
        got = bytearray()
        b.settimeout(5)
        while len(got) < size:
            got += b.recv(size - len(got))
        mm.close()
        return b"B" in got
    finally:
        os.close(fd)
        for s in (a, b, lst):
            s.close()


def _daemon_stats(tb) -> dict[str, Any]:
    path = tb.store.dir / "stats-tcpserver.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _stats(values: list[float], fmt: str = "{:.2f}") -> str:
    v = [x for x in values if x == x]
    if not v:
        return "-"
    return f"{fmt.format(statistics.median(v))} [{fmt.format(min(v))}-{fmt.format(max(v))}]"


def report(rounds: list[dict[str, dict[str, dict[str, Any]]]]) -> str:
    lines = []
    for uri, size, rate in FILES:
        lines.append(f"\n{uri} ({size // 1024} KiB) at {rate} req/s offered, {MODE} over shm: CPU per reply "
                     "(us), per MB of body (ms) and the kernel's share of it, median [min-max] over rounds")
        lines.append(f"{'config':<10}{'replies':>8}{'err':>5}"
                     + "".join(f"{n + ' us':>20}{n + ' ms/MB':>20}{n + ' sys':>18}" for n in NODES)
                     + f"{'SEND_ZC':>9}{'notices':>9}{'copied':>8}")
        for config in CONFIGS:
            col = [r[config][uri] for r in rounds if config in r]
            last = col[-1]
            throttled = max(c[f"{n}_throttled_s"] for c in col for n in NODES)
            cells = ""
            for n in NODES:
                cells += f"{_stats([c[f'{n}_us_per_req'] for c in col], '{:.0f}'):>20}"
                cells += f"{_stats([c[f'{n}_us_per_req'] / 1000 / (size / 1e6) for c in col]):>20}"
                cells += f"{_stats([c[f'{n}_system_share'] for c in col]):>18}"
            lines.append(f"{config:<10}{last['replies']:>8}{last['errors']:>5}{cells}"
                         f"{last.get('zero_copy_sends', 0):>9}{last.get('zero_copy_notices', 0):>9}"
                         f"{last.get('zero_copy_copied', 0):>8}"
                         f"   throttled at most {throttled:.2f} s")
        for node in NODES:
            ratio = [r["zero-copy"][uri][f"{node}_us_per_req"] / r["copying"][uri][f"{node}_us_per_req"]
                     for r in rounds if r["copying"][uri][f"{node}_us_per_req"] > 0]
            lines.append(f"  {node} CPU per byte, zero-copy/copying: {_stats(ratio)}")
    profiles = {c: rounds[-1][c].get("profile") for c in CONFIGS if rounds[-1][c].get("profile")}
    for config, top in profiles.items():
        lines.append(f"\nperf, the TCP server serving {FILES[-1][0]} ({config}, last round): its heaviest symbols")
        lines += [f"  {share:5.1f}%  {sym}" for share, sym in top]
    lines.append("\nratios: the same round's CPU per reply (so per byte: the files are the same) of zero-copy "
                 "over copying; sys: the system (kernel) share of the node's CPU; SEND_ZC: host writes the "
                 "TCP server sent from the send area in the last round (a write may take several sends); "
                 "notices: the kernel's completion notices (one may cover several sends), copied: those "
                 "saying it copied the pages after all. replies/err: the last round.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.zerocopy", description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="rounds over both configurations")
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per file size")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--profile", action="store_true", help="sample the TCP server with perf in the last round")
    a = ap.parse_args(argv)
    if a.repeat < 1 or a.seconds <= 0:
        print("bench.zerocopy: --repeat must be >= 1 and --seconds > 0", file=sys.stderr)
        return 2
    from testbed.offload.zerocopy import kernel_refusal
    why = kernel_refusal()
    if why:
        print(f"bench.zerocopy: {why}", file=sys.stderr)
        return 2
    if a.profile and shutil.which("perf") is None:
        print("bench.zerocopy: --profile needs perf (apt-get install linux-perf)", file=sys.stderr)
        return 2
    hazard = page_reference_hazard()
    print(f"sendfile of shared pages to a local client, overwritten before it read: the client got the "
          f"{'new' if hazard else 'old'} bytes ({'no copy was taken: unsafe without a completion notice' if hazard else 'a copy was taken'})",
          flush=True)
    rounds: list[dict[str, Any]] = []
    for r in range(a.repeat):
        order = list(CONFIGS) if r % 2 == 0 else list(reversed(CONFIGS))
        res = {}
        for config in order:
            print(f"round {r + 1}/{a.repeat}: {config}", flush=True)
            res[config] = _one(config, a.seconds, f"bzc{r}{config[:2]}", a.profile and r == a.repeat - 1)
        rounds.append(res)
    text = report(rounds)
    print(text)
    if a.json:
        a.json.write_text(json.dumps(rounds, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the offload engine, side by side from one run on the ``cluster`` topology.

1. Per-call cost of tunneled accept/recv/send/close against the same calls on kernel
   sockets, by message size (the paper's "1 KB send overhead" measurement): wall time of
   each call as the host application sees it, with the data already waiting.
2. Host CPU per request, each offloaded mode against ``regular`` (same app, same uvloop).
3. TCP-server CPU per request against HAProxy (``mode tcp``) relaying the same requests to
   the regular host, on the same node and CPU budget; and nginx answering the file itself
   on that node, the floor for anything that terminates client TCP there.

By default every mode runs woken per event, and eager-accept also polling every 2 ms
(``MODE/poll=US``; ``MODE/asyncio`` puts client sockets on the event loop's transports;
``MODE/shm`` runs the SAN over the shared-memory rings, ``MODE/hostpoll=US`` makes the host
poll it too).

CPU is read from the nodes' cgroups (cpuacct), so it includes softirq work the kernel did
in the node's processes' context (on veth a receiver's TCP processing runs in the sender's
context: see docs/design.md, "Facts"). Load is httperf, open loop, a new connection per request, at the
same offered rates for every configuration (``--rates``: a moderate and a high one by
default, since batching helps more with load), repeated ``--repeat`` times in alternation
so the report can give the spread (min-max) beside the median.

Equal footing: the TCP server, the host application (every mode) and HAProxy all run as
SCHED_BATCH (``testbed.offload.runtime.batch_scheduling``; ``TCPS_SCHED=normal`` turns it
off for all of them). The client namespace keeps at most 2,000 TIME_WAIT sockets
(``net.ipv4.tcp_max_tw_buckets``, per namespace): httperf closes first, and with tens of
thousands of client TIME_WAIT ports it stalls looking for a free port.

Run (root): ``python -m bench.offload [--rates 3000,6500] [--seconds 3] [--repeat 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from testbed.offload.modes import MODES as MODE_TABLE  # the one table of modes

MODES = list(MODE_TABLE)
# by default also the best-placed variant polling every 2 ms (the slides' "No Interrupts")
DEFAULT_RUN = [*MODES, "eager-accept/poll=2000"]
PERCALL_PORT = 9000
HAPROXY_PORT = 8080
NGINX_PORT = 8081
SIZES = [64, 1024, 4096, 16384, 65536]


# --- per-call measurement (runs inside the nodes) ------------------------------------------


async def _percall_host(a: argparse.Namespace) -> dict:
    from testbed.offload import hostsock

    loop = asyncio.get_running_loop()
    sizes = [int(s) for s in a.sizes.split(",")]
    res: dict[str, dict[str, float]] = {}
    if not MODE_TABLE[a.mode].offloaded:
        import socket

        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("0.0.0.0", a.port))
        ls.listen(128)
        ls.setblocking(False)
        print("ready", flush=True)

        async def accept():
            s, _ = await loop.sock_accept(ls)
            return s

        async def recv(s, n):
            buf = b""
            while len(buf) < n:
                chunk = await loop.sock_recv(s, n - len(buf))
                if not chunk:
                    break
                buf += chunk
            return buf

        async def send(s, data):
            await loop.sock_sendall(s, data)

        async def close(s):
            s.close()
    else:
        tun = await hostsock.open_tunnel(a.tunnel, Path(a.token_file).read_text().strip(), a.mode, "percall")
        tls = await tun.listen(a.port)
        print("ready", flush=True)

        async def accept():
            return await tls.accept()

        async def recv(s, n):
            buf = b""
            while len(buf) < n:
                chunk = await s.recv(n - len(buf))
                if not chunk:
                    break
                buf += chunk
            return buf

        async def send(s, data):
            await s.send(data)

        async def close(s):
            await s.close()

    for size in sizes:
        data = b"r" * size
        tot = {"accept": 0.0, "recv": 0.0, "send": 0.0, "close": 0.0}
        for i in range(a.n + 5):
            await asyncio.sleep(0.002)  # let the connection and its data arrive first
            t0 = time.perf_counter()
            s = await accept()
            t1 = time.perf_counter()
            got = await recv(s, size)
            t2 = time.perf_counter()
            await send(s, data)
            t3 = time.perf_counter()
            await close(s)
            t4 = time.perf_counter()
            assert len(got) == size, (len(got), size)
            if i >= 5:  # warm-up
                tot["accept"] += t1 - t0
                tot["recv"] += t2 - t1
                tot["send"] += t3 - t2
                tot["close"] += t4 - t3
        res[str(size)] = {k: v / a.n * 1e6 for k, v in tot.items()}
    return res


def _percall_client(a: argparse.Namespace) -> None:
    import socket

    host, port = a.target.rsplit(":", 1)
    for size in [int(s) for s in a.sizes.split(",")]:
        data = b"q" * size
        for _ in range(a.n + 5):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(data)
            got = 0
            while got < size:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += len(chunk)
            s.close()


# --- orchestration (root, builds testbeds) -------------------------------------------------


def _httperf(tb, uri: str, rate: int, n: int, server: str, port: int) -> dict:
    try:
        r = tb.run("client", ["httperf", "--hog", "--server", server, "--port", str(port), "--uri", uri,
                              "--num-conns", str(n), "--rate", str(rate), "--timeout", "3"],
                   timeout=n / rate + 30, text=True)
    except subprocess.TimeoutExpired:
        print(f"httperf against {server}:{port} did not finish; step discarded", file=sys.stderr)
        return {"replies": 0, "errors": -1, "duration_s": 0.0, "timed_out": True}
    out = r.stdout
    m = re.search(r"replies (\d+)", out)
    e = re.search(r"Errors: total (\d+)", out)
    d = re.search(r"test-duration ([\d.]+) s", out)
    c = re.search(r"Connection time \[ms\]: min [\d.]+ avg ([\d.]+)", out)
    return {"replies": int(m.group(1)) if m else 0, "errors": int(e.group(1)) if e else -1,
            "duration_s": float(d.group(1)) if d else 0.0, "conn_ms": float(c.group(1)) if c else None}


def _client_tw_cap(tb) -> None:
    """httperf closes first, so TIME_WAIT piles up on the client; bound it there only."""
    tb.run("client", ["sysctl", "-q", "-w", "net.ipv4.tcp_max_tw_buckets=2000"], check=True)


def _measure(tb, nodes: list[str], uri: str, rate: int, seconds: float, server: str, port: int) -> dict:
    n = int(rate * seconds)
    _httperf(tb, uri, rate, min(2000, max(200, n // 4)), server, port)  # warm-up: caches, TIME_WAIT steady
    u0 = {nd: tb.cgroups.usage(tb.cgroup(nd)) for nd in nodes}
    hp = _httperf(tb, uri, rate, n, server, port)
    u1 = {nd: tb.cgroups.usage(tb.cgroup(nd)) for nd in nodes}
    replies = max(1, hp["replies"])
    for nd in nodes:
        hp[f"{nd}_us_per_req"] = (u1[nd].total_s - u0[nd].total_s) / replies * 1e6
        hp[f"{nd}_throttled_s"] = u1[nd].throttled_s - u0[nd].throttled_s
    return hp


def _percall(tb, mode: str, sizes: str, n: int) -> dict:
    py = sys.executable
    argv = [py, "-m", "bench.offload", "_percall-host", "--mode", mode, "--port", str(PERCALL_PORT),
            "--sizes", sizes, "--n", str(n)]
    if MODE_TABLE[mode].offloaded:
        argv += ["--tunnel", f"tcp:{tb.address('tcpserver', 'san')}:7000",
                 "--token-file", str(tb.store.dir / "token")]
    host = tb.popen("host1", argv, log_name="percall", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True, cwd=str(Path(__file__).resolve().parents[1]))
    line = host.stdout.readline()  # type: ignore[union-attr]
    if line.strip() != "ready":
        host.kill()
        raise RuntimeError(f"per-call host did not start: {line} {host.stderr.read()}")  # type: ignore[union-attr]
    target = f"{tb.addresses.service_address}:{PERCALL_PORT}"
    tb.run("client", [py, "-m", "bench.offload", "_percall-client", "--target", target, "--sizes", sizes,
                      "--n", str(n)], timeout=120, check=True, cwd=str(Path(__file__).resolve().parents[1]))
    out, err = host.communicate(timeout=60)
    if host.returncode != 0:
        raise RuntimeError(f"per-call host failed: {err}")
    return json.loads(out.strip().splitlines()[-1])


HAPROXY_CFG = """global
    nbthread 1
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind {front}:{port}
    default_backend be
backend be
    server host1 {host}:80
"""


NGINX_CFG = """daemon off;
master_process off;
worker_processes 1;
pid {run}/tcps-nginx.pid;
error_log {run}/tcps-nginx-error.log;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    keepalive_timeout 30;
    client_body_temp_path {run}/tcps-nginx-tmp;
    server {{
        listen {front}:{port} backlog=4096;
        root {docroot};
    }}
}}
"""


def _background(tb, argv: list[str], name: str):
    """A reference server on the tcpserver node, scheduled as our daemon is."""
    if os.environ.get("TCPS_SCHED", "batch") == "batch":
        argv = ["chrt", "--batch", "0", *argv]  # the same scheduling as the TCP server
    p = tb.popen("tcpserver", argv, log_name=name)
    time.sleep(0.5)
    if p.poll() is not None:
        raise RuntimeError(f"{name} exited ({p.returncode}); see {tb.store.logs}")
    return p


def _nginx_floor(tb, args) -> dict[str, dict]:
    """nginx serving the file itself on the tcpserver node: the kernel's per-connection
    work plus a lean C server's, a floor for anything that terminates client TCP there."""
    run = tb.store.dir
    cfg = run / "tcps-nginx.conf"
    cfg.write_text(NGINX_CFG.format(run=run, front=tb.address("tcpserver", "public"), port=NGINX_PORT,
                                    docroot=run / "docroot"))
    return _reference(tb, args, ["/usr/sbin/nginx", "-c", str(cfg)], "nginx", NGINX_PORT)


def _haproxy(tb, args) -> dict[str, dict]:
    cfg = tb.store.dir / "tcps-haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(front=tb.address("tcpserver", "public"), port=HAPROXY_PORT,
                                      host=tb.address("host1", "san")))
    return _reference(tb, args, ["/usr/sbin/haproxy", "-db", "-f", str(cfg)], "haproxy", HAPROXY_PORT)


def _reference(tb, args, argv: list[str], name: str, port: int) -> dict[str, dict]:
    """Every rate against a reference server on the tcpserver node's public address."""
    p = _background(tb, argv, name)
    try:
        return {str(rate): _measure(tb, ["tcpserver", "host1"], args.file, rate, args.seconds,
                                    tb.address("tcpserver", "public"), port)
                for rate in args.rates}
    finally:
        p.terminate()
        p.wait(5)


def variant_args(variant: list[str]) -> list[str]:
    """``MODE/asyncio`` -> the TCP server's options for that variant that are not service
    options (its client sockets' I/O)."""
    out: list[str] = []
    for v in variant:
        if v in ("asyncio", "epoll"):
            out += ["--client-io", v]
        elif v not in ("shm", "unix") and not v.startswith(("poll=", "hostpoll=")):
            raise SystemExit(f"unknown variant {v!r}: asyncio, epoll, shm, unix, poll=US or hostpoll=US")
    return out


def variant_options(variant: list[str]) -> dict[str, Any]:
    """``MODE/shm/poll=2000/hostpoll=2000`` -> the service options for that variant: the
    SAN channel (``shm``, ``unix``; tcp by default) and the polling periods."""
    opts: dict[str, Any] = {"tcpserver_args": variant_args(variant)}
    for v in variant:
        if v in ("shm", "unix"):
            opts["channel"] = v
        elif v.startswith("poll="):
            opts["poll_us"] = int(v[5:])
        elif v.startswith("hostpoll="):
            opts["host_poll_us"] = int(v[9:])
    return opts


def run(args: argparse.Namespace) -> dict:
    """Every configuration at every rate, ``repeat`` rounds in alternation (A B C A B C):
    slow drifts of a shared machine then spread over all configurations alike."""
    from testbed.system.lifecycle import Testbed
    from testbed.describe.topology import load_topology

    params = {"host_cpu": str(args.host_cpu), "tcpserver_cpu": str(args.tcpserver_cpu)}
    results: dict[str, Any] = {"config": vars(args).copy(), "modes": {m: {"rounds": []} for m in args.modes}}
    if not args.no_haproxy:
        results["haproxy"] = {"rounds": []}
        results["nginx"] = {"rounds": []}
    for rnd in range(args.repeat):
        for mode in args.modes:
            topo = load_topology("cluster", params)
            print(f"[round {rnd + 1}/{args.repeat}, {mode}] building the cluster testbed ...",
                  file=sys.stderr, flush=True)
            base_mode, *variant = mode.split("/")
            opts: dict[str, Any] = {"docroot_dirs": 1, "dynamic_cost_us": 0, **variant_options(variant)}
            with Testbed(topo, name=f"b{os.getpid() % 100000}", mode=base_mode, start_services=True,
                         service_options=opts) as tb:
                _client_tw_cap(tb)
                r = results["modes"][mode]
                r["rounds"].append({str(rate): _measure(tb, ["tcpserver", "host1"], args.file, rate, args.seconds,
                                                        tb.addresses.service_address, 80) for rate in args.rates})
                if not MODE_TABLE[mode].offloaded and not args.no_haproxy:
                    results["haproxy"]["rounds"].append(_haproxy(tb, args))
                    results["nginx"]["rounds"].append(_nginx_floor(tb, args))
                if not args.no_percall and rnd == 0 and not variant:  # per-call: the modes themselves
                    r["percall"] = _percall(tb, base_mode, args.sizes, args.n)
    return results


def _stats(vals: list[float]) -> str:
    """median [min-max] of the rounds, or the single value."""
    vals = sorted(v for v in vals if v is not None)
    if not vals:
        return "-"
    med = vals[len(vals) // 2] if len(vals) % 2 else (vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2
    if len(vals) == 1 or vals[0] == vals[-1]:
        return f"{med:.2f}" if med < 10 else f"{med:.1f}"
    fmt = (lambda v: f"{v:.2f}") if med < 10 else (lambda v: f"{v:.1f}")
    return f"{fmt(med)} [{fmt(vals[0])}-{fmt(vals[-1])}]"


def _col(rounds: list[dict], rate: str, key: str) -> list[float]:
    return [r[rate][key] for r in rounds if rate in r and r[rate].get("replies")]


def _ratio(num: list[dict], den: list[dict], rate: str, key_num: str, key_den: str) -> list[float]:
    """Ratios round by round (the rounds ran in alternation, so pairs are neighbours in time)."""
    out = []
    for a, b in zip(num, den):
        if rate in a and rate in b and a[rate].get("replies") and b[rate].get("replies") and b[rate][key_den]:
            out.append(a[rate][key_num] / b[rate][key_den])
    return out


def report(res: dict) -> str:
    modes = res["modes"]
    lines = []
    cfg = res["config"]
    lines.append(f"cluster topology: host {cfg['host_cpu']} CPU, tcpserver {cfg['tcpserver_cpu']} CPU; "
                 f"httperf at {', '.join(map(str, cfg['rates']))} req/s x {cfg['seconds']} s of {cfg['file']}, "
                 f"new connection each; {cfg['repeat']} round(s): median [min-max]")
    if any("percall" in m for m in modes.values()):
        lines.append("\n1. Per-call cost, microseconds of wall time on the host (kernel = regular mode)")
        cols = [m for m in modes if "percall" in modes[m]]
        lines.append(f"{'size':>6} {'call':<7}" + "".join(f"{('kernel' if c == 'regular' else c):>18}" for c in cols))
        sizes = list(next(m for m in modes.values() if "percall" in m)["percall"])
        for size in sizes:
            for call in ("accept", "recv", "send", "close"):
                row = f"{size:>6} {call:<7}"
                base = modes.get("regular", {}).get("percall", {}).get(size, {}).get(call)
                for c in cols:
                    v = modes[c]["percall"][size][call]
                    ratio = f" ({v / base:4.1f}x)" if base and c != "regular" else ""
                    row += f"{v:>11.1f}{ratio:>7}"
                lines.append(row)
    reg = modes.get("regular", {}).get("rounds", [])
    hap = res.get("haproxy", {}).get("rounds", [])
    for rate in map(str, cfg["rates"]):
        lines.append(f"\n2./3. CPU per request at {rate} req/s offered (us, cgroup cpuacct) and ratios")
        lines.append(f"{'config':<18}{'replies':>8}{'err':>5}{'conn ms':>18}{'host us':>20}{'host/regular':>20}"
                     f"{'tcpsrv us':>20}{'tcpsrv/haproxy':>20}{'tcpsrv/nginx':>20}")
        ngx = res.get("nginx", {}).get("rounds", [])
        rows = ([("haproxy relay", hap)] if hap else []) + ([("nginx (floor)", ngx)] if ngx else []) \
            + [(m, r["rounds"]) for m, r in modes.items()]
        for name, rounds in rows:
            if not rounds:
                continue
            last = rounds[-1].get(rate, {})
            h = _stats(_col(rounds, rate, "host1_us_per_req"))
            ts = _stats(_col(rounds, rate, "tcpserver_us_per_req"))
            hr = _stats(_ratio(rounds, reg, rate, "host1_us_per_req", "host1_us_per_req")) \
                if name not in ("regular", "haproxy relay") else "-"
            tr = _stats(_ratio(rounds, hap, rate, "tcpserver_us_per_req", "tcpserver_us_per_req")) \
                if name not in ("regular", "haproxy relay") else "-"
            nr = _stats(_ratio(rounds, ngx, rate, "tcpserver_us_per_req", "tcpserver_us_per_req")) \
                if ngx and name not in ("regular", "haproxy relay", "nginx (floor)") else "-"
            if name == "nginx (floor)":
                h = hr = "-"  # the host is idle: nginx answers on the tcpserver node
            cm = _stats(_col(rounds, rate, "conn_ms"))
            if len(name) > 18:
                lines.append(name)
                name = ""
            lines.append(f"{name:<18}{last.get('replies', 0):>8}{last.get('errors', -1):>5}{cm:>18}{h:>20}{hr:>20}"
                         f"{ts:>20}{tr:>20}{nr:>20}")
    lines.append("\nratios: each configuration's CPU per request over the reference's, round by round, "
                 "median [min-max] (host/regular: the host's against Regular TCP's; tcpsrv/haproxy and "
                 "tcpsrv/nginx: the TCP server's against that relay's). In regular mode the "
                 "tcpserver node only forwards (its softirq is charged to senders). replies/err: last round; "
                 "conn ms: httperf's mean connection time (connect to close).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.offload", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    h = sub.add_parser("_percall-host")
    h.add_argument("--mode", required=True)
    h.add_argument("--port", type=int, default=PERCALL_PORT)
    h.add_argument("--tunnel")
    h.add_argument("--token-file")
    h.add_argument("--sizes", default=",".join(map(str, SIZES)))
    h.add_argument("--n", type=int, default=200)
    c = sub.add_parser("_percall-client")
    c.add_argument("--target", required=True)
    c.add_argument("--sizes", default=",".join(map(str, SIZES)))
    c.add_argument("--n", type=int, default=200)
    ap.add_argument("--rates", default="3000,6500",
                    help="offered loads, comma separated, the same for every configuration")
    ap.add_argument("--rate", type=int, help="one offered load (overrides --rates)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=2, help="rounds over all configurations, for the spread")
    ap.add_argument("--file", default="/dir0/class1_5", help="URI (6 KiB by default, as in docs/design.md)")
    ap.add_argument("--host-cpu", type=float, default=0.3)
    ap.add_argument("--tcpserver-cpu", type=float, default=0.6)
    ap.add_argument("--modes", nargs="+", default=DEFAULT_RUN,
                    help="modes to run; variants for A/B: MODE/asyncio (the event loop's "
                         "transports for clients), MODE/poll=US (poll every US microseconds)")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--n", type=int, default=200, help="per-call iterations per size")
    ap.add_argument("--no-haproxy", action="store_true", help="skip the HAProxy and nginx reference rows")
    ap.add_argument("--no-percall", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    a = ap.parse_args(argv)
    if a.cmd == "_percall-host":
        from testbed.offload.runtime import install_loop

        install_loop()
        print(json.dumps(asyncio.run(_percall_host(a))), flush=True)
        return 0
    if a.cmd == "_percall-client":
        _percall_client(a)
        return 0
    a.rates = [a.rate] if a.rate else [int(x) for x in a.rates.split(",") if x.strip()]
    if "regular" not in a.modes:
        a.modes.insert(0, "regular")
    res = run(a)
    print(report(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

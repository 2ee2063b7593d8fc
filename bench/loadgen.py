"""The open-loop generator against httperf, side by side, on one core each.

    python -m bench.loadgen [--rates 2000:16000:2000] [--seconds 3] [--out FILE.json]

Everything runs inside a throwaway network namespace (``tcps-lgb<pid>``) on its loopback:
nginx pinned to CPU 1 serving one 6 KiB file, the generator pinned to CPU 0, a new
connection per request. The namespace gets its own port range and ``tcp_tw_reuse`` (its
own sysctls: the machine's are not touched), so TIME_WAIT left by one run (httperf closes
first) cannot starve the next. It is deleted by exact name at the end.

For each offered rate: httperf (one connection per call; ``--hog`` binds ports itself and stalls on ports still in TIME_WAIT), the sweep with one
process, and the sweep with two processes (both on CPU 0, sharing the rate). A rate is
*sustained* when sends reach 98% of the schedule, no request failed, and (sweep) the step
is not generator-bound. CPU per request is the generator's own CPU time (user + system)
over the requests it sent; httperf busy-polls, so its figure at its highest sustained rate
is also shown as one core divided by that rate, for comparison with a busy-polling generator.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def sh(*argv: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, **kw)


class Netns:
    def __init__(self) -> None:
        self.name = f"tcps-lgb{os.getpid()}"

    def __enter__(self) -> "Netns":
        sh("ip", "netns", "add", self.name)
        try:
            self.exec_("ip", "link", "set", "lo", "up")
            # sysctls of this namespace only
            self.exec_("sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65000")
            self.exec_("sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1")
            self.exec_("sysctl", "-q", "-w", "net.core.somaxconn=4096")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        sh("ip", "netns", "del", self.name, check=False)

    def argv(self, *argv: str, cpu: int | None = None) -> list[str]:
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        return ["ip", "netns", "exec", self.name, *pin, *argv]

    def exec_(self, *argv: str, cpu: int | None = None, **kw: Any) -> subprocess.CompletedProcess:
        return sh(*self.argv(*argv, cpu=cpu), **kw)


def start_nginx(ns: Netns, port: int) -> tuple[subprocess.Popen, Path]:
    sys.path.insert(0, str(ROOT))
    from loadgen.servers import make_docroot, nginx_argv

    work = Path(tempfile.mkdtemp(prefix="tcps-lgbench-"))
    work.chmod(0o755)
    make_docroot(work / "root", only="/6k")
    proc = subprocess.Popen(ns.argv(*nginx_argv(work, f"127.0.0.1:{port}"), cpu=1),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = ("import socket,time\nfor _ in range(200):\n  try: socket.create_connection(('127.0.0.1',%d),1).close(); break\n"
             "  except OSError: time.sleep(0.05)\nelse: raise SystemExit(1)" % port)
    ns.exec_(sys.executable, "-c", probe)
    return proc, work


def httperf(ns: Netns, port: int, rate: float, seconds: float) -> dict[str, Any]:
    n = int(rate * seconds)
    out = ns.exec_("httperf", "--server", "127.0.0.1", "--port", str(port), "--uri", "/6k",
                   "--rate", f"{rate:g}", "--num-conns", str(n), "--num-calls", "1", "--timeout", "5",
                   cpu=0, check=False, timeout=seconds * 4 + 30).stdout
    num = lambda pat: float(re.search(pat, out).group(1)) if re.search(pat, out) else float("nan")
    cpu = num(r"CPU time \[s\]: user ([\d.]+)") + num(r"CPU time \[s\]: user [\d.]+ system ([\d.]+)")
    requests = num(r"Total: connections \d+ requests (\d+)")
    replies = num(r"replies (\d+)")
    errors = num(r"Errors: total (\d+)")
    req_rate = num(r"Request rate: ([\d.]+)")
    sustained = req_rate >= 0.98 * rate and errors == 0 and replies == n
    return {"tool": "httperf", "offered": rate, "sent_rate": req_rate, "replies": replies, "errors": errors,
            "cpu_s": cpu, "cpu_per_req_us": cpu / requests * 1e6 if requests else float("nan"),
            "sustained": bool(sustained)}


def sweep(ns: Netns, port: int, rates: list[float], seconds: float, processes: int, out: Path) -> list[dict]:
    argv = [sys.executable, "-m", "loadgen", "sweep", "--target", f"http://127.0.0.1:{port}/",
            "--workload", "static", "--rates", ",".join(f"{r:g}" for r in rates),
            "--step-seconds", str(seconds + 1), "--warmup", "1", "--processes", str(processes),
            "--cpus", "0", "--out", str(out), "--pause", "0.5", "-q"]
    p = subprocess.run(ns.argv(*argv), cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0 and not (out / "steps.csv").exists():
        raise RuntimeError(f"sweep failed: {p.stderr.strip()}")
    rows = []
    with open(out / "steps.csv") as f:
        for r in csv.DictReader(f):
            window, sent = float(r["window_s"]), int(r["sent"])
            cpu_s = float(r["gen_cpu_total"]) * window
            errors = int(r["errors_total"])
            sustained = r["generator_bound"] == "False" and errors == 0 and \
                float(r["reply_rate_avg"]) >= 0.98 * float(r["scheduled_rate"])
            rows.append({"tool": f"loadgen x{processes}", "offered": float(r["offered_rate"]),
                         "sent_rate": float(r["achieved_rate"]), "replies": int(r["replies"]), "errors": errors,
                         "cpu_s": cpu_s, "cpu_per_req_us": cpu_s / sent * 1e6 if sent else float("nan"),
                         "gen_cpu_max": float(r["gen_cpu_max"]), "sustained": sustained,
                         "bound": r["bound_reasons"]})
    return rows


def best(rows: list[dict]) -> dict | None:
    ok = [r for r in rows if r["sustained"]]
    return max(ok, key=lambda r: r["offered"]) if ok else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="4000,8000,12000,14000,16000,18000,20000")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per rate")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from loadgen.schedule import parse_rates

    rates = parse_rates(a.rates)
    port = 8080
    results: list[dict] = []
    with Netns() as ns:
        nginx, work = start_nginx(ns, port)
        try:
            for r in rates:
                results.append(httperf(ns, port, r, a.seconds))
                print(_line(results[-1]), flush=True)
            for procs in (1, 2):
                rows = sweep(ns, port, rates, a.seconds, procs, work / f"sweep{procs}")
                for row in rows:
                    print(_line(row), flush=True)
                results += rows
        finally:
            nginx.terminate()
            nginx.wait(timeout=10)
            import shutil
            shutil.rmtree(work, ignore_errors=True)
    h = best([r for r in results if r["tool"] == "httperf"])
    report: dict[str, Any] = {"rates": rates, "seconds": a.seconds, "rows": results, "best": {}}
    print("\nhighest sustained rate (sends within 2%, no errors, not generator-bound), one core:")
    for tool in ("httperf", "loadgen x1", "loadgen x2"):
        b = best([r for r in results if r["tool"] == tool])
        report["best"][tool] = b
        print(f"  {tool:11s} {b['offered'] if b else 0:8.0f} req/s   CPU/request {b['cpu_per_req_us'] if b else float('nan'):6.1f} us")
    l1 = report["best"]["loadgen x1"]
    if h and l1:
        one_core = 1e6 / h["offered"]
        report["ratios"] = {
            "cpu_per_req_vs_httperf_measured": l1["cpu_per_req_us"] / h["cpu_per_req_us"],
            "cpu_per_req_vs_httperf_one_core": l1["cpu_per_req_us"] / one_core,
            "max_rate_httperf_over_loadgen": h["offered"] / l1["offered"],
        }
        same = [(x, y) for x in results if x["tool"] == "httperf" and x["sustained"]
                for y in results if y["tool"] == "loadgen x1" and y["sustained"] and y["offered"] == x["offered"]]
        if same:
            report["ratios"]["cpu_per_req_vs_httperf_same_rate"] = {
                f"{x['offered']:g}": round(y["cpu_per_req_us"] / x["cpu_per_req_us"], 3) for x, y in same}
        print(f"  loadgen x1 CPU/request vs httperf: {report['ratios']['cpu_per_req_vs_httperf_measured']:.2f}x "
              f"(httperf's measured), {report['ratios']['cpu_per_req_vs_httperf_one_core']:.2f}x "
              f"(one core / httperf's highest rate); same-rate ratios "
              f"{report['ratios'].get('cpu_per_req_vs_httperf_same_rate')}")
    if a.out:
        a.out.write_text(json.dumps(report, indent=1))
    return 0


def _line(r: dict) -> str:
    return (f"{r['tool']:11s} offered {r['offered']:7.0f}  sent {r['sent_rate']:8.1f}/s  errors {r['errors']:5.0f}  "
            f"CPU/req {r['cpu_per_req_us']:6.1f} us  {'ok' if r['sustained'] else 'NOT sustained ' + r.get('bound', '')}")


if __name__ == "__main__":
    sys.exit(main())

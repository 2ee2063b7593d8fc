"""The agent: what the controlling machine asks of another machine, one verb per SSH command.

    <project>/.venv/bin/python -m testbed.system.remote.agent VERB < request.json

Each verb reads a JSON request on stdin and prints one JSON answer line (``{"ok": true,
...}`` or ``{"ok": false, "error": "one line"}``). The machine's share of a testbed (its
nodes' namespaces, its ends of the links, its cgroups, its processes) is built and
journaled here with the same code as on one machine (``lifecycle.Testbed`` with ``here``
set to this machine's name), under this machine's /run/tcps/<testbed>/, so ``down`` and
``clean`` work from this machine's own journal, also when the controlling machine is gone.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ...describe.machines import PROJECT_ROOT
from ...errors import TestbedError
from .identity import machine_id, source_digest

def _share(req: dict[str, Any]):  # type: ignore[no-untyped-def]
    from ..lifecycle import Testbed
    return Testbed.attach(str(req["testbed"]))


def hello(req: dict[str, Any]) -> dict[str, Any]:
    from .. import cgroups
    from ..kernel import is_root
    try:
        version: Any = cgroups.detect().version
    except Exception as e:  # noqa: BLE001 (reported, not fatal: `up` refuses with it)
        version = f"none ({e})"
    return {"uid": os.getuid(), "root": is_root(), "digest": source_digest(), "time": time.time(),
            "cpus": os.cpu_count(), "cgroup": version, "kernel": os.uname().release,
            "hostname": socket.gethostname(), "machine_id": machine_id()}


def build(req: dict[str, Any]) -> dict[str, Any]:
    """Build this machine's share; on any error, remove what was made and say why."""
    from ...describe.topology import topology_from_dict
    from ..lifecycle import Testbed
    topo = topology_from_dict(req["topology"], {}, source=f"testbed {req['testbed']}")
    tb = Testbed(topo, str(req["testbed"]), mode=str(req["mode"]), subnet=str(req["subnet"]),
                 here=str(req["machine"]), peers=dict(req["peers"]))
    tb.recorded["share_owner"] = str(req["owner"])
    tb.up()
    return {"namespaces": list(tb.built.namespaces), "cgroup_version": tb.cgroups.version,
            "budgets": {n: tb.cgroups.limits(tb.cgroup(n)) for n in tb.local_nodes}, "warnings": tb.warnings}


def run(req: dict[str, Any]) -> dict[str, Any]:
    res = _share(req).run(str(req["node"]), list(req["argv"]), timeout=float(req.get("timeout", 60)))
    return {"returncode": res.returncode, "stdout": res.stdout.decode(errors="replace")[-4000:],
            "stderr": res.stderr.decode(errors="replace")[-4000:]}


def spawn(req: dict[str, Any]) -> dict[str, Any]:
    """Start a supervised process; it outlives this command (a session of its own)."""
    from ..kernel import pid_alive
    tb = _share(req)
    env = {**os.environ, **req["env"]} if req.get("env") else None
    # stdin not the SSH channel's: the process outlives this command
    proc = tb.popen(str(req["node"]), list(req["argv"]), log_name=str(req["name"]), supervise=True, env=env,
                    stdin=subprocess.DEVNULL)
    rec = tb.processes[-1]
    time.sleep(0.2)  # one that exits at once (bad arguments) is reported here, with its log
    if not pid_alive(rec.pid, rec.start_time) or proc.poll() is not None:
        tail = "\n".join(Path(rec.log).read_text(errors="replace").splitlines()[-15:])
        raise TestbedError(f"{rec.name} in {rec.node} exited at start; its log ({rec.log}) ends:\n{tail}")
    return {"pid": rec.pid, "start_time": rec.start_time, "log": rec.log}


def address(req: dict[str, Any]) -> dict[str, Any]:
    tb = _share(req)
    tb.network.add_local_address(tb.netns(str(req["node"])), str(req["address"]))
    return {}


def route(req: dict[str, Any]) -> dict[str, Any]:
    tb = _share(req)
    tb.network.set_route(tb.netns(str(req["node"])), str(req["dst"]), list(req["gateways"]))
    return {}


def wait_port(req: dict[str, Any]) -> dict[str, Any]:
    from ..starter import wait_listening
    wait_listening(_share(req), str(req["node"]), str(req["address"]), int(req["port"]), float(req["timeout"]))
    return {}


def secret(req: dict[str, Any]) -> dict[str, Any]:
    """The controller's token, at the same path, created 0600 (never readable by others)."""
    from ..state import StateStore
    path = StateStore(str(req["testbed"])).dir / Path(str(req["file"])).name
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(str(req["content"]))
    return {"path": str(path)}


def status(req: dict[str, Any]) -> dict[str, Any]:
    from ..kernel import pid_alive
    tb = _share(req)
    net = tb.network.status(tb.built)
    budgets = {}
    for n in tb.local_nodes:
        used = tb.cgroups.usage(tb.cgroup(n))
        budgets[n] = {**tb.cgroups.limits(tb.cgroup(n)), "used_s": round(used.total_s, 3),
                      "throttled_s": round(used.throttled_s, 3)}
    return {"present": list(net.present), "missing": list(net.missing), "budgets": budgets,
            "processes": [{**p.to_dict(), "alive": pid_alive(p.pid, p.start_time)} for p in tb.processes]}


def read(req: dict[str, Any]) -> dict[str, Any]:
    """A file of this share's run directory (a sampler's output, a stats file), as text."""
    from ..state import StateStore
    root = StateStore(str(req["testbed"])).dir.resolve()
    path = (root / str(req["file"])).resolve()
    if root not in path.parents:
        raise TestbedError(f"{req['file']}: not inside {root}")
    return {"text": path.read_text(errors="replace") if path.exists() else None}


def sample_start(req: dict[str, Any]) -> dict[str, Any]:
    """A sampler process for this share's nodes (journaled, so teardown stops it)."""
    from ..kernel import pid_start_time
    tb = _share(req)
    out = tb.store.dir / "samples.jsonl"
    out.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "testbed.system.remote.agent", "sampler", tb.name,
                             str(float(req.get("interval", 1.0)))], cwd=str(PROJECT_ROOT),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(tb.store.logs / "sampler.log", "ab"), start_new_session=True)
    start = pid_start_time(proc.pid)
    tb.store.journal("pid", f"{proc.pid}:{start}")
    return {"pid": proc.pid, "start_time": start}


def sample_stop(req: dict[str, Any]) -> dict[str, Any]:
    """Stop the sampler (its last sample closes the final interval) and hand its rows over."""
    from ..processes import stop
    tb = _share(req)
    stop(int(req["pid"]), req.get("start_time"), timeout=10)
    path = tb.store.dir / "samples.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut short
    return {"rows": rows}


def sampler(testbed: str, interval: float) -> int:
    """The sampler process: one sample of the share per interval, appended as JSON lines."""
    import signal
    from ...measure.metrics import sample
    tb = _share({"testbed": testbed})
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    with open(tb.store.dir / "samples.jsonl", "a") as f:
        next_t = time.monotonic()
        while True:
            for row in sample(tb):
                f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            if stopping:
                return 0
            next_t += interval
            time.sleep(max(0.0, next_t - time.monotonic()))
            # (a SIGTERM during the sleep ends it early: the next pass is the last sample)


def down(req: dict[str, Any]) -> dict[str, Any]:
    """Remove the share by its journal, if it is the asking testbed's (its owner id)."""
    from ..lifecycle import teardown
    from ..state import StateStore
    store = StateStore(str(req["testbed"]))
    try:
        owner = store.load().get("share_owner")
    except TestbedError:
        owner = None  # no state (a build stopped early): the journal alone, written by that build
    if owner is not None and owner != req["owner"]:
        raise TestbedError(f"the testbed {req['testbed']!r} here belongs to another controller; left alone")
    return {"removed": teardown(str(req["testbed"]))}


def clean(req: dict[str, Any]) -> dict[str, Any]:
    from ..clean import clean_all
    res = clean_all(force=bool(req.get("force")))
    return {"removed": res.removed, "left_alone": res.left_alone, "failed": res.failed}


def exec_(testbed: str, node: str, argv: list[str], budget: bool = True) -> int:
    """A command in a node with this terminal (``testbed exec`` of a remote node, in its
    cgroup; ``capture``'s tcpdump, in its namespace only)."""
    from ..processes import ctrl_c_goes_to, spawn as spawn_in
    tb = _share({"testbed": testbed})
    proc = spawn_in(tb.netns(node), tb.cgroups.procs_files(tb.cgroup(node)) if budget else [], argv,
                    stdin=None, stdout=None, stderr=None)
    with ctrl_c_goes_to(proc):  # the terminal's Ctrl-C (through ssh -t) reaches the command
        return proc.wait()


VERBS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "hello": hello, "build": build, "run": run, "spawn": spawn, "address": address, "route": route,
    "wait-port": wait_port, "secret": secret, "status": status, "read": read, "down": down, "clean": clean,
    "sample-start": sample_start, "sample-stop": sample_stop,
}


def main(argv: list[str]) -> int:
    if argv[:1] == ["sampler"] and len(argv) == 3:
        return sampler(argv[1], float(argv[2]))
    if argv[:1] in (["exec"], ["capture"]) and len(argv) >= 4:  # VERB TESTBED NODE CMD...: no JSON
        try:
            return exec_(argv[1], argv[2], argv[3:], budget=argv[0] == "exec")
        except TestbedError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if len(argv) != 1 or argv[0] not in VERBS:
        print(json.dumps({"ok": False, "error": f"agent: one of {', '.join(VERBS)}, exec"}))
        return 2
    try:
        req = json.loads(sys.stdin.read() or "{}")
        answer = {"ok": True, **VERBS[argv[0]](req)}
    except TestbedError as e:
        answer = {"ok": False, "error": str(e)}
    except (KeyError, TypeError, ValueError) as e:
        answer = {"ok": False, "error": f"agent {argv[0]}: bad request ({type(e).__name__}: {e})"}
    except subprocess.TimeoutExpired as e:
        answer = {"ok": False, "error": f"agent {argv[0]}: {e}"}
    print(json.dumps(answer, default=str), flush=True)
    return 0 if answer["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Workloads as tables of ready-made requests and seeded draws over them.

- static: files of the target's ``/manifest.json`` (``{"files": [{"path", "size",
  "class"}]}``, docs/CONTRACTS.md) drawn with the SPECweb99 class mix (35/50/14/1% over
  classes 0-3) and, within a class, a Zipf-like choice (weight 1/rank, files in manifest
  order) - the suite's own within-class table is also peaked (the 5th of 9 files gets 35%)
  but Zipf over the whole class keeps a tree of many directories skewed, as web traffic is;
- dynamic: ``/dynamic?cost_us=N`` (the app burns N microseconds of CPU per request);
- mixed: a share ``mix`` of static requests, the rest dynamic.

A workload is drawn up front as integer indices into ``requests`` (bytes, one per distinct
URL), so the hot path does no string work.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.parse
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

CLASS_BASE = {0: 102, 1: 1024, 2: 10 * 1024, 3: 100 * 1024}
CLASS_MIX = {0: 0.35, 1: 0.50, 2: 0.14, 3: 0.01}
WORKLOADS = ("static", "dynamic", "mixed")
USER_AGENT = "tcps-loadgen"


class WorkloadError(ValueError):
    """A workload that cannot be built (unknown name, bad manifest, bad mix)."""


def build_request(host_header: str, path: str, keepalive: bool) -> bytes:
    if keepalive:
        return (f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {USER_AGENT}\r\n\r\n").encode()
    return (f"GET {path} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: {USER_AGENT}\r\n"
            "Connection: close\r\n\r\n").encode()


def fetch(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """A plain blocking HTTP/1.0 GET (stdlib sockets; fine before a run, never in it)."""
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname or "", u.port or 80
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(build_request(u.netloc, path, keepalive=False))
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/"):
        raise WorkloadError(f"{url}: not an HTTP reply")
    return int(head[9:12]), body


@dataclass
class Workload:
    """Distinct requests (``paths``) and the probability of each."""

    name: str
    paths: list[str]
    weights: np.ndarray
    sizes: list[int] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)

    def requests(self, host_header: str, keepalive: bool) -> list[bytes]:
        return [build_request(host_header, p, keepalive) for p in self.paths]

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(len(self.paths), size=n, p=self.weights).astype(np.int32)

    def describe(self) -> dict:
        return {"name": self.name, "distinct_requests": len(self.paths),
                "mean_size": float(np.dot(self.weights[:len(self.sizes)], self.sizes)) if self.sizes else None}


def static_weights(files: list[dict]) -> np.ndarray:
    """SPECweb99 class mix across classes, Zipf (1/rank) within a class."""
    classes = np.array([int(f.get("class", 0)) for f in files])
    w = np.zeros(len(files))
    present = {c: p for c, p in CLASS_MIX.items() if (classes == c).any()}
    if not present:
        raise WorkloadError("the manifest has no file of classes 0-3")
    total = sum(present.values())
    for c, p in present.items():
        idx = np.flatnonzero(classes == c)
        zipf = 1.0 / np.arange(1, len(idx) + 1)
        w[idx] = (p / total) * zipf / zipf.sum()
    return w / w.sum()


def static_from_manifest(manifest: dict) -> Workload:
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not files or not all(isinstance(f, dict) and "path" in f for f in files):
        raise WorkloadError('manifest.json must be {"files": [{"path", "size", "class"}, ...]} with files')
    return Workload("static", [f["path"] for f in files], static_weights(files),
                    [int(f.get("size", 0)) for f in files], [int(f.get("class", 0)) for f in files])


def dynamic(cost_us: int) -> Workload:
    return Workload("dynamic", [f"/dynamic?cost_us={int(cost_us)}"], np.array([1.0]))


def mixed(static: Workload, dyn: Workload, mix: float) -> Workload:
    if not 0.0 <= mix <= 1.0:
        raise WorkloadError(f"--mix {mix}: the static share must be between 0 and 1")
    w = np.concatenate([static.weights * mix, dyn.weights * (1.0 - mix)])
    return Workload("mixed", static.paths + dyn.paths, w / w.sum(),
                    static.sizes + [0] * len(dyn.paths), static.classes + [-1] * len(dyn.paths))


def load_manifest(base_url: str, timeout: float = 5.0) -> dict:
    url = urllib.parse.urljoin(base_url, "/manifest.json")
    status, body = fetch(url, timeout)
    if status != 200:
        raise WorkloadError(f"{url} answered {status}: the static workload needs the document "
                            "root's manifest (python -m testbed.app.docroot writes it)")
    try:
        return json.loads(body)
    except ValueError:
        raise WorkloadError(f"{url} is not JSON") from None


def make_workload(name: str, base_url: str, *, mix: float = 0.8, dynamic_cost_us: int = 1000,
                  manifest: dict | None = None) -> Workload:
    """Build a workload, fetching the manifest from the target when one is needed."""
    if name not in WORKLOADS:
        raise WorkloadError(f"unknown workload {name!r}; choose one of {', '.join(WORKLOADS)}")
    if dynamic_cost_us < 0:
        raise WorkloadError("--dynamic-cost-us must be 0 or more")
    if name == "dynamic":
        return dynamic(dynamic_cost_us)
    st = static_from_manifest(manifest if manifest is not None else load_manifest(base_url))
    return st if name == "static" else mixed(st, dynamic(dynamic_cost_us), mix)

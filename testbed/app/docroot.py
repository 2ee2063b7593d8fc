"""Deterministic SPECweb99-class document root.

Each directory ``/dir<D>`` holds 36 files, nine per class, with the SPECweb99 sizes:

    class 0: 0.1-0.9 KiB   class 1: 1-9 KiB   class 2: 10-90 KiB   class 3: 100-900 KiB

and the suite's access mix (35% / 50% / 14% / 1% of requests) recorded in the manifest for
load generators. Contents are pseudo-random bytes derived from the seed and the path, so
the same seed always gives byte-identical trees. ``manifest.json`` lists every file with
its size, class and SHA-256.

Run: ``python -m testbed.app.docroot DIR --seed S [--dirs N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
from pathlib import Path

from ..system.files import write_atomic, write_json

CLASS_BASE = {0: 102, 1: 1024, 2: 10 * 1024, 3: 100 * 1024}
CLASS_MIX = {0: 0.35, 1: 0.50, 2: 0.14, 3: 0.01}
FILES_PER_CLASS = 9


def file_specs(dirs: int) -> list[tuple[str, int, int]]:
    """(path, size, class) for every file, in a fixed order."""
    out = []
    for d in range(dirs):
        for c, base in CLASS_BASE.items():
            for i in range(FILES_PER_CLASS):
                out.append((f"/dir{d}/class{c}_{i}", base * (i + 1), c))
    return out


def file_bytes(seed: int, path: str, size: int) -> bytes:
    return random.Random(f"{seed}:{path}").randbytes(size)


def generate(root: str | os.PathLike, seed: int = 1, dirs: int = 4) -> dict:
    """Write the tree and manifest.json under ``root``; returns the manifest."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for path, size, cls in file_specs(dirs):
        data = file_bytes(seed, path, size)
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data)
        files.append({"path": path, "size": size, "class": cls, "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {
        "files": files,
        "seed": seed,
        "dirs": dirs,
        "class_mix": {str(k): v for k, v in CLASS_MIX.items()},
        "total_bytes": sum(f["size"] for f in files),
    }
    write_json(root / "manifest.json", manifest, indent=1)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.app.docroot", description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dirs", type=int, default=4, help="directories of 36 files (about 5 MB each)")
    a = ap.parse_args(argv)
    if a.dirs < 1:
        print("docroot: --dirs must be at least 1", file=sys.stderr)
        return 2
    m = generate(a.dir, a.seed, a.dirs)
    print(f"{a.dir}: {len(m['files'])} files, {m['total_bytes']} bytes, seed {a.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

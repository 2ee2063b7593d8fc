"""Testbed state under /run/tcps/<testbed>/, so every verb works from any shell.

``journal.jsonl`` is appended *before* each kernel object is created, so
``clean`` can remove a half-built testbed whose builder was killed with SIGKILL.
``state.json`` is the finished description (nodes, addresses, cgroups, processes),
rewritten atomically.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .. import RUN_DIR
from ..errors import TestbedError
from .files import write_json

NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")


def run_root() -> Path:
    return Path(os.environ.get("TCPS_RUN_DIR", RUN_DIR))


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise TestbedError(f"testbed name {name!r} must be 1-12 lower-case letters/digits, "
                           "starting with a letter")


class StateStore:
    def __init__(self, name: str):
        check_name(name)
        self.name = name
        self.dir = run_root() / name

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    def exists(self) -> bool:
        return self.dir.is_dir()

    def create(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)

    def journal(self, kind: str, name: str) -> None:
        with open(self.dir / "journal.jsonl", "a") as f:
            # a write() survives SIGKILL of this process; /run is tmpfs, so fsync adds nothing
            f.write(json.dumps({"kind": kind, "name": name}) + "\n")

    def journaled(self) -> list[tuple[str, str]]:
        path = self.dir / "journal.jsonl"
        out = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    out.append((rec["kind"], rec["name"]))
                except (ValueError, KeyError):
                    continue  # a line cut short by a crash
        return out

    def save(self, state: dict[str, Any]) -> None:
        write_json(self.dir / "state.json", state, indent=2, sort_keys=True)

    def load(self) -> dict[str, Any]:
        try:
            return json.loads((self.dir / "state.json").read_text())
        except FileNotFoundError:
            raise TestbedError(f"no running testbed named {self.name!r} "
                               f"(running: {', '.join(list_testbeds()) or 'none'})") from None
        except ValueError:
            raise TestbedError(f"state of testbed {self.name!r} is damaged; "
                               "`sudo testbed clean` removes it") from None


def list_testbeds() -> list[str]:
    root = run_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "state.json").exists())


def known_addresses() -> set[str]:
    """Every address of every running testbed: the only targets load tools may use."""
    out: set[str] = set()
    for name in list_testbeds():
        try:
            state = StateStore(name).load()
        except TestbedError:
            continue
        out.update(state.get("addresses", []))
    return out

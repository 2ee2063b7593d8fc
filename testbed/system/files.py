"""Files written whole or not at all: a reader (the TCP server reading a balance share, the
analysis reading a point's record, a status reading state.json) never sees half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` beside ``path`` and rename it into place (one rename: all or nothing)."""
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any, **dumps: Any) -> None:
    write_atomic(path, json.dumps(obj, **dumps))

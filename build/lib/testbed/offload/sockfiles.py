"""Filesystem Unix socket paths the SAN channels listen on (``unix:`` and ``shm:``)."""

from __future__ import annotations

import os
import socket


def unlink_stale(path: str, kind: int = socket.SOCK_STREAM) -> None:
    """Remove a leftover socket file, but never a socket someone is still serving on."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, kind)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise OSError(f"{path} is in use by a running TCP server; stop it or choose another path")
    finally:
        probe.close()

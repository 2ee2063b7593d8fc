"""Which targets the generator may load: loopback, or an address of a running testbed.

Testbed addresses come from ``testbed.system.state.known_addresses()`` (the state files under
/run/tcps/*/state.json). The generator must never load anything else: not the uplink,
not somebody's server.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class TargetError(ValueError):
    """A target URL that is malformed, not allowed, or not answering."""


@dataclass(frozen=True)
class Target:
    url: str          # normalised base URL, ending with "/"
    host: str         # the IP address connected to
    port: int
    host_header: str  # what goes into Host:

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)


def known_addresses() -> set[str]:
    """Addresses of running testbeds (the core's reader when importable, else our own)."""
    try:
        from testbed.system.state import known_addresses as core_reader
    except ImportError:  # loadgen used alone, without the testbed package
        return _read_states(Path(os.environ.get("TCPS_RUN_DIR", "/run/tcps")))
    return core_reader()


def _read_states(root: Path) -> set[str]:
    out: set[str] = set()
    for p in root.glob("*/state.json") if root.is_dir() else []:
        try:
            out.update(json.loads(p.read_text()).get("addresses", []))
        except (OSError, ValueError):
            continue
    return out


def parse_target(url: str) -> Target:
    """Check a target URL against the allowed addresses; no network traffic."""
    u = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if u.scheme != "http":
        raise TargetError(f"target {url!r}: only http:// is supported")
    if not u.hostname:
        raise TargetError(f"target {url!r}: no host")
    try:
        port = u.port or 80
    except ValueError:
        raise TargetError(f"target {url!r}: bad port") from None
    try:
        infos = socket.getaddrinfo(u.hostname, port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        raise TargetError(f"target {url!r}: cannot resolve {u.hostname!r} to an IPv4 address") from None
    ip = infos[0][4][0]
    if not ipaddress.ip_address(ip).is_loopback:
        known = known_addresses()
        if ip not in known:
            why = ("no testbed is running" if not known else
                   f"it is not an address of a running testbed ({len(known)} known)")
            raise TargetError(f"refusing target {url}: {ip} is not loopback and {why}; "
                              "the generator only loads loopback or the testbed's own nodes")
    return Target(f"http://{u.netloc}/", ip, port, u.netloc)


def check_reachable(target: Target, timeout: float = 3.0) -> None:
    try:
        with socket.create_connection(target.addr, timeout=timeout):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise TargetError(f"cannot reach {target.url}: {reason} ({target.host}:{target.port}); "
                          "is the server running, and is this the right namespace?") from None

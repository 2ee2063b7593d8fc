"""The six modes and what each one switches in the TCP server and the host library.

``regular`` is the baseline: no TCP server, the host's kernel TCP serves clients. The
other five are the paper's cluster variants, cumulative in this reading (each adds one
thing to the one before); ``docs/modes.md`` explains the choice.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    offloaded: bool  # a TCP server terminates client TCP and tunnels the socket calls
    sync_send: bool  # each send waits for SEND_DONE; close waits for CLOSE_DONE
    push_data: bool  # the TCP server pushes client data ahead (no RECV_REQ round trips)
    push_accept: bool  # the TCP server announces connections ahead (no ACCEPT_REQ)
    setup_with_accept: bool  # the announcement waits for, and carries, the first data
    san_frames_per_request: int  # expected frames for one short request, new connection

    def __str__(self) -> str:  # in records and messages a mode is its name
        return self.name


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("regular", False, False, False, False, False, 0),
        Mode("split", True, True, False, False, False, 8),
        Mode("async-send", True, False, False, False, False, 5),
        Mode("eager-receive", True, False, True, False, False, 4),
        Mode("eager-accept", True, False, True, True, False, 3),
        Mode("setup-with-accept", True, False, True, True, True, 2),
    )
}
OFFLOADED_MODES = [n for n, m in MODES.items() if m.offloaded]
REGULAR = MODES["regular"]  # the baseline: the application on the host's kernel TCP


def get_mode(name: str) -> Mode:
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"unknown mode {name!r}: choose one of {', '.join(MODES)}") from None

"""The base of the engine's three hand-written asyncio transports.

``rawio.RawTransport`` (client sockets on the daemon's own epoll set),
``hostsock.TunnelTransport`` (a tunneled connection as the host application sees it) and
``shmtransport.ShmTransport`` (a SAN channel over shared-memory rings) each move bytes their
own way, but present the same ``asyncio.Transport`` contract to a protocol: the protocol
slot, asyncio's write-buffer limits (``write_buffer_limits``: high 64 KiB, low a quarter
of it) with ``pause_writing``/``resume_writing`` called on crossing them, ``writelines``.
That contract lives here once; a subclass says how much it holds
(``get_write_buffer_size``) and calls ``_pause_writing``/``_resume_writing`` when its own
counters cross the marks, after a plain int compare (so the per-write path pays no call).

A protocol's exception in those callbacks is logged and the transport goes on, as asyncio
does. ``GONE`` replaces a closed transport's protocol so that no transport <-> protocol
reference cycle is left for the cyclic collector (connections are then freed by reference
counting: measurably cheaper at thousands of connections per second).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("testbed.offload.transport")

DEFAULT_HIGH = 64 * 1024  # asyncio's default write-buffer high mark
DEFAULT_LOW = DEFAULT_HIGH // 4
GONE = asyncio.Protocol()  # a closed transport's protocol


def write_buffer_limits(high: int | None, low: int | None) -> tuple[int, int]:
    """asyncio's rule for a transport's write-buffer limits: (high, low), checked."""
    if high is None:
        high = DEFAULT_HIGH if low is None else 4 * low
    if low is None:
        low = high // 4
    if not high >= low >= 0:
        raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
    return high, low


class StreamTransport(asyncio.Transport):
    """Protocol slot, write-buffer limits and writing pauses of a hand-written transport."""

    __slots__ = ("_protocol", "_high", "_low", "_wpaused")

    def _init_stream(self, protocol: asyncio.BaseProtocol) -> None:
        """(The per-connection transports assign these four inline: one call less each.)"""
        self._protocol = protocol
        self._high = DEFAULT_HIGH
        self._low = DEFAULT_LOW
        self._wpaused = False  # pause_writing called, resume_writing not yet

    def _pause_writing(self) -> None:
        """The buffer passed the high mark (the caller compared): tell the protocol."""
        self._wpaused = True
        try:
            self._protocol.pause_writing()  # type: ignore[union-attr]
        except Exception:  # the protocol's bug, as in asyncio
            log.exception("pause_writing of %r failed", self._protocol)

    def _resume_writing(self) -> None:
        """The buffer fell to the low mark (the caller compared): tell the protocol."""
        self._wpaused = False
        try:
            self._protocol.resume_writing()  # type: ignore[union-attr]
        except Exception:
            log.exception("resume_writing of %r failed", self._protocol)

    # --- asyncio.Transport ------------------------------------------------------------
    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high, self._low = write_buffer_limits(high, low)
        if not self._wpaused and self.get_write_buffer_size() > self._high:
            self._pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

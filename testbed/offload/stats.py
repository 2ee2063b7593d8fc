"""The daemon's stats file: one JSON snapshot of counters, rewritten every 0.5 s.

Counters are plain int attributes on the daemon and its host channels (incremented on the
hot path, read only here); a snapshot sums them, so writing the file costs nothing per
request. Written to a temporary file and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import logging
import os
import time

from ..system.files import write_json
from .zerocopy import Completions

log = logging.getLogger("testbed.offload.server")


class StatsReport:
    """``stats()`` and the stats-file timer (``TcpServer``'s)."""

    def stats(self) -> dict:
        hosts = {}
        for h in self.hosts:
            hosts[h.host_id if h.host_id not in hosts else f"{h.host_id}@{id(h):x}"] = {
                "peer": str(h.peer),
                "connections": len(h.conns),
                "frames_in": h.decoder.frames_in,
                "frames_out": h.frames_out,
                "bytes_in": h.decoder.bytes_in,
                "bytes_out": h.bytes_out,
                "san_write_buffer": h.transport.get_write_buffer_size() if h.transport else 0,
                "paused": h.paused,
                # shm channel: doorbells rung and taken (zero while both sides poll)
                "bells_sent": getattr(h.transport, "bells_sent", 0),
                "bells_received": getattr(h.transport, "bells_received", 0),
            }
        return {
            "time": time.time(),
            "uptime_s": time.time() - self.started,
            "mode": self.cfg.mode.name,
            "pid": os.getpid(),
            "connections_open": self.c_open,
            "connections_total": self.c_total,
            "connections_refused": self.c_refused,
            "idle_closed": self.c_idle_closed,
            "frames_in": self._frames_in_gone + sum(h.decoder.frames_in for h in self.hosts),
            "frames_out": self._frames_out_gone + sum(h.frames_out for h in self.hosts),
            "san_bytes_in": self._bytes_in_gone + sum(h.decoder.bytes_in for h in self.hosts),
            "san_bytes_out": self._bytes_out_gone + sum(h.bytes_out for h in self.hosts),
            "client_bytes_in": self.c_client_in,
            "client_bytes_out": self.c_client_out,
            "accept_queue": sum(len(p.pending) for p in self.ports.values()),
            "queued": sum(len(p.pending) for p in self.ports.values()),
            "queued_total": self.c_queued_total,
            "shed": self.c_shed,
            "stale": self.c_stale,
            "listener_pauses": self.c_listener_pauses,
            "listener_paused": any(p.paused for p in self.ports.values()),
            "backlog": self.cfg.backlog,
            "host_conns": self.cfg.host_conns,
            "queue_deadline": self.cfg.queue_deadline,
            "overload_control": self.cfg.overload_control,
            "accept_waiters": sum(sum(p.waiters.values()) for p in self.ports.values()),
            "setup_waiting": len(self.waiting),
            "client_buffered_bytes": sum(c.rlen for c in self.conns.values()),
            "eager_hits": self.c_eager_data + self.c_eager_accepts,
            "eager_data_frames": self.c_eager_data,
            "eager_accepts": self.c_eager_accepts,
            "pending_async_sends": sum(1 for c in self.conns.values() if c.wpaused),
            "unacked_send_bytes": sum(c.unacked for c in self.conns.values()),
            "protocol_errors": self.c_protocol_errors,
            "auth_failures": self.c_auth_failures,
            "host_losses": self.c_host_losses,
            "placed_requests": self.c_placed_requests,
            "placed_bytes": self.c_placed_bytes,
            "placed_connections": self.c_placed_conns,
            "placement_handoffs": self.c_place_handoffs,
            "placement_share": self.place.share if self.place is not None else None,
            "poll_us": self.cfg.poll_us,
            "polls": self.pacer.polls if self.pacer is not None else 0,
            "poll_overruns": self.pacer.overruns if self.pacer is not None else 0,
            "poll_sleeps": self.pacer.sleeps if self.pacer is not None else 0,
            "zero_copy": self.cfg.zero_copy,
            "zero_copy_sends": self.c_zc_sends,
            "zero_copy_notices": Completions.notices_total,
            "zero_copy_copied": Completions.copied_total,
            "hosts_attached": len(self.hosts),
            "hosts": hosts,
            **(self.files.counters() if self.files is not None else {}),
        }

    def _write_stats(self) -> None:
        path = self.cfg.stats_file
        assert path is not None
        try:
            write_json(path, self.stats())
        except OSError as e:
            log.warning("cannot write stats file %s: %s", path, e)
        self.loop.call_later(0.5, self._write_stats)

"""The paper's "No Interrupts": poll at a fixed rate instead of waking up for every event.

A TCP server that does nothing but TCP processing can replace interrupts with polling
(slides, "No Interrupts"); the price is latency, up to one polling period per crossing,
and the slides warn that too high a rate wastes the bus while too low a rate cannot keep
up. Here the "interrupt" is the event loop's wake-up from epoll: interrupt-driven, the
daemon wakes (a context switch, a scheduler round trip) for nearly every connection at
moderate load. Polling, it sleeps out the rest of each period and then handles everything
that arrived meanwhile in one pass: one wake-up per period, however many events.

``PollingPacer(loop, period_s, before_sleep).start()`` keeps a callback at the head of
every loop iteration: it runs ``before_sleep`` (flush batched output: frames emitted by
the last pass go out now, not a period later), sleeps until the period is over, and
re-arms itself, which also makes the loop's own epoll wait non-blocking (a ready
callback is pending). CPU spent while idle is one wake-up per period.

Measured (docs/legacy/paper-polling-report.md, docs/performance.md): at 2-5 ms it saves 20-45%
of the TCP server's CPU per request below saturation, at 1 ms little; it does not move
the saturation point.

Shared-memory rings (``shmring``) are polled by the pacer too: a ring registered with
``add_ring`` is read at every tick, so while a process polls it asks its peer for no
doorbell at all, and frames cross with no system call per frame or per batch when both
sides poll. Only before it sleeps does it ask for one: with rings to poll (and so
``sleep_when_idle``), after ``IDLE_PERIODS`` periods in which neither a ring nor an event
source (``wake``) brought anything, the pacer arms every ring's doorbell, re-checks, and
stops ticking, so the loop blocks in epoll; a doorbell or any event that calls ``wake``
starts it again. Idle, such a process costs nothing instead of one wake-up per period.
Over a tcp or unix channel the pacer never sleeps (the SAN's bytes arrive through the
loop, not through ``wake``), as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


MAX_PERIOD_US = 1_000_000
IDLE_PERIODS = 8  # empty periods before a pacer with rings sleeps (16 ms at 2 ms)

_by_loop: dict[int, "PollingPacer"] = {}


def pacer_of(loop: asyncio.AbstractEventLoop) -> "PollingPacer | None":
    """The running pacer of ``loop``, if its process polls: rings made later join it."""
    return _by_loop.get(id(loop))


def check_period_us(us: object) -> int:
    """A polling period as given by a user (0 = off): the whole microseconds, or ValueError."""
    if not isinstance(us, int) or isinstance(us, bool) or not 0 <= us <= MAX_PERIOD_US:
        raise ValueError(f"poll_us must be a whole number of microseconds in [0, {MAX_PERIOD_US}], not {us!r}")
    return us


class PolledRing(Protocol):
    """What the pacer needs of a shared-memory ring (``shmtransport.ShmTransport``)."""

    def poll(self) -> bool:
        """Deliver what arrived and push what waits; True if there was anything."""

    def arm_doorbell(self) -> bool:
        """Ask the peer to ring before we sleep; True if data came meanwhile (do not sleep)."""


class PollingPacer:
    """Runs the loop in fixed periods; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, period_s: float,
                 before_sleep: Callable[[], None] | None = None, sleep_when_idle: bool = False) -> None:
        if not 0 < period_s <= 1.0:
            raise ValueError(f"polling period {period_s * 1e6:.0f} us: must be in (0, 1 s]")
        self.loop = loop
        self.period = period_s
        self.before_sleep = before_sleep
        self.sleep_when_idle = sleep_when_idle
        self.next = time.monotonic() + period_s
        self.rings: list[PolledRing] = []
        self.active = True  # an event source called wake() since the last tick
        self.idle = 0  # consecutive periods with nothing to do
        self.sleeping = False
        self.polls = 0  # periods run (a counter for the stats file)
        self.overruns = 0  # periods whose work took longer than the period itself
        self.sleeps = 0  # times it stopped ticking to wait in epoll for a doorbell or event
        self.stopped = False

    def start(self) -> "PollingPacer":
        _by_loop[id(self.loop)] = self
        self.loop.call_soon(self._tick)
        return self

    def stop(self) -> None:
        self.stopped = True
        if _by_loop.get(id(self.loop)) is self:
            del _by_loop[id(self.loop)]

    def add_ring(self, ring: PolledRing) -> None:
        self.rings.append(ring)
        self.wake()

    def remove_ring(self, ring: PolledRing) -> None:
        try:
            self.rings.remove(ring)
        except ValueError:
            pass

    def wake(self) -> None:
        """An event source had work: count this period busy, and tick again if asleep."""
        self.active = True
        if self.sleeping and not self.stopped:
            self.sleeping = False
            self.next = time.monotonic() + self.period
            self.loop.call_soon(self._tick)

    def _tick(self) -> None:
        if self.stopped or self.sleeping:
            return
        busy = self.active
        for ring in self.rings[:]:  # a channel dropped while polled leaves the list
            if ring.poll():
                busy = True
        self.active = False
        if self.before_sleep is not None:
            self.before_sleep()
        self.polls += 1
        if busy:
            self.idle = 0
        else:
            self.idle += 1
            if self.sleep_when_idle and self.idle >= IDLE_PERIODS and self._arm_all():
                return
        now = time.monotonic()
        delay = self.next - now
        if delay > 0:
            time.sleep(delay)  # events pile up in the kernel meanwhile: that is the point
            self.next += self.period
        else:
            self.overruns += 1
            self.next = now + self.period
        self.loop.call_soon(self._tick)

    def _arm_all(self) -> bool:
        """Ask every ring's peer for a doorbell; True if all stayed empty (now asleep)."""
        for ring in self.rings:
            if ring.arm_doorbell():
                self.idle = 0
                return False
        self.sleeping = True
        self.sleeps += 1
        return True

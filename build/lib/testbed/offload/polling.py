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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


MAX_PERIOD_US = 1_000_000


def check_period_us(us: object) -> int:
    """A polling period as given by a user (0 = off): the whole microseconds, or ValueError."""
    if not isinstance(us, int) or isinstance(us, bool) or not 0 <= us <= MAX_PERIOD_US:
        raise ValueError(f"poll_us must be a whole number of microseconds in [0, {MAX_PERIOD_US}], not {us!r}")
    return us


class PollingPacer:
    """Runs the loop in fixed periods; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, period_s: float,
                 before_sleep: Callable[[], None] | None = None) -> None:
        if not 0 < period_s <= 1.0:
            raise ValueError(f"polling period {period_s * 1e6:.0f} us: must be in (0, 1 s]")
        self.loop = loop
        self.period = period_s
        self.before_sleep = before_sleep
        self.next = time.monotonic() + period_s
        self.polls = 0  # periods run (a counter for the stats file)
        self.overruns = 0  # periods whose work took longer than the period itself
        self.stopped = False

    def start(self) -> "PollingPacer":
        self.loop.call_soon(self._tick)
        return self

    def stop(self) -> None:
        self.stopped = True

    def _tick(self) -> None:
        if self.stopped:
            return
        if self.before_sleep is not None:
            self.before_sleep()
        self.polls += 1
        now = time.monotonic()
        delay = self.next - now
        if delay > 0:
            time.sleep(delay)  # events pile up in the kernel meanwhile: that is the point
            self.next += self.period
        else:
            self.overruns += 1
            self.next = now + self.period
        self.loop.call_soon(self._tick)

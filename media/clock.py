"""One media clock for every call: paced RTP without a timer task per call.

Each call's pacer used to be its own task sleeping until its next frame: per packet a cancel
scope, a deadline-heap entry, a task switch and a ``Deadlines.expire`` pass, which was about
half of rtpai's CPU (docs/performance.md). Here one task, owned by the engine nursery, sleeps
until the earliest deadline of all calls and calls the synchronous ``tick(now)`` of every call
that is due; ``tick`` sends one frame and returns that call's next deadline.

The deadlines are still each call's own absolute ones (the sans-IO ``Pacer`` computes them);
the clock only decides when to wake up, on a 1 ms lattice the grids are anchored on (``TICK``),
so that calls share wake-ups. A call with nothing to send (before the caller's first
packet, or silent with ``send_silence`` off) is *parked*: ``tick`` returns None and the call
costs nothing until it :meth:`~MediaClock.schedule`\\ s itself again.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from typing import Protocol

import trio

log = logging.getLogger("rtpai.media")

# The clock wakes only on a 1 ms lattice, and each call's grid is anchored on it, so calls share
# wake-ups: at most 1000 a second however many calls there are (1000 calls at 20 ms are 50 000
# frames a second, each of which would otherwise be a wake-up of its own, at ~25 us of trio
# scheduling apiece). The price is that a stream's first frame may wait up to 1 ms for the
# lattice; after that its deadlines fall on lattice points and go out on time.
TICK = 0.001
# Frames due within this much of a wake-up go out in that wake-up: it absorbs floating-point
# rounding and the deadlines of a grid re-anchored off the lattice after a stall. Half a
# millisecond early is nothing a phone's jitter buffer can notice.
COALESCE = TICK / 2


def align(at: float) -> float:
    """The first lattice point at or after ``at`` (within rounding)."""
    return math.ceil(at / TICK - 1e-6) * TICK


class Paced(Protocol):
    """What the clock drives: one call's outbound stream."""

    def tick(self, now: float) -> float | None:
        """Send what is due at ``now``; return the next deadline, or None to park."""

    def pacing_failed(self) -> None:
        """``tick`` raised: the clock has dropped this stream (the call should end)."""


class ClockEntry:
    """A stream's registration with the clock; ``due`` is None while it is parked."""

    __slots__ = ("stream", "due", "active")

    def __init__(self, stream: Paced) -> None:
        self.stream = stream
        self.due: float | None = None
        self.active = True


class MediaClock:
    """Wakes up for the earliest due frame of all registered streams and ticks those due.

    Registration is synchronous, so a call registers in its lifecycle (``Call.run``) and
    unregisters in its ``finally``; an unregistered entry still in the heap is skipped when
    it comes up (lazy deletion: removal from the middle of a heap is O(n)).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, ClockEntry]] = []
        self._order = itertools.count()  # ties on a deadline go first-registered first
        self._wait: trio.CancelScope | None = None  # the clock's sleep, while it sleeps
        self.ticks = 0  # frames handled (for tests and diagnostics)
        self.wakeups = 0

    def __len__(self) -> int:
        return len(self._heap)

    def register(self, stream: Paced) -> ClockEntry:
        """Add a stream, parked: it is ticked once it :meth:`schedule`\\ s a deadline."""
        return ClockEntry(stream)

    def unregister(self, entry: ClockEntry) -> None:
        entry.active = False
        entry.due = None

    def schedule(self, entry: ClockEntry, at: float) -> None:
        """Tick a parked stream at ``at`` (no-op if it is already scheduled)."""
        if not entry.active or entry.due is not None:
            return
        entry.due = at
        heapq.heappush(self._heap, (at, next(self._order), entry))
        wait = self._wait
        if wait is not None and at < wait.deadline:
            wait.deadline = align(at)  # wake up earlier than planned

    @property
    def wake_at(self) -> float:
        """When :meth:`run` next wakes up: the lattice point of the earliest deadline."""
        heap = self._heap
        return align(heap[0][0]) if heap else math.inf

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick streams until cancelled. Runs in the engine nursery."""
        task_status.started()
        while True:
            with trio.CancelScope(deadline=self.wake_at) as wait:
                self._wait = wait
                await trio.sleep_forever()
            self._wait = None
            self.wakeups += 1
            self.tick_due(trio.current_time())

    def tick_due(self, now: float) -> None:
        """One wake-up's work, synchronous: tick every stream due by ``now`` (coalesced)."""
        heap = self._heap
        pop, push = heapq.heappop, heapq.heappush
        horizon = now + COALESCE
        while heap and heap[0][0] <= horizon:
            due, order, entry = pop(heap)
            if entry.due != due or not entry.active:
                continue  # unregistered (or rescheduled) since it was pushed
            entry.due = None
            self.ticks += 1
            try:
                following = entry.stream.tick(now)
            except Exception:
                # One call's bug must not stop every call's audio: drop it, end it.
                log.exception("media clock: a stream failed to tick")
                entry.active = False
                entry.stream.pacing_failed()
                continue
            if following is not None and entry.active and entry.due is None:
                entry.due = following
                push(heap, (following, order, entry))

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

Every deadline is a lattice point (or goes to the nearest one, ``slot_of``), so the clock keeps
a *timing wheel* rather than a heap of deadlines: one list of streams per lattice point (a
"slot"), and a heap of the slots' lattice indices only. Scheduling a frame is a dict look-up
and an append; a heap push happens once per slot, not per frame. Against a heap of (deadline,
order, entry) tuples, where the tied deadlines of calls sharing a lattice point made every
comparison go on to the tie-breaker, that took ~3 000 instructions off the ~19 000 a frame
cost at 200 calls (``python -m bench.micro_media --callgrind``).

How the clock sleeps: on a **timerfd** when the compiled fast path is built (media/_fast_timer.c;
Python 3.11 has no ``os.timerfd_create``), else in a trio cancel scope. A wake-up through a
cancel scope's deadline costs trio a deadline-heap entry, a ``Cancelled`` raised and caught
and the scope's bookkeeping: ~80 us of CPU each on this project's VM, against ~55 us for a
task woken because a descriptor became readable (``python -m bench.micro_wakeups``), and the
clock wakes up to 1000 times a second. Under a test's ``MockClock`` the cancel scope is used
(a timerfd follows the real clock, not trio's).

With the timerfd, the clock also runs the **media send thread** (media/send_thread.py, ``[rtp]
media_thread = auto``): a C thread that paces and sends the RTP of every call that registers
with it, off trio and without the GIL. A call's sender registers there when it can
(media/sender.py) and on this clock otherwise; both run side by side.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
from typing import Protocol

import trio

from media import native, send_thread
from media.figures import UNREAD, EngineFigures

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

_fast = native.load("media._fast")


def _timer_usable() -> bool:
    """A timerfd can wake the clock: built, and trio runs on the real monotonic clock."""
    clock = type(trio.lowlevel.current_clock())
    return _fast is not None and clock.__name__ == "SystemClock" and clock.__module__.startswith(
        "trio.")


def align(at: float) -> float:
    """The first lattice point at or after ``at`` (within rounding)."""
    return math.ceil(at / TICK - 1e-6) * TICK


def slot_of(at: float) -> int:
    """The lattice point (as an index: ``slot * TICK`` seconds) whose wake-up sends a frame due
    at ``at``: the nearest one, a deadline half-way between two going with the earlier.

    A deadline on the lattice (every deadline, unless a stall re-anchored the grid on the
    time it woke up) is its own slot within any rounding. One off it goes out at most
    ``COALESCE`` early, as any frame due within ``COALESCE`` of a wake-up always has.
    """
    return math.ceil(at / TICK - 0.5)


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
    unregisters in its ``finally``; an unregistered entry still in a slot is skipped when
    its slot comes up (lazy deletion: removal from the middle of a list is O(n)).
    """

    def __init__(self, figures: EngineFigures = UNREAD, *, media_thread: str = "auto") -> None:
        # Where each wake-up's lateness goes (the engine's, for the metrics).
        self.figures = figures
        # [rtp] media_thread: "auto" runs the send thread where it can run, "off" never.
        self.media_thread = media_thread
        self.send_thread: send_thread.SendThread | None = None  # while it runs
        # The timing wheel: lattice index -> the entries due then, in the order they were
        # scheduled (so streams that share their slots go in the order they first did).
        self._slots: dict[int, list[ClockEntry]] = {}
        self._indices: list[int] = []  # heap of the keys of _slots
        self._wait: trio.CancelScope | None = None  # the clock's sleep, while it sleeps
        self._timer: int | None = None  # or its timerfd, while it runs on one
        self._armed = math.inf  # when the timerfd fires (trio time), if it does
        self.ticks = 0  # frames handled (for tests and diagnostics)
        self.wakeups = 0

    def __len__(self) -> int:
        return sum(len(slot) for slot in self._slots.values())

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
        index = self._file(entry, at)
        if self._timer is not None:
            if index * TICK < self._armed:
                self._arm(index * TICK)  # wake up earlier than planned
            return
        wait = self._wait
        if wait is not None and index * TICK < wait.deadline:
            wait.deadline = index * TICK  # wake up earlier than planned

    def _arm(self, at: float) -> None:
        """Fire the timer for the slot of lattice point ``at``.

        When the next slot is taken too, half a millisecond later, so that one wake-up sends
        both (``tick_due`` takes every slot within ``COALESCE`` of its ``now``): each frame
        goes at most ``COALESCE`` off its deadline, as any frame may, for half the wake-ups.
        The cancel-scope sleep gets the same by accident (``epoll_wait`` rounds its timeout
        up to the next millisecond); without it the timer's punctual wake-ups doubled their
        number and ate what each one saves.
        """
        assert _fast is not None and self._timer is not None
        slack = COALESCE if math.ceil(at / TICK - 0.5) + 1 in self._slots else 0.0
        # Relative to trio's clock now: trio's SystemClock is CLOCK_MONOTONIC plus an offset.
        _fast.timer_arm(self._timer, at + slack - trio.current_time())
        self._armed = at

    def _file(self, entry: ClockEntry, at: float) -> int:
        """Put ``entry`` in the slot of ``at``; returns that slot's index."""
        index = math.ceil(at / TICK - 0.5)  # slot_of(at), inlined (see tick_due)
        slot = self._slots.get(index)
        if slot is None:
            self._slots[index] = [entry]
            heapq.heappush(self._indices, index)
        else:
            slot.append(entry)
        return index

    @property
    def wake_at(self) -> float:
        """When :meth:`run` next wakes up: the earliest slot's lattice point."""
        indices = self._indices
        return indices[0] * TICK if indices else math.inf

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick streams until cancelled. Runs in the engine nursery."""
        if _timer_usable():
            offset = send_thread.trio_clock_offset()
            if self.media_thread == "off" or offset is None or not send_thread.available():
                await self._run_on_timer(task_status)
                return
            # The send thread's drain task and this clock's loop, in one nursery: both end
            # with the engine's, and the thread is joined on the way out.
            async with trio.open_nursery() as nursery:
                thread = send_thread.SendThread(self.figures, offset=offset)
                try:
                    await nursery.start(thread.run)
                except OSError as exc:  # no thread to be had (a process at its limit)
                    log.warning("media send thread: not started (%s): calls paced in Python",
                                exc)
                else:
                    log.info("media send thread: on (every call it can take is paced in C)")
                    self.send_thread = thread
                try:
                    await self._run_on_timer(task_status)
                finally:
                    self.send_thread = None
            return
        task_status.started()
        while True:
            with trio.CancelScope(deadline=self.wake_at) as wait:
                self._wait = wait
                await trio.sleep_forever()
            self._wait = None
            self.wakeups += 1
            now = trio.current_time()
            if self._indices:
                # The pacing gap error, measured once per wake-up (at most 1000 a second,
                # whatever the number of calls), not per frame: how late the earliest due
                # frame goes out, the worst of this wake-up's frames. Early (coalesced) is 0.
                self.figures.pacing_lateness.observe(max(now - self._indices[0] * TICK, 0.0))
            self.tick_due(now)

    async def _run_on_timer(self, task_status: trio.TaskStatus[None]) -> None:
        """``run`` on a one-shot timerfd, armed for the earliest slot whenever that changes."""
        assert _fast is not None
        timer = self._timer = _fast.timer_open()
        self._armed = math.inf
        task_status.started()
        try:
            while True:
                at = self.wake_at
                if at != self._armed:
                    if at == math.inf:
                        _fast.timer_arm(timer, math.inf)  # nothing scheduled: disarm
                        self._armed = at
                    else:
                        self._arm(at)
                await trio.lowlevel.wait_readable(timer)
                _fast.timer_clear(timer)
                self._armed = math.inf  # one-shot: it fired
                self.wakeups += 1
                now = trio.current_time()
                if self._indices:
                    # The pacing gap error, once per wake-up, as in run (above).
                    self.figures.pacing_lateness.observe(max(now - self._indices[0] * TICK, 0.0))
                self.tick_due(now)
        finally:
            self._timer = None
            trio.lowlevel.notify_closing(timer)
            os.close(timer)

    def tick_due(self, now: float) -> None:
        """One wake-up's work, synchronous: tick every stream due by ``now`` (coalesced).

        That is every slot whose lattice point is within ``COALESCE`` of ``now``, or past. A
        stream whose next deadline is already due again (the clock was late, by less than
        its pacer's ``max_lag``) lands in a slot at or before the last one due, whose index
        goes on the heap, and so goes out in this same wake-up, as it did with a heap of
        deadlines.
        """
        slots, indices = self._slots, self._indices
        pop, push, ceil = heapq.heappop, heapq.heappush, math.ceil
        last = math.floor((now + COALESCE) / TICK + 1e-6)
        handled = 0
        while indices and indices[0] <= last:
            for entry in slots.pop(pop(indices)):
                if not entry.active:
                    continue  # unregistered since it was scheduled
                entry.due = None
                handled += 1
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
                    # self._file(entry, following), inlined: this runs for every frame sent.
                    index = ceil(following / TICK - 0.5)
                    slot = slots.get(index)
                    if slot is None:
                        slots[index] = [entry]
                        push(indices, index)
                    else:
                        slot.append(entry)
        self.ticks += handled

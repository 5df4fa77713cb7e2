"""The media clock's timing wheel, sans-IO: ``tick_due(now)`` with plain numbers, no trio.

The streams here are fakes that record when they were ticked and return their next deadline
from a real :class:`~media.playout.Pacer`. The wheel is also checked against the heap of
deadlines it replaced (a copy kept here as the reference model).
"""

from __future__ import annotations

import heapq
import itertools
import math

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from media import clock as clock_module
from media.clock import COALESCE, TICK, MediaClock, align, slot_of
from media.playout import Pacer


class Stream:
    """Sends a frame per tick on its pacer's grid; parks after ``frames`` frames."""

    def __init__(self, name, log, *, ptime=0.02, start=0.0, frames=None):
        self.name = name
        self.log = log
        self.pacer = Pacer(ptime, start)
        self.frames = frames
        self.failed = False

    def tick(self, now):
        self.log.append((now, self.name))
        self.pacer.advance(now)
        if self.frames is not None:
            self.frames -= 1
            if self.frames <= 0:
                return None
        return self.pacer.next_deadline

    def pacing_failed(self):
        self.failed = True


def start(clock, stream):
    entry = clock.register(stream)
    clock.schedule(entry, stream.pacer.next_deadline)
    return entry


def run(clock, until):
    """Wake up as the engine's clock task would (on time), until ``until``."""
    while clock.wake_at <= until:
        clock.tick_due(clock.wake_at)


def test_streams_due_in_one_millisecond_share_a_wake_up_in_the_order_they_were_scheduled():
    clock, log = MediaClock(), []
    # The same lattice point reached by different sums: equal up to rounding.
    for name, at in (("a", 0.005), ("b", 0.001 * 5), ("c", 0.002 + 0.003)):
        start(clock, Stream(name, log, start=at))
    start(clock, Stream("d", log, start=0.006))
    assert clock.wake_at == pytest.approx(0.005) and len(clock) == 4
    clock.tick_due(clock.wake_at)
    assert [name for _, name in log] == ["a", "b", "c"]
    assert clock.wake_at == pytest.approx(0.006)
    run(clock, 0.1)
    # Every 20 ms the same order: a stream keeps its place among those sharing its slots.
    assert [name for _, name in log] == ["a", "b", "c", "d"] * 5
    assert clock.ticks == 20


@pytest.mark.parametrize("at, slot", [
    (0.005, 5), (0.0053, 5), (0.0055, 5), (0.00551, 6), (0.0057, 6), (0.0049999999, 5),
])
def test_a_deadline_belongs_to_the_nearest_lattice_point_never_more_than_coalesce_early(at, slot):
    assert slot_of(at) == slot
    assert slot * TICK >= at - COALESCE - 1e-12
    clock, log = MediaClock(), []
    start(clock, Stream("s", log, start=at, frames=1))
    assert clock.wake_at == pytest.approx(slot * TICK)
    clock.tick_due(slot * TICK - TICK)  # a wake-up a millisecond before: not yet
    assert log == []
    clock.tick_due(slot * TICK)
    assert log == [(slot * TICK, "s")]


def test_a_late_wake_up_sends_what_is_due_and_anything_due_again_meanwhile():
    clock, log = MediaClock(), []
    start(clock, Stream("s", log))  # frames due at 0, 20, 40, 60 ms ...
    clock.tick_due(0.0)
    clock.tick_due(0.045)  # woke 25 ms late: the 20 ms frame, then the 40 ms one at once
    assert log == [(0.0, "s"), (0.045, "s"), (0.045, "s")]
    assert clock.wake_at == pytest.approx(0.060)


def test_a_wake_up_within_coalesce_of_the_next_slot_sends_it_early():
    clock, log = MediaClock(), []
    start(clock, Stream("s", log, start=0.005, frames=1))
    clock.tick_due(0.0045)  # half a millisecond early: goes now (as with the heap)
    assert log == [(0.0045, "s")]


def test_a_parked_stream_costs_nothing_until_it_schedules_itself_again():
    clock, log = MediaClock(), []
    stream = Stream("s", log, frames=2)
    entry = start(clock, stream)
    run(clock, 1.0)
    assert len(log) == 2 and entry.due is None and len(clock) == 0
    assert clock.wake_at == math.inf
    stream.frames = 1
    clock.schedule(entry, 0.5)  # audio arrived
    run(clock, 1.0)
    assert log[-1] == (0.5, "s")


def test_scheduling_a_scheduled_stream_changes_nothing():
    clock, log = MediaClock(), []
    entry = start(clock, Stream("s", log, start=0.010, frames=1))
    clock.schedule(entry, 0.002)
    assert clock.wake_at == pytest.approx(0.010) and len(clock) == 1


def test_an_unregistered_stream_is_never_ticked_again():
    clock, log = MediaClock(), []
    gone = start(clock, Stream("gone", log))
    start(clock, Stream("stays", log))
    clock.tick_due(0.0)
    clock.unregister(gone)  # the call ended between two frames
    clock.schedule(gone, 0.03)  # e.g. audio queued for it late: ignored
    run(clock, 0.1)
    assert [name for _, name in log] == ["gone"] + ["stays"] * 6


def test_a_stream_whose_tick_raises_is_dropped_and_told_the_others_go_on():
    clock, log = MediaClock(), []

    class Broken(Stream):
        def tick(self, now):
            raise RuntimeError("a bug")

    broken = Broken("broken", log)
    start(clock, broken)
    start(clock, Stream("good", log))
    run(clock, 0.1)
    assert broken.failed and [name for _, name in log] == ["good"] * 6


class HeapClock:
    """The clock before the timing wheel (media/clock.py at 4d4bce1): a heap of deadlines."""

    def __init__(self):
        self.heap, self.order = [], itertools.count()

    def schedule(self, stream, at):
        heapq.heappush(self.heap, (at, next(self.order), stream))

    @property
    def wake_at(self):
        return align(self.heap[0][0]) if self.heap else math.inf

    def tick_due(self, now):
        while self.heap and self.heap[0][0] <= now + COALESCE:
            _, order, stream = heapq.heappop(self.heap)
            following = stream.tick(now)
            if following is not None:
                heapq.heappush(self.heap, (following, order, stream))


# Streams: (ptime in ms, first frame's lattice point in ms, frames before parking).
STREAMS = st.lists(
    st.tuples(st.sampled_from([10, 20, 30, 40]), st.integers(0, 40), st.integers(1, 30)),
    min_size=1, max_size=12,
)


def same_as_the_heap(streams, wake_ups, *, max_lag=None):
    """Run the wheel and the reference heap side by side; ``wake_ups`` are how late (ms)
    each wake-up is after the clock's ``wake_at``."""
    wheel_log, heap_log = [], []
    wheel, heap = MediaClock(), HeapClock()
    pacers = {wheel: [], heap: []}
    for n, (ptime, first, frames) in enumerate(streams):
        for clock, log in ((wheel, wheel_log), (heap, heap_log)):
            stream = Stream(n, log, ptime=ptime / 1000, start=first * TICK, frames=frames)
            if max_lag is not None:
                stream.pacer.max_lag = max_lag
            pacers[clock].append(stream.pacer)
            if clock is wheel:
                start(wheel, stream)
            else:
                heap.schedule(stream, stream.pacer.next_deadline)
    for late in wake_ups:
        assert wheel.wake_at == pytest.approx(heap.wake_at, abs=1e-9)
        if wheel.wake_at == math.inf:
            break
        now = wheel.wake_at + late * TICK
        wheel_log.clear()
        heap_log.clear()
        wheel.tick_due(now)
        heap.tick_due(now)
        assert sorted(name for _, name in wheel_log) == sorted(name for _, name in heap_log)
    assert [(p.next_deadline, p.reanchors) for p in pacers[wheel]] == [
        (p.next_deadline, p.reanchors) for p in pacers[heap]]


@given(STREAMS, st.lists(st.sampled_from([0, 0, 0, 1, 7, 19, 75]), min_size=1, max_size=80))
def test_the_wheel_ticks_what_the_heap_did_with_re_anchors(streams, wake_ups):
    """Wake-ups on lattice points, on time or whole milliseconds late (a busy machine): the
    same streams go in the same wake-ups, as often, re-anchoring after long stalls (on
    ``now``, so still on the lattice)."""
    same_as_the_heap(streams, wake_ups)


@given(STREAMS, st.lists(st.sampled_from([0, 0, 0.05, 0.3, 0.7, 0.95, 1.2, 19.6, 75.4]),
                         min_size=1, max_size=80))
def test_the_wheel_ticks_what_the_heap_did_when_woken_between_lattice_points(streams, wake_ups):
    """Wake-ups late by fractions of a millisecond, as trio's really are: the same coalescing
    of the next slot's frames into a wake-up more than half a millisecond late, and the same
    catching up. (No re-anchors here: one on an off-lattice ``now`` leaves the lattice, where
    the wheel sends on the nearest lattice point, by design.)"""
    same_as_the_heap(streams, wake_ups, max_lag=math.inf)


# --- on trio's real clock: the timerfd (compiled path) or the cancel scope (Python path) ---


class LiveStream:
    """Ticks until ``frames`` frames, then parks and sets ``done``."""

    def __init__(self, frames, *, ptime=0.005):
        self.frames = frames
        self.pacer = None
        self.ticks: list[tuple[float, float]] = []  # (deadline, when ticked)
        self.done = trio.Event()
        self.ptime = ptime

    def tick(self, now):
        self.ticks.append((self.pacer.next_deadline, now))
        self.pacer.advance(now)
        if len(self.ticks) >= self.frames:
            self.done.set()
            return None
        return self.pacer.next_deadline

    def pacing_failed(self):
        raise AssertionError("tick failed")


async def test_on_the_real_clock_frames_go_out_on_their_slots_and_parked_streams_wake(native_path):
    """No asserts on speed: every frame ticked no earlier than its slot allows, in order, on
    the path selected (the timerfd when compiled), and a stream scheduled while the clock
    sleeps towards a later slot (or none) is woken for its own, earlier one."""
    clock = MediaClock()
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        assert (clock._timer is not None) == (native_path == "compiled")
        late = LiveStream(2, ptime=0.2)
        early = LiveStream(10)
        for stream, start in ((late, 0.1), (early, 0.01)):  # the earlier one scheduled second
            stream.pacer = Pacer(stream.ptime, align(trio.current_time() + start))
            clock.schedule(clock.register(stream), stream.pacer.next_deadline)
        with trio.fail_after(10):
            await early.done.wait()
            await late.done.wait()
        # Parked: nothing scheduled, the clock sleeps (its timer disarmed) until woken again.
        again = LiveStream(1)
        again.pacer = Pacer(again.ptime, align(trio.current_time() + 0.01))
        clock.schedule(clock.register(again), again.pacer.next_deadline)
        with trio.fail_after(10):
            await again.done.wait()
        nursery.cancel_scope.cancel()
    assert clock._timer is None  # closed with the clock
    for stream in (early, late, again):
        assert all(now >= due - COALESCE - 1e-6 for due, now in stream.ticks)
        assert [due for due, _ in stream.ticks] == sorted(due for due, _ in stream.ticks)


def test_the_timer_is_not_used_under_a_mock_clock():
    async def main():
        return clock_module._timer_usable()

    assert trio.run(main, clock=trio.testing.MockClock()) is False

"""The stream's sans-IO parts on their own: media/caller_feed.py and media/media_timeout.py.

(tests/test_stream.py drives them through a MediaStream; these pin their interfaces.)
"""

from __future__ import annotations

import math

import trio

from media.caller_feed import CallerAudioBatcher, CallerEventOutbox
from media.clock import ClockEntry
from media.media_timeout import MediaTimeout
from media.rfc4733 import Dtmf
from media.stats import MediaStats


class Bridge:
    """The one CallBridge method the batcher uses; ``room`` frames fit before it is full."""

    def __init__(self, room=100):
        self.handed: list[bytes] = []
        self.room = room

    def caller_audio(self, frame: bytes) -> bool:
        if len(self.handed) >= self.room:
            return False
        self.handed.append(frame)
        return True


def ticking() -> ClockEntry:
    entry = ClockEntry(stream=None)
    entry.due = 1.0  # scheduled: the clock ticks this call
    return entry


def test_batches_form_only_while_the_clock_ticks_the_call():
    bridge, stats = Bridge(), MediaStats()
    batcher = CallerAudioBatcher(bridge, stats, frames=3, frame_seconds=0.02)
    batcher.push(b"a", 0.0)  # not registered with the clock: handed over at once
    assert bridge.handed == [b"a"]
    batcher.pacing = ticking()
    batcher.push(b"b", 0.02)
    batcher.push(b"c", 0.04)
    assert bridge.handed == [b"a"] and batcher.since == 0.02
    batcher.push(b"d", 0.06)
    assert bridge.handed == [b"a", b"bcd"] and batcher.batch == []
    assert math.isclose(batcher.max_age, 0.06)


def test_a_full_ai_queue_counts_every_frame_of_the_batch_it_dropped():
    bridge, stats = Bridge(room=0), MediaStats()
    batcher = CallerAudioBatcher(bridge, stats, frames=2, frame_seconds=0.02)
    batcher.pacing = ticking()
    batcher.push(b"a", 0.0)
    batcher.push(b"b", 0.02)
    assert stats.ai_queue_full == 2
    batcher.pacing = None
    batcher.push(b"c", 0.04)
    assert stats.ai_queue_full == 3


def test_events_are_counted_and_dropped_when_the_channel_is_full_or_absent():
    stats = MediaStats()
    send, receive = trio.open_memory_channel(1)
    outbox = CallerEventOutbox(send, stats)
    outbox.put(None)  # the decoder had nothing to say
    assert stats.dtmf_events == 0
    outbox.put(Dtmf("1", 100))
    outbox.put(Dtmf("2", 100))
    assert receive.receive_nowait() == Dtmf("1", 100)
    assert (stats.dtmf_events, stats.events_dropped) == (2, 1)
    CallerEventOutbox(None, stats).put(Dtmf("3", 100))
    assert (stats.dtmf_events, stats.events_dropped) == (3, 1)


def test_media_timeout_counts_from_the_later_of_restart_and_last_packet():
    timeout = MediaTimeout(30)
    timeout.restart(10.0, caller_sends=True)
    assert timeout.deadline(None) == 40.0
    assert timeout.deadline(5.0) == 40.0  # a packet before the restart does not count
    assert timeout.deadline(12.0) == 42.0
    timeout.restart(20.0, caller_sends=False)  # a=inactive: it legitimately sends nothing
    assert timeout.deadline(12.0) == math.inf
    assert MediaTimeout(0).deadline(None) == math.inf  # 0: no timeout

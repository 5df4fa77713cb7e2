"""What a call's media hands the AI session, sans-IO: caller audio (batched) and key presses.

Both are fed from the receive path and never wait: the AI session's queues are bounded, and a
full one costs a counted drop (``ai_queue_full``, ``events_dropped``), not a stalled call.
"""

from __future__ import annotations

import trio

from media.bridge import CallBridge, CallerEvent
from media.clock import ClockEntry
from media.stats import MediaStats


class CallerAudioBatcher:
    """Caller frames to the AI session, one by one or in batches of ``frames`` ([rtp]
    ai_batch_ms): fewer WebSocket messages (each a send syscall) for up to a batch's worth of
    latency.

    Batches are only formed while the media clock ticks the call (``pacing`` is its clock
    entry, set by the stream, and not parked): each tick flushes a batch the caller left
    unfinished (end of a talkspurt, DTX) once it is ``max_age`` old, so no audio waits longer
    than a batch plus one frame. A parked call hands frames over one by one.
    """

    __slots__ = ("_bridge", "_stats", "batch", "frames", "max_age", "pacing", "since")

    def __init__(
        self, bridge: CallBridge, stats: MediaStats, *, frames: int, frame_seconds: float
    ) -> None:
        self._bridge = bridge
        self._stats = stats
        self.frames = max(1, frames)
        self.max_age = self.frames * frame_seconds
        self.batch: list[bytes] = []
        self.since = 0.0  # when the open batch's first frame arrived
        self.pacing: ClockEntry | None = None

    def push(self, frame: bytes, now: float) -> None:
        """A caller frame, in sequence order, that arrived at ``now``."""
        batch = self.batch
        pacing = self.pacing
        if self.frames > 1 and pacing is not None and pacing.due is not None:
            if not batch:
                self.since = now
            batch.append(frame)
            if len(batch) >= self.frames:
                self.flush()
            return
        if batch:
            self.flush()
        if not self._bridge.caller_audio(frame):
            self._stats.ai_queue_full += 1  # the media path never waits for the AI

    def flush(self) -> None:
        """Hand over the open batch (the caller checks there is one)."""
        batch = self.batch
        if not self._bridge.caller_audio(b"".join(batch) if len(batch) > 1 else batch[0]):
            self._stats.ai_queue_full += len(batch)
        batch.clear()


class CallerEventOutbox:
    """Key presses (RFC 4733, decoded by media/rfc4733.py) to the AI session's bounded channel;
    None when the call has no AI session to take them (they are still counted)."""

    __slots__ = ("_channel", "_stats")

    def __init__(
        self, channel: trio.MemorySendChannel[CallerEvent] | None, stats: MediaStats
    ) -> None:
        self._channel = channel
        self._stats = stats

    def put(self, event: CallerEvent | None) -> None:
        """Pass on ``event`` (None: the decoder had nothing to say, the common case)."""
        if event is None:
            return
        self._stats.dtmf_events += 1
        if self._channel is None:
            return
        try:
            self._channel.send_nowait(event)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self._stats.events_dropped += 1

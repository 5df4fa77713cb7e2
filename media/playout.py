"""What we play to the caller, sans-IO: the playout queue and the pacer's clock arithmetic.

The AI produces audio in bursts, faster than real time; the caller must receive one frame
every ptime. The queue buffers the bursts and hands out exact frames; the pacer says when a
frame is due. Both take time as an argument, so they are tested with plain numbers.

With the media send thread (media/send_thread.py) the queue runs in *ring mode*: whole frames
go to the thread's ring for the call as they form (the thread pops and sends them), the queue
keeps only the partial tail and the per-item bookkeeping, and learns what was sent from the
ring's ``consumed`` count, read when someone asks (``_settle``). Its API and its answers are
the same in both modes (tests/test_send_thread.py holds them to it).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable

# Items whose sent frames are remembered, newest kept. Barge-in asks only about the items of
# the responses still in play (the AI session keeps at most 64); the item ids are the
# server's, so without a bound a long call (or a server inventing ids) grows the table for ever.
ITEMS_REMEMBERED = 256


class PlayoutQueue:
    """A bounded FIFO of codec bytes, handed out in frames, remembering which item each was.

    Barge-in needs to know how much of each assistant item was actually *sent*, not received:
    :attr:`frames_sent` counts that per item (the AI session turns it into the truncation
    point). Audio past ``max_bytes`` is dropped and counted rather than growing without bound.
    """

    def __init__(self, frame_bytes: int, *, max_bytes: int) -> None:
        self.frame_bytes = frame_bytes
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        # (item, bytes of that item still in the buffer), oldest first.
        self._segments: deque[list] = deque()
        self.frames_sent: dict[Hashable, int] = {}
        self.bytes_dropped = 0
        # Told when a whole frame may have become playable (a push, a padded tail): the paced
        # sender parks while it has nothing to send, and this unparks it.
        self.on_audio: Callable[[], None] | None = None
        # Ring mode (the module's docstring): the send thread's ring for this call, the
        # ``consumed`` count already applied to the bookkeeping, and the frames in the ring as
        # of then; ``_buffer`` then holds only the partial tail. None: the Python sender pops.
        self._ring = None
        self._settled = 0
        self._in_ring = 0

    def __len__(self) -> int:
        return self.queued_bytes

    @property
    def queued_frames(self) -> int:
        if self._ring is not None:
            self._settle(self._ring.consumed)
            return self._in_ring  # the tail is less than a frame
        return len(self._buffer) // self.frame_bytes

    def push(self, audio: bytes, item: Hashable = None) -> None:
        """Queue ``audio`` for ``item``; what does not fit in ``max_bytes`` is dropped."""
        # queued_bytes, without its property call on the Python path (a push per AI delta).
        queued = len(self._buffer) if self._ring is None else self.queued_bytes
        room = self.max_bytes - queued
        if len(audio) > room:
            self.bytes_dropped += len(audio) - max(room, 0)
            audio = audio[: max(room, 0)]
        if not audio:
            return
        if self._segments and self._segments[-1][0] == item:
            self._segments[-1][1] += len(audio)
        else:
            self._segments.append([item, len(audio)])
        if self._ring is not None:
            self._to_ring(audio)
            return
        self._buffer += audio
        if self.on_audio is not None:
            self.on_audio()

    @property
    def queued_bytes(self) -> int:
        if self._ring is not None:
            self._settle(self._ring.consumed)
            return self._in_ring * self.frame_bytes + len(self._buffer)
        return len(self._buffer)

    def frames_sent_of(self, item: Hashable) -> int:
        """Frames of ``item`` handed out so far (sent to the caller)."""
        if self._ring is not None:
            self._settle(self._ring.consumed)
        return self.frames_sent.get(item, 0)

    def holds(self, item: Hashable) -> bool:
        """Some of ``item``'s audio is still waiting to be played."""
        if self._ring is not None:
            self._settle(self._ring.consumed)
        return any(segment[0] == item for segment in self._segments)

    def finish_item(self, silence_byte: int) -> None:
        """The item's audio is complete: pad a trailing partial frame so it plays out."""
        partial = len(self._buffer) % self.frame_bytes
        if partial and self._segments:
            pad = self.frame_bytes - partial
            self._segments[-1][1] += pad
            if self._ring is not None:
                self._to_ring(bytes((silence_byte,)) * pad)
                return
            self._buffer += bytes((silence_byte,)) * pad
            if self.on_audio is not None:
                self.on_audio()

    def pop_frame(self) -> bytes | None:
        """The next whole frame, or None when less than a frame is queued."""
        size = self.frame_bytes
        buffer = self._buffer
        if len(buffer) < size:
            return None
        frame = bytes(buffer[:size])
        # CPython deletes a bytearray's prefix in O(1) by moving its start pointer.
        del buffer[:size]
        segments = self._segments
        segment = segments[0]
        item = segment[0]
        # A frame that spans the end of an item counts for that item: it has started playing.
        # self._count_sent(item, 1), inlined for the usual case (an item already counted):
        # this runs per frame sent on the Python path.
        sent = self.frames_sent
        count = sent.get(item)
        if count is None:
            self._count_sent(item, 1)
        else:
            sent[item] = count + 1
        if segment[1] > size:
            segment[1] -= size  # the frame lies inside the item: nearly every frame
            return frame
        taken = size
        while taken and segments:
            segment = segments[0]
            used = min(segment[1], taken)
            segment[1] -= used
            taken -= used
            if segment[1] == 0:
                segments.popleft()
        return frame

    def _count_sent(self, item: Hashable, frames: int) -> None:
        sent = self.frames_sent
        count = sent.get(item)
        if count is None:
            if len(sent) >= ITEMS_REMEMBERED:
                del sent[next(iter(sent))]  # the oldest item: long settled
            sent[item] = frames
        else:
            sent[item] = count + frames

    def take(self) -> list[tuple[Hashable, bytes]]:
        """Remove everything queued and return it, item by item (a paused playout: the AI
        session may put it back with :meth:`push`, in order, where it stopped)."""
        data = self._buffer
        if self._ring is not None:
            # One step in the thread's lock: what was sent stays sent, the rest comes back.
            consumed, frames = self._ring.take()
            self._settle(consumed)
            data = frames + bytes(self._buffer)
        taken, offset = [], 0
        for item, size in self._segments:
            taken.append((item, bytes(data[offset:offset + size])))
            offset += size
        self._in_ring = 0
        self._buffer.clear()
        self._segments.clear()
        return taken

    def clear(self) -> int:
        """Drop everything queued (barge-in); returns the number of bytes dropped."""
        dropped = len(self._buffer)
        if self._ring is not None:
            consumed, removed = self._ring.clear()  # atomically with what was sent
            self._settle(consumed)
            dropped += removed * self.frame_bytes
            self._in_ring = 0
        self._buffer.clear()
        self._segments.clear()
        return dropped

    # --- ring mode (the media send thread) -----------------------------------------------

    def attach_ring(self, ring) -> None:
        """From now on whole frames go to ``ring`` (a fresh ``media._fast.SendStream``): the
        whole frames queued so far first. Its ``consumed`` count starts at 0."""
        self._ring, self._settled, self._in_ring = ring, 0, 0
        self.on_audio = None  # pushing to the ring is what wakes the thread's stream
        tail, self._buffer = self._buffer, bytearray()
        self._to_ring(bytes(tail))

    def detach_ring(self, consumed: int, unplayed: bytes) -> None:
        """Back to the Python sender: ``consumed`` and ``unplayed`` are the ring's last state
        (``SendStream.unregister``); the unplayed frames are queued here again, in place."""
        self._settle(consumed)
        self._buffer = bytearray(unplayed) + self._buffer
        self._ring, self._in_ring = None, 0

    def _to_ring(self, audio: bytes) -> None:
        """``audio`` after the tail: the whole frames to the ring, the rest kept as the tail
        (the segments already count it)."""
        size = self.frame_bytes
        data = bytes(self._buffer) + audio if self._buffer else audio
        whole = len(data) - len(data) % size
        self._buffer = bytearray(data[whole:])
        if whole:
            self._in_ring += whole // size
            self._settle(self._ring.push(data[:whole]))

    def _settle(self, consumed: int) -> None:
        """Account for the frames the thread took since the last look, as ``pop_frame`` would
        have one by one: each frame counts for the item its first byte belongs to. O(items),
        not O(frames): frame ``j`` starts at byte ``j * size`` of what was queued."""
        frames = consumed - self._settled
        if frames <= 0:
            return
        self._settled = consumed
        self._in_ring -= frames
        size = self.frame_bytes
        end = frames * size  # the bytes the thread took
        segments = self._segments
        start = 0  # where the first segment begins, from the oldest unsettled byte
        while start < end:
            segment = segments[0]
            stop = start + segment[1]
            # Frames starting in [start, min(stop, end)): ceil(x / size) frames start below x.
            first = -(-start // size)
            counted = -(-min(stop, end) // size) - first
            if counted:
                self._count_sent(segment[0], counted)
            if stop <= end:
                segments.popleft()
                start = stop
            else:
                segment[1] = stop - end
                break


class Pacer:
    """Absolute frame deadlines on a monotonic clock: ``start + n * ptime``, never drifting.

    Sleeping "ptime after the last send" accumulates every wake-up's lateness; deadlines
    computed from one anchor do not. After a stall longer than ``max_lag`` (the process was
    descheduled, the machine was busy) the pacer re-anchors on ``now`` instead of bursting the
    missed frames: a burst would overrun the caller's jitter buffer, a skipped slot only
    shifts the stream.
    """

    def __init__(self, ptime: float, start: float, *, max_lag: float | None = None) -> None:
        self.ptime = ptime
        self.max_lag = 3 * ptime if max_lag is None else max_lag
        self.next_deadline = start
        self.reanchors = 0

    def advance(self, now: float) -> bool:
        """A frame was sent for the current deadline (at time ``now``): move to the next.
        Returns whether that re-anchored the grid."""
        if now - self.next_deadline > self.max_lag:
            self.reanchors += 1
            self.next_deadline = now + self.ptime
            return True
        self.next_deadline += self.ptime
        return False

    def skip_to(self, now: float) -> int:
        """Resume after a pause (nothing was sent): move to the first deadline at or after
        ``now``, staying on the grid; returns how many slots were skipped."""
        behind = now - self.next_deadline
        if behind <= 0:
            return 0
        # The 1e-9 keeps a deadline that equals ``now`` up to rounding from being skipped.
        skipped = math.ceil(behind / self.ptime - 1e-9)
        self.next_deadline += skipped * self.ptime
        return skipped

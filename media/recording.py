"""A call's recording, on the trio thread: where each frame goes on the recording's timeline.

One stereo WAV per call: left the caller as received, right what rtpai played to the caller.
Both are placed on one timeline, the engine's clock since the recording started, in samples
(8 kHz), so that what the caller said and what the model answered line up as they happened:

* a played frame goes where the pacer sent it (``now`` of its tick, kept contiguous with the
  previous frame while the pacer is on its 20 ms grid);
* a caller frame goes where its RTP timestamp says, counted from an anchor: the first packet's
  arrival. A lost packet leaves silence where it belonged, it never shifts what follows; a new
  SSRC or sequence restart, or a sender clock that drifted half a second from ours, anchors
  afresh on the arrival time.

Nothing here touches the disk. Frames are collected into batches handed to the engine's
writer thread (media/recording_writer.py) with one lock per batch: the media path pays a few
arithmetic operations and a list append per frame (docs/recording.md has the measurement).
A pause records silence on both channels (the timeline keeps running); a full writer queue
drops the batch and counts it, never waits.
"""

from __future__ import annotations

import enum
import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

SAMPLE_RATE = 8000  # G.711
# Frames per batch handed to the writer: ~0.5 s of both channels at 20 ms (one lock each).
BATCH_FRAMES = 50
# A caller's RTP timestamps may stray this far from the arrival clock (network jitter, a
# sender clock running fast or slow) before the caller's audio is anchored afresh.
REANCHOR_SAMPLES = SAMPLE_RATE // 2
LEFT, RIGHT = 0, 1  # caller, rtpai


class RecordingStatus(enum.Enum):
    RECORDING = "recording"
    PAUSED = "paused"
    STOPPED = "stopped"  # asked to stop (stop recording, the call's end); the writer finishes
    FINISHED = "finished"  # the WAV (and its sidecar) are complete under their final names
    FAILED = "failed"  # the disk refused (full, a size limit): the call goes on unrecorded


@dataclass
class RecordingFile:
    """One WAV's state, shared with the writer thread. The trio thread sets ``state``
    (recording, paused, stopped); the writer sets ``outcome`` (finished, failed), ``error`` and
    the figures, which the trio thread only reads: each field has one writer, and plain
    attribute writes are atomic under the GIL."""

    path: str  # the final name (without directory changes); the writer adds ".part" meanwhile
    codec: str
    call_id: str
    offset_s: float  # when the recording started, seconds after the call's offer
    state: RecordingStatus = RecordingStatus.RECORDING
    outcome: RecordingStatus | None = None
    error: str | None = None
    samples: int = 0  # per channel, written so far
    late_samples: int = 0  # caller audio that arrived after its place was written out
    batches_dropped: int = 0  # the writer's queue was full
    sidecar: str | None = None

    @property
    def status(self) -> RecordingStatus:
        return self.outcome or self.state

    @property
    def recording(self) -> bool:
        return self.state is RecordingStatus.RECORDING and self.outcome is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "file": self.path,
            "sidecar": self.sidecar,
            "error": self.error,
            "offset s": round(self.offset_s, 3),
            "seconds": round(self.samples / SAMPLE_RATE, 2),
            "late samples": self.late_samples,
            "batches dropped": self.batches_dropped,
        }


def recording_basename(call_id: str, from_tag: str, wall: float, sequence: int = 0) -> str:
    """A file name for the call's recording: sortable by start time, recognisable by call-id,
    safe whatever the call-id holds (only ``[A-Za-z0-9._-]``, no leading dot, bounded), and
    unique per (call-id, from-tag) through a short digest; ``-N`` for a restarted recording."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall))
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", call_id)[:64].lstrip(".") or "call"
    digest = hashlib.sha256(f"{call_id}\0{from_tag}".encode()).hexdigest()[:8]
    return f"{stamp}-{readable}-{digest}" + (f"-{sequence}" if sequence else "")


Batch = list[tuple[int, int, bytes]]  # (channel, timeline sample, G.711 bytes)


class Writer(Protocol):
    """What a recording needs of the writer thread (media/recording_writer.py)."""

    def submit(self, file: RecordingFile, batch: Batch) -> bool:
        """Queue audio for ``file``; False (dropped) when the queue is full. Never blocks."""

    def finish(self, file: RecordingFile, sidecar: dict[str, Any] | None) -> None:
        """Complete ``file`` (and write ``sidecar`` beside it); never blocks, never refused."""


@dataclass
class CallRecording:
    """The trio thread's side of one WAV: places frames on the timeline, batches them.

    ``started`` is the engine clock's time at which the timeline's sample 0 lies. The
    writer has opened ``file`` (``RecordingWriter.open``) before the first batch comes.
    """

    file: RecordingFile
    started: float
    writer: Writer
    # Frames are taken while this holds: recording, not paused or stopped, the writer not
    # failed (a plain attribute: it is read for every packet).
    active: bool = True
    _batch: list[tuple[int, int, bytes]] = field(default_factory=list)
    # The caller's anchor: (timeline sample, RTP timestamp) of the packet it was taken on.
    _anchor_at: int = 0
    _anchor_timestamp: int | None = None
    _next_played: int | None = None

    def caller(self, payload: bytes, timestamp: int, now: float) -> None:
        """A caller frame (after reordering), ``now`` its arrival on the engine's clock."""
        # Per packet: plain attributes and integers only, no call but the list's append
        # (docs/recording.md has what it costs).
        if not self.active:
            return
        arrival = int((now - self.started) * 8000)
        anchor = self._anchor_timestamp
        if anchor is not None:
            # RFC 3550 timestamps wrap at 2**32: the signed difference from the anchor.
            delta = (timestamp - anchor) & 0xFFFFFFFF
            if delta >= 0x80000000:
                delta -= 0x100000000
            at = self._anchor_at + delta
            if not -REANCHOR_SAMPLES <= at - arrival <= REANCHOR_SAMPLES:
                at = arrival  # a restart, or drift: anchor afresh on the arrival time
                self._anchor_at, self._anchor_timestamp = at, timestamp
        else:
            at = arrival
            self._anchor_at, self._anchor_timestamp = at, timestamp
        if at >= 0:  # else before the recording started (delivered late): not ours
            batch = self._batch
            batch.append((LEFT, at, payload))
            if len(batch) >= BATCH_FRAMES:
                self.flush()

    def played(self, payload: bytes, now: float) -> None:
        """A frame rtpai sent the caller at ``now`` (its pacer tick)."""
        if not self.active:
            return
        at = int((now - self.started) * 8000)
        expected = self._next_played
        # On the grid the frames are contiguous (a tick a little late or early does not move
        # them); after a pause in sending, or a pacer re-anchor, they start where the tick was.
        if expected is not None and -len(payload) < at - expected < len(payload):
            at = expected
        self._next_played = at + len(payload)
        batch = self._batch
        batch.append((RIGHT, at, payload))
        if len(batch) >= BATCH_FRAMES:
            self.flush()

    def flush(self) -> None:
        """Hand what is batched to the writer (a full queue: dropped, counted)."""
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        if self.file.outcome is not None:
            self.active = False  # the writer gave up (a full disk): stop collecting
            return
        if not self.writer.submit(self.file, batch):
            self.file.batches_dropped += 1

    def pause(self) -> None:
        if self.file.state is RecordingStatus.RECORDING:
            self.flush()
            self.file.state = RecordingStatus.PAUSED
            self.active = False

    def resume(self) -> None:
        if self.file.state is RecordingStatus.PAUSED:
            self._next_played = None
            self.file.state = RecordingStatus.RECORDING
            self.active = self.file.outcome is None

    def stop(self, sidecar: dict[str, Any] | None = None) -> None:
        """No more audio: the writer completes the file (idempotent; the first call's
        ``sidecar``, the call's record, is written beside the WAV)."""
        if self.file.state is RecordingStatus.STOPPED:
            return
        if self.file.state is RecordingStatus.RECORDING:
            self.flush()
        self.file.state = RecordingStatus.STOPPED
        self.active = False
        self.writer.finish(self.file, sidecar)

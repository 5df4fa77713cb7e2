"""The recordings' writer thread: every call's WAV is decoded, laid out and written here, off
the trio loop, so that a slow or full disk never delays a packet.

One thread for the engine (not one per call: 1000 calls would be 1000 threads), fed through
one queue: audio batches are bounded (a full queue drops the batch and the recording counts
it: the media path never waits for a disk), control items (open, finish) are not refused (at
most two per recording, so they are bounded by the calls).

Per file the writer keeps a window of both channels, as G.711 bytes prefilled with the codec's
silence, from the last sample written out to the newest one received; what lies more than
``HOLD_SAMPLES`` behind the newest is final and goes to disk as stereo 16-bit PCM. Caller
audio that arrives later than that (a packet delayed by over a second) is counted, not
written. A long stretch with no audio at all (a call on hold) is written as silence in
bounded chunks: memory per call stays within the window, whatever happens.

A file is written as ``NAME.wav.part`` and renamed to ``NAME.wav`` once complete (its header's
sizes patched, fsync'ed); its JSON sidecar then appears as ``NAME.json`` the same way, so a
collector that picks up ``*.json`` finds a finished WAV beside it. A disk that refuses a write
(ENOSPC, EFBIG under a file-size limit, EIO) ends that recording: one log line, the partial
file removed (a full disk needs the space back more than half a recording), ``failures``
counted; the call is not affected.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from media.g711 import interleave_stereo_pcm16le
from media.recording import LEFT, SAMPLE_RATE, Batch, RecordingFile, RecordingStatus
from media.rtp import SILENCE_BYTE
from media.wav import MAX_DATA_BYTES, patch_sizes, wav_header

log = logging.getLogger("rtpai.recording")

# Caller audio may reach the writer this long after rtpai's audio for the same moment (RTP
# jitter, the caller's batch still open): written out only once this far behind the newest.
HOLD_SAMPLES = SAMPLE_RATE  # 1 s
# The window never spans more than this (a timeline jump writes the gap out as silence).
MAX_WINDOW_SAMPLES = 10 * SAMPLE_RATE
# Silence is written in chunks of this many samples (per channel) across a long gap.
SILENCE_CHUNK_SAMPLES = SAMPLE_RATE
# Audio batches waiting for the writer, all calls together: at 2 batches a second per call
# (media/recording.py BATCH_FRAMES), 4096 is ~4 s of backlog at 500 recorded calls.
QUEUE_BATCHES = 4096
PART_SUFFIX = ".part"


@dataclass
class WriterCounters:
    """The writer's figures for the engine's statistics (written by the thread only)."""

    started: int = 0
    finished: int = 0
    failures: int = 0  # the disk refused: full, a file-size limit, an I/O error
    batches_dropped: int = 0  # the queue was full (counted by submit, on the trio thread)


@dataclass
class _OpenWav:
    file: RecordingFile
    fd: int
    silence: int  # the codec's silence byte
    base: int = 0  # the timeline sample of window[0]
    newest: int = 0  # one past the newest sample received
    data_bytes: int = 0
    window: tuple[bytearray, bytearray] = field(default_factory=lambda: (bytearray(), bytearray()))


class RecordingWriter:
    """The engine's writer thread; ``open``/``submit``/``finish`` are for the trio thread."""

    def __init__(self, *, queue_batches: int = QUEUE_BATCHES) -> None:
        self.counters = WriterCounters()
        self._queue_batches = queue_batches
        self._items: collections.deque[tuple[str, RecordingFile, Any]] = collections.deque()
        self._audio_items = 0
        self._wake = threading.Condition(threading.Lock())
        self._open: dict[int, _OpenWav] = {}  # id(file) -> its state (the thread's only)
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- the trio thread's side --------------------------------------------------------------

    def start(self) -> None:
        # A daemon thread: a disk that hangs (a dead NFS server) must not keep the process
        # from exiting; ``stop`` gives the queue a bounded time to be written first.
        self._thread = threading.Thread(target=self._run, name="rtpai-recording", daemon=True)
        self._thread.start()

    def open(self, file: RecordingFile) -> None:
        self.counters.started += 1
        self._put("open", file, None)

    def submit(self, file: RecordingFile, batch: Batch) -> bool:
        with self._wake:
            if self._audio_items >= self._queue_batches:
                self.counters.batches_dropped += 1
                return False
            self._audio_items += 1
            self._items.append(("audio", file, batch))
            self._wake.notify()
        return True

    def finish(self, file: RecordingFile, sidecar: dict[str, Any] | None) -> None:
        self._put("finish", file, sidecar)

    def stop(self, timeout: float) -> bool:
        """Write what is queued (at most ``timeout`` seconds), then end the thread; True if it
        ended. Blocking: the engine calls it through ``trio.to_thread``."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _put(self, kind: str, file: RecordingFile, value: Any) -> None:
        with self._wake:
            self._items.append((kind, file, value))
            self._wake.notify()

    # --- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._items and not self._stopping:
                    self._wake.wait()
                if not self._items:
                    return  # stopping, and everything queued is written
                kind, file, value = self._items.popleft()
                if kind == "audio":
                    self._audio_items -= 1
            try:
                self.handle(kind, file, value)
            except OSError as exc:
                self._fail(file, exc)
            except Exception:  # a bug: this recording ends, the thread (and other calls') go on
                log.exception("recording of call %s failed", file.call_id)
                self._fail(file, None)
            # Let the trio thread have the GIL between items: without this a backlog of
            # batches is worked through in one go, and the loop waits up to the interpreter's
            # switch interval (5 ms) for its turn, a jitter the caller would hear. An item
            # takes ~0.1 ms of Python; the wait is bounded by that.
            time.sleep(0)

    def handle(self, kind: str, file: RecordingFile, value: Any) -> None:
        """One queue item (the thread's; also called directly by tests)."""
        if kind == "open":
            self._open_wav(file)
            return
        wav = self._open.get(id(file))
        if wav is None:
            return  # failed earlier: its audio and its finish are ignored
        if kind == "audio":
            self._place(wav, value)
        else:
            self._finish(wav, value)

    def _open_wav(self, file: RecordingFile) -> None:
        directory = os.path.dirname(file.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        fd = os.open(file.path + PART_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                     0o640)
        self._open[id(file)] = _OpenWav(file=file, fd=fd, silence=SILENCE_BYTE[file.codec])
        _write_all(fd, wav_header(channels=2, rate=SAMPLE_RATE))

    def _place(self, wav: _OpenWav, batch: Batch) -> None:
        for channel, at, payload in batch:
            if at < wav.base:
                late = wav.base - at
                if channel == LEFT:
                    wav.file.late_samples += min(late, len(payload))
                if late >= len(payload):
                    continue
                payload, at = payload[late:], wav.base
            end = at + len(payload)
            if end - wav.base > MAX_WINDOW_SAMPLES:
                self._write_out(wav, end - MAX_WINDOW_SAMPLES)
            offset = at - wav.base
            target = wav.window[channel]
            if len(target) < offset + len(payload):
                grow = offset + len(payload)
                for both in wav.window:
                    both.extend(bytes((wav.silence,)) * (grow - len(both)))
            target[offset:offset + len(payload)] = payload
            wav.newest = max(wav.newest, end)
        self._write_out(wav, wav.newest - HOLD_SAMPLES)

    def _write_out(self, wav: _OpenWav, upto: int) -> None:
        """Write the timeline up to sample ``upto`` (silence where nothing was received)."""
        while wav.base < upto:
            count = min(upto - wav.base, SILENCE_CHUNK_SAMPLES)
            left, right = wav.window
            for channel in wav.window:
                if len(channel) < count:
                    channel.extend(bytes((wav.silence,)) * (count - len(channel)))
            pcm = interleave_stereo_pcm16le(wav.file.codec, bytes(left[:count]),
                                            bytes(right[:count]))
            if wav.data_bytes + len(pcm) > MAX_DATA_BYTES:
                raise OSError("the recording reached the 4 GiB a WAV file can hold")
            _write_all(wav.fd, pcm)
            del left[:count], right[:count]
            wav.base += count
            wav.data_bytes += len(pcm)
            wav.file.samples = wav.base

    def _finish(self, wav: _OpenWav, sidecar: dict[str, Any] | None) -> None:
        self._write_out(wav, wav.newest)
        patch_sizes(wav.fd, wav.data_bytes)
        os.fsync(wav.fd)
        os.close(wav.fd)
        del self._open[id(wav.file)]
        file = wav.file
        os.rename(file.path + PART_SUFFIX, file.path)
        file.outcome = RecordingStatus.FINISHED
        self.counters.finished += 1
        if sidecar is not None:
            stem = file.path[:-4] if file.path.endswith(".wav") else file.path
            record_path = file.sidecar = stem + ".json"
            record = dict(sidecar, recording=file.as_dict())
            data = json.dumps(record, indent=2, ensure_ascii=False, default=str).encode()
            fd = os.open(record_path + PART_SUFFIX,
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            try:
                _write_all(fd, data + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(record_path + PART_SUFFIX, record_path)

    def _fail(self, file: RecordingFile, exc: OSError | None) -> None:
        """The disk refused: stop this recording (one log line), remove its partial file."""
        wav = self._open.pop(id(file), None)
        if file.outcome is not None:
            # The WAV was complete; only its sidecar failed: keep the WAV, say so once.
            log.warning("call %s: recording sidecar not written: %s", file.call_id,
                        _why(exc))
            self.counters.failures += 1
            file.sidecar = None
            return
        file.outcome = RecordingStatus.FAILED
        file.error = _why(exc)
        self.counters.failures += 1
        log.warning("call %s: recording stopped, the call goes on: %s", file.call_id, file.error)
        if wav is not None:
            with contextlib.suppress(OSError):
                os.close(wav.fd)
        with contextlib.suppress(OSError):
            os.unlink(file.path + PART_SUFFIX)


def _why(exc: OSError | None) -> str:
    if exc is None:
        return "internal error"
    return exc.strerror or str(exc)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

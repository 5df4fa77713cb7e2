"""Recordings (media/recording.py, media/recording_writer.py, media/g711.py, media/wav.py):
the timeline that lines both channels up, the writer that lays them out on disk, and a disk
that refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from media.g711 import alaw_to_linear, decode_pcm16le, ulaw_to_linear
from media.recording import (
    BATCH_FRAMES,
    SAMPLE_RATE,
    CallRecording,
    RecordingFile,
    RecordingStatus,
    recording_basename,
)
from media.recording_writer import RecordingWriter
from media.tones import alaw_from_linear, ulaw_from_linear
from tests.fakes.realtime import tone
from tests.wavcheck import dominant_hz, loud_spans, read_stereo

FRAME = 160  # 20 ms at 8 kHz


# --- G.711 ---------------------------------------------------------------------------------------


def test_g711_decoding_matches_the_reference_values():
    assert [ulaw_to_linear(c) for c in (0x00, 0x7F, 0x80, 0xFF)] == [-32124, 0, 32124, 0]
    assert [alaw_to_linear(c) for c in (0x2A, 0xAA, 0x55, 0xD5)] == [-32256, 32256, -8, 8]
    assert decode_pcm16le("PCMU", b"\x80\xff") == (32124).to_bytes(2, "little", signed=True) + b"\0\0"


@pytest.mark.parametrize("decode, encode", [(ulaw_to_linear, ulaw_from_linear),
                                            (alaw_to_linear, alaw_from_linear)])
def test_every_code_decodes_to_a_sample_that_encodes_back_to_it(decode, encode):
    for code in range(256):
        if decode is ulaw_to_linear and code == 0x7F:
            continue  # mu-law's "negative zero": 0 encodes as 0xFF
        assert encode(decode(code)) == code, hex(code)


# --- the timeline ------------------------------------------------------------------------------


class Collect:
    """A writer that keeps what it is given."""

    def __init__(self, room: int = 1000) -> None:
        self.batches: list[list[tuple[int, int, bytes]]] = []
        self.finished: list[dict | None] = []
        self.room = room

    def submit(self, file, batch) -> bool:
        if len(self.batches) >= self.room:
            return False
        self.batches.append(batch)
        return True

    def finish(self, file, sidecar) -> None:
        self.finished.append(sidecar)

    def placed(self, channel: int) -> list[int]:
        return [at for batch in self.batches for ch, at, _ in batch if ch == channel]


def recording(writer, started: float = 100.0, codec: str = "PCMU") -> CallRecording:
    file = RecordingFile(path="x.wav", codec=codec, call_id="c", offset_s=0.0)
    return CallRecording(file=file, started=started, writer=writer)


def test_a_lost_caller_packet_leaves_silence_in_its_place_and_shifts_nothing():
    writer = Collect()
    rec = recording(writer)
    # The caller's frames at 20 ms; the third is lost; arrivals jitter by up to 15 ms.
    for n in (0, 1, 3, 4):
        rec.caller(b"\x00" * FRAME, 5000 + n * FRAME, 100.5 + n * 0.02 + (0.015 if n == 3 else 0))
    rec.stop()
    assert writer.placed(0) == [4000, 4160, 4480, 4640]  # 0.5 s in, then by timestamp


def test_caller_timestamps_wrap_and_a_restart_anchors_afresh():
    writer = Collect()
    rec = recording(writer)
    rec.caller(b"\x00" * FRAME, 0xFFFFFF60, 101.0)
    rec.caller(b"\x00" * FRAME, 0x00000000, 101.02)  # wrapped: the next frame, not 2**32 on
    rec.caller(b"\x00" * FRAME, 123456789, 101.04)  # a new SSRC: timestamps start elsewhere
    rec.caller(b"\x00" * FRAME, 123456789 + FRAME, 101.06)
    rec.stop()
    assert writer.placed(0) == [8000, 8160, 8320, 8480]


def test_played_frames_are_contiguous_on_the_pacer_grid_and_restart_after_a_gap():
    writer = Collect()
    rec = recording(writer)
    for n, late in enumerate((0, 0.004, 0.001, 0)):  # ticks a few ms late stay on the grid
        rec.played(b"\x00" * FRAME, 100.2 + n * 0.02 + late)
    rec.played(b"\x00" * FRAME, 102.0)  # the pacer parked and woke
    rec.stop()
    assert writer.placed(1) == [1600, 1760, 1920, 2080, 16000]


def test_a_pause_records_nothing_but_keeps_the_timeline():
    writer = Collect()
    rec = recording(writer)
    rec.played(b"\x00" * FRAME, 100.0)
    rec.pause()
    rec.played(b"\x00" * FRAME, 100.02)
    rec.caller(b"\x00" * FRAME, 0, 100.02)
    rec.resume()
    rec.played(b"\x00" * FRAME, 101.0)
    rec.stop({"call-id": "c"})
    assert writer.placed(1) == [0, 8000] and writer.placed(0) == []
    assert writer.finished == [{"call-id": "c"}]
    assert rec.file.status is RecordingStatus.STOPPED


def test_frames_go_to_the_writer_in_batches_and_a_full_queue_drops_and_counts():
    writer = Collect(room=1)
    rec = recording(writer)
    for n in range(3 * BATCH_FRAMES):
        rec.played(b"\x00" * FRAME, 100.0 + n * 0.02)
    assert len(writer.batches) == 1 and len(writer.batches[0]) == BATCH_FRAMES
    assert rec.file.batches_dropped == 2


def test_file_names_are_safe_whatever_the_call_id():
    name = recording_basename("../../etc/passwd\n@host", "tag", 1_800_000_000.0)
    assert "/" not in name and "\n" not in name and not name.startswith(".")
    assert name.startswith("20270115T080000Z-")
    assert name != recording_basename("../../etc/passwd\n@host", "other", 1_800_000_000.0)


# --- the writer: what lands on disk ------------------------------------------------------------

CALLER_HZ, MODEL_HZ = 1000, 440


def near(spans: list[tuple[int, int]], expected: list[tuple[int, int]]) -> bool:
    """The spans, give or take the 2 samples a sine spends near 0 at its start and end."""
    return len(spans) == len(expected) and all(
        abs(a - x) <= 2 and abs(b - y) <= 2 for (a, b), (x, y) in zip(spans, expected, strict=True))


def frames(audio: bytes) -> list[bytes]:
    return [audio[i:i + FRAME] for i in range(0, len(audio), FRAME)]


def write_call(tmp_path: Path, codec: str = "PCMU") -> tuple[RecordingFile, RecordingWriter]:
    """A call on the writer, synchronously: the caller speaks 1 kHz at 0.5-1.0 s (one packet
    lost at 0.7 s), rtpai plays 440 Hz at 1.2-1.6 s; paused over 2.0-2.5 s while both speak."""
    writer = RecordingWriter()
    file = RecordingFile(path=str(tmp_path / "call.wav"), codec=codec, call_id="c", offset_s=0.0)
    writer.handle("open", file, None)

    class Direct:
        def submit(self, file, batch):
            writer.handle("audio", file, batch)
            return True

        def finish(self, file, sidecar):
            writer.handle("finish", file, sidecar)

    rec = CallRecording(file=file, started=10.0, writer=Direct())
    kind = codec.lower()
    caller = frames(tone(kind, 500, hz=CALLER_HZ))
    model = frames(tone(kind, 400, hz=MODEL_HZ))
    for n, frame in enumerate(caller):
        if n != 10:  # lost
            rec.caller(frame, 90_000 + n * FRAME, 10.5 + n * 0.02 + 0.003 * (n % 3))
    for n, frame in enumerate(model):
        rec.played(frame, 11.2 + n * 0.02)
    rec.played(model[0], 11.9)  # one more frame at 1.9 s, then the pause
    rec.pause()
    for n in range(25):
        rec.caller(caller[0], 200_000 + n * FRAME, 12.0 + n * 0.02)
        rec.played(model[0], 12.0 + n * 0.02)
    rec.resume()
    rec.played(model[0], 13.0)
    rec.stop({"call-id": "c", "codec": codec})
    return file, writer


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_each_channel_holds_its_party_at_the_right_offsets(tmp_path, codec):
    file, writer = write_call(tmp_path, codec)
    assert file.status is RecordingStatus.FINISHED
    left, right, rate = read_stereo(tmp_path / "call.wav")
    assert rate == SAMPLE_RATE
    # The caller's tone at 0.5 s, cut by the lost packet (0.70-0.72 s), to 1.0 s.
    assert near(loud_spans(left), [(4000, 5600), (5760, 8000)])
    assert abs(dominant_hz(left[4000:5600], rate) - CALLER_HZ) < 20
    # rtpai's at 1.2 s for 400 ms, one frame at 1.9 s, nothing over the pause, one at 3.0 s.
    assert near(loud_spans(right), [(9600, 12800), (15200, 15360), (24000, 24160)])
    assert abs(dominant_hz(right[9600:12800], rate) - MODEL_HZ) < 10
    assert len(left) == len(right) == 24160  # the file ends with the last frame
    assert not any(abs(s) > 8 for s in left[16000:20000])  # paused: silence on both


def test_the_file_is_complete_only_under_its_final_name_with_its_sidecar(tmp_path):
    file, writer = write_call(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["call.json", "call.wav"]
    sidecar = json.loads((tmp_path / "call.json").read_text())
    assert sidecar["call-id"] == "c"
    assert sidecar["recording"]["status"] == "finished"
    assert sidecar["recording"]["seconds"] == pytest.approx(3.02)
    assert writer.counters.finished == 1 and writer.counters.failures == 0


async def test_the_writer_thread_writes_what_is_queued_before_it_stops(tmp_path):
    writer = RecordingWriter()
    writer.start()
    file = RecordingFile(path=str(tmp_path / "t.wav"), codec="PCMU", call_id="t", offset_s=0.0)
    writer.open(file)
    rec = CallRecording(file=file, started=0.0, writer=writer)
    for n in range(500):  # 10 s
        rec.played(tone("pcmu", 20, hz=MODEL_HZ), n * 0.02)
    rec.stop(None)
    assert writer.stop(timeout=10)
    assert file.status is RecordingStatus.FINISHED
    left, right, _ = read_stereo(tmp_path / "t.wav")
    assert len(right) == 80_000 and near(loud_spans(right, gap=400), [(0, 80_000)])


def test_a_full_queue_refuses_audio_but_never_a_finish():
    writer = RecordingWriter(queue_batches=2)
    file = RecordingFile(path="never.wav", codec="PCMU", call_id="q", offset_s=0.0)
    assert writer.submit(file, []) and writer.submit(file, [])
    assert not writer.submit(file, [])
    writer.finish(file, None)
    assert writer.counters.batches_dropped == 1 and len(writer._items) == 3


# --- a disk that refuses -------------------------------------------------------------------------

FULL_DISK_SCRIPT = textwrap.dedent("""
    import json, logging, resource, signal, sys
    from media.recording import CallRecording, RecordingFile
    from media.recording_writer import RecordingWriter
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # A file-size limit makes a write past it fail with EFBIG, as ENOSPC on a full disk
    # does (SIGXFSZ ignored, as the daemon does; its default would kill the process).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    writer = RecordingWriter()
    writer.start()
    file = RecordingFile(path=sys.argv[1], codec="PCMU", call_id="full", offset_s=0.0)
    writer.open(file)
    rec = CallRecording(file=file, started=0.0, writer=writer)
    for n in range(1500):  # 30 s: ~960 KB of stereo PCM, far past 64 KB
        rec.played(b"\\x80" * 160, n * 0.02)
        rec.caller(b"\\x80" * 160, n * 160, n * 0.02)
    rec.stop({"call-id": "full"})
    writer.stop(timeout=10)
    print(json.dumps({"status": file.status.value, "error": file.error,
                      "failures": writer.counters.failures}))
""")


def test_a_full_disk_stops_the_recording_with_one_log_line_and_a_count(tmp_path):
    target = tmp_path / "full.wav"
    run = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(target)],
                         capture_output=True, text=True, timeout=60, cwd=os.getcwd())
    assert run.returncode == 0, run.stderr
    outcome = json.loads(run.stdout)
    assert outcome == {"status": "failed", "error": "File too large", "failures": 1}
    warnings = [line for line in run.stderr.splitlines() if line.startswith("WARNING")]
    assert warnings == ["WARNING call full: recording stopped, the call goes on: File too large"]
    assert os.listdir(tmp_path) == []  # the partial file is gone, no sidecar claims a WAV

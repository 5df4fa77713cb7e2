"""Reading recordings back in tests: the stdlib's ``wave`` (an independent reader), and where
in each channel a known tone is."""

from __future__ import annotations

import array
import sys
import wave
from pathlib import Path


def read_stereo(path: Path) -> tuple[list[int], list[int], int]:
    """(left samples, right samples, rate) of a 16-bit stereo WAV."""
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (2, 2)
        rate = wav.getframerate()
        samples = array.array("h", wav.readframes(wav.getnframes()))
    if sys.byteorder == "big":
        samples.byteswap()
    return list(samples[0::2]), list(samples[1::2]), rate


def onset(samples: list[int], *, threshold: int = 1000, start: int = 0) -> int | None:
    """The first sample at or after ``start`` louder than ``threshold`` (silence is quieter)."""
    for index in range(start, len(samples)):
        if abs(samples[index]) > threshold:
            return index
    return None


def loud_spans(samples: list[int], *, threshold: int = 1000, gap: int = 80) -> list[tuple[int, int]]:
    """[start, end) of the stretches louder than ``threshold``; quieter runs shorter than
    ``gap`` samples (a sine's zero crossings) do not split a stretch."""
    spans: list[tuple[int, int]] = []
    start = last = None
    for index, sample in enumerate(samples):
        if abs(sample) > threshold:
            if start is None or index - last > gap:
                if start is not None:
                    spans.append((start, last + 1))
                start = index
            last = index
    if start is not None:
        spans.append((start, last + 1))
    return spans


def dominant_hz(samples: list[int], rate: int) -> float:
    """A tone's frequency from its zero crossings (enough to tell 440 Hz from 1 kHz)."""
    crossings = sum(1 for a, b in zip(samples, samples[1:], strict=False) if (a < 0) != (b < 0))
    return crossings * rate / (2 * len(samples))

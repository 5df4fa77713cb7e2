"""Short signalling tones in G.711, built once: the cue played while the AI link recovers.

ITU-T G.711 encoding of linear samples (the Sun reference algorithms), used only to build
these few hundred bytes at start-up; the media path never transcodes.
"""

from __future__ import annotations

import math
from functools import cache

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635
_ALAW_SEGMENT_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def ulaw_from_linear(sample: int) -> int:
    """G.711 mu-law code of one signed 16-bit sample."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sign else sample, _ULAW_CLIP) + _ULAW_BIAS
    exponent = max(magnitude.bit_length() - 8, 0)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | exponent << 4 | mantissa) & 0xFF


def alaw_from_linear(sample: int) -> int:
    """G.711 A-law code of one signed 16-bit sample."""
    value = sample >> 3
    if value >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        value = -value - 1
    for segment, end in enumerate(_ALAW_SEGMENT_ENDS):
        if value <= end:
            shift = 1 if segment < 2 else segment
            return (segment << 4 | (value >> shift) & 0x0F) ^ mask
    return 0x7F ^ mask


# The "one moment" cue: two soft 440 Hz beeps of 100 ms, 100 ms apart (300 ms, whole 20 ms
# frames). Quiet (-18 dBFS) and short: it says "still here" without talking over anyone.
CUE_HZ = 440.0
CUE_AMPLITUDE = 4000
CUE_BEEP_MS = 100


@cache
def reconnect_cue(codec: str) -> bytes:
    """The cue in ``codec`` ("PCMU" or "PCMA") at 8 kHz."""
    encode = ulaw_from_linear if codec == "PCMU" else alaw_from_linear
    beep_samples = 8 * CUE_BEEP_MS
    beep = bytes(
        encode(round(CUE_AMPLITUDE * math.sin(2 * math.pi * CUE_HZ * n / 8000)))
        for n in range(beep_samples)
    )
    gap = bytes((encode(0),)) * beep_samples
    return beep + gap + beep

"""The RIFF/WAVE header of a 16-bit PCM file (Microsoft's WAVE format, ``WAVE_FORMAT_PCM``).

A recording is written before its length is known: the header goes first with sizes of 0, and
:func:`patch_sizes` fills them in once the audio is complete (a reader of an unfinished file
sees a valid, empty WAV, never garbage). Sizes are 32-bit: a WAV holds at most 4 GiB of audio.
"""

from __future__ import annotations

import os
import struct

HEADER_BYTES = 44
# The data chunk's size field is 32-bit and the RIFF size counts 36 more bytes.
MAX_DATA_BYTES = 0xFFFFFFFF - 36
_RIFF_SIZE_AT = 4
_DATA_SIZE_AT = 40
_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")


def wav_header(*, channels: int, rate: int, data_bytes: int = 0) -> bytes:
    """The 44-byte header of a 16-bit PCM WAV with ``data_bytes`` of samples after it."""
    block_align = channels * 2
    return _HEADER.pack(
        b"RIFF", 36 + data_bytes, b"WAVE",
        b"fmt ", 16, 1, channels, rate, rate * block_align, block_align, 16,
        b"data", data_bytes,
    )


def patch_sizes(fd: int, data_bytes: int) -> None:
    """Write the final sizes into the header of the open file ``fd`` (position unchanged)."""
    os.pwrite(fd, struct.pack("<I", 36 + data_bytes), _RIFF_SIZE_AT)
    os.pwrite(fd, struct.pack("<I", data_bytes), _DATA_SIZE_AT)

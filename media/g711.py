"""G.711 decoding to 16-bit linear PCM, for recordings only: the media path never transcodes.

ITU-T G.711's expansion (the Sun reference ``ulaw2linear``/``alaw2linear``) computed once into
byte tables, so that a whole frame is decoded by two ``bytes.translate`` calls and one strided
copy, in C: the recorder's writer thread decodes an hour of a call in well under a second.
"""

from __future__ import annotations

_ULAW_BIAS = 0x84


def ulaw_to_linear(code: int) -> int:
    """The signed 16-bit sample of G.711 mu-law ``code`` (0..255)."""
    code = ~code & 0xFF
    magnitude = (((code & 0x0F) << 3) + _ULAW_BIAS) << ((code & 0x70) >> 4)
    return _ULAW_BIAS - magnitude if code & 0x80 else magnitude - _ULAW_BIAS


def alaw_to_linear(code: int) -> int:
    """The signed 16-bit sample of G.711 A-law ``code`` (0..255)."""
    code ^= 0x55
    mantissa = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    if segment == 0:
        magnitude = mantissa + 8
    elif segment == 1:
        magnitude = mantissa + 0x108
    else:
        magnitude = (mantissa + 0x108) << (segment - 1)
    return magnitude if code & 0x80 else -magnitude


def _byte_tables(decode) -> tuple[bytes, bytes]:
    """(low bytes, high bytes) of each code's sample, little-endian as WAV stores it."""
    samples = [decode(code) & 0xFFFF for code in range(256)]
    return bytes(s & 0xFF for s in samples), bytes(s >> 8 for s in samples)


# codec name -> (low byte table, high byte table)
PCM16_TABLES: dict[str, tuple[bytes, bytes]] = {
    "PCMU": _byte_tables(ulaw_to_linear),
    "PCMA": _byte_tables(alaw_to_linear),
}
# The tables are explicit little-endian, whatever the machine's byte order. Silence as rtpai
# sends it (media/rtp.py's SILENCE_BYTE): mu-law 0xFF is 0; A-law 0xD5 is +8 (A-law has no
# code for 0), -72 dBFS.


def decode_pcm16le(codec: str, payload: bytes) -> bytes:
    """``payload`` (G.711 ``codec``) as signed 16-bit little-endian samples."""
    low, high = PCM16_TABLES[codec]
    out = bytearray(2 * len(payload))
    out[0::2] = payload.translate(low)
    out[1::2] = payload.translate(high)
    return bytes(out)


def interleave_stereo_pcm16le(codec: str, left: bytes, right: bytes) -> bytes:
    """Two equally long G.711 channels as one stereo 16-bit little-endian stream (L, R, ...)."""
    if len(left) != len(right):
        raise ValueError("both channels must hold the same number of samples")
    low, high = PCM16_TABLES[codec]
    out = bytearray(4 * len(left))
    out[0::4] = left.translate(low)
    out[1::4] = left.translate(high)
    out[2::4] = right.translate(low)
    out[3::4] = right.translate(high)
    return bytes(out)

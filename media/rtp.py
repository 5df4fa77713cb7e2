"""RTP (RFC 3550) packets, sans-IO: parse what callers send, build what we send back."""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from media import native

RTP_VERSION = 2
RTP_HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC
RTP_HEADER_SIZE = RTP_HEADER.size  # 12

PT_PCMU = 0
PT_PCMA = 8
PT_COMFORT_NOISE = 13  # RFC 3389

# G.711 silence: the code for a zero sample (mu-law 0xFF, A-law 0xD5, ITU-T G.711 tables).
ULAW_SILENCE = 0xFF
ALAW_SILENCE = 0xD5
SILENCE_BYTE = {"PCMU": ULAW_SILENCE, "PCMA": ALAW_SILENCE}


class RtpError(ValueError):
    """A datagram that is not a valid RTP packet; the receiver drops and counts it."""


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, which
# made building one (six fields, per packet received) cost ~10 000 instructions, a fifth of
# receiving a packet. Nothing mutates a packet once parsed.
@dataclass(slots=True)
class RtpPacket:
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 section 4: on a muxed port, packet types 192-223 are RTCP, not RTP."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse an RTP packet, checking every length the header claims (RFC 3550 section 5.1).

    Raises :class:`RtpError` for anything short, of another version, or whose CSRC count,
    header extension or padding run past the end of the datagram.
    """
    size = len(data)
    if size < RTP_HEADER_SIZE:
        raise RtpError("shorter than an RTP header")
    first, second, sequence, timestamp, ssrc = RTP_HEADER.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        raise RtpError("not RTP version 2")
    offset = RTP_HEADER_SIZE + 4 * (first & 0x0F)
    if first & 0x10:  # header extension: 16-bit profile, 16-bit length in 32-bit words
        if size < offset + 4:
            raise RtpError("header extension runs past the packet")
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
    end = size
    if first & 0x20:  # padding: the last octet counts the padding octets, itself included
        padding = data[-1]
        if padding == 0:
            raise RtpError("padding count of zero")
        end -= padding
    if offset > end:
        raise RtpError("header lengths run past the packet")
    # Positional: keywords would cost a dict per packet on the way to __init__.
    return RtpPacket(second & 0x7F, bool(second & 0x80), sequence, timestamp, ssrc,
                     data[offset:end])


def seq_gt(a: int, b: int) -> bool:
    """RFC 1982 serial-number arithmetic on 16-bit sequence numbers: is ``a`` after ``b``?"""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


class RtpPacketizer:
    """Builds our outbound RTP stream: one SSRC per call, sequence and timestamp that wrap.

    The sequence number and timestamp start at random values (RFC 3550 section 5.1) and wrap
    modulo 2**16 and 2**32. :meth:`silence_gap` advances the timestamp through silence that
    sends nothing, so the caller's jitter buffer sees the true timing; the first packet after
    such a gap carries the marker bit (start of a talkspurt).
    """

    __slots__ = ("payload_type", "ssrc", "sequence", "timestamp", "_marker_pending")

    def __init__(
        self,
        payload_type: int,
        *,
        ssrc: int | None = None,
        sequence: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        self.payload_type = payload_type
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc
        self.sequence = secrets.randbits(16) if sequence is None else sequence
        self.timestamp = secrets.randbits(32) if timestamp is None else timestamp
        self._marker_pending = True

    def start_talkspurt(self) -> None:
        """The next packet begins a talkspurt and carries the marker bit."""
        self._marker_pending = True

    @property
    def marker_pending(self) -> bool:
        """Whether the next packet carries the marker bit (read and set when a stream moves
        between the media send thread and this packetizer, media/sender.py)."""
        return self._marker_pending

    @marker_pending.setter
    def marker_pending(self, value: bool) -> None:
        self._marker_pending = bool(value)

    def silence_gap(self, samples: int) -> None:
        """Account for ``samples`` of silence that were not sent."""
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF
        self._marker_pending = True

    def packet(self, payload: bytes, samples: int) -> bytes:
        """The next RTP packet carrying ``payload`` (``samples`` long at the codec's clock)."""
        marker = 0x80 if self._marker_pending else 0
        self._marker_pending = False
        # One pack and one concatenation: fewer allocations than packing into a kept header
        # and copying it out (this runs 50 times a second per call).
        header = RTP_HEADER.pack(
            0x80, marker | self.payload_type, self.sequence, self.timestamp, self.ssrc
        )
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF
        return header + payload


# The Python classes and parser above are the reference; their compiled twins (media/_fast*.c,
# issue 14) do the same byte for byte and run when built (media/native.py decides, once). The
# references stay reachable under these names for the differential tests.
PyRtpPacket, py_parse_rtp, PyRtpPacketizer = RtpPacket, parse_rtp, RtpPacketizer

_fast = native.load("media._fast")
if _fast is not None:
    _fast.bind(RtpError)  # the C parser raises this module's RtpError
    RtpPacket, parse_rtp, RtpPacketizer = _fast.RtpPacket, _fast.parse_rtp, _fast.RtpPacketizer

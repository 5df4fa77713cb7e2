"""The SDP model (RFC 4566), sans-IO: what a parsed offer is made of, and the one error.

media/sdp_parse.py builds these from text; media/sdp_answer.py chooses from them and writes
our answer. Frozen dataclasses: an offer, once parsed, is a value.
"""

from __future__ import annotations

from dataclasses import dataclass


class SdpError(Exception):
    """An offer rtpai cannot parse or cannot answer; ``reason`` is fit for an ng error-reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason



def unparseable(detail: str) -> SdpError:
    """The error for a body that is not SDP we can read (reason 'Unparseable SDP: ...')."""
    return SdpError(f"Unparseable SDP: {detail}")



# RFC 3551 section 6, tables 4 and 5: payload types that need no a=rtpmap. (G722 is listed at
# 8000 Hz although it samples at 16000: an erratum kept for compatibility, RFC 3551 section 4.5.2.)
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
    25: ("CELB", 90000, 1),
    26: ("JPEG", 90000, 1),
    28: ("NV", 90000, 1),
    31: ("H261", 90000, 1),
    32: ("MPV", 90000, 1),
    33: ("MP2T", 90000, 1),
    34: ("H263", 90000, 1),
}

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

# Encoding names are case-insensitive (RFC 4855 section 3), so Codec.encoding is upper-case; when
# writing an rtpmap we use the spelling every implementation sends.
_RTPMAP_SPELLING = {"TELEPHONE-EVENT": "telephone-event"}


@dataclass(frozen=True, slots=True)
class Codec:
    """One RTP payload format of an m-line: ``a=rtpmap`` (or RFC 3551 static) plus ``a=fmtp``."""

    payload_type: int
    encoding: str  # upper-case: 'PCMU', 'PCMA', 'TELEPHONE-EVENT', 'OPUS'
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None

    @property
    def rtpmap(self) -> str:
        """The ``a=rtpmap:`` value for this codec, e.g. ``'101 telephone-event/8000'``."""
        name = _RTPMAP_SPELLING.get(self.encoding, self.encoding)
        value = f"{self.payload_type} {name}/{self.clock_rate}"
        return f"{value}/{self.channels}" if self.channels != 1 else value


@dataclass(frozen=True, slots=True)
class Origin:
    """The ``o=`` line (RFC 4566 section 5.2); ids are kept as the strings the peer sent."""

    username: str
    session_id: str
    session_version: str
    net_type: str
    addr_type: str
    address: str


@dataclass(frozen=True, slots=True)
class MediaDescription:
    """One ``m=`` section with the session-level defaults it inherits already applied."""

    kind: str  # 'audio', 'video', 'image', ...
    port: int
    protocol: str  # 'RTP/AVP', 'RTP/AVPF', 'RTP/SAVP', 'UDP/TLS/RTP/SAVPF', 'udptl', ...
    formats: tuple[str, ...]  # m-line order
    codecs: tuple[Codec, ...]  # the formats rtpmap or RFC 3551 can name, m-line order
    connection_address: str | None  # media c=, else session c=, without /ttl
    address_family: str  # 'IP4' or 'IP6'
    direction: str  # media attribute, else session attribute, else 'sendrecv' (RFC 3264 s5.1)
    ptime: int | None
    maxptime: int | None
    rtcp_mux: bool  # RFC 5761 a=rtcp-mux
    rtcp_port: int | None  # RFC 3605 a=rtcp
    attributes: tuple[tuple[str, str | None], ...]  # every media-level a= line, raw
    port_count: int = 1  # m=audio 49170/2

    @property
    def is_rtp(self) -> bool:
        """Whether the formats are RTP payload types (any */RTP/* profile, RFC 4566 s5.14)."""
        return "RTP/" in self.protocol.upper()

    def codec(self, payload_type: int) -> Codec | None:
        """The codec this m-line offers on ``payload_type``, if any."""
        return next((c for c in self.codecs if c.payload_type == payload_type), None)


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A parsed SDP body (RFC 4566)."""

    origin: Origin
    session_name: str
    connection_address: str | None  # session-level c=
    address_family: str | None
    direction: str | None  # session-level direction attribute, if any
    attributes: tuple[tuple[str, str | None], ...]  # session-level a= lines, raw
    media: tuple[MediaDescription, ...]


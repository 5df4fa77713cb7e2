"""SDP, sans-IO: parse the caller's offer, choose G.711, build our answer.

rtpai is the media endpoint, so it answers the offer itself (RFC 3264) instead of rewriting it as
a relay would. It speaks exactly one audio stream of PCMU or PCMA, optionally with RFC 4733
telephone-event, over plain RTP; everything else in the offer is declined, never transcoded.

Specs: RFC 4566 (SDP syntax), RFC 3264 (offer/answer), RFC 3551 (static payload types),
RFC 4733 (telephone-event), RFC 5761 (rtcp-mux), RFC 3605 (a=rtcp), RFC 4585 (RTP/AVPF).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Codec",
    "MediaDescription",
    "Negotiated",
    "Origin",
    "SdpError",
    "SessionDescription",
    "answer_direction_for",
    "build_answer",
    "negotiate",
    "parse_sdp",
]


class SdpError(Exception):
    """An offer rtpai cannot parse or cannot answer; ``reason`` is fit for an ng error-reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- model -----------------------------------------------------------------------------------

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


# --- parsing ---------------------------------------------------------------------------------

_RTPMAP = re.compile(r"([0-9]{1,3})\s+([^/\s]+)/([0-9]{1,10})(?:/([0-9]{1,3}))?(?:\s.*)?")
_FMTP = re.compile(r"([0-9]{1,3})\s+(\S.*)")
_PTIME = re.compile(r"([0-9]{1,6})(?:\.[0-9]*)?")  # RFC 4566 allows a decimal; we keep whole ms


# Bounds on the parser's work, so that a hostile offer costs the event loop about a
# millisecond (a 60 KB offer of thousands of m-lines took 15-30 ms, delaying the RTP of every
# call beside it; bench/micro_sdp_limits.py measures it). Real offers are far below them: a
# SIP phone's audio+video offer has ~60 lines, a WebRTC one (which rtpai declines anyway: it
# needs DTLS-SRTP) ~150-250; a SIP call has at most a handful of m-lines (audio, video, T.38,
# BFCP); the longest m-line we know is a browser's video line, ~40 payload types (codecs, their
# RTX, RED, FEC). Lines get twice a WebRTC offer's count as margin: refusing a real caller's
# offer is a failed call, while the worst offer within these bounds costs ~1 ms, once.
MAX_SDP_LINES = 512
MAX_MEDIA_SECTIONS = 8
MAX_MEDIA_FORMATS = 64


def _unparseable(detail: str) -> SdpError:
    return SdpError(f"Unparseable SDP: {detail}")


def _uint(text: str) -> int | None:
    # ASCII only: int() would also take other scripts' digits (and isdigit() superscripts).
    if text.isascii() and text.isdigit() and len(text) <= 10:
        return int(text)
    return None


def _parse_connection(value: str) -> tuple[str, str]:
    """``c=IN IP4 192.0.2.1[/ttl[/n]]`` -> (addr type, address); RFC 4566 s5.7."""
    tokens = value.split()
    if len(tokens) != 3 or tokens[0].upper() != "IN" or tokens[1].upper() not in ("IP4", "IP6"):
        raise _unparseable(f"bad connection line c={value[:60]!r}")
    address = tokens[2].split("/", 1)[0]
    if not address:
        raise _unparseable(f"bad connection line c={value[:60]!r}")
    return tokens[1].upper(), address


def _parse_origin(value: str) -> Origin:
    # RFC 4566 s5.2 forbids spaces in the username, but a call is not worth rejecting over one:
    # the last five fields are fixed, so anything before them is the username.
    tokens = value.split()
    if len(tokens) < 6:
        raise _unparseable(f"bad origin line o={value[:60]!r}")
    return Origin(" ".join(tokens[:-5]), *tokens[-5:])


def _parse_attribute(value: str) -> tuple[str, str | None]:
    name, colon, rest = value.partition(":")
    return name.strip(), (rest.strip() if colon else None)


def _last_direction(attributes: Sequence[tuple[str, str | None]]) -> str | None:
    found = [name for name, _ in attributes if name in DIRECTIONS]
    return found[-1] if found else None


def _parse_ptime(attributes: Sequence[tuple[str, str | None]], name: str) -> int | None:
    # Attributes are read tolerantly: a malformed one is ignored, not worth failing a call over.
    for attr, value in attributes:
        if attr == name and value is not None and (m := _PTIME.fullmatch(value)):
            return int(m.group(1)) or None
    return None


# Codecs are immutable and few distinct ones are ever offered: share them instead of building
# the same ones for every offer.
_codec = functools.lru_cache(maxsize=256)(Codec)


@dataclass(frozen=True, slots=True)
class _SessionDefaults:
    """What an m= section inherits from the session level when it does not say itself."""

    family: str | None
    address: str | None
    direction: str | None
    ptime: int | None


def _parse_media(
    m_value: str, lines: Sequence[tuple[str, str]], session: _SessionDefaults
) -> MediaDescription:
    if m_value.count(" ") > MAX_MEDIA_FORMATS + 64:  # (before split(): blanks may pad)
        raise _unparseable(f"more than {MAX_MEDIA_FORMATS} formats on an m-line")
    tokens = m_value.split()
    # RFC 4566 s5.14 wants at least one format; a format-less rejected line is tolerated.
    if len(tokens) < 3:
        raise _unparseable(f"bad media line m={m_value[:60]!r}")
    kind, port_field, protocol, *formats = tokens
    if len(formats) > MAX_MEDIA_FORMATS:
        raise _unparseable(f"more than {MAX_MEDIA_FORMATS} formats on an m-line")
    port_text, slash, count_text = port_field.partition("/")
    port = _uint(port_text)
    port_count = _uint(count_text) if slash else 1
    if port is None or port > 65535 or not port_count:
        raise _unparseable(f"bad media port m={m_value[:60]!r}")

    # One pass over the section (this is on the offer's path to its reply): the attributes
    # as (name, value), and on the way what the answer needs of them. Attributes are read
    # tolerantly: a malformed one is ignored, not worth failing a call over.
    connection: tuple[str, str] | None = None
    attributes: list[tuple[str, str | None]] = []
    rtpmaps: dict[int, tuple[str, int, int]] = {}
    fmtps: dict[int, str] = {}
    direction = None  # the last direction attribute wins
    rtcp_mux = False
    for letter, value in lines:
        if letter == "a":
            name, colon, rest = value.partition(":")
            name = name.strip()
            if colon:
                rest = rest.strip()
                if name == "rtpmap":
                    if m := _RTPMAP.fullmatch(rest):
                        pt, encoding, clock_rate, channels = m.groups()
                        rtpmaps.setdefault(
                            int(pt),
                            (encoding.upper(), int(clock_rate), int(channels) if channels else 1),
                        )
                elif name == "fmtp" and (m := _FMTP.fullmatch(rest)):
                    pt, parameters = m.groups()
                    fmtps.setdefault(int(pt), parameters.strip())
                attributes.append((name, rest))
            else:
                attributes.append((name, None))
            if name in DIRECTIONS:
                direction = name
            elif name == "rtcp-mux":
                rtcp_mux = True
        elif letter == "c":
            parsed = _parse_connection(value)
            connection = connection or parsed  # several c= only for multicast layers; first wins

    if connection is not None:
        family, address = connection
    else:
        family, address = session.family or "IP4", session.address

    rtcp_port = None
    for name, value in attributes:
        if name == "rtcp" and value:
            rtcp_port = _uint(value.split()[0])
            if rtcp_port is not None and not 0 < rtcp_port <= 65535:
                rtcp_port = None
            break

    codecs = []
    if "RTP/" in protocol.upper():  # else (udptl, TCP/MSRP...) formats are not payload types
        for fmt in formats:
            pt = _uint(fmt)
            if pt is None or pt > 127:  # RTP payload types are 7 bits (RFC 3550 s5.1)
                continue
            known = rtpmaps.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
            if known is not None:
                encoding, clock_rate, channels = known
                codecs.append(_codec(pt, encoding, clock_rate, channels, fmtps.get(pt)))

    # RFC 4566 puts ptime at media level; some phones write it at session level, so inherit.
    ptime = _parse_ptime(attributes, "ptime") or session.ptime
    return MediaDescription(
        kind=kind,
        port=port,
        protocol=protocol,
        formats=tuple(formats),
        codecs=tuple(codecs),
        connection_address=address,
        address_family=family,
        direction=direction or session.direction or "sendrecv",
        ptime=ptime,
        maxptime=_parse_ptime(attributes, "maxptime"),
        rtcp_mux=rtcp_mux,
        rtcp_port=rtcp_port,
        attributes=tuple(attributes),
        port_count=port_count,
    )


def parse_sdp(text: str | bytes) -> SessionDescription:
    """Parse an SDP body (RFC 4566). Accepts CRLF or bare LF and stray whitespace.

    Raises SdpError (reason 'Unparseable SDP: ...') on anything that is not SDP; unknown line
    types and malformed attributes are ignored, as RFC 4566 s5 asks of a tolerant parser.
    """
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")  # RFC 4566 s5: the default charset is UTF-8
        except UnicodeDecodeError:
            raise _unparseable("not UTF-8") from None
    if not isinstance(text, str):
        raise _unparseable(f"expected text, got {type(text).__name__}")

    # Counted before any per-line work (str.count is C speed). Bare CR line ends count too.
    if text.count("\n") > MAX_SDP_LINES or text.count("\r") > MAX_SDP_LINES:
        raise _unparseable(f"more than {MAX_SDP_LINES} lines")
    lines = [
        stripped
        for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if (stripped := line.strip())
    ]
    if not lines:
        raise _unparseable("empty body")
    if lines[0] != "v=0":
        raise _unparseable(f"does not start with v=0: {lines[0][:40]!r}")

    session_lines: list[tuple[str, str]] = []
    media_sections: list[tuple[str, list[tuple[str, str]]]] = []
    current = session_lines
    for number, line in enumerate(lines, 1):
        # RFC 4566 s5: <type>=<value>, the type one lower-case letter.
        letter = line[0]
        if line[1:2] != "=" or not "a" <= letter <= "z":
            raise _unparseable(f"line {number}: {line[:40]!r}")
        value = line[2:]
        if letter == "m":
            if len(media_sections) >= MAX_MEDIA_SECTIONS:
                raise _unparseable(f"more than {MAX_MEDIA_SECTIONS} m-lines")
            current = []
            media_sections.append((value, current))
        else:
            current.append((letter, value))

    # The first o=, s= and c= count; parsed in this order, so errors are reported in it.
    first: dict[str, str] = {}
    session_attributes = []
    for letter, value in session_lines:
        if letter == "a":
            session_attributes.append(_parse_attribute(value))
        elif letter not in first:
            first[letter] = value
    if "o" not in first:
        raise _unparseable("no o= line")
    origin = _parse_origin(first["o"])
    session_name = first.get("s", "")
    connection = _parse_connection(first["c"]) if "c" in first else None
    attributes = tuple(session_attributes)
    direction = _last_direction(attributes)
    family, address = connection if connection is not None else (None, None)

    inherited = _SessionDefaults(family, address, direction, _parse_ptime(attributes, "ptime"))
    return SessionDescription(
        origin=origin,
        session_name=session_name,
        connection_address=address,
        address_family=family,
        direction=direction,
        attributes=attributes,
        media=tuple([_parse_media(m, section, inherited) for m, section in media_sections]),
    )


# --- offer/answer ----------------------------------------------------------------------------

# Plain RTP profiles we answer. RTP/AVPF (RFC 4585) is RTP/AVP plus optional RTCP feedback: we
# accept it and answer with the same proto string (RFC 3264 s6 keeps the offer's transport, and
# answering AVP to AVPF makes strict peers reject the stream), but offer no a=rtcp-fb, which
# RFC 4585 s4.2 allows: an AVPF endpoint without feedback follows the regular RTCP rules.
PLAIN_RTP_PROFILES = frozenset({"RTP/AVP", "RTP/AVPF"})
G711 = ("PCMU", "PCMA")
# ptimes every G.711 phone and our paced sender handle; anything else falls back to 20 ms, the
# RFC 3551 s4.5 default for G.711, which every device accepts.
SUPPORTED_PTIMES = (10, 20, 30, 40)
DEFAULT_PTIME = 20

# RFC 3264 s6.1: the answer's direction mirrors the offer's.
_ANSWER_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}


def answer_direction_for(offer_direction: str) -> str:
    """RFC 3264 s6.1: sendonly is answered recvonly, recvonly sendonly, the others in kind."""
    return _ANSWER_DIRECTION[offer_direction]


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What rtpai agreed to for the one audio stream it terminates."""

    media_index: int  # index into offer.media of the audio m-line we accept
    codec: Codec  # PCMU or PCMA at 8000 Hz on the offer's payload type (normally 0 or 8), no fmtp
    telephone_event: Codec | None  # RFC 4733 telephone-event/8000, offer's PT and fmtp
    ptime: int
    remote_address: str | None  # None if the offer gave none or the RFC 2543 hold 0.0.0.0
    remote_port: int
    remote_rtcp_port: int  # 0: none (RTP on port 65535 without a=rtcp)
    rtcp_mux: bool
    on_hold: bool
    answer_direction: str
    protocol: str = "RTP/AVP"  # the offer's proto string, echoed in the answer
    address_family: str = "IP4"  # of the remote address


def _is_unspecified(address: str | None) -> bool:
    """0.0.0.0 or :: -- RFC 2543 hold, still sent by older gateways (RFC 3264 s8.4)."""
    if address is None or address.strip("0.:"):
        return False  # (any other character: not an unspecified address, no need to parse it)
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False  # an FQDN (RFC 4566 allows one) is never the hold address


def _choose_codec(media: MediaDescription, preference: Sequence[str] | None) -> Codec | None:
    candidates = [
        c for c in media.codecs if c.encoding in G711 and c.clock_rate == 8000 and c.channels == 1
    ]
    if preference is None:
        return candidates[0] if candidates else None  # RFC 3264 s6.1: the offer's order
    for name in preference:
        for codec in candidates:
            if codec.encoding == name:
                return codec
    return None


def _choose_ptime(media: MediaDescription) -> int:
    if media.ptime in SUPPORTED_PTIMES:
        return media.ptime
    if media.maxptime is not None and media.maxptime < DEFAULT_PTIME:
        return 10  # RFC 4566 a=maxptime: the peer cannot take 20 ms packets; 10 is our shortest
    return DEFAULT_PTIME


def negotiate(offer: SessionDescription, preference: Sequence[str] | None = None) -> Negotiated:
    """Choose the audio stream, codec and RTP parameters rtpai will answer ``offer`` with.

    The first audio m-line with a non-zero port, a plain RTP profile (RTP/AVP, RTP/AVPF) and
    PCMU or PCMA wins; other m-lines are declined by build_answer. ``preference`` None lets the
    offer's order pick between PCMU and PCMA; a sequence such as ('PCMA', 'PCMU') imposes ours
    and may leave one out. Raises SdpError with a reason fit for the ng reply, and ValueError for
    a preference naming anything but PCMU/PCMA.
    """
    if preference is not None:
        preference = tuple(name.upper() for name in preference)
        unknown = [name for name in preference if name not in G711]
        if unknown or not preference:
            raise ValueError(f"codec preference must name PCMU and/or PCMA, not {unknown}")

    no_codec = False
    srtp_protocol = other_protocol = None
    for index, media in enumerate(offer.media):
        if media.kind.lower() != "audio" or media.port == 0:
            continue  # port 0 is a stream the offerer itself disabled (RFC 3264 s5.1)
        protocol = media.protocol.upper()
        if protocol not in PLAIN_RTP_PROFILES:
            # SDES or DTLS-SRTP (WebRTC) would need keys and crypto we do not have. a=crypto on a
            # plain RTP/AVP line ("optional SRTP") is simply not answered, so that call works.
            if "SAVP" in protocol:
                srtp_protocol = srtp_protocol or media.protocol
            else:
                other_protocol = other_protocol or media.protocol
            continue
        codec = _choose_codec(media, preference)
        if codec is None:
            no_codec = True
            continue
        # RFC 4733 s7.1.1: events share the audio clock; browsers also offer /48000 for Opus.
        telephone_event = next(
            (c for c in media.codecs if c.encoding == "TELEPHONE-EVENT" and c.clock_rate == 8000),
            None,
        )
        unspecified = _is_unspecified(media.connection_address)
        # RFC 5761: we accept mux whenever it is offered; else RFC 3605 a=rtcp; else RFC 3550
        # s11, the next port up.
        rtcp_port = media.port if media.rtcp_mux else (media.rtcp_port or media.port + 1)
        if rtcp_port > 65535:
            rtcp_port = 0  # RTP on 65535 has no port above it: no RTCP to send (0: none)
        return Negotiated(
            media_index=index,
            # G.711 has no parameters to answer.
            codec=Codec(codec.payload_type, codec.encoding, codec.clock_rate, codec.channels),
            telephone_event=telephone_event,
            ptime=_choose_ptime(media),
            remote_address=None if unspecified else media.connection_address,
            remote_port=media.port,
            remote_rtcp_port=rtcp_port,
            rtcp_mux=media.rtcp_mux,
            on_hold=unspecified or media.direction in ("sendonly", "inactive"),
            answer_direction=answer_direction_for(media.direction),
            protocol=media.protocol,
            address_family=media.address_family,
        )

    if no_codec:
        raise SdpError("No common codec")
    if srtp_protocol:
        raise SdpError(f"SRTP is not supported ({srtp_protocol} offered)")
    if other_protocol:
        raise SdpError(f"Unsupported media transport ({other_protocol} offered)")
    raise SdpError("No audio stream in SDP")


@functools.lru_cache(maxsize=64)  # called with our own few advertised addresses
def _family_of(address: str) -> str:
    try:
        return "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    except ValueError:
        return "IP4"  # a host name: IP4 is what every peer assumes


def build_answer(
    offer: SessionDescription,
    negotiated: Negotiated,
    *,
    local_address: str,
    local_port: int,
    session_id: int,
    session_version: int,
    address_family: str | None = None,
) -> str:
    """The SDP answer (RFC 3264 s6) to ``offer`` as agreed in ``negotiated``, CRLF-terminated.

    One m-line per offered m-line, in the offer's order; all but the negotiated audio line are
    declined with port 0. On hold we still give our real address and port, so the peer can
    resume with a re-INVITE that changes only the direction.
    """
    family = address_family or _family_of(local_address)
    if family not in ("IP4", "IP6"):
        raise ValueError(f"address_family must be IP4 or IP6, not {family!r}")
    if not 0 < local_port <= 65535:
        raise ValueError(f"local_port out of range: {local_port}")
    if not 0 <= negotiated.media_index < len(offer.media):
        raise ValueError(f"media_index {negotiated.media_index} is not in the offer")

    lines = [
        "v=0",
        f"o=rtpai {session_id} {session_version} IN {family} {local_address}",
        "s=rtpai",
        f"c=IN {family} {local_address}",
        "t=0 0",
    ]
    for index, media in enumerate(offer.media):
        if index == negotiated.media_index:
            lines.extend(_answer_audio(negotiated, local_port))
        else:
            # RFC 3264 s6: a declined stream keeps its place, port 0, and at least one format.
            first_format = media.formats[0] if media.formats else "0"
            lines.append(f"m={media.kind} 0 {media.protocol} {first_format}")
    return "\r\n".join(lines) + "\r\n"


def _answer_audio(negotiated: Negotiated, local_port: int) -> list[str]:
    # One codec only: with no transcoding, a single format leaves the peer nothing to switch to
    # mid-call. No CN (RFC 3389): we send real silence, and comfort noise is not worth a codec.
    codecs = [negotiated.codec]
    if negotiated.telephone_event is not None:
        codecs.append(negotiated.telephone_event)
    payload_types = " ".join(str(c.payload_type) for c in codecs)
    lines = [f"m=audio {local_port} {negotiated.protocol} {payload_types}"]
    lines.extend(f"a=rtpmap:{c.rtpmap}" for c in codecs)
    event = negotiated.telephone_event
    if event is not None and event.fmtp:
        # RFC 4733 s7.1.1: echo the offered event list; without an fmtp, 0-15 is implied.
        lines.append(f"a=fmtp:{event.payload_type} {event.fmtp}")
    lines.append(f"a=ptime:{negotiated.ptime}")
    if negotiated.rtcp_mux:
        lines.append("a=rtcp-mux")  # RFC 5761 s5.1.1: the answer confirms mux
    lines.append(f"a={negotiated.answer_direction}")
    return lines

"""SDP parsing (RFC 4566), sans-IO: an offer's text to a SessionDescription (media/sdp_model.py).

Tolerant, as RFC 4566 s5 asks: unknown line types and malformed attributes are ignored; text
that is not SDP raises SdpError. Its work is bounded (media/sdp_limits.py) before it is done.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from media import native, sdp_limits
from media.sdp_model import (
    DIRECTIONS,
    STATIC_PAYLOAD_TYPES,
    Codec,
    MediaDescription,
    Origin,
    SessionDescription,
    unparseable,
)

__all__ = ["parse_sdp"]

Lines = list[tuple[str, str]]  # (letter, value) of a section's lines other than a=
Attributes = list[tuple[str, str | None]]  # (name, value or None: no colon), a= lines

_RTPMAP = re.compile(r"([0-9]{1,3})\s+([^/\s]+)/([0-9]{1,10})(?:/([0-9]{1,3}))?(?:\s.*)?")
_FMTP = re.compile(r"([0-9]{1,3})\s+(\S.*)")
_PTIME = re.compile(r"([0-9]{1,6})(?:\.[0-9]*)?")  # RFC 4566 allows a decimal; we keep whole ms


def _uint(text: str) -> int | None:
    # ASCII only: int() would also take other scripts' digits (and isdigit() superscripts).
    if text.isascii() and text.isdigit() and len(text) <= 10:
        return int(text)
    return None


def _parse_connection(value: str) -> tuple[str, str]:
    """``c=IN IP4 192.0.2.1[/ttl[/n]]`` -> (addr type, address); RFC 4566 s5.7."""
    tokens = value.split()
    if len(tokens) != 3 or tokens[0].upper() != "IN" or tokens[1].upper() not in ("IP4", "IP6"):
        raise unparseable(f"bad connection line c={value[:60]!r}")
    address = tokens[2].split("/", 1)[0]
    if not address:
        raise unparseable(f"bad connection line c={value[:60]!r}")
    return tokens[1].upper(), address


def _parse_origin(value: str) -> Origin:
    # RFC 4566 s5.2 forbids spaces in the username, but a call is not worth rejecting over one:
    # the last five fields are fixed, so anything before them is the username.
    tokens = value.split()
    if len(tokens) < 6:
        raise unparseable(f"bad origin line o={value[:60]!r}")
    return Origin(" ".join(tokens[:-5]), *tokens[-5:])


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
_UNREAD = object()


def _parse_media(
    m_value: str,
    lines: Lines,
    attributes: Attributes,
    session_family: str | None,
    session_address: str | None,
    session_direction: str | None,
    session_ptime: int | None,
) -> MediaDescription:
    """One m= section; what it does not say it inherits from the session level (arguments)."""
    sdp_limits.check_m_line(m_value)
    tokens = m_value.split()
    # RFC 4566 s5.14 wants at least one format; a format-less rejected line is tolerated.
    if len(tokens) < 3:
        raise unparseable(f"bad media line m={m_value[:60]!r}")
    kind, port_field, protocol, *formats = tokens
    if len(formats) > sdp_limits.MAX_MEDIA_FORMATS:
        raise sdp_limits.too_many_formats()
    port_text, slash, count_text = port_field.partition("/")
    port = _uint(port_text)
    port_count = _uint(count_text) if slash else 1
    if port is None or port > 65535 or not port_count:
        raise unparseable(f"bad media port m={m_value[:60]!r}")

    # One pass over the attributes (this is on the offer's path to its reply) for what the
    # answer needs of them. Attributes are read tolerantly: a malformed one is ignored, not
    # worth failing a call over.
    connection: tuple[str, str] | None = None
    rtpmaps: dict[int, tuple[str, int, int]] = {}
    fmtps: dict[int, str] = {}
    direction = None  # the last direction attribute wins
    rtcp_mux = False
    # The first a=ptime / a=maxptime of a valid form and the first non-empty a=rtcp count
    # (_UNREAD until one is seen).
    ptime: int | None | object = _UNREAD
    maxptime: int | None | object = _UNREAD
    rtcp_port: int | None | object = _UNREAD
    for name, rest in attributes:
        if rest is not None:
            if name == "rtpmap":
                if m := _RTPMAP.fullmatch(rest):
                    pt, encoding, clock_rate, channels = m.groups()
                    rtpmaps.setdefault(
                        int(pt),
                        (encoding.upper(), int(clock_rate), int(channels) if channels else 1),
                    )
                continue
            if name == "fmtp":
                if m := _FMTP.fullmatch(rest):
                    pt, parameters = m.groups()
                    fmtps.setdefault(int(pt), parameters.strip())
                continue
            if name == "ptime":
                if ptime is _UNREAD and (m := _PTIME.fullmatch(rest)):
                    ptime = int(m.group(1)) or None
                continue
            if name == "maxptime":
                if maxptime is _UNREAD and (m := _PTIME.fullmatch(rest)):
                    maxptime = int(m.group(1)) or None
                continue
            if name == "rtcp":
                if rtcp_port is _UNREAD and rest:
                    rtcp_port = _uint(rest.split()[0])
                    if rtcp_port is not None and not 0 < rtcp_port <= 65535:
                        rtcp_port = None
                continue
        if name in DIRECTIONS:
            direction = name
        elif name == "rtcp-mux":
            rtcp_mux = True
    for letter, value in lines:
        if letter == "c":
            parsed = _parse_connection(value)
            connection = connection or parsed  # several c= only for multicast layers; first wins

    if connection is not None:
        family, address = connection
    else:
        family, address = session_family or "IP4", session_address

    codecs = []
    if "RTP/" in protocol.upper():  # else (udptl, TCP/MSRP...) formats are not payload types
        for fmt in formats:
            # RTP payload types are 7 bits (RFC 3550 s5.1); ASCII digits only (see _uint).
            if not (fmt.isascii() and fmt.isdigit() and len(fmt) <= 10):
                continue
            pt = int(fmt)
            if pt > 127:
                continue
            known = rtpmaps.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
            if known is not None:
                encoding, clock_rate, channels = known
                codecs.append(_codec(pt, encoding, clock_rate, channels, fmtps.get(pt)))

    # RFC 4566 puts ptime at media level; some phones write it at session level, so inherit.
    return MediaDescription(
        kind=kind,
        port=port,
        protocol=protocol,
        formats=tuple(formats),
        codecs=tuple(codecs),
        connection_address=address,
        address_family=family,
        direction=direction or session_direction or "sendrecv",
        ptime=(None if ptime is _UNREAD else ptime) or session_ptime,
        maxptime=None if maxptime is _UNREAD else maxptime,
        rtcp_mux=rtcp_mux,
        rtcp_port=None if rtcp_port is _UNREAD else rtcp_port,
        attributes=tuple(attributes),
        port_count=port_count,
    )


def py_split_sdp(text: str) -> tuple[Lines, Attributes, list[tuple[str, Lines, Attributes]]]:
    """The body's lines, stripped and checked for ``<letter>=``, by session and m-section:
    (session lines, session attributes, [(m= value, lines, attributes)]), the a= lines split
    into (name, value or None), every list in the body's order.

    The reference for media/_fast_sdp.c's ``split_sdp`` (the same result or the same SdpError,
    tests/test_fast_sdp.py), which runs instead when built (media/native.py).
    """
    lines = [
        stripped
        for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if (stripped := line.strip())
    ]
    if not lines:
        raise unparseable("empty body")
    if lines[0] != "v=0":
        raise unparseable(f"does not start with v=0: {lines[0][:40]!r}")

    session_lines: Lines = []
    session_attributes: Attributes = []
    media_sections: list[tuple[str, Lines, Attributes]] = []
    current, attributes = session_lines, session_attributes
    for number, line in enumerate(lines, 1):
        # RFC 4566 s5: <type>=<value>, the type one lower-case letter.
        letter = line[0]
        if line[1:2] != "=" or not "a" <= letter <= "z":
            raise unparseable(f"line {number}: {line[:40]!r}")
        value = line[2:]
        if letter == "a":
            name, colon, rest = value.partition(":")
            attributes.append((name.strip(), rest.strip() if colon else None))
        elif letter == "m":
            sdp_limits.check_media_sections(len(media_sections))
            current, attributes = [], []
            media_sections.append((value, current, attributes))
        else:
            current.append((letter, value))
    return session_lines, session_attributes, media_sections


_fast = native.load("media._fast_sdp")
if _fast is not None:
    _fast.bind(unparseable, sdp_limits.check_media_sections)
    split_sdp = _fast.split_sdp
else:
    split_sdp = py_split_sdp


def parse_sdp(text: str | bytes) -> SessionDescription:
    """Parse an SDP body (RFC 4566). Accepts CRLF or bare LF and stray whitespace.

    Raises SdpError (reason 'Unparseable SDP: ...') on anything that is not SDP; unknown line
    types and malformed attributes are ignored, as RFC 4566 s5 asks of a tolerant parser.
    """
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")  # RFC 4566 s5: the default charset is UTF-8
        except UnicodeDecodeError:
            raise unparseable("not UTF-8") from None
    if not isinstance(text, str):
        raise unparseable(f"expected text, got {type(text).__name__}")

    sdp_limits.check_body(text)
    # The compiled splitter reads ASCII only: what SDP is, but for the odd session name.
    split = split_sdp if text.isascii() else py_split_sdp
    session_lines, session_attributes, media_sections = split(text)

    # The first o=, s= and c= count; parsed in this order, so errors are reported in it.
    first: dict[str, str] = {}
    for letter, value in session_lines:
        if letter not in first:
            first[letter] = value
    if "o" not in first:
        raise unparseable("no o= line")
    origin = _parse_origin(first["o"])
    session_name = first.get("s", "")
    connection = _parse_connection(first["c"]) if "c" in first else None
    attributes = tuple(session_attributes)
    direction = _last_direction(attributes)
    family, address = connection if connection is not None else (None, None)

    ptime = _parse_ptime(attributes, "ptime")
    return SessionDescription(
        origin=origin,
        session_name=session_name,
        connection_address=address,
        address_family=family,
        direction=direction,
        attributes=attributes,
        media=tuple([_parse_media(m, lines, media_attributes, family, address, direction, ptime)
                     for m, lines, media_attributes in media_sections]),
    )


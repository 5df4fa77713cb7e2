"""The SDP parser (media/sdp.py, now media/sdp_parse.py) as it was at 173649a, before it was
made faster, kept as the reference the faster one is tested against (tests/test_sdp.py): same
results, same errors."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from media.sdp_model import (
    STATIC_PAYLOAD_TYPES,
    Codec,
    MediaDescription,
    Origin,
    SdpError,
    SessionDescription,
)

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


# --- parsing ---------------------------------------------------------------------------------

_LINE = re.compile(r"([a-z])=(.*)")  # RFC 4566 s5: <type>=<value>, type is one letter
_UINT = re.compile(r"[0-9]{1,10}")  # ASCII only: int() would also take other scripts' digits
_RTPMAP = re.compile(r"([0-9]{1,3})\s+([^/\s]+)/([0-9]{1,10})(?:/([0-9]{1,3}))?(?:\s.*)?")
_FMTP = re.compile(r"([0-9]{1,3})\s+(\S.*)")
_PTIME = re.compile(r"([0-9]{1,6})(?:\.[0-9]*)?")  # RFC 4566 allows a decimal; we keep whole ms


def _unparseable(detail: str) -> SdpError:
    return SdpError(f"Unparseable SDP: {detail}")


def _uint(text: str) -> int | None:
    return int(text) if _UINT.fullmatch(text) else None


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


def _parse_codecs(
    protocol: str, formats: Sequence[str], attributes: Sequence[tuple[str, str | None]]
) -> tuple[Codec, ...]:
    if "RTP/" not in protocol.upper():
        return ()  # udptl, TCP/MSRP...: formats are not payload types
    rtpmaps: dict[int, tuple[str, int, int]] = {}
    fmtps: dict[int, str] = {}
    for name, value in attributes:
        if value is None:
            continue
        if name == "rtpmap" and (m := _RTPMAP.fullmatch(value)):
            channels = int(m.group(4)) if m.group(4) else 1
            rtpmaps.setdefault(int(m.group(1)), (m.group(2).upper(), int(m.group(3)), channels))
        elif name == "fmtp" and (m := _FMTP.fullmatch(value)):
            fmtps.setdefault(int(m.group(1)), m.group(2).strip())
    codecs = []
    for fmt in formats:
        pt = _uint(fmt)
        if pt is None or pt > 127:  # RTP payload types are 7 bits (RFC 3550 s5.1)
            continue
        known = rtpmaps.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
        if known is not None:
            encoding, clock_rate, channels = known
            codecs.append(Codec(pt, encoding, clock_rate, channels, fmtps.get(pt)))
    return tuple(codecs)


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
    tokens = m_value.split()
    # RFC 4566 s5.14 wants at least one format; a format-less rejected line is tolerated.
    if len(tokens) < 3:
        raise _unparseable(f"bad media line m={m_value[:60]!r}")
    kind, port_field, protocol, *formats = tokens
    port_text, slash, count_text = port_field.partition("/")
    port = _uint(port_text)
    port_count = _uint(count_text) if slash else 1
    if port is None or port > 65535 or not port_count:
        raise _unparseable(f"bad media port m={m_value[:60]!r}")

    connection: tuple[str, str] | None = None
    attributes: list[tuple[str, str | None]] = []
    for letter, value in lines:
        if letter == "c":
            parsed = _parse_connection(value)
            connection = connection or parsed  # several c= only for multicast layers; first wins
        elif letter == "a":
            attributes.append(_parse_attribute(value))

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

    # RFC 4566 puts ptime at media level; some phones write it at session level, so inherit.
    ptime = _parse_ptime(attributes, "ptime") or session.ptime
    return MediaDescription(
        kind=kind,
        port=port,
        protocol=protocol,
        formats=tuple(formats),
        codecs=_parse_codecs(protocol, formats, attributes),
        connection_address=address,
        address_family=family,
        direction=_last_direction(attributes) or session.direction or "sendrecv",
        ptime=ptime,
        maxptime=_parse_ptime(attributes, "maxptime"),
        rtcp_mux=any(name == "rtcp-mux" for name, _ in attributes),
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

    lines = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    lines = [line for line in lines if line]
    if not lines:
        raise _unparseable("empty body")
    if lines[0] != "v=0":
        raise _unparseable(f"does not start with v=0: {lines[0][:40]!r}")

    session_lines: list[tuple[str, str]] = []
    media_sections: list[tuple[str, list[tuple[str, str]]]] = []
    for number, line in enumerate(lines, 1):
        match = _LINE.fullmatch(line)
        if match is None:
            raise _unparseable(f"line {number}: {line[:40]!r}")
        letter, value = match.groups()
        if letter == "m":
            media_sections.append((value, []))
        elif media_sections:
            media_sections[-1][1].append((letter, value))
        else:
            session_lines.append((letter, value))

    origin = next((_parse_origin(v) for k, v in session_lines if k == "o"), None)
    if origin is None:
        raise _unparseable("no o= line")
    session_name = next((v for k, v in session_lines if k == "s"), "")
    connection = next((_parse_connection(v) for k, v in session_lines if k == "c"), None)
    attributes = tuple(_parse_attribute(v) for k, v in session_lines if k == "a")
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
        media=tuple(_parse_media(m, section, inherited) for m, section in media_sections),
    )



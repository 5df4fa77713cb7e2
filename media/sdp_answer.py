"""Offer/answer (RFC 3264), sans-IO: choose G.711 from a parsed offer, then write our answer.

``negotiate`` picks the one audio stream rtpai terminates and its parameters (a ``Negotiated``);
``build_answer`` writes the SDP that says so, declining every other m-line. Nothing here parses
text (media/sdp_parse.py) or transcodes: an offer without PCMU/PCMA over plain RTP is refused.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from media.sdp_model import Codec, MediaDescription, SdpError, SessionDescription

__all__ = ["Negotiated", "answer_direction_for", "build_answer", "negotiate"]

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
    head, tail = _audio_lines(negotiated.protocol, negotiated.codec, negotiated.telephone_event,
                              negotiated.ptime, negotiated.rtcp_mux, negotiated.answer_direction)
    return [f"m=audio {local_port} {head}", *tail]


# The audio section's text but for the port depends on a handful of values that repeat from
# call to call (a phone model's codecs, ptime, direction): made once per combination (it is on
# the offer's path to its reply). Codec is a frozen value, so the key is exact.
@functools.lru_cache(maxsize=256)
def _audio_lines(
    protocol: str, codec: Codec, event: Codec | None, ptime: int, rtcp_mux: bool, direction: str
) -> tuple[str, tuple[str, ...]]:
    """The m=audio line after its port, and the lines after it."""
    # One codec only: with no transcoding, a single format leaves the peer nothing to switch to
    # mid-call. No CN (RFC 3389): we send real silence, and comfort noise is not worth a codec.
    codecs = [codec] if event is None else [codec, event]
    payload_types = " ".join(str(c.payload_type) for c in codecs)
    lines = [f"a=rtpmap:{c.rtpmap}" for c in codecs]
    if event is not None and event.fmtp:
        # RFC 4733 s7.1.1: echo the offered event list; without an fmtp, 0-15 is implied.
        lines.append(f"a=fmtp:{event.payload_type} {event.fmtp}")
    lines.append(f"a=ptime:{ptime}")
    if rtcp_mux:
        lines.append("a=rtcp-mux")  # RFC 5761 s5.1.1: the answer confirms mux
    lines.append(f"a={direction}")
    return f"{protocol} {payload_types}", tuple(lines)

"""Offer/answer for a call (RFC 3264): from the proxy's offer to the answer SDP and to what the
call's media stream needs (:class:`~ctl.call.CallMedia`). No I/O: the engine binds the ports and
keeps the calls; this module decides what an offer means.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging

from ctl.call import CallMedia
from ctl.ng import REASON_BAD_SDP, NgError
from ctl.ng_requests import G711, OfferRequest
from media import sdp

# The engine's logger: these lines are the offer's, and read as they always have.
log = logging.getLogger("rtpai.engine")


def negotiate(
    request: OfferRequest, codecs: tuple[str, ...] | None, keep_codec: str | None = None
) -> tuple[sdp.SessionDescription, sdp.Negotiated]:
    """The offer parsed and negotiated against ``codecs`` ([rtp] codecs; None: the offer's
    order decides) minus what the proxy stripped; ``keep_codec``: a re-offer's, fixed."""
    excluded = request.excluded_codecs
    ours = codecs
    allowed = [c for c in (ours or G711) if c not in excluded]
    if keep_codec is not None:
        # A re-INVITE keeps the call's codec (RFC 3264 s.8.3.2 lets the answerer stay with
        # it): the AI session's audio format is fixed for the call.
        allowed = [keep_codec] if keep_codec in allowed else []
    if not allowed:
        raise NgError("No common codec")
    try:
        offer = sdp.parse_sdp(request.sdp)
    except sdp.SdpError as exc:
        # rtpengine's reason, so the proxy's logs read the same; the detail goes to ours.
        log.info("call %s: %s", request.call_id, exc.reason)
        raise NgError(REASON_BAD_SDP) from None
    # None lets the offer's order choose between PCMU and PCMA (what the caller prefers);
    # a configured order, a strip or a re-INVITE's fixed codec make it ours.
    preference = None if ours is None and len(allowed) == len(G711) else allowed
    try:
        return offer, sdp.negotiate(offer, preference)
    except sdp.SdpError as exc:
        raise NgError(exc.reason) from None


def call_media(
    negotiated: sdp.Negotiated, advertised: str, rtp_port: int, *, bind_ip: str,
    previous: CallMedia | None = None,
) -> CallMedia:
    """What the call's media stream needs from an offer/answer exchange.

    ``previous`` is the call's media before a re-offer (None for a new call).
    """
    remote = rtcp_remote = None
    # None for c=0.0.0.0 (negotiate drops it), and for a host name (see sendable).
    address = sendable(negotiated.remote_address, bind_ip)
    if address is not None:
        remote = (address, negotiated.remote_port)
        if negotiated.remote_rtcp_port:
            rtcp_remote = (address, negotiated.remote_rtcp_port)
    named_host = address is None and negotiated.remote_address is not None
    event = negotiated.telephone_event
    # c=0.0.0.0 means two things. With sendrecv in a *new* call's offer it is a gateway
    # that does not know its address yet: it sends RTP at once and expects it answered,
    # so we receive, latch on its first valid packet (media/stream.py, with the usual
    # RTP-Bleed rules) and send there, as rtpengine does. The call stays so until an offer
    # gives an address. Once a call has had an address, c=0.0.0.0 in a re-offer is RFC
    # 2543 hold (RFC 3264 s8.4), which stops the caller's RTP as well as ours.
    # A host name is an address we do not resolve: learnt by latching as well.
    address_unknown = named_host or (
        negotiated.remote_address is None
        and negotiated.answer_direction == "sendrecv"
        and (previous is None or previous.address_unknown)
    )
    held_by_address = negotiated.remote_address is None and not address_unknown
    # We receive unless our answer says sendonly/inactive (the caller's recvonly/inactive).
    caller_sends = (
        negotiated.answer_direction in ("sendrecv", "recvonly") and not held_by_address
    )
    return CallMedia(
        codec=negotiated.codec.encoding,
        payload_type=negotiated.codec.payload_type,
        ptime_ms=negotiated.ptime,
        protocol=negotiated.protocol,
        local_address=advertised,
        local_port=rtp_port,
        remote=remote,
        # (negotiate's on_hold counts every c=0.0.0.0; an unknown address is not hold.)
        sending=not negotiated.on_hold or (address_unknown and not named_host),
        telephone_event=event.payload_type if event is not None else None,
        rtcp_remote=rtcp_remote,
        rtcp_mux=negotiated.rtcp_mux,
        caller_sends=caller_sends,
        address_unknown=address_unknown,
    )


def sendable(address: str | None, bind_ip: str) -> str | None:
    """The SDP's address as sendto() takes it, or None if we will not send to it.

    An IPv4 peer seen through a dual-stack ``::`` socket is ``::ffff:a.b.c.d``. A host
    name (RFC 4566 allows one in c=) is not resolved: sendto() would look it up in the
    event loop, for every packet, blocking every call, and some names make it raise
    (a NUL: TypeError). The caller's first packet tells its address instead (latching),
    as for c=0.0.0.0.
    """
    if address is None:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.version == 4 and ":" in bind_ip:
        return f"::ffff:{ip}"
    return str(ip)


def reoffer(
    request: OfferRequest, media: CallMedia, answer_sdp: str, origin: tuple[int, int], *,
    codecs: tuple[str, ...] | None, bind_ip: str,
) -> tuple[CallMedia, str, tuple[int, int]]:
    """A re-INVITE (hold, resume, new address) of a call with ``media``, ``answer_sdp`` and
    o= ``origin``: same ports, codec and ptime. Returns the new media, answer and origin.

    The answer's o= version goes up only when the answer itself changes (RFC 3264 s.8).
    """
    try:
        offer, negotiated = negotiate(request, codecs, keep_codec=media.codec)
    except NgError as exc:
        if exc.reason != "No common codec":
            raise
        raise NgError(
            f"No common codec: the call uses {media.codec}, and a codec change "
            "mid-call is not supported"
        ) from None
    negotiated = dataclasses.replace(negotiated, ptime=media.ptime_ms)
    session_id, version = origin
    local = media.local_address, media.local_port

    def answer(at_version: int) -> str:
        return sdp.build_answer(
            offer, negotiated, local_address=local[0], local_port=local[1],
            session_id=session_id, session_version=at_version,
        )

    new_answer = answer(version)
    if without_origin(new_answer) != without_origin(answer_sdp):
        version += 1
        new_answer = answer(version)
    new_media = call_media(negotiated, local[0], local[1], bind_ip=bind_ip, previous=media)
    return new_media, new_answer, (session_id, version)


def without_origin(answer_sdp: str) -> str:
    """The answer minus its o= line, to tell whether a re-offer changed anything."""
    return "\n".join(line for line in answer_sdp.splitlines() if not line.startswith("o="))

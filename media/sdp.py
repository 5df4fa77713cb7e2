"""SDP, sans-IO: parse the caller's offer, choose G.711, build our answer.

rtpai is the media endpoint, so it answers the offer itself (RFC 3264) instead of rewriting it as
a relay would. It speaks exactly one audio stream of PCMU or PCMA, optionally with RFC 4733
telephone-event, over plain RTP; everything else in the offer is declined, never transcoded.

This module is the interface the control plane uses; the work is done in four parts:

* media/sdp_model.py -- the parsed offer as frozen values (``SessionDescription``, ...) and
  ``SdpError``;
* media/sdp_parse.py -- ``parse_sdp``, a tolerant RFC 4566 parser;
* media/sdp_limits.py -- bounds on the parser's work against hostile offers;
* media/sdp_answer.py -- ``negotiate`` and ``build_answer`` (RFC 3264 offer/answer).

Specs: RFC 4566 (SDP syntax), RFC 3264 (offer/answer), RFC 3551 (static payload types),
RFC 4733 (telephone-event), RFC 5761 (rtcp-mux), RFC 3605 (a=rtcp), RFC 4585 (RTP/AVPF).
"""

from __future__ import annotations

from media.sdp_answer import Negotiated, answer_direction_for, build_answer, negotiate
from media.sdp_limits import MAX_MEDIA_FORMATS, MAX_MEDIA_SECTIONS, MAX_SDP_LINES
from media.sdp_model import Codec, MediaDescription, Origin, SdpError, SessionDescription
from media.sdp_parse import parse_sdp

__all__ = [
    "MAX_MEDIA_FORMATS",
    "MAX_MEDIA_SECTIONS",
    "MAX_SDP_LINES",
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

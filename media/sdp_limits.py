"""Bounds on the SDP parser's work (media/sdp_parse.py), checked before the work they bound.

So that a hostile offer costs the event loop about a
millisecond (a 60 KB offer of thousands of m-lines took 15-30 ms, delaying the RTP of every
call beside it; bench/micro_sdp_limits.py measures it). Real offers are far below them: a
SIP phone's audio+video offer has ~60 lines, a WebRTC one (which rtpai declines anyway: it
needs DTLS-SRTP) ~150-250; a SIP call has at most a handful of m-lines (audio, video, T.38,
BFCP); the longest m-line we know is a browser's video line, ~40 payload types (codecs, their
RTX, RED, FEC). Lines get twice a WebRTC offer's count as margin: refusing a real caller's
offer is a failed call, while the worst offer within these bounds costs ~1 ms, once.
"""

from __future__ import annotations

from media.sdp_model import SdpError, unparseable

MAX_SDP_LINES = 512
MAX_MEDIA_SECTIONS = 8
MAX_MEDIA_FORMATS = 64


def check_body(text: str) -> None:
    """Too many lines? Counted before any per-line work (str.count runs at C speed); bare CR
    line ends count too."""
    if text.count("\n") > MAX_SDP_LINES or text.count("\r") > MAX_SDP_LINES:
        raise unparseable(f"more than {MAX_SDP_LINES} lines")


def check_media_sections(count: int) -> None:
    """Called before the parser opens m-section number ``count + 1``."""
    if count >= MAX_MEDIA_SECTIONS:
        raise unparseable(f"more than {MAX_MEDIA_SECTIONS} m-lines")


def check_m_line(m_value: str) -> None:
    """Too many formats on the m-line whose value (after ``m=``) is ``m_value``? Checked on
    the blanks before ``split()`` (which would do the work), with a margin for padding."""
    if m_value.count(" ") > MAX_MEDIA_FORMATS + 64:
        raise too_many_formats()


def too_many_formats() -> SdpError:
    return unparseable(f"more than {MAX_MEDIA_FORMATS} formats on an m-line")

"""ng error reasons by class: the label the metrics count them under (ctl/metrics.py).

A reason's text may quote the request (a profile's name, an SDP's transport), and the
dispatcher keeps at most MAX_ERROR_REASONS distinct ones for ``statistics``; the classes are a
fixed set, counted by the dispatcher as each error happens, so that a flood of distinct
reasons can neither grow the label set nor push real errors into "other".
"""

from __future__ import annotations


def error_class(reason: str) -> str:
    """An ng error reason's class: a label from a fixed set, never the reason's text, which
    may quote the request (a profile's name, an SDP's transport). Matched on how the reason
    *starts*, which is rtpai's own wording (a quoted part only ever follows it)."""
    for prefix, kind in _ERROR_CLASSES:
        if reason.startswith(prefix):
            return kind
    return "other"


# (how the reason starts, class). The reasons are ctl/ng.py's, ctl/offers.py's,
# media/sdp.py's, the engine's and the dispatcher's (docs/ng-protocol.md); the flavor's
# refusals (disabled, no key) answer "load limit" with their reason as the message.
_ERROR_CLASSES = (
    ("Could not decode bencode", "malformed"),
    ("Invalid NG data format", "malformed"),
    ("Dictionary contains no key", "malformed"),
    ("Invalid UTF-8", "malformed"),
    ("Unrecognized command", "unknown_command"),
    ("Command not supported", "unsupported_command"),
    ("No call-id", "missing_key"),
    ("No from-tag", "missing_key"),
    ("No to-tag", "missing_key"),
    ("No SDP body", "missing_key"),
    ("Invalid value for key", "bad_value"),
    ("Invalid integer for key", "bad_value"),
    ("Value too long", "bad_value"),
    ("Too many flags", "bad_value"),
    ("Unknown profile", "unknown_profile"),
    ("Failed to parse SDP", "bad_sdp"),
    ("Unparseable SDP", "bad_sdp"),
    ("No common codec", "bad_sdp"),
    ("SRTP is not supported", "bad_sdp"),
    ("Unsupported media transport", "bad_sdp"),
    ("No audio stream", "bad_sdp"),
    ("Call-ID not found", "unknown_call"),
    ("Unknown call-id", "unknown_call"),
    ("Ran out of ports", "no_ports"),
    ("Cannot bind RTP port", "no_ports"),
    ("AI sessions are disabled", "refused"),
    ("No OpenAI API key", "refused"),
    ("Internal error", "internal"),
    ("Reply too large", "reply_too_large"),
)
# Every class a label can take (docs/operations.md lists them).
ERROR_CLASSES = frozenset(kind for _, kind in _ERROR_CLASSES) | {"other"}

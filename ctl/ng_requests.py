"""The ng requests the engine acts on, read once into typed values (sans-IO).

As rtpengine's ``call_ng_process_flags`` fills one ``sdp_ng_flags`` before a command runs, each
command family's parser reads the keys and flags its handler uses, with rtpengine's error
reasons, into a frozen dataclass; the handlers (ctl/engine.py) never read an
:class:`~ctl.ng.NgRequest` themselves. The dispatcher's table (``Command(parse, handle)`` in
ctl/dispatcher.py) pairs each parser with its handler.

Keys are read in the order the handlers used to read them, so that a request missing several
gets the same error as before (e.g. an ``answer`` without from-tag and call-id: the from-tag's).
Being read up front, two values are now checked whatever the registry holds: a malformed
``delete-delay`` on a delete that names no call (rtpengine, too, reads it before the lookup),
and a ``profile`` that is not text on a re-offer (which does not use it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ctl.ng import (
    REASON_NO_CALL_ID,
    REASON_NO_FROM_TAG,
    REASON_NO_SDP,
    REASON_NO_TO_TAG,
    NgRequest,
)

G711 = ("PCMU", "PCMA")
# The longest delete-delay honoured: rtpengine's default is 30 s and scripts use 0-60; a longer
# one would keep a deleted call's ports for nothing, so it is cut to this (and the reply warns).
MAX_DELETE_DELAY = 300
# ``list`` without ``limit``: rtpengine's default.
DEFAULT_LIST_LIMIT = 32


def codec_exclusions(request: NgRequest) -> frozenset[str]:
    """Codecs the proxy stripped or masked: Kamailio sends ``codec: {strip: [X]}``, OpenSIPS
    the flag ``codec-strip-X``. For an endpoint, masking a codec means the same: not ours."""
    excluded: set[str] = set()
    codec = request.get("codec")
    if isinstance(codec, dict):
        for key in ("strip", "mask"):
            value = codec.get(key) or []
            # A list of names (Kamailio), or one name; anything else (a number, a dictionary)
            # names no codec and is ignored, as rtpengine ignores what it cannot read.
            names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
            excluded.update(v.upper() for v in names if isinstance(v, str))
    for flag in request.flags:
        for prefix in ("codec-strip-", "codec-mask-"):
            if flag.startswith(prefix):
                excluded.add(flag[len(prefix):].upper())
    if "ALL" in excluded:
        excluded.update(G711)
    return frozenset(excluded)


@dataclass(frozen=True, slots=True)
class OfferRequest:
    """``offer``: a new call, or a re-offer (re-INVITE) of one we have."""

    call_id: str
    from_tag: str
    sdp: str
    branch: str  # "" when the proxy sends none: matches any
    to_tag: str | None
    profile: str | None  # picks ``[openai:NAME]``; read for a new call only
    excluded_codecs: frozenset[str]  # codec strip/mask, both spellings

    @classmethod
    def parse(cls, request: NgRequest) -> OfferRequest:
        call_id = request.require("call-id", REASON_NO_CALL_ID)
        from_tag = request.require("from-tag", REASON_NO_FROM_TAG)
        sdp = request.require("sdp", REASON_NO_SDP)
        return cls(
            call_id=call_id,
            from_tag=from_tag,
            sdp=sdp,
            branch=request.text("via-branch") or "",
            to_tag=request.text("to-tag"),
            profile=request.text("profile"),
            excluded_codecs=codec_exclusions(request),
        )


@dataclass(frozen=True, slots=True)
class CallSelector:
    """``query`` (and the part of ``answer``/``delete`` that names calls): a call-id, and the
    tags and via-branch that narrow it to a party (None: any)."""

    call_id: str
    branch: str | None
    from_tag: str | None
    to_tag: str | None

    @classmethod
    def parse(cls, request: NgRequest) -> CallSelector:
        return cls(
            call_id=request.require("call-id", REASON_NO_CALL_ID),
            branch=request.text("via-branch"),
            from_tag=request.text("from-tag"),
            to_tag=request.text("to-tag"),
        )


@dataclass(frozen=True, slots=True)
class AnswerRequest:
    """``answer``: both tags are required (the 2xx carries our side's)."""

    select: CallSelector
    to_tag: str

    @classmethod
    def parse(cls, request: NgRequest) -> AnswerRequest:
        request.require("from-tag", REASON_NO_FROM_TAG)
        to_tag = request.require("to-tag", REASON_NO_TO_TAG)
        return cls(select=CallSelector.parse(request), to_tag=to_tag)


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    """``delete``: which calls, after how long, and whether an unknown call is an error."""

    select: CallSelector
    delay: int  # seconds, at most MAX_DELETE_DELAY; 0 (or less): now
    warning: str | None  # set when the delay asked for was cut
    fatal: bool  # flag ``fatal``: an unknown call is an error, not a warning

    @classmethod
    def parse(cls, request: NgRequest) -> DeleteRequest:
        select = CallSelector.parse(request)
        delay = request.integer("delete-delay", 0) or 0
        warning = None
        if delay > MAX_DELETE_DELAY:
            delay = MAX_DELETE_DELAY
            warning = f"delete-delay cut to {MAX_DELETE_DELAY} s"
        return cls(select=select, delay=delay, warning=warning, fatal="fatal" in request.flags)


@dataclass(frozen=True, slots=True)
class ListRequest:
    """``list``: at most ``limit`` call-ids."""

    limit: int

    @classmethod
    def parse(cls, request: NgRequest) -> ListRequest:
        return cls(limit=max(request.integer("limit", DEFAULT_LIST_LIMIT) or 0, 0))

"""A call's record: what the CDR line and the recording's JSON sidecar say about an ended call.

A pure function of the call (ctl/call.py) once it has ended, in the vocabulary of the query
reply (docs/ng-protocol.md) so that one glossary serves both: identity (call-id, tags,
profile), times (UTC, ISO 8601, and seconds), media (codec, ptime, packets, loss, jitter,
MOS), why it ended, the AI session's figures (model, usage, cost) and its whole transcript
with each entry's time since the offer. The audio itself is the WAV's, never the record's.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from ctl.replies import ssrc_statistics

if TYPE_CHECKING:
    from ctl.call import Call

RECORD_VERSION = 1  # bumped when a field changes meaning; new fields do not bump it


def iso_utc(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).isoformat(timespec="milliseconds")


def _mos(call: Call) -> dict[str, float | None]:
    """The average MOS of each direction (rtpengine's MOS x 10 as a decimal), None without
    RTCP reports to compute it from."""
    stream = call.stream
    entries = ssrc_statistics(call)

    def average(ssrc: int | None) -> float | None:
        entry = entries.get(str(ssrc)) if ssrc is not None else None
        if not entry or not entry.get("average MOS"):
            return None
        return entry["average MOS"]["MOS"] / 10

    return {"caller to rtpai": average(stream.reorder.ssrc),
            "rtpai to caller": average(stream.packetizer.ssrc)}


def call_record(call: Call, *, ended_wall: float) -> dict[str, Any]:
    """The record of ``call``, which ended at ``ended_wall`` (Unix seconds)."""
    stats = call.stream.stats
    timeline = call.bridge.timeline
    offer_at = timeline.get("offer", 0.0)
    ai = call.ai.record() if hasattr(call.ai, "record") else call.ai.snapshot()
    return {
        "version": RECORD_VERSION,
        "call-id": call.call_id,
        "from-tag": call.from_tag,
        "to-tag": call.to_tag,
        "profile": call.profile,
        "start": iso_utc(call.created),
        "end": iso_utc(ended_wall),
        "duration s": round(ended_wall - call.created, 3),
        "end reason": call.end_reason,
        "end kind": call.end_kind.value if call.end_kind else None,
        "codec": call.media.codec,
        "ptime": call.media.ptime_ms,
        "timeline ms": {name: round((at - offer_at) * 1000, 1) for name, at in timeline.items()},
        "rtp in": stats.rtp_in.as_dict(),
        "rtp out": stats.rtp_out.as_dict(),
        "lost": call.stream.reorder.lost,
        "jitter ms": round(call.stream.jitter.milliseconds, 2),
        "mos": _mos(call),
        "transfers": list(call.transfers),
        "hang-up": call.hangup,
        "ai": {key: ai.get(key) for key in (
            "model", "dialect", "session id", "state", "connections", "reconnects",
            "responses", "barge-ins", "tool calls", "failure", "usage", "cost",
            "response latency ms")},
        "transcript": ai.get("transcript") or [],
        "recordings": [file.as_dict() for file in call.recording_files],
    }

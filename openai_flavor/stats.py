"""One AI session's statistics, and what a hostile server can make a call hold of them.

The ``ai`` key of a query's reply and the SIGUSR1 line read :meth:`RealtimeStats.snapshot`.
Errors and transcripts come from the server: each is kept within a bound here
(docs/reliability.md), so that a server sending them at any size and rate (within the
watchdog's flood bound) costs a call a fixed amount of memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KEPT_ERRORS = 10
MAX_ERROR_CODE_CHARS = 64
MAX_ERROR_MESSAGE_CHARS = 500
MAX_TRANSCRIPT_ENTRIES = 2000  # a 60-minute call has a few hundred turns
MAX_TRANSCRIPT_ENTRY_CHARS = 8000
# The ng reply carries the transcript; a UDP datagram holds at most ~64 KB, and a long call's
# transcript could exceed it. The reply keeps the most recent part; the log has all of it.
TRANSCRIPT_REPLY_CHARS = 16_000


# Slotted (issue 16's per-call cost): one or more per call.
@dataclass(slots=True)
class RealtimeStats:
    model: str = ""
    dialect: str = ""
    session_id: str | None = None
    connections: int = 0
    reconnects: int = 0
    audio_sent_bytes: int = 0
    appends_sent: int = 0
    audio_received_bytes: int = 0
    responses: int = 0
    barge_ins: int = 0
    barge_ins_ignored: int = 0  # during a protected welcome message
    truncations: int = 0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    dtmf_digits: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    malformed_events: int = 0  # type-confused, invalid JSON, binary: counted and dropped
    last_loss: str | None = None  # why the last connection was lost (the call went on)
    usage: dict[str, Any] = field(default_factory=dict)
    # {"role", "text", "at s"}: "at s" is seconds since the call's offer (its recording's and
    # record's timeline, docs/recording.md).
    transcript: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None

    def add_error(self, code: str, message: str) -> tuple[str, str]:
        """Keep one of the server's errors, cut to a readable length; returns what was kept."""
        entry = {"code": code[:MAX_ERROR_CODE_CHARS], "message": message[:MAX_ERROR_MESSAGE_CHARS]}
        self.errors.append(entry)
        if len(self.errors) > KEPT_ERRORS:
            del self.errors[0]
        return entry["code"], entry["message"]

    def add_transcript(self, role: str, text: str, at_s: float | None = None) -> None:
        """Keep one transcript entry (the most recent MAX_TRANSCRIPT_ENTRIES, each cut),
        said ``at_s`` seconds after the call's offer."""
        entry: dict[str, Any] = {"role": role, "text": text[:MAX_TRANSCRIPT_ENTRY_CHARS]}
        if at_s is not None:
            entry["at s"] = round(at_s, 3)
        self.transcript.append(entry)
        if len(self.transcript) > MAX_TRANSCRIPT_ENTRIES:
            del self.transcript[0]

    def snapshot(self, state: str) -> dict[str, Any]:
        # The most recent transcript entries that fit the reply (see TRANSCRIPT_REPLY_CHARS).
        shown: list[dict[str, Any]] = []
        size = 0
        for entry in reversed(self.transcript):
            size += len(entry["text"]) + 16
            if size > TRANSCRIPT_REPLY_CHARS:
                break
            shown.append(entry)
        shown.reverse()
        return {
            "state": state,
            "model": self.model,
            "dialect": self.dialect,
            "session id": self.session_id,
            "connections": self.connections,
            "reconnects": self.reconnects,
            "audio sent bytes": self.audio_sent_bytes,
            "audio received bytes": self.audio_received_bytes,
            "responses": self.responses,
            "barge-ins": self.barge_ins,
            "barge-ins ignored": self.barge_ins_ignored,
            "truncations": self.truncations,
            "tool calls": list(self.tool_calls[-20:]),
            "dtmf digits": self.dtmf_digits,
            "errors": list(self.errors[-10:]),
            "malformed events": self.malformed_events,
            "last loss": self.last_loss,
            "usage": self.usage,
            "transcript": shown,
            "transcript omitted": len(self.transcript) - len(shown),
            "failure": self.failure,
        }

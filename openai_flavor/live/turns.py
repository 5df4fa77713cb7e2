"""The sans-IO core of a full-duplex call: who holds the floor, as rtpai can tell. Time is an
argument; nothing here sends or sleeps.

GPT-Live's model decides when to speak and when to stop; rtpai sends no response.create,
cancel or truncate. What remains rtpai's is its own playout queue: the model's audio arrives
faster than real time, so when the model yields to the caller, audio it generated before
yielding still waits in rtpai's queue, and the caller would hear it over their own words.

The primary WebSocket has no "interrupted" event (none in the documented server events): the
model yields by *no longer sending audio*. So :class:`Floor` concludes that the model yielded
when the caller is speaking (a caller transcript delta) and no model audio has arrived for
:data:`YIELD_GAP` — while the model keeps talking over a caller's "uh-huh" (a backchannel,
which a full-duplex model may ignore), its audio keeps coming and nothing is cleared. The
conversation then clears the playout (the bridge's clear action), once per yield.

A goodbye has the same shape: after the model's ``end_call``, the call ends once the model
has gone quiet (no audio for :data:`GOODBYE_QUIET`) and the goodbye has been played, or at
:data:`GOODBYE_LIMIT` after the tool call if it keeps talking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Model audio arrives in bursts well under this apart while the model talks (tens of ms of
# network jitter on deltas of 20-100 ms of audio); a longer pause while the caller speaks
# means it stopped for them. Short enough that the caller hears at most this much more.
YIELD_GAP = 0.2
# After end_call: silence this long from the model ends its goodbye.
GOODBYE_QUIET = 1.0
# ... and however long it talks, the call ends this long after end_call (plus the playout).
GOODBYE_LIMIT = 10.0
# One transcript entry's text at most (openai_flavor/stats.py cuts an entry there too).
MAX_TURN_CHARS = 8000


@dataclass
class Floor:
    """The model's audio and the caller's speech, as they arrive; one per connection."""

    last_model_audio: float = -math.inf
    caller_speaking_since: float | None = None  # a caller delta came since the model's audio
    yielded: bool = False  # cleared for this yield already: once per yield
    spurt_open: bool = False  # model audio came since the last talkspurt ended
    goodbye_since: float | None = None  # end_call was called at this time
    goodbye_reason: str | None = None
    goodbye_for_cap: bool = False  # the length cap's goodbye, not the model's end_call
    cap_goodbye_said: bool = False  # ... and it has been said (read and reset by the caller)
    _transcripts: dict[str, list[str]] = field(default_factory=lambda: {"caller": [],
                                                                        "assistant": []})

    # --- what happened --------------------------------------------------------------------

    def model_audio(self, now: float) -> None:
        """A delta of the model's audio arrived: it holds the floor."""
        self.last_model_audio = now
        self.caller_speaking_since = None
        self.yielded = False
        self.spurt_open = True

    def caller_speech(self, now: float) -> None:
        """A caller transcript delta arrived: the caller is speaking."""
        if self.caller_speaking_since is None:
            self.caller_speaking_since = now

    def end_call(self, reason: str, now: float, *, cap: bool = False) -> None:
        """The model called ``end_call`` (or, ``cap``, was asked for the length cap's
        goodbye): its goodbye is under way or about to be."""
        if self.goodbye_since is None:
            self.goodbye_since = now
            self.goodbye_reason = reason
            self.goodbye_for_cap = cap

    # --- what to do -----------------------------------------------------------------------

    def clear_due(self, now: float, *, playout_holds_audio: bool) -> bool:
        """True once per yield: the caller speaks, the model has sent nothing for YIELD_GAP,
        and model audio still waits in the playout: clear it now."""
        if (self.yielded or self.caller_speaking_since is None or not playout_holds_audio
                or now < self.last_model_audio + YIELD_GAP):
            return False
        self.yielded = True
        return True

    def spurt_ended(self, now: float) -> bool:
        """True once per talkspurt, when the model paused for YIELD_GAP: its last partial
        frame should play now rather than wait for more audio."""
        if self.spurt_open and now >= self.last_model_audio + YIELD_GAP:
            self.spurt_open = False
            return True
        return False

    def goodbye_due(self, now: float) -> str | None:
        """Once: the hang-up reason when the goodbye counts as said (the call then ends as
        soon as everything queued has been played)."""
        if self.goodbye_since is None or now < self._goodbye_done_at():
            return None
        reason, self.goodbye_since, self.goodbye_reason = self.goodbye_reason, None, None
        if self.goodbye_for_cap:
            self.goodbye_for_cap, self.cap_goodbye_said = False, True
            return None
        return reason

    def _goodbye_done_at(self) -> float:
        assert self.goodbye_since is not None
        quiet = max(self.last_model_audio, self.goodbye_since) + GOODBYE_QUIET
        return min(quiet, self.goodbye_since + GOODBYE_LIMIT)

    def wake_at(self) -> float:
        """When something here could next be due with no new event (inf: only on one)."""
        wake = math.inf
        if not self.yielded and self.caller_speaking_since is not None:
            wake = self.last_model_audio + YIELD_GAP
        if self.spurt_open:
            wake = min(wake, self.last_model_audio + YIELD_GAP)
        if self.goodbye_since is not None:
            wake = min(wake, self._goodbye_done_at())
        return wake

    # --- transcripts: deltas become one entry per turn --------------------------------------

    def transcript_delta(self, role: str, text: str) -> list[tuple[str, str]]:
        """Add a delta; returns the entries completed by it (the other role's turn, which
        ended when this one spoke). GPT-Live sends no transcript-done event."""
        other = "assistant" if role == "caller" else "caller"
        done = self.flush(other)
        pending = self._transcripts[role]
        # Bounded: a turn longer than the statistics keep of one entry is cut there anyway.
        if sum(map(len, pending)) < MAX_TURN_CHARS:
            pending.append(text)
        return done

    def flush(self, role: str | None = None) -> list[tuple[str, str]]:
        """The pending transcript of ``role`` (or of both) as completed entries."""
        done = []
        for name in (role,) if role else ("caller", "assistant"):
            text = "".join(self._transcripts[name]).strip()
            self._transcripts[name].clear()
            if text:
                done.append((name, text))
        return done

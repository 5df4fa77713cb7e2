"""The flavor-neutral meeting point of one call's media plane and its AI session.

The media plane feeds caller audio in and plays what the AI queues; the AI session reads the
former and fills the latter. Nothing here knows OpenAI's event names, so another AI flavor is
a sibling of ``openai_flavor/``, not a change to the media plane.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from media.playout import PlayoutQueue
from media.rfc4733 import Dtmf
from media.rtp import SILENCE_BYTE

# What the media plane tells the AI session about the caller besides audio. Only DTMF today;
# hold and hang-up would join it here, as flavor-neutral dataclasses.
CallerEvent = Dtmf


@dataclass
class CallBridge:
    """Shared by a call's media tasks and its AI session (same trio thread: no locks)."""

    call_id: str
    codec: str  # "PCMU" or "PCMA": the G.711 variant both sides speak, never transcoded
    ptime_ms: int
    caller_audio: trio.MemoryReceiveChannel[bytes]
    playout: PlayoutQueue
    end_call: Callable[[str], None]  # ask for the call to end, with a reason for the stats
    # Key presses (RFC 4733) in the order pressed; bounded, the media plane drops and counts
    # when the AI session does not read them. None in tests that build a bare bridge.
    caller_events: trio.MemoryReceiveChannel[CallerEvent] | None = None
    media_started: trio.Event = field(default_factory=trio.Event)  # first valid caller RTP
    # Milestones of the call on trio's clock (offer, ai_session_open, first_caller_rtp, ...),
    # first occurrence only: they make the demo's timeline and the latency figures.
    timeline: dict[str, float] = field(default_factory=dict)

    def mark(self, milestone: str) -> None:
        if milestone not in self.timeline:
            self.timeline[milestone] = trio.current_time()

    @property
    def silence_byte(self) -> int:
        return SILENCE_BYTE[self.codec]

    @property
    def bytes_per_ms(self) -> int:
        return 8  # G.711: 8000 samples/s, one byte each

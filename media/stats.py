"""One call's media counters: what moved each way, and what was dropped and why.

Plain attributes on a dataclass, incremented in place on the media path (an attribute add is
the cheapest count Python has); read by the ng ``query``/``delete`` replies and the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field


# Slotted (issue 16's per-call cost): one or more per call.
@dataclass(slots=True)
class DirectionStats:
    """Packets, bytes and errors of one protocol in one direction."""

    packets: int = 0
    bytes: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"packets": self.packets, "bytes": self.bytes, "errors": self.errors}


# Slotted (issue 16's per-call cost): one or more per call.
@dataclass(slots=True)
class MediaStats:
    """Everything counted about one call's media (docs/media.md names each counter)."""

    rtp_in: DirectionStats = field(default_factory=DirectionStats)
    rtp_out: DirectionStats = field(default_factory=DirectionStats)
    rtcp_in: DirectionStats = field(default_factory=DirectionStats)
    rtcp_out: DirectionStats = field(default_factory=DirectionStats)
    malformed: int = 0  # not RTP at all, or lengths that do not add up
    rtcp_malformed: int = 0  # RTCP failing the RFC 3550 A.2 checks
    foreign_source: int = 0  # RTP from an address other than the latched one
    relatches: int = 0  # the latched address moved (policy or SDP allowed it)
    other_payload: int = 0  # payload types we did not negotiate (counted, not forwarded)
    comfort_noise: int = 0  # RFC 3389 packets, accepted and not forwarded
    dtmf_events: int = 0  # key presses decoded (RFC 4733)
    events_dropped: int = 0  # key presses the AI session did not take in time
    ai_queue_full: int = 0  # caller frames dropped because the AI session fell behind
    send_errors: int = 0
    pacer_reanchors: int = 0
    last_packet: float | None = None  # trio clock
    last_ssrc: int | None = None

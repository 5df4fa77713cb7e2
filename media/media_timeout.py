"""The media timeout ([rtp] timeout), sans-IO: when the caller's silence ends the call.

The deadline is computed, not armed per packet: a packet only records its arrival time
(``MediaStats.last_packet``), and the stream's timer task asks :meth:`MediaTimeout.deadline`
when it wakes, so the timeout fires exactly ``seconds`` after the last packet for one wake-up
per period (media/stream.py, ``keep_timers``).
"""

from __future__ import annotations

import math


class MediaTimeout:
    """``seconds`` (0: never) without RTP from a caller that says it sends end the call."""

    __slots__ = ("caller_sends", "seconds", "since")

    def __init__(self, seconds: float, *, caller_sends: bool = True) -> None:
        self.seconds = seconds
        self.caller_sends = caller_sends
        self.since = 0.0  # when counting (re)started, besides packets: the start, a re-offer

    def restart(self, now: float, *, caller_sends: bool) -> None:
        """Count afresh from ``now`` (the stream's start, or a re-offer)."""
        self.since = now
        self.caller_sends = caller_sends

    def deadline(self, last_packet: float | None) -> float:
        """When the call times out, given the last packet's arrival (None: none yet)."""
        if not (self.seconds and self.caller_sends):
            # A caller on hold with a=inactive (or c=0.0.0.0) legitimately sends nothing.
            return math.inf
        since = self.since
        start = since if last_packet is None else max(last_packet, since)
        return start + self.seconds

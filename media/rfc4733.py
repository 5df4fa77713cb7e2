"""RFC 4733 telephone-events, sans-IO: turn a caller's event packets into one digit per press.

A DTMF press is sent as a run of packets that all carry the RTP timestamp of the event's start
(RFC 4733 section 2.5.1): the first with the marker bit, then updates with a growing duration,
and finally the end bit, usually three times (section 2.5.1.4: the end packet is retransmitted
because it is the one that matters). A receiver must report the press once, whichever of these
packets are lost, duplicated or retransmitted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# RFC 4733 section 3.2, table 3: events 0-15 are the DTMF digits, 16 is flash.
DTMF_EVENTS = "0123456789*#ABCD"
EVENT_FLASH = 16
EVENT_NAMES = {**dict(enumerate(DTMF_EVENTS)), EVENT_FLASH: "flash"}

EVENT_PAYLOAD = struct.Struct("!BBH")  # event, E/R/volume, duration
EVENT_PAYLOAD_SIZE = EVENT_PAYLOAD.size  # 4
MAX_DURATION = 0xFFFF  # section 2.5.1.3: longer events go on in a new segment
CLOCK_RATE = 8000  # the answer only accepts telephone-event/8000


class EventError(ValueError):
    """A telephone-event payload that is too short to hold an event."""


@dataclass(frozen=True, slots=True)
class Dtmf:
    """One key press of the caller: ``digit`` is ``0-9 * # A-D`` or ``flash``."""

    digit: str
    duration_ms: int


def parse_event(payload: bytes) -> tuple[int, bool, int, int]:
    """RFC 4733 section 2.3: ``(event, end, volume, duration)`` of the first event block.

    A payload may carry several 4-byte blocks (redundancy, RFC 2198 style); the first is the
    current event, which is all a receiver that is not regenerating tones needs.
    """
    if len(payload) < EVENT_PAYLOAD_SIZE:
        raise EventError("shorter than a telephone-event")
    event, flags, duration = EVENT_PAYLOAD.unpack_from(payload)
    return event, bool(flags & 0x80), flags & 0x3F, duration


def build_event(event: int, *, end: bool, duration: int, volume: int = 10) -> bytes:
    """The 4-byte payload of one telephone-event packet (for tests and fake callers)."""
    return EVENT_PAYLOAD.pack(event, (0x80 if end else 0) | (volume & 0x3F), duration)


def _ts_after(a: int, b: int) -> bool:
    """Serial-number comparison of 32-bit RTP timestamps: is ``a`` after ``b``?"""
    return a != b and ((a - b) & 0xFFFFFFFF) < 0x80000000


class DtmfDecoder:
    """Reports each telephone-event once, at its end, with its duration.

    An event is identified by its RTP timestamp. It is reported on the first packet with the
    end bit; if every end packet is lost, it is reported when the next event starts or when
    audio resumes past the event's last known end (``audio(timestamp)``). Retransmitted end
    packets and stragglers of a reported event are ignored.
    """

    __slots__ = ("_timestamp", "_event", "_duration", "_base", "_reported", "ignored")

    # Audio this far (in samples) past the event's last known end means the event is over even
    # though no end packet arrived: 100 ms, well beyond a packet interval, short of a next press.
    END_BY_AUDIO_SAMPLES = 800

    def __init__(self) -> None:
        self._timestamp: int | None = None  # RTP timestamp of the current event
        self._event = -1
        self._duration = 0  # samples, within the current segment
        self._base = 0  # samples of earlier segments of a long event (section 2.5.1.3)
        self._reported = True
        self.ignored = 0  # malformed or unknown events

    @property
    def pending(self) -> bool:
        """An event has started and not been reported yet."""
        return not self._reported

    def packet(self, timestamp: int, payload: bytes) -> Dtmf | None:
        """Feed one telephone-event packet (in sequence order); returns a finished press."""
        try:
            event, end, _volume, duration = parse_event(payload)
        except EventError:
            self.ignored += 1
            return None
        if event not in EVENT_NAMES:
            self.ignored += 1  # tones and line events (RFC 4734) are not key presses
            return None
        finished = None
        if timestamp != self._timestamp:
            if self._timestamp is not None and not _ts_after(timestamp, self._timestamp):
                return None  # a straggler from an event already behind us
            continued = (
                not self._reported
                and event == self._event
                and self._duration >= MAX_DURATION
                and timestamp == (self._timestamp + self._duration) & 0xFFFFFFFF
            )
            if continued:
                # Section 2.5.1.3: a long event goes on in a new segment, same press.
                self._base += self._duration
            else:
                finished = self._finish()  # the previous event's end packets were all lost
                self._base = 0
                self._event = event
                self._reported = False
            self._timestamp = timestamp
            self._duration = duration
        elif self._reported:
            return finished  # a retransmitted end packet (section 2.5.1.4)
        else:
            self._duration = max(self._duration, duration)
        if end:
            return self._finish() or finished
        return finished

    def restart(self) -> Dtmf | None:
        """The stream restarted (new SSRC or sequence restart): its timestamps start afresh.

        Returns the press that was still open, which is over now.
        """
        finished = self._finish()
        self._timestamp = None
        return finished

    def audio(self, timestamp: int) -> Dtmf | None:
        """Audio at ``timestamp`` arrived: if it is well past the event, the event is over."""
        if self._reported or self._timestamp is None:
            return None
        horizon = (self._timestamp + self._duration + self.END_BY_AUDIO_SAMPLES) & 0xFFFFFFFF
        if _ts_after(timestamp, horizon):
            return self._finish()
        return None

    def _finish(self) -> Dtmf | None:
        if self._reported or self._timestamp is None:
            return None
        self._reported = True
        samples = self._base + self._duration
        return Dtmf(EVENT_NAMES[self._event], samples * 1000 // CLOCK_RATE)

"""Engine-wide figures recorded at events (never per packet), sans-IO and flavor-neutral.

The media plane and the AI session record what only they see when it happens: how long an AI
connection took to open, how long a caller waited for the model's answer, how late the media
clock woke up, how long a receive wake-up took to hand caller audio on (sampled). Counters
that already exist per call (packets, bytes, drops, the session's usage) are not duplicated
here: the metrics collector (ctl/metrics.py) reads those at scrape time.

Why not prometheus-client's own ``Histogram`` here: media/ and openai_flavor/ stay free of a
metrics library (tests/test_layers.py), and these objects are touched only from the trio
thread, so they need none of its locks. An observation is one ``bisect`` and three additions.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field


class Histogram:
    """Cumulative-at-read bucket counts over fixed upper bounds (seconds), Prometheus style.

    ``counts[i]`` holds the observations in ``(bounds[i-1], bounds[i]]``; the last slot is
    everything above the largest bound (``+Inf``). :meth:`cumulative` gives what the
    exposition format wants.
    """

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("bucket bounds must be increasing")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le = "<=").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count of observations <= le), ..., ("+Inf", count)]``."""
        rows: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            rows.append((_le(bound), running))
        rows.append(("+Inf", running + self.counts[-1]))
        return rows


def _le(bound: float) -> str:
    return repr(float(bound))


# Bucket bounds, in seconds, chosen around what each figure means on a phone call.
# AI connect: TLS + WebSocket upgrade + session.created, typically 0.2-1 s; the call's bound
# for it is [openai] connect_timeout.
AI_CONNECT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# Response latency (caller stopped speaking -> the answer's first frame sent): below ~0.8 s a
# conversation feels natural, above ~2 s callers start talking again.
RESPONSE_LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# Pacing gap error (how late the media clock woke for its due frames): a phone's jitter buffer
# absorbs a few ms; 20 ms is a whole frame late.
PACING_LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
# RTP -> WebSocket (a receive wake-up's datagrams handed to their calls, whose handlers send
# the audio to the AI at once): tens of microseconds idle, milliseconds under load.
RTP_TO_AI_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)

# A label value that a peer cannot choose: anything not in a known set is counted as this.
OTHER = "other"


@dataclass(eq=False)  # compared by identity: one per engine, shared by reference
class EngineFigures:
    """One per engine, shared by every call (through its bridge); read by the collector."""

    ai_connect: Histogram = field(default_factory=lambda: Histogram(AI_CONNECT_BUCKETS))
    response_latency: Histogram = field(
        default_factory=lambda: Histogram(RESPONSE_LATENCY_BUCKETS))
    pacing_lateness: Histogram = field(default_factory=lambda: Histogram(PACING_LATENESS_BUCKETS))
    rtp_to_ai: Histogram = field(default_factory=lambda: Histogram(RTP_TO_AI_BUCKETS))
    # Counted at the event: AI connections opened after a loss, barge-ins honoured, and the
    # AI server's errors by code (the flavor maps its server's codes onto a known set first).
    ai_reconnects: int = 0
    barge_ins: int = 0
    # Talkspurt/ran-dry events the media send thread could not post (its bounded ring was
    # full because the drain fell behind): a lost "ran dry" delays a goodbye's hang-up to its
    # bound, so an operator must see it, not only a log line.
    send_thread_events_lost: int = 0
    ai_errors: Counter[str] = field(default_factory=Counter)

    def count_ai_error(self, code: str, known: frozenset[str]) -> None:
        """One error from the AI server: by ``code`` if it is one of ``known``, else "other".

        The code is the server's text: a label must never take a value a peer chose, or a
        hostile server could grow the time series without end."""
        self.ai_errors[code if code in known else OTHER] += 1


# Calls built outside an engine (unit tests) record here; nobody reads it.
UNREAD = EngineFigures()

"""Prometheus metrics: a collector that reads the engine's own counters when it is scraped.

Nothing here runs per packet. The media plane already counts every packet and drop per call
(``MediaStream.stats``, the reorder buffer, the playout queue); the collector sums those over
the live calls at scrape time, plus what calls that have ended left behind (:class:`CallLedger`,
folded once, when a call closes). Figures that exist only at an event (an AI connect, a
response's latency, a clock wake-up's lateness, a barge-in, an AI server error) are recorded
there, into the engine's :class:`~media.figures.EngineFigures`. A scrape at 200 calls costs
about a millisecond of the trio thread (docs/performance.md).

Every label value comes from a fixed set: commands from the dispatch table (else "unknown"),
ng errors by class (ctl/error_classes.py, never the reason's text, which may quote a request),
AI server errors by known code (else "other"), end reasons by :class:`EndReason`.
docs/operations.md lists every metric and the alerts a carrier would set on them.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector

from ctl.error_classes import ERROR_CLASSES
from ctl.metrics_http import serve_metrics
from media.bridge import EndReason
from media.figures import OTHER, EngineFigures, Histogram

if TYPE_CHECKING:
    from ctl.call import Call
    from ctl.engine import Engine

# The media counters of one call, by the name they are summed under: (stream attribute path).
# Packets and bytes are per direction; drops per reason (the names are the metric's labels).
DROP_REASONS = (
    "malformed", "rtcp_malformed", "source_rejected", "wrong_payload_type", "late", "duplicate",
    "ai_queue_full", "dtmf_event_dropped", "send_error",
)


# The per-call media counters summed into the metrics, in the order media_values gives them.
MEDIA_KEYS = (
    "rtp_in_packets", "rtp_in_bytes", "rtp_out_packets", "rtp_out_bytes", "rtcp_in_packets",
    "rtcp_out_packets", *(f"drop_{reason}" for reason in DROP_REASONS), "lost", "relatches",
    "pacer_reanchors", "playout_overflow_bytes",
)


def media_values(call: Call) -> tuple[int, ...]:
    """Every per-call media counter as of now, in the order of :data:`MEDIA_KEYS`.

    A tuple, so that a scrape sums the open calls column by column in C (``zip``, ``sum``):
    ~1 us a call instead of a dictionary update per counter."""
    stream = call.stream
    stream.sender.sync_stats()  # the media send thread's counters, as of now
    stats = stream.stats
    reorder = stream.reorder
    return (
        stats.rtp_in.packets, stats.rtp_in.bytes, stats.rtp_out.packets, stats.rtp_out.bytes,
        stats.rtcp_in.packets, stats.rtcp_out.packets,
        # In DROP_REASONS' order.
        stats.malformed, stats.rtcp_malformed, stats.foreign_source, stats.other_payload,
        reorder.late, reorder.duplicates, stats.ai_queue_full, stats.events_dropped,
        stats.send_errors,
        reorder.lost, stats.relatches, stats.pacer_reanchors, call.bridge.playout.bytes_dropped,
    )


# Token counts of the AI session's ``usage`` snapshot: (detail key, field) -> (direction, kind).
TOKEN_KINDS = {
    ("input_token_details", "text_tokens"): ("input", "text"),
    ("input_token_details", "audio_tokens"): ("input", "audio"),
    ("input_token_details", "cached_tokens"): ("input", "cached"),
    ("output_token_details", "text_tokens"): ("output", "text"),
    ("output_token_details", "audio_tokens"): ("output", "audio"),
}


def _count(value: Any) -> float:
    """A number from a snapshot (a flavor's dict), or 0: statistics are not worth a failure."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return value
    return 0


class CallLedger:
    """Counters of calls that have closed, and the calls still open.

    A call is folded in once, when it closes (``Call.run``'s ``finally``): from then on its
    counters live here, so the sums stay monotonic however the registry forgets calls (a
    delete forgets a call at once, while it still closes in its own task). Open calls are held
    weakly: a call that never ran cannot leak through this set.
    """

    def __init__(self) -> None:
        self.open: weakref.WeakSet[Call] = weakref.WeakSet()
        self.closed = [0] * len(MEDIA_KEYS)
        self.ended: Counter[EndReason] = Counter()
        self.tokens: Counter[tuple[str, str]] = Counter()
        self.cost_usd = 0.0

    def opened(self, call: Call) -> None:
        self.open.add(call)

    def closed_call(self, call: Call) -> None:
        """Fold ``call``'s final counters in (idempotent)."""
        if call not in self.open:
            return
        self.open.discard(call)
        self.closed = [total + value for total, value in zip(self.closed, media_values(call),
                                                             strict=True)]
        self.ended[call.end_kind or EndReason.SHUTDOWN] += 1
        snapshot = call.ai.snapshot()
        usage = snapshot.get("usage")
        if isinstance(usage, dict):
            for (detail, name), kind in TOKEN_KINDS.items():
                details = usage.get(detail)
                if isinstance(details, dict):
                    self.tokens[kind] += int(_count(details.get(name)))
        # The flavor's estimate of what the call's AI cost ({"usd": ..., "model": ...});
        # absent from flavors (and versions) that do not price their usage.
        cost = snapshot.get("cost")
        if isinstance(cost, dict):
            self.cost_usd += float(_count(cost.get("usd")))

    def media_totals(self) -> dict[str, int]:
        """Closed calls' counters plus the open calls' current ones, by MEDIA_KEYS."""
        rows = [media_values(call) for call in list(self.open)]
        columns = zip(self.closed, *rows, strict=True)
        return dict(zip(MEDIA_KEYS, map(sum, columns), strict=True))


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=histogram.cumulative(),
                                 sum_value=histogram.sum)


class EngineCollector:
    """prometheus-client's custom-collector interface (``collect``) over an :class:`Engine`.

    Runs in the trio thread (ctl/metrics_http.py serves it there): it reads the engine's
    plain counters without locks, and no call can change while it reads.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterable[Metric]:
        engine = self.engine
        metrics = engine.metrics
        yield from self._calls(engine, metrics.ledger)
        yield from self._ng(engine)
        yield from self._media(engine, metrics.ledger, metrics.figures)
        yield from self._ai(engine, metrics.ledger, metrics.figures)

    @staticmethod
    def _calls(engine: Engine, ledger: CallLedger) -> Iterator[Metric]:
        by_state = GaugeMetricFamily("rtpai_calls", "Calls rtpai holds now, by state "
                                     "(ended calls linger for the proxy's delete)",
                                     labels=["state"])
        states = Counter(call.state.value for call in engine.calls)
        for state in ("offered", "active", "ending", "ended"):
            by_state.add_metric([state], states[state])
        yield by_state
        yield CounterMetricFamily("rtpai_calls_started", "Calls created by an offer",
                                  value=engine.totals["calls"])
        ended = CounterMetricFamily("rtpai_calls_ended", "Calls closed, by why they ended",
                                    labels=["reason"])
        for reason in EndReason:
            ended.add_metric([reason.value], ledger.ended[reason])
        yield ended
        yield GaugeMetricFamily("rtpai_draining", "1 while the engine drains (SIGTERM)",
                                value=1 if engine.draining else 0)
        ports = engine.ports
        pairs = GaugeMetricFamily("rtpai_port_pairs", "RTP/RTCP port pairs of [rtp] "
                                  "min_port..max_port", labels=["state"])
        pairs.add_metric(["in_use"], ports.in_use)
        pairs.add_metric(["free"], ports.capacity - ports.in_use)
        yield pairs

    @staticmethod
    def _ng(engine: Engine) -> Iterator[Metric]:
        dispatcher = engine.dispatcher
        commands = CounterMetricFamily("rtpai_ng_commands", "ng commands answered, by command "
                                       "and result", labels=["command", "result"])
        # Every command's ok and error series exist from the start (at 0), so that rate() and
        # alerts work from the first error on; other results (pong, load limit) once seen.
        results = Counter({(name, result): 0 for name in (*dispatcher.handlers, "unknown")
                           for result in ("ok", "error")})
        results.update(dispatcher.results)
        for (command, result), count in sorted(results.items()):
            commands.add_metric([command, result], count)
        yield commands
        errors = CounterMetricFamily("rtpai_ng_errors", "ng commands answered with an error, "
                                     "by class of reason", labels=["class"])
        for kind in sorted(ERROR_CLASSES):
            errors.add_metric([kind], dispatcher.error_classes[kind])
        yield errors
        yield CounterMetricFamily("rtpai_ng_denied", "ng datagrams from sources [ng] allow "
                                  "does not list (dropped)", value=dispatcher.denied)

    @staticmethod
    def _media(engine: Engine, ledger: CallLedger, figures: EngineFigures) -> Iterator[Metric]:
        totals = ledger.media_totals()
        for kind in ("rtp", "rtcp"):
            packets = CounterMetricFamily(f"rtpai_{kind}_packets", f"{kind.upper()} packets, "
                                          "by direction (in: from callers)",
                                          labels=["direction"])
            for direction in ("in", "out"):
                packets.add_metric([direction], totals[f"{kind}_{direction}_packets"])
            yield packets
        rtp_bytes = CounterMetricFamily("rtpai_rtp_bytes", "RTP bytes (headers included), by "
                                        "direction", labels=["direction"])
        for direction in ("in", "out"):
            rtp_bytes.add_metric([direction], totals[f"rtp_{direction}_bytes"])
        yield rtp_bytes
        drops = CounterMetricFamily("rtpai_media_dropped", "Packets (and DTMF events) dropped, "
                                    "by reason", labels=["reason"])
        for reason in DROP_REASONS:
            drops.add_metric([reason], totals[f"drop_{reason}"])
        yield drops
        yield CounterMetricFamily("rtpai_rtp_lost", "Caller RTP never received (sequence "
                                  "gaps, RFC 3550 A.3)", value=totals["lost"])
        yield CounterMetricFamily("rtpai_relatches", "Latched caller addresses that moved",
                                  value=totals["relatches"])
        yield CounterMetricFamily("rtpai_pacer_reanchors", "Paced streams re-anchored after "
                                  "a stall longer than the pacer's bound",
                                  value=totals["pacer_reanchors"])
        yield CounterMetricFamily("rtpai_playout_overflow_bytes", "AI audio dropped because a "
                                  "call's playout queue was full",
                                  value=totals["playout_overflow_bytes"])
        yield CounterMetricFamily("rtpai_media_thread_events_lost", "Events the media send "
                                  "thread could not post because its drain fell behind",
                                  value=figures.send_thread_events_lost)
        yield _histogram("rtpai_pacing_lateness_seconds", "How late the media clock woke for "
                         "its due frames (per wake-up: the worst frame of it)",
                         figures.pacing_lateness)
        yield _histogram("rtpai_rtp_to_ai_seconds", "Caller RTP's longest wait inside rtpai "
                         "before its audio left for the AI (one receive wake-up in 16, timed)",
                         figures.rtp_to_ai)

    @staticmethod
    def _ai(engine: Engine, ledger: CallLedger, figures: EngineFigures) -> Iterator[Metric]:
        sessions = GaugeMetricFamily("rtpai_ai_sessions", "AI sessions of live calls, by state",
                                     labels=["state"])
        states = Counter(str(call.ai.state) for call in ledger.open)
        for state in ("connecting", "open", "reconnecting"):
            sessions.add_metric([state], states[state])
        yield sessions
        yield _histogram("rtpai_ai_connect_seconds", "Time to open an AI session (connect, "
                         "upgrade, session created)", figures.ai_connect)
        yield _histogram("rtpai_ai_response_latency_seconds", "Caller's speech stopped -> "
                         "first audio frame of the answer sent to the caller",
                         figures.response_latency)
        yield CounterMetricFamily("rtpai_ai_reconnects", "AI connections lost and reopened",
                                  value=figures.ai_reconnects)
        yield CounterMetricFamily("rtpai_ai_barge_ins", "Answers cut short by the caller",
                                  value=figures.barge_ins)
        errors = CounterMetricFamily("rtpai_ai_errors", "Errors the AI server sent, by code",
                                     labels=["code"])
        for code, count in sorted(({OTHER: 0} | figures.ai_errors).items()):
            errors.add_metric([code], count)
        yield errors
        tokens = CounterMetricFamily("rtpai_ai_tokens", "AI tokens of closed calls, by "
                                     "direction and kind", labels=["direction", "kind"])
        for direction, kind in TOKEN_KINDS.values():
            tokens.add_metric([direction, kind], ledger.tokens[(direction, kind)])
        yield tokens
        yield CounterMetricFamily("rtpai_ai_cost_usd", "Estimated AI cost of closed calls "
                                  "(the [pricing] table's), US dollars", value=ledger.cost_usd)


class EngineMetrics:
    """What an engine records for metrics, and its registry (process figures included)."""

    def __init__(self) -> None:
        self.ledger = CallLedger()
        self.figures = EngineFigures()
        self.registry: CollectorRegistry | None = None
        self.address: tuple[str, int] | None = None  # where /metrics is served, once bound

    def bind(self, engine: Engine) -> None:
        """Register the collectors for ``engine``; until then :meth:`exposition` is empty."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(EngineCollector(engine))
        # CPU seconds, RSS, open descriptors (and their limit), start time: from /proc.
        ProcessCollector(registry=registry)
        self.registry = registry

    async def serve(self, listen: tuple[str, int], *,
                    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """``[metrics] listen``: serve /metrics in the engine nursery until cancelled (in the
        trio loop, not a thread: ctl/metrics_http.py says why)."""
        async with trio.open_nursery() as nursery:
            self.address = await nursery.start(serve_metrics, listen, self.exposition)
            task_status.started(self.address)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric, as of now."""
        if self.registry is None:
            return b""
        return generate_latest(self.registry)

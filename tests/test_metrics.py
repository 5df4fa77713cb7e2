"""``[metrics] listen``: what a scrape of a running engine shows of a whole call.

A call through the engine (fake proxy, fake caller, fake Realtime server, real sockets), its
/metrics scraped over HTTP and parsed with prometheus-client's own parser: the call, its
packets, its AI session, the response latency, the ng commands by result, and after the
delete its end reason, tokens and cost, with the counters never going back. Hostile ng input
shows only as fixed label values. docs/grafana/rtpai.json's every query names a metric the
scrape exports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from ctl.error_classes import ERROR_CLASSES, error_class
from media.figures import Histogram
from tests.fakes.caller import FakeCaller
from tests.fakes.proxy import FakeProxy
from tests.fakes.realtime import FakeRealtimeServer, tone
from tests.peers.prometheus import http_get
from tests.test_call_flow import caller_speech, start_engine

CALL_ID = "metrics-1@test"
DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "rtpai.json"


class Scrape:
    """One /metrics body: ``scrape["name", {"label": "value"}]`` is a sample's value."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def __getitem__(self, key: str | tuple[str, dict[str, str]]) -> float:
        name, labels = (key, {}) if isinstance(key, str) else key
        return self.samples[(name, frozenset(labels.items()))]

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(labels)[label] for sample, labels in self.samples
                if sample == name and label in dict(labels)}


async def scrape(engine) -> Scrape:
    return Scrape((await http_get(engine.metrics.address[1], "/metrics")).decode())


async def test_a_call_in_the_metrics_from_offer_to_delete():
    reply_audio = tone("pcmu", 400)
    server = FakeRealtimeServer(reply_audio=reply_audio, respond_after_ms=600, speed=0)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine, ng = await start_engine(nursery, url, METRICS_LISTEN="127.0.0.1:0")
            caller = FakeCaller()
            await caller.bind()
            nursery.start_soon(caller.receive)
            async with FakeProxy(ng) as proxy:
                reply = await proxy.command(
                    "offer", **{"call-id": CALL_ID, "from-tag": "ft", "sdp": caller.sdp_offer()})
                rtp_port = int(reply["sdp"].split("m=audio ", 1)[1].split()[0])
                session = await server.wait_for_session(1)
                speech = caller_speech(50)
                await caller.stream(("127.0.0.1", rtp_port), speech)
                await session.wait_until(lambda s: len(s.audio_in) >= len(speech) * 160)
                await caller.wait_for(lambda got: reply_audio in b"".join(p.payload for p in got))

                during = await scrape(engine)
                assert during["rtpai_calls", {"state": "active"}] == 1
                assert during["rtpai_calls_started_total"] == 1
                assert during["rtpai_ng_commands_total", {"command": "offer", "result": "ok"}] == 1
                assert during["rtpai_rtp_packets_total", {"direction": "in"}] == 50
                assert during["rtpai_rtp_bytes_total", {"direction": "in"}] == 50 * (12 + 160)
                assert during["rtpai_rtp_packets_total", {"direction": "out"}] >= 20
                assert during["rtpai_ai_sessions", {"state": "open"}] == 1
                assert during["rtpai_ai_connect_seconds_count"] == 1
                assert during["rtpai_port_pairs", {"state": "in_use"}] == 1
                # The fake's VAD ended the caller's turn once; its answer reached the caller.
                assert during["rtpai_ai_response_latency_seconds_count"] == 1
                latency = during["rtpai_ai_response_latency_seconds_sum"]
                assert 0 < latency < 5
                assert during["rtpai_pacing_lateness_seconds_count"] > 0
                assert during["rtpai_rtp_to_ai_seconds_count"] > 0
                assert during["rtpai_ai_cost_usd_total"] == 0  # counted at the call's end
                assert during["process_open_fds"] > 0  # the client library's process figures

                (call,) = engine.calls.select(CALL_ID)
                usage = call.ai.snapshot()["usage"]
                # The same wait, per call, for rtpai-ctl top and query.
                last_ms = call.ai.snapshot()["response latency ms"]["last"]
                assert last_ms == round(latency * 1000)
                # The pricing helper's field (ctl/ops-record's branch); tolerated when absent.
                priced = call.ai.snapshot
                call.ai.snapshot = lambda: {**priced(), "cost": {
                    "usd": 0.0125, "model": "gpt-realtime-2.1", "prices_as_of": "2026-01-01"}}
                await proxy.command("delete", **{"call-id": CALL_ID, "from-tag": "ft"})
                await call.ended.wait()

                after = await scrape(engine)
                assert after["rtpai_calls_ended_total", {"reason": "deleted"}] == 1
                assert after["rtpai_calls_ended_total", {"reason": "ai_failed"}] == 0
                assert after["rtpai_calls", {"state": "active"}] == 0
                # Folded in at the end: the counters never go back (Prometheus would see a
                # reset), although the delete forgot the call at once.
                assert after["rtpai_rtp_packets_total", {"direction": "in"}] == 50
                assert (after["rtpai_rtp_packets_total", {"direction": "out"}]
                        >= during["rtpai_rtp_packets_total", {"direction": "out"}])
                details = usage["output_token_details"]
                assert after["rtpai_ai_tokens_total", {"direction": "output", "kind": "audio"}] \
                    == details["audio_tokens"] > 0
                assert after["rtpai_ai_cost_usd_total"] == 0.0125
                assert after["rtpai_ng_commands_total", {"command": "delete", "result": "ok"}] == 1
            nursery.cancel_scope.cancel()


async def test_hostile_ng_input_only_ever_shows_as_fixed_labels():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            engine, ng = await start_engine(nursery, "ws://127.0.0.1:9/v1/realtime",
                                            METRICS_LISTEN="127.0.0.1:0")
            caller = FakeCaller()
            await caller.bind()
            async with FakeProxy(ng) as proxy:
                for n in range(100):  # more distinct reasons than the dispatcher keeps
                    await proxy.command("offer", **{"call-id": f"c{n}", "from-tag": "f",
                                                    "profile": f"evil{n}\nrtpai_up 1",
                                                    "sdp": caller.sdp_offer()})
                await proxy.command(f"injected{{x=\"1\"}} {n}")
                await proxy.command("query", **{"call-id": "nobody"})
            metrics = await scrape(engine)
            nursery.cancel_scope.cancel()
    assert "evil" not in metrics.text and "injected" not in metrics.text
    classes = metrics.label_values("rtpai_ng_errors_total", "class")
    assert classes <= ERROR_CLASSES
    assert metrics["rtpai_ng_errors_total", {"class": "unknown_profile"}] \
        + metrics["rtpai_ng_errors_total", {"class": "other"}] == 100
    assert metrics["rtpai_ng_errors_total", {"class": "unknown_call"}] == 1
    assert metrics["rtpai_ng_commands_total", {"command": "unknown", "result": "error"}] == 1
    assert metrics["rtpai_ng_commands_total", {"command": "query", "result": "error"}] == 1


def test_error_reasons_map_onto_their_classes():
    assert error_class("Unknown call-id") == "unknown_call"
    assert error_class("Unknown profile 'Unknown call-id'") == "unknown_profile"
    assert error_class("No common codec: the call uses PCMU, ...") == "bad_sdp"
    assert error_class("Ran out of ports") == "no_ports"
    assert error_class("whatever a peer wrote") == "other"


def test_histogram_buckets_are_cumulative_with_le_inclusive():
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.count == 4 and histogram.sum == pytest.approx(2.65)


# PromQL words that are not metric names: functions, keywords, the dashboard's variables.
def dashboard_metric_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    names: set[str] = set()
    for panel in dashboard["panels"]:
        exprs = [target["expr"] for target in panel["targets"]]
        assert exprs, panel["title"]
        for expr in exprs:
            found = set(re.findall(r"\b((?:rtpai|process)_[a-z0-9_]+)\b", expr))
            assert found, f"{panel['title']}: no rtpai metric in {expr}"
            names |= found
    return names


async def test_every_dashboard_query_names_an_exported_metric():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            engine, _ = await start_engine(nursery, "ws://127.0.0.1:9/v1/realtime",
                                           METRICS_LISTEN="127.0.0.1:0")
            metrics = await scrape(engine)
            nursery.cancel_scope.cancel()
    exported = metrics.names()
    missing = dashboard_metric_names() - exported
    assert not missing, f"the dashboard queries metrics rtpai does not export: {missing}"
    # And the other way: every rtpai metric family is on the dashboard somewhere.
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in exported
                if name.startswith("rtpai_")}
    shown = {re.sub(r"_(bucket|sum|count)$", "", name) for name in dashboard_metric_names()}
    assert families <= shown, families - shown

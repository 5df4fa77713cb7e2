"""A real Prometheus scrapes rtpai during a real call: sipp -> Kamailio 5.6 -> rtpai -> Realtime.

Prometheus (Debian's package, on 127.0.0.1 with its own port and storage, scraping every
second) scrapes rtpai's ``[metrics] listen`` while sipp places a call through Kamailio, plays
the caller's audio and hangs up; the fake Realtime server answers. Then PromQL over
Prometheus's HTTP API must return the call's counters and its response-latency histogram:
what an operator's dashboard and alerts would read. Breaking the endpoint, the exposition, a
counter or the latency measurement fails it.
"""

from __future__ import annotations

import pytest
import trio

from tests.fakes.engine import engine_for_test, watch
from tests.fakes.realtime import FakeRealtimeServer, tone
from tests.peers import (
    LOOPBACK,
    UAC_SCENARIO,
    require_root,
    require_tool,
    run_sipp,
    start_kamailio,
    unused_media_port,
    unused_port,
    write_rtp_pcap,
)
from tests.peers.prometheus import start_prometheus

pytestmark = pytest.mark.realpeers

CALLER_FRAMES = 40  # 800 ms of caller audio from the pcap


async def test_prometheus_reads_the_call_through_kamailio(tmp_path):
    require_tool("sipp")
    require_tool("prometheus")
    require_root()  # sipp's pcap player
    pcap = tmp_path / "caller.pcap"
    write_rtp_pcap(pcap, [bytes([(n * 13 + i) % 251 for i in range(160)])
                          for n in range(CALLER_FRAMES)])
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 400, hz=440), respond_after_ms=500,
                                speed=0)
    sip_port, sipp_port, media_port = unused_port(), unused_port(), unused_media_port()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine = engine_for_test(url, RTP_MIN_PORT="42200", RTP_MAX_PORT="42299",
                                     METRICS_LISTEN="127.0.0.1:0")
            deletes = watch(engine, "delete")
            ng_address = await nursery.start(engine.run)
            target = f"{LOOPBACK}:{engine.metrics.address[1]}"
            async with start_prometheus(tmp_path, [target]) as prometheus:
                await prometheus.wait_for('up{job="rtpai"}', lambda v: v == 1)
                async with start_kamailio(tmp_path, sip_port=sip_port, ng_port=ng_address[1]):
                    # INVITE, the caller's 800 ms, 3 s for the model's answer, BYE.
                    await run_sipp(UAC_SCENARIO, target=(LOOPBACK, sip_port),
                                   local_port=sipp_port, media_port=media_port, pcap=pcap,
                                   pause_ms=3000)
                    await deletes.wait_for(1)

                # The last scrape after the call closed: its end is counted.
                ended = 'rtpai_calls_ended_total{reason="deleted"}'
                assert await prometheus.wait_for(ended, lambda v: v == 1) == 1
                assert await prometheus.value("rtpai_calls_started_total") == 1
                assert await prometheus.value(
                    'sum(rtpai_ng_commands_total{command="offer",result="ok"})') == 1
                # (Kamailio's script deletes on both of its legs: the second finds no call.)
                assert await prometheus.value(
                    'sum(rtpai_ng_commands_total{command="delete",result="ok"})') >= 1
                assert await prometheus.value(
                    'rtpai_rtp_packets_total{direction="in"}') == CALLER_FRAMES
                assert await prometheus.value(
                    'rtpai_rtp_packets_total{direction="out"}') >= 400 / 20
                assert await prometheus.value('sum(rtpai_calls{state="active"})') == 0
                # The fake's VAD ends a turn per 500 ms of audio: once in 800 ms; its answer reached sipp.
                assert await prometheus.value(
                    "rtpai_ai_response_latency_seconds_count") == 1
                median = await prometheus.value(
                    "histogram_quantile(0.5, rtpai_ai_response_latency_seconds_bucket)")
                assert median is not None and 0 < median <= 10
                assert await prometheus.value("rtpai_ai_connect_seconds_count") == 1
                assert await prometheus.value("process_resident_memory_bytes") > 0
            nursery.cancel_scope.cancel()

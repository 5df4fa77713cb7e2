"""Kamailio fails over to the next rtpai of its set when one cannot serve calls.

Kamailio 5.6's rtpengine module moves an offer to the next engine only on a "load limit"
reply and on the errors "Parallel session limit reached" and "Ran out of ports", with no
setting to add others. An rtpai that is disabled or has no API key therefore answers "load
limit" (with its reason) to a proxy that says it supports that, as Kamailio always does. The
module picks an engine by the Call-ID's byte sum modulo the weights, so a chosen Call-ID sends
the offer to the refusing rtpai first.
"""

from __future__ import annotations

import pytest
import trio

from tests.fakes.engine import engine_for_test, watch
from tests.fakes.realtime import FakeRealtimeServer
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
from tests.test_opensips_failover import call_id_for_first_engine

pytestmark = pytest.mark.realpeers


@pytest.mark.parametrize("refusal, reason", [
    ({"OPENAI_DISABLE": "true"}, "AI sessions are disabled ([openai] disable)"),
    ({"OPENAI_API_KEY": ""}, "No OpenAI API key configured ([openai] key / OPENAI_API_KEY)"),
])
async def test_kamailio_moves_a_call_from_an_rtpai_that_cannot_serve_to_the_next(
        tmp_path, refusal, reason):
    require_tool("kamailio")
    require_tool("sipp")
    require_root()
    pcap = tmp_path / "caller.pcap"
    write_rtp_pcap(pcap, [bytes([n]) * 160 for n in range(10)])
    server = FakeRealtimeServer(respond_after_ms=None)
    sip_port, sipp_port, media_port = unused_port(), unused_port(), unused_media_port()
    call_id = call_id_for_first_engine()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            refusing = engine_for_test(url, RTP_MIN_PORT="42400", RTP_MAX_PORT="42449",
                                       **refusal)
            serving = engine_for_test(url, RTP_MIN_PORT="42450", RTP_MAX_PORT="42499")
            taken = watch(serving, "offer")
            first = await nursery.start(refusing.run)
            second = await nursery.start(serving.run)
            socks = f"udp:{LOOPBACK}:{first[1]} udp:{LOOPBACK}:{second[1]}"
            async with start_kamailio(tmp_path, sip_port=sip_port, ng_port=first[1],
                                      ng_socks=socks):
                await run_sipp(UAC_SCENARIO, target=(LOOPBACK, sip_port), local_port=sipp_port,
                               media_port=media_port, pcap=pcap,
                               extra=("-cid_str", call_id))
            nursery.cancel_scope.cancel()

    # The refusing rtpai was asked first and answered "load limit"; Kamailio went on.
    assert refusing.dispatcher.commands["offer"] == 1
    assert refusing.dispatcher.errors == {reason: 1}
    assert [request["call-id"] for request, _ in taken.seen] == [call_id]
    assert serving.totals["calls"] == 1 and serving.dispatcher.commands["delete"] == 1

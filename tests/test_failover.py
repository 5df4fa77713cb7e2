"""A proxy moves a call to the next rtpai of its set when one cannot serve calls.

Both proxies' rtpengine modules try the next engine on "Parallel session limit reached" and
"Ran out of ports" by themselves. For an rtpai that cannot serve at all ([openai] disable, no
API key): Kamailio 5.6 fails over on nothing else but "load limit", which rtpai answers it
(Kamailio says it `supports` that), with the reason as the message; OpenSIPS sends no
`supports`, gets the reason as an error, and fails over by the `extra_failover_error` of
tests/peers/opensips.cfg. Both modules pick an engine by the sum of the Call-ID's bytes modulo
the weights, so a chosen Call-ID sends the offer to the refusing rtpai first.
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
    start_proxy,
    unused_media_port,
    unused_port,
    write_rtp_pcap,
)

pytestmark = pytest.mark.realpeers


def call_id_for_first_engine() -> str:
    """A Call-ID whose byte sum is even: with two engines of weight 1 the modules' `sum % 2`
    picks the first of the set (select_rtpe_node in both)."""
    call_id = "failover-1@127.0.0.1"
    if sum(call_id.encode()) % 2:
        call_id = "failover-2@127.0.0.1"
    assert sum(call_id.encode()) % 2 == 0
    return call_id


@pytest.mark.parametrize("refusal, reason", [
    ({"OPENAI_DISABLE": "true"}, "AI sessions are disabled ([openai] disable)"),
    ({"OPENAI_API_KEY": ""}, "No OpenAI API key configured ([openai] key / OPENAI_API_KEY)"),
])
async def test_the_proxy_moves_a_call_from_an_rtpai_that_cannot_serve_to_the_next(
        tmp_path, proxy_kind, refusal, reason):
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
            refusing = engine_for_test(url, RTP_MIN_PORT="42300", RTP_MAX_PORT="42349",
                                       **refusal)
            serving = engine_for_test(url, RTP_MIN_PORT="42350", RTP_MAX_PORT="42399")
            taken = watch(serving, "offer")
            first = await nursery.start(refusing.run)
            second = await nursery.start(serving.run)
            socks = f"udp:{LOOPBACK}:{first[1]} udp:{LOOPBACK}:{second[1]}"
            async with start_proxy(proxy_kind, tmp_path, sip_port=sip_port, ng_port=first[1],
                                   ng_socks=socks):
                await run_sipp(UAC_SCENARIO, target=(LOOPBACK, sip_port), local_port=sipp_port,
                               media_port=media_port, pcap=pcap,
                               extra=("-cid_str", call_id))
            nursery.cancel_scope.cancel()

    # The refusing rtpai was asked first and refused (counted); the proxy went on to the next.
    assert refusing.dispatcher.commands["offer"] == 1
    assert refusing.dispatcher.errors == {reason: 1}
    assert [request["call-id"] for request, _ in taken.seen] == [call_id]
    assert serving.totals["calls"] == 1 and serving.dispatcher.commands["delete"] == 1

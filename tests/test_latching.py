"""c=0.0.0.0 in a new call's offer with sendrecv: an address not known yet, not hold (issue 11).

Gateways that learn their public address late offer ``c=IN IP4 0.0.0.0`` with ``a=sendrecv``
and start sending RTP at once. rtpai used to take that as RFC 2543 hold for good, and never
answered. It now latches on the first valid packet and sends there, as rtpengine does; a
re-offer to 0.0.0.0 on a call that has had an address is still hold. SDP-in/SDP-out on RFC 5737
addresses; the media test on loopback with a fake caller and the fake Realtime server.
"""

from __future__ import annotations

import pytest
import trio

from ctl.engine import Engine
from tests.fakes.caller import FakeCaller
from tests.fakes.engine import handle
from tests.fakes.realtime import FakeRealtimeServer
from tests.test_media_engine import answer_port, config, media_lines, offer, offer_sdp, request


async def started_engine(nursery, **env) -> tuple[Engine, FakeRealtimeServer]:
    server = FakeRealtimeServer(respond_after_ms=None)
    url = await nursery.start(server.serve)
    engine = Engine(config(OPENAI_URL=url, RTP_IP="203.0.113.5", **env))
    await nursery.start(engine.run)
    return engine, server


async def test_unknown_address_offer_is_answered_sendrecv_and_waits_to_latch():
    async with trio.open_nursery() as nursery:
        engine, _ = await started_engine(nursery)
        answer = await offer(engine, "unknown", address="0.0.0.0")
        port = answer_port(answer)
        assert media_lines(answer)[1:] == [
            "c=IN IP4 203.0.113.5",
            f"m=audio {port} RTP/AVP 0 96",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:96 telephone-event/8000",
            "a=fmtp:96 0-16",
            "a=ptime:20",
            "a=sendrecv",
        ]
        call = engine.calls["unknown"]
        assert call.media.address_unknown and call.media.remote is None
        # Not hold: we will send (once latched) and expect the caller's RTP (media timeout on).
        assert call.stream.sending and call.stream.caller_sends
        assert call.stream.remote is None  # nowhere to send before the first packet
        query = handle(engine, request("query", **{"call-id": "unknown"}))
        flags = query["tags"]["ft"]["medias"][0]["flags"]
        assert flags == ["send", "recv"]

        # The same offer again (a retransmission, a refresh) keeps it so.
        assert await offer(engine, "unknown", address="0.0.0.0") == answer
        assert call.stream.sending and call.media.address_unknown
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "direction, answer_direction", [("sendonly", "recvonly"), ("inactive", "inactive")]
)
async def test_unknown_address_with_sendonly_or_inactive_is_hold_as_before(
    direction, answer_direction
):
    async with trio.open_nursery() as nursery:
        engine, _ = await started_engine(nursery)
        answer = await offer(engine, "held", address="0.0.0.0", direction=direction)
        assert media_lines(answer)[-1] == f"a={answer_direction}"
        call = engine.calls["held"]
        assert not call.stream.sending and not call.media.address_unknown
        nursery.cancel_scope.cancel()


async def test_reoffer_to_zero_address_on_a_call_with_an_address_is_still_hold():
    async with trio.open_nursery() as nursery:
        engine, _ = await started_engine(nursery)
        await offer(engine, "c", address="0.0.0.0")  # unknown at first...
        await offer(engine, "c", address="192.0.2.10")  # ...then the gateway learns it
        call = engine.calls["c"]
        assert call.stream.remote == ("192.0.2.10", 40000) and call.stream.sending
        await offer(engine, "c", address="0.0.0.0")  # RFC 2543 hold
        assert not call.stream.sending and not call.stream.caller_sends
        assert not call.media.address_unknown
        nursery.cancel_scope.cancel()


async def test_audio_flows_both_ways_after_latching_an_unknown_address():
    server = FakeRealtimeServer(respond_after_ms=200)  # answers after 200 ms of caller audio
    caller = FakeCaller()
    await caller.bind()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine = Engine(config(OPENAI_URL=url))
            await nursery.start(engine.run)
            sdp = offer_sdp(address="0.0.0.0", port=caller.port)  # the caller's real port
            answer = await offer(engine, "latch", sdp=sdp)
            port = answer_port(answer)
            call = engine.calls["latch"]
            session = await server.wait_for_session(1)
            nursery.start_soon(caller.receive)
            # A stranger's garbage first: not valid RTP, so it latches nothing.
            with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as stranger:
                await stranger.sendto(b"\x00" * 40, ("127.0.0.1", port))
            nursery.start_soon(caller.stream, ("127.0.0.1", port), [b"\x10" * 160] * 50)
            await call.bridge.media_started.wait()
            assert call.stream.latch.latched == ("127.0.0.1", caller.port)
            # Caller -> AI: its audio reaches the model.
            await session.wait_until(lambda fake: len(fake.audio_in) >= 160 * 10)
            # AI -> caller: the model's reply comes back to the latched address.
            await caller.wait_for(lambda received: caller.audio())
            assert all(p.source == ("127.0.0.1", port) for p in caller.received)
            stats = handle(engine, request("query", **{"call-id": "latch"}))
            assert stats["rtpai"]["dropped"]["malformed"] == 1  # the stranger, dropped
            assert stats["rtpai"]["rtp out"]["packets"] > 0
            nursery.cancel_scope.cancel()

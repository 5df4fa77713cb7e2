"""The whole path on real parts: sipp -> Kamailio 5.6 or OpenSIPS 3.6 (rtpengine module) ->
rtpai -> the model. Each test runs once per proxy (the ``proxy_kind`` fixture); the first also
once per speech API rtpai speaks: Realtime GA, Realtime beta and GPT-Live, each against its
strict fake.

sipp places a call and plays the caller's RTP from a pcap; the proxy answers it with the SDP
rtpai returns from ``offer``; rtpai streams the caller's audio to the fake Realtime server and
the server's reply back to sipp's RTP port (seen on lo, byte for byte); BYE -> ``delete`` ends
the call and frees its ports. Breaking rtpai's SDP, media or delete handling fails this test.

The calls end on events, not on timers: the first waits for the whole reply to arrive and then
has rtpai hang up through Kamailio (sipp expects that BYE); the second is sipp's own BYE.
"""

from __future__ import annotations

import socket

import pytest
import trio

from media.bridge import EndReason
from media.rtp import parse_rtp
from media.sdp import parse_sdp
from tests.fakes.engine import engine_for_test, watch
from tests.fakes.live import FakeLiveServer
from tests.fakes.realtime import FakeRealtimeServer, tone
from tests.peers import (
    LOOPBACK,
    UAC_HOLD_SCENARIO,
    UAC_WAIT_BYE_SCENARIO,
    LoopbackCapture,
    require_root,
    require_tool,
    run_sipp,
    start_proxy,
    unused_media_port,
    unused_port,
    write_rtp_pcap,
)

pytestmark = pytest.mark.realpeers

CALLER_FRAMES = 40  # 800 ms of caller audio from the pcap
REPLY_MS = 400


def caller_payloads() -> list[bytes]:
    return [bytes([(n * 13 + i) % 251 for i in range(160)]) for n in range(CALLER_FRAMES)]


# Each speech API: its fake server (answering the caller's speech with ``reply``, all at once)
# and the [openai] settings that make rtpai speak it.
def model_server(api: str, reply: bytes) -> tuple[FakeRealtimeServer | FakeLiveServer, dict]:
    if api == "live":
        # GPT-Live's model yields when the caller talks over it (and rtpai then clears what
        # it holds): it answers once the caller's whole utterance is in.
        return FakeLiveServer(reply_audio=reply, respond_after_ms=CALLER_FRAMES * 20,
                              speed=0), {"OPENAI_API": "live"}
    server = FakeRealtimeServer(reply_audio=reply, respond_after_ms=300, speed=0,
                                beta=api == "beta")
    return server, {"OPENAI_API_DIALECT": api}


@pytest.mark.parametrize("api", ["ga", "beta", "live"])
async def test_sipp_call_through_the_proxy_reaches_the_model_and_back(tmp_path, proxy_kind, api):
    require_tool("sipp")
    require_root()  # sipp's pcap player and LoopbackCapture use raw sockets

    payloads = caller_payloads()
    pcap = tmp_path / "caller.pcap"
    write_rtp_pcap(pcap, payloads)
    reply_audio = tone("pcmu", REPLY_MS, hz=440)
    server, api_settings = model_server(api, reply_audio)
    sip_port, sipp_port, media_port = unused_port(), unused_port(), unused_media_port()
    http_port = unused_port(socket.SOCK_STREAM)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            path = "/RPC" if proxy_kind == "kamailio" else "/mi"
            engine = engine_for_test(url, RTP_MIN_PORT="42000", RTP_MAX_PORT="42099",
                                     PROXY_TYPE=proxy_kind,
                                     PROXY_URL=f"http://127.0.0.1:{http_port}{path}",
                                     **api_settings)
            deletes = watch(engine, "delete")
            ng_address = await nursery.start(engine.run)  # the engine first: Kamailio pings it
            async with (
                start_proxy(proxy_kind, tmp_path, sip_port=sip_port, ng_port=ng_address[1],
                            http_port=http_port),
                LoopbackCapture(media_port) as capture,
            ):
                sipp_done = trio.Event()

                async def call() -> None:
                    await run_sipp(
                        UAC_WAIT_BYE_SCENARIO,
                        target=(LOOPBACK, sip_port),
                        local_port=sipp_port,
                        media_port=media_port,
                        pcap=pcap,
                        extra=("-recv_timeout", "30000"),  # it waits for the BYE below
                    )
                    sipp_done.set()

                nursery.start_soon(call)

                # The session opened at offer time; the caller's audio reaches it unchanged.
                session = await server.wait_for_session(1)
                assert session.headers["authorization"] == "Bearer test-key"
                await session.wait_until(lambda s: len(s.audio_in) >= CALLER_FRAMES * 160)
                assert bytes(session.audio_in) == b"".join(payloads)
                assert session.model == ("gpt-live-1" if api == "live" else "gpt-realtime-2.1")
                call = next(iter(engine.calls))
                rtp_port = call.media.local_port

                # The model's reply reaches sipp's RTP port, paced RTP from rtpai's port.
                heard = bytearray()
                packets = []
                while reply_audio not in heard:
                    datagram = await capture.receive()
                    assert datagram.src == (LOOPBACK, rtp_port)
                    packet = parse_rtp(datagram.payload)
                    packets.append(packet)
                    heard += packet.payload
                assert len({p.ssrc for p in packets}) == 1
                assert all(p.payload_type == 0 for p in packets)

                # Done: rtpai ends the call; the proxy BYEs sipp and deletes the call on rtpai.
                call.end(EndReason.SHUTDOWN, "test done")
                await sipp_done.wait()
                await deletes.wait_for(1)  # the proxy's BYE to its inner UAS -> rtpengine_delete

            assert engine.proxy.sent[0].reason == "test done"
            assert server.crashes == []
            assert not [e for e in session.server_events if e["type"] == "error"]
            assert len(engine.calls) == 0
            assert engine.ports.in_use == 0
            for port in (rtp_port, rtp_port + 1):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    probe.bind((LOOPBACK, port))
            await session.closed.wait()
            nursery.cancel_scope.cancel()


async def test_reinvite_hold_and_resume_through_the_proxy(tmp_path, proxy_kind):
    """sipp holds (a=sendonly) and resumes the call: one call, same port, the right answers.

    sipp's scenario fails the call unless the 200 to the hold carries a=recvonly and the 200
    to the resume a=sendrecv.
    """
    require_tool("sipp")
    require_root()
    pcap = tmp_path / "caller.pcap"
    write_rtp_pcap(pcap, caller_payloads()[:10])
    server = FakeRealtimeServer(respond_after_ms=None)
    sip_port, sipp_port, media_port = unused_port(), unused_port(), unused_media_port()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine = engine_for_test(url, RTP_MIN_PORT="42100", RTP_MAX_PORT="42199")
            offers = watch(engine, "offer")
            answer_commands = watch(engine, "answer")
            ng_address = await nursery.start(engine.run)
            async with start_proxy(proxy_kind, tmp_path, sip_port=sip_port,
                                   ng_port=ng_address[1]):
                await run_sipp(
                    UAC_HOLD_SCENARIO,
                    target=(LOOPBACK, sip_port),
                    local_port=sipp_port,
                    media_port=media_port,
                    pcap=pcap,
                    pause_ms=400,
                )
            nursery.cancel_scope.cancel()

    answers = [parse_sdp(reply["sdp"]) for _, reply in offers.seen]
    assert len(answers) == 3
    assert len({answer.media[0].port for answer in answers}) == 1  # the re-INVITEs kept it
    assert engine.totals["calls"] == 1  # updated in place, never a new call
    assert [a.media[0].direction for a in answers] == ["sendrecv", "recvonly", "sendrecv"]
    assert [int(a.origin.session_version) for a in answers] == [1, 2, 3]
    # The proxy named the dialog with the To-tag rtpai was given in the first offer (Kamailio)
    # or in the answer to it (OpenSIPS).
    if proxy_kind == "kamailio":
        dialog_to_tag = offers.seen[0][0]["to-tag"]
    else:
        assert "to-tag" not in offers.seen[0][0]
        dialog_to_tag = answer_commands.seen[0][0]["to-tag"]
    assert dialog_to_tag
    assert all(request["to-tag"] == dialog_to_tag for request, _ in offers.seen[1:])
    # sipp's BYE -> rtpengine_delete: the call is gone, its ports are free.
    assert len(engine.calls) == 0 and engine.ports.in_use == 0
    assert engine.dispatcher.commands["delete"] == 1

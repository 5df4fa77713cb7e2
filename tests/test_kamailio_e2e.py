"""The whole path on real parts: sipp -> Kamailio 5.6 or OpenSIPS 3.6 (rtpengine module) ->
rtpai -> Realtime. Each test runs once per proxy (the ``proxy_kind`` fixture).

sipp places a call and plays the caller's RTP from a pcap; the proxy answers it with the SDP
rtpai returns from ``offer``; rtpai streams the caller's audio to the fake Realtime server and
the server's reply back to sipp's RTP port (seen on lo, byte for byte); BYE -> ``delete`` ends
the call and frees its ports. Breaking rtpai's SDP, media or delete handling fails this test.

The calls end on events, not on timers: the first waits for the whole reply to arrive and then
has rtpai hang up through Kamailio (sipp expects that BYE); the second is sipp's own BYE. The
first runs again behind Kamailio against the fake in Azure's and in xAI's shape
(``[openai] provider``): their endpoint, credentials and session shape, end to end; and on each
speech API rtpai speaks (issue 15): Realtime GA, Realtime beta and GPT-Live (``[openai] api``),
each against its strict fake.
"""

from __future__ import annotations

import socket

import pytest
import trio

from media import send_thread
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
    require_proxy,
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


# What each provider's shape, or protocol, must show on the fake's side of the call.
PROVIDERS = {
    "openai": ({}, {}, lambda s: s.headers["authorization"] == "Bearer test-key"),
    "azure": ({"provider": "azure"},
              {"OPENAI_PROVIDER": "azure", "OPENAI_API_MODEL": "rtpai-deployment"},
              lambda s: (s.headers["api-key"] == "test-key" and s.model == "rtpai-deployment"
                         and "authorization" not in s.headers)),
    "xai": ({"provider": "xai"}, {"OPENAI_PROVIDER": "xai", "OPENAI_VOICE": "eve"},
            lambda s: (s.headers["authorization"] == "Bearer test-key"
                       and s.session["voice"] == "Eve"
                       and s.session["audio"]["input"]["format"]["type"] == "audio/pcmu")),
    "beta": ({"beta": True}, {"OPENAI_API_DIALECT": "beta"},
             lambda s: (s.headers["openai-beta"] == "realtime=v1"
                        and s.session["input_audio_format"] == "g711_ulaw")),
    # GPT-Live: its own fake (tests/fakes/live.py). Its model yields when the caller talks
    # over it (rtpai then clears what it holds), so it answers the caller's whole utterance.
    "live": ({"respond_after_ms": CALLER_FRAMES * 20}, {"OPENAI_API": "live"},
             lambda s: (s.headers["authorization"] == "Bearer test-key"
                        and s.model == "gpt-live-1" and "openai-beta" not in s.headers
                        and s.session["audio"]["input"]["format"] == {"type": "audio/pcmu",
                                                                     "rate": 8000})),
}
# The message that configures each protocol's session.
FIRST_EVENT = {"live": "session.start"}


async def test_sipp_call_through_the_proxy_reaches_the_model_and_back(tmp_path, proxy_kind):
    await call_through_the_proxy(tmp_path, proxy_kind, "openai", rtp_ports=("42000", "42099"))


@pytest.mark.parametrize("provider", ["azure", "xai"])
async def test_provider_shapes_through_kamailio(tmp_path, provider):
    """Azure's and xAI's shapes, end to end behind the real Kamailio, against the strict fake
    in that shape: a wrong URL, header or session field fails the call's first steps."""
    require_proxy("kamailio")
    await call_through_the_proxy(tmp_path, "kamailio", provider, rtp_ports=("42200", "42299"))


@pytest.mark.parametrize("api", ["beta", "live"])
async def test_each_speech_api_through_the_proxy(tmp_path, proxy_kind, api):
    """Realtime beta and GPT-Live beside the GA call above, behind each real proxy (issue 15:
    a Kamailio call on each protocol rtpai speaks)."""
    await call_through_the_proxy(tmp_path, proxy_kind, api, rtp_ports=("42300", "42399"))


async def call_through_the_proxy(tmp_path, proxy_kind: str, provider: str, *,
                                 rtp_ports: tuple[str, str]) -> None:
    require_tool("sipp")
    require_root()  # sipp's pcap player and LoopbackCapture use raw sockets

    payloads = caller_payloads()
    pcap = tmp_path / "caller.pcap"
    write_rtp_pcap(pcap, payloads)
    reply_audio = tone("pcmu", REPLY_MS, hz=440)
    fake_shape, env, shape_ok = PROVIDERS[provider]
    fake_server = FakeLiveServer if provider == "live" else FakeRealtimeServer
    server = fake_server(**{"reply_audio": reply_audio, "respond_after_ms": 300, "speed": 0,
                            **fake_shape})
    sip_port, sipp_port, media_port = unused_port(), unused_port(), unused_media_port()
    http_port = unused_port(socket.SOCK_STREAM)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            path = "/RPC" if proxy_kind == "kamailio" else "/mi"
            engine = engine_for_test(url, RTP_MIN_PORT=rtp_ports[0], RTP_MAX_PORT=rtp_ports[1],
                                     PROXY_TYPE=proxy_kind,
                                     PROXY_URL=f"http://127.0.0.1:{http_port}{path}", **env)
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
                await session.wait_for_client_event(FIRST_EVENT.get(provider, "session.update"))
                assert shape_ok(session)
                await session.wait_until(lambda s: len(s.audio_in) >= CALLER_FRAMES * 160)
                assert bytes(session.audio_in) == b"".join(payloads)
                call = next(iter(engine.calls))
                rtp_port = call.media.local_port
                # Where built, the media send thread paces the reply (docs/performance.md,
                # round 5): this is its end-to-end test as much as the Python sender's.
                assert (call.stream.sender._native is not None) == send_thread.available()

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
            assert [e for e in session.server_events if e["type"] == "error"] == []
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

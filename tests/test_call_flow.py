"""A whole call through the engine: fake proxy -> rtpai -> fake Realtime server -> fake caller.

Real sockets on 127.0.0.1, real trio-websocket; only the peers are fakes.
"""

from __future__ import annotations

import json
import re
import socket
from functools import partial

import pytest
import trio

from ctl.config import load_config
from ctl.engine import Engine
from ctl.ng import encode_request
from media.sdp import parse_sdp
from openai_flavor.websocket import accept_key
from tests.fakes.caller import FakeCaller
from tests.fakes.http import FakeHttpServer
from tests.fakes.proxy import FakeProxy
from tests.fakes.realtime import FakeRealtimeServer, ScriptedResponse, tone
from tests.fakes.session import wait_until

pytestmark = pytest.mark.trio

CALL_ID = "call-1@test"


def engine_config(url: str, **env: str):
    return load_config(
        None,
        environ={
            "NG_LISTEN": "127.0.0.1:0",
            "RTP_MIN_PORT": "41000",
            "RTP_MAX_PORT": "41099",
            "OPENAI_URL": url,
            "OPENAI_API_KEY": "test-key",
            **env,
        },
    )


def caller_speech(frames: int) -> list[bytes]:
    """Distinct frames, so the server's copy can be compared byte for byte."""
    return [bytes([(n * 7 + i) % 251 for i in range(160)]) for n in range(frames)]


def answer_port(sdp_text: str) -> int:
    return parse_sdp(sdp_text).media[0].port


async def start_engine(nursery, url: str, **env: str):
    engine = Engine(engine_config(url, **env))
    address = await nursery.start(engine.run)
    return engine, address


async def test_offer_media_both_ways_and_delete():
    reply_audio = tone("pcmu", 400)  # 400 ms, 20 frames
    server = FakeRealtimeServer(reply_audio=reply_audio, respond_after_ms=600, speed=0)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine, ng = await start_engine(nursery, url)
            caller = FakeCaller()
            await caller.bind()
            nursery.start_soon(caller.receive)
            async with FakeProxy(ng) as proxy:
                reply = await proxy.command(
                    "offer", **{"call-id": CALL_ID, "from-tag": "ft", "sdp": caller.sdp_offer()}
                )
                assert reply["result"] == "ok", reply
                answer = parse_sdp(reply["sdp"])
                audio = answer.media[0]
                assert [c.encoding for c in audio.codecs][0] == "PCMU"
                rtp_port = audio.port
                assert rtp_port % 2 == 0 and 41000 <= rtp_port < 41099

                # The session opens at offer time, before any media.
                session = await server.wait_for_session(1)
                assert session.headers["authorization"] == "Bearer test-key"
                assert session.model == "gpt-realtime-2.1"

                speech = caller_speech(50)
                await caller.stream(("127.0.0.1", rtp_port), speech)
                await session.wait_until(lambda s: len(s.audio_in) >= len(speech) * 160)
                assert bytes(session.audio_in) == b"".join(speech)  # byte for byte
                assert session.session["audio"]["input"]["format"]["type"] == "audio/pcmu"

                await caller.wait_for(lambda got: reply_audio in b"".join(p.payload for p in got))
                packets = caller.received
                # One SSRC, consecutive sequence numbers, timestamps 160 apart.
                assert len({p.ssrc for p in packets}) == 1
                for a, b in zip(packets, packets[1:], strict=False):
                    assert b.sequence == (a.sequence + 1) & 0xFFFF
                    assert b.timestamp == (a.timestamp + 160) & 0xFFFFFFFF
                # The marker bit starts the AI's talkspurt.
                first_ai = next(p for p in packets if p.payload == reply_audio[:160])
                assert first_ai.marker

                query = await proxy.command("query", **{"call-id": CALL_ID})
                assert query["rtpai"]["state"] == "active"

                deleted = await proxy.command("delete", **{"call-id": CALL_ID, "from-tag": "ft"})
                assert deleted["result"] == "ok"
                assert deleted["totals"]["RTP"]["packets"] >= 50 + 20
                stream = deleted["tags"]["ft"]["medias"][0]["streams"][0]
                assert stream["local port"] == rtp_port
                assert stream["stats"]["packets"] == 50
                assert stream["endpoint"]["port"] == caller.port
                ai = deleted["rtpai"]["ai"]
                assert ai["audio sent bytes"] == 50 * 160
                assert ai["audio received bytes"] == len(reply_audio)
                # Transcripts and usage, under rtpai's own key in the delete reply.
                assert [(e["role"], e["text"]) for e in ai["transcript"]] == [
                    ("caller", "hello"),
                    ("assistant", "Hello! How can I help you today?"),
                ]
                # Each said some time after the offer, in order (seconds, for the record).
                said = [e["at s"] for e in ai["transcript"]]
                assert 0 <= said[0] <= said[1] < 20  # whole seconds: bencode has no floats
                # What it cost, by the default [pricing] table (the interface the metrics read).
                assert ai["cost"]["model"] == "gpt-realtime-2.1"
                # bencode (this fake proxy's) rounds floats: the cost survives in micro-dollars.
                assert ai["cost"]["usd micros"] > 0 and ai["cost"]["prices_as_of"] == "2026-12-01"
                usage = next(e for e in session.server_events if e["type"] == "response.done")[
                    "response"]["usage"]
                assert ai["usage"] == usage and usage["total_tokens"] > 0
                assert query["rtpai"]["ai"]["transcript"] == ai["transcript"]
                assert deleted["rtpai"]["end reason"] == "deleted by the proxy"
                await session.closed.wait()  # delete closed the WebSocket

                # The ports are free again.
                for port in (rtp_port, rtp_port + 1):
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                        probe.bind(("127.0.0.1", port))
                assert engine.ports.in_use == 0
                again = await proxy.command("delete", **{"call-id": CALL_ID})
                assert again["result"] == "ok" and "warning" in again
            nursery.cancel_scope.cancel()


async def test_failing_ai_session_ends_that_call_only():
    server = FakeRealtimeServer(api_key="the-right-key", respond_after_ms=None)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine, ng = await start_engine(nursery, url, OPENAI_API_KEY="a-wrong-key")
            caller = FakeCaller()
            await caller.bind()
            async with FakeProxy(ng) as proxy:
                reply = await proxy.command(
                    "offer", **{"call-id": "bad", "from-tag": "f", "sdp": caller.sdp_offer()}
                )
                assert reply["result"] == "ok"
                (call,) = engine.calls.select("bad")
                await call.ended.wait()
                assert call.end_reason.startswith("AI session failed")
                assert "a-wrong-key" not in call.end_reason
                deleted = await proxy.command("delete", **{"call-id": "bad"})
                assert deleted["rtpai"]["ai"]["state"] == "failed"
                assert "a-wrong-key" not in repr(deleted)
                assert engine.ports.in_use == 0
                pong = await proxy.command("ping")
                assert pong == {"result": "pong"}
            nursery.cancel_scope.cancel()


async def test_offer_refused_without_key_and_when_disabled():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            _, ng = await start_engine(nursery, "ws://127.0.0.1:9/v1/realtime", OPENAI_API_KEY="")
            caller = FakeCaller()
            await caller.bind()
            async with FakeProxy(ng) as proxy:
                reply = await proxy.command(
                    "offer", **{"call-id": "c", "from-tag": "f", "sdp": caller.sdp_offer()}
                )
                assert reply["result"] == "error"
                assert "OPENAI_API_KEY" in reply["error-reason"]
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "params, reason",
    [
        ({"from-tag": "f", "sdp": "v=0"}, "No call-id in message"),
        ({"call-id": "c", "sdp": "v=0"}, "No from-tag in message"),
        ({"call-id": "c", "from-tag": "f"}, "No SDP body in message"),
    ],
)
async def test_offer_missing_keys(params, reason):
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            _, ng = await start_engine(nursery, "ws://127.0.0.1:9/v1/realtime")
            async with FakeProxy(ng) as proxy:
                reply = await proxy.command("offer", **params)
                assert reply == {"result": "error", "error-reason": reason}
            nursery.cancel_scope.cancel()


async def test_capacity_limit_answers_load_limit():
    server = FakeRealtimeServer(respond_after_ms=None)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            _, ng = await start_engine(nursery, url, NG_MAX_SESSIONS="1")
            caller = FakeCaller()
            await caller.bind()
            async with FakeProxy(ng) as proxy:
                first = await proxy.command(
                    "offer", **{"call-id": "1", "from-tag": "f", "sdp": caller.sdp_offer()}
                )
                assert first["result"] == "ok"
                second = await proxy.command(
                    "offer", **{"call-id": "2", "from-tag": "f", "sdp": caller.sdp_offer(),
                                "supports": ["load limit"]}
                )
                assert second == {"result": "load limit",
                                  "message": "Parallel session limit reached"}
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("setting, reason", [
    ({"OPENAI_DISABLE": "true"}, "AI sessions are disabled ([openai] disable)"),
    ({"OPENAI_API_KEY": ""}, "No OpenAI API key configured ([openai] key / OPENAI_API_KEY)"),
])
async def test_an_instance_that_cannot_serve_is_full_to_a_proxy_that_fails_over(setting, reason):
    """Kamailio 5.6 moves a call to the next engine only on "load limit" and on two capacity
    errors: an instance that is disabled or has no key answers "load limit" with its reason to
    a proxy that says it understands that, and the reason as an error to one that does not
    (OpenSIPS matches it with extra_failover_error). Either way it is counted."""
    server = FakeRealtimeServer(respond_after_ms=None)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine, ng = await start_engine(nursery, url, **setting)
            caller = FakeCaller()
            await caller.bind()
            async with FakeProxy(ng) as proxy:
                offer = {"call-id": "1", "from-tag": "f", "sdp": caller.sdp_offer()}
                full = await proxy.command("offer", **offer, supports=["load limit"])
                assert full == {"result": "load limit", "message": reason}
                refused = await proxy.command("offer", **offer)
                assert refused == {"result": "error", "error-reason": reason}
            assert engine.dispatcher.errors == {reason: 2} and len(engine.calls) == 0
            nursery.cancel_scope.cancel()


async def test_deleted_while_ringing_the_session_closes_cleanly():
    server = FakeRealtimeServer(respond_after_ms=None)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine, ng = await start_engine(nursery, url)
            caller = FakeCaller()
            await caller.bind()
            async with FakeProxy(ng) as proxy:
                await proxy.command(
                    "offer", **{"call-id": "ringing", "from-tag": "f", "sdp": caller.sdp_offer()}
                )
                # The session opened at offer time: the phone is still ringing, no media yet.
                session = await server.wait_for_session(1)
                await session.wait_for_client_event("session.update")
                call = engine.calls["ringing"]
                deleted = await proxy.command("delete", **{"call-id": "ringing"})
                # Answered at once: the call closes its session after the reply.
                assert deleted["rtpai"]["end reason"] == "deleted by the proxy"
                assert deleted["rtpai"]["state"] == "ending"
                await session.closed.wait()
                assert session.close_code == 1000  # a clean WebSocket close, not a drop
                await call.ended.wait()
                assert call.ai.state == "closed" and call.ai.stats.failure is None
                assert engine.ports.in_use == 0 and server.crashes == []
            nursery.cancel_scope.cancel()


async def test_deleted_during_the_handshake_the_session_is_abandoned_promptly():
    """A server that accepts TCP and never answers the upgrade: delete must not wait for it."""
    accepted = trio.Event()
    connections = []

    async def silent(stream):
        connections.append(stream)
        accepted.set()
        await trio.sleep_forever()

    with trio.fail_after(5):  # well under the 10 s connect timeout
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            engine, ng = await start_engine(nursery, f"ws://127.0.0.1:{port}/v1/realtime")
            caller = FakeCaller()
            await caller.bind()
            async with FakeProxy(ng) as proxy:
                await proxy.command(
                    "offer", **{"call-id": "hs", "from-tag": "f", "sdp": caller.sdp_offer()}
                )
                await accepted.wait()
                call = engine.calls["hs"]
                deleted = await proxy.command("delete", **{"call-id": "hs"})
                assert deleted["result"] == "ok"
                assert deleted["rtpai"]["ai"].get("failure") is None
                await call.ended.wait()  # promptly: the fail_after is well under 10 s
                assert call.ai.state == "closed" and call.ai.stats.failure is None
                assert engine.ports.in_use == 0
            nursery.cancel_scope.cancel()


def ai_frames(caller: FakeCaller, audio: bytes) -> list[bytes]:
    """The payloads the caller received that are frames of ``audio``."""
    frames = {audio[i:i + 160] for i in range(0, len(audio), 160)}
    return [p.payload for p in caller.received if p.payload in frames]


async def test_barge_in_over_real_rtp_truncates_at_exactly_what_the_caller_heard():
    # 150 frames, each unlike any other and unlike the caller's (step 2, not 1): the caller
    # can count exactly which frames of the answer it heard.
    answer = b"".join(bytes((n + 2 * i) % 256 for i in range(160)) for n in range(150))
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 400), respond_after_ms=600, speed=0)
    server.queue_response(ScriptedResponse(audio=answer))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine, ng = await start_engine(nursery, url)
            caller = FakeCaller()
            await caller.bind()
            nursery.start_soon(caller.receive)
            async with FakeProxy(ng) as proxy:
                offer = await proxy.command(
                    "offer", **{"call-id": "b", "from-tag": "f", "sdp": caller.sdp_offer()}
                )
                port = answer_port(offer["sdp"])
                session = await server.wait_for_session(1)
                await caller.stream(("127.0.0.1", port), caller_speech(30))
                await caller.wait_for(lambda got: len(ai_frames(caller, answer)) >= 10)
                await caller.stream(("127.0.0.1", port), caller_speech(30))  # talks over it
                await session.wait_until(lambda s: s.truncations)
                (truncation,) = session.truncations
                assert truncation["accepted"]
                heard = truncation["audio_end_ms"] // 20
                assert truncation["audio_end_ms"] == heard * 20 and 10 < heard < 150
                # The caller heard exactly those frames: all of them arrive, and no more after
                # a further round trip (the next answer is a different sound).
                await caller.wait_for(lambda got: len(ai_frames(caller, answer)) >= heard)
                await proxy.command("query", **{"call-id": "b"})
                assert len(ai_frames(caller, answer)) == heard
                assert ai_frames(caller, answer) == [
                    answer[i * 160:(i + 1) * 160] for i in range(heard)
                ]
            nursery.cancel_scope.cancel()


async def test_end_call_tool_ends_the_call_after_the_caller_heard_the_whole_goodbye():
    goodbye = tone("pcmu", 600, hz=523)
    server = FakeRealtimeServer(respond_after_ms=600, speed=0)
    server.queue_response(ScriptedResponse(audio=goodbye, transcript="Goodbye!",
                                           function_call=("end_call", {"reason": "resolved"})))
    hook = FakeHttpServer()  # the proxy's management interface: end_call needs one
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            hook_url = await nursery.start(hook.serve)
            engine, ng = await start_engine(nursery, url, PROXY_TYPE="webhook",
                                            PROXY_URL=hook_url)
            caller = FakeCaller()
            await caller.bind()
            nursery.start_soon(caller.receive)
            async with FakeProxy(ng) as proxy:
                offer = await proxy.command(
                    "offer", **{"call-id": "bye", "from-tag": "f", "sdp": caller.sdp_offer()}
                )
                await caller.stream(("127.0.0.1", answer_port(offer["sdp"])), caller_speech(30))
                (call,) = engine.calls.select("bye")
                await hook.wait_for(1)  # the proxy is asked once the goodbye has played
                assert json.loads(hook.requests[0].body)["reason"] == (
                    "the AI ended the call: resolved")
                assert goodbye in b"".join(p.payload for p in caller.received)
                deleted = await proxy.command("delete", **{"call-id": "bye"})  # its BYE
                assert deleted["rtpai"]["end reason"] == "the AI ended the call: resolved"
                assert deleted["rtpai"]["ai"]["tool calls"][0]["name"] == "end_call"
            nursery.cancel_scope.cancel()


async def test_transfer_tool_is_recorded_in_the_call_statistics():
    server = FakeRealtimeServer(respond_after_ms=600, speed=0, reply_audio=tone("pcmu", 200))
    server.queue_response(ScriptedResponse(audio=tone("pcmu", 200),
                                           function_call=("transfer_call", {})))
    hook = FakeHttpServer()  # the proxy's management interface: transfer_call needs one
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            hook_url = await nursery.start(hook.serve)
            engine, ng = await start_engine(nursery, url,
                                            OPENAI_TRANSFER_TARGET="sip:desk@example.com",
                                            PROXY_TYPE="webhook", PROXY_URL=hook_url)
            caller = FakeCaller()
            await caller.bind()
            async with FakeProxy(ng) as proxy:
                offer = await proxy.command(
                    "offer", **{"call-id": "t", "from-tag": "f", "sdp": caller.sdp_offer()}
                )
                await caller.stream(("127.0.0.1", answer_port(offer["sdp"])), caller_speech(30))
                session = await server.wait_for_session(1)
                await session.wait_for_client_event("response.create")
                query = await proxy.command("query", **{"call-id": "t"})
                (transfer,) = query["rtpai"]["transfers"]
                assert transfer["target"] == "sip:desk@example.com"
                # Told to the proxy once the words before it have played; the call stays
                # until the proxy's delete.
                assert query["rtpai"]["state"] == "active"
            nursery.cancel_scope.cancel()


async def test_concurrent_deletes_of_one_call_first_gets_its_statistics_then_a_warning():
    """As rtpengine: a delete is answered at once and the call is gone, so a second proxy's
    delete (another cookie, not a retransmit) finds no call: ok with a warning."""
    server = FakeRealtimeServer(respond_after_ms=None)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine, ng = await start_engine(nursery, url)
            caller = FakeCaller()
            await caller.bind()
            async with FakeProxy(ng) as first, FakeProxy(ng) as second:
                await first.command(
                    "offer", **{"call-id": "dd", "from-tag": "f", "sdp": caller.sdp_offer()}
                )
                await (await server.wait_for_session(1)).wait_for_client_event("session.update")
                replies = []

                async def delete(proxy):
                    replies.append(await proxy.command("delete", **{"call-id": "dd"}))

                async with trio.open_nursery() as both:
                    both.start_soon(delete, first)
                    both.start_soon(delete, second)
                assert [r["result"] for r in replies] == ["ok", "ok"]
                # Whichever was handled first (the replies may arrive in either order).
                first, second = sorted(replies, key=lambda reply: "warning" in reply)
                assert first["rtpai"]["end reason"] == "deleted by the proxy"
                assert second == {"result": "ok",
                                  "warning": "Call-ID not found or tags didn't match"}
                assert len(engine.calls) == 0 and engine.totals["ended"] == 1
            nursery.cancel_scope.cancel()


def drain(sock) -> int:
    """How many datagrams wait on ``sock``, read without blocking."""
    count = 0
    while True:
        try:
            sock._sock.recv(2048, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return count
        count += 1


async def test_delete_is_answered_before_the_ai_session_has_closed():
    """rtpengine answers a delete at once; the Kamailio module blocks a SIP worker until it
    does. A Realtime server that never answers our close frame holds the AI session's close
    for its whole bound (CLOSE_ON_END): the reply must not wait for it, nor for anything else
    of the closing. What the proxy sees afterwards is rtpengine's: the call is gone, a new
    delete gets a warning, a retransmit the same reply; the ports come back once closed."""
    upgraded = trio.Event()

    async def never_closes(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(4096)
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key(key.decode()).encode() + b"\r\n\r\n")
        upgraded.set()
        while await stream.receive_some(4096):
            pass  # reads everything, the close frame too, and answers nothing

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, never_closes, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            engine, ng = await start_engine(nursery, f"ws://127.0.0.1:{port}/v1/realtime")
            caller = FakeCaller()
            await caller.bind()
            async with FakeProxy(ng) as proxy:
                await proxy.command(
                    "offer", **{"call-id": "bye", "from-tag": "f", "sdp": caller.sdp_offer()})
                call = engine.calls["bye"]
                await upgraded.wait()
                await wait_until(call.ai, lambda session: session.state == "open")
                answer_port = int(re.search(r"m=audio (\d+)", call.answer_sdp).group(1))
                await caller.stream(("127.0.0.1", answer_port), [b"\xff" * 160] * 3)
                await trio.lowlevel.wait_readable(caller.sock)  # rtpai latched and sends
                cookie = proxy.next_cookie()
                datagram = encode_request(cookie, "delete", {"call-id": "bye"})
                deleted = await proxy.send_raw(datagram, cookie)
                assert deleted["result"] == "ok"
                assert deleted["rtpai"]["end reason"] == "deleted by the proxy"
                # The reply came while the session's close was still waiting for the server.
                assert not call.ended.is_set() and deleted["rtpai"]["state"] == "ending"
                assert engine.ports.in_use == 1  # not yet: its sockets are still open
                assert await proxy.send_raw(datagram, cookie) == deleted  # the cached reply
                assert await proxy.command("query", **{"call-id": "bye"}) == {
                    "result": "error", "error-reason": "Unknown call-id"}
                assert await proxy.command("delete", **{"call-id": "bye"}) == {
                    "result": "ok", "warning": "Call-ID not found or tags didn't match"}
                await call.ended.wait()  # the close's bound, in the call's own task
                assert call.ai.state == "closed"
                assert engine.ports.in_use == 0 and engine.totals["ended"] == 1
                # Nothing was sent after the reply: the call's media stopped as it ended
                # (loopback delivers at send time, so all that was sent is queued by now).
                sent = deleted["rtpai"]["rtp out"]["packets"]
                assert sent > 0 and drain(caller.sock) == sent
            nursery.cancel_scope.cancel()

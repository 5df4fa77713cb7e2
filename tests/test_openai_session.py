"""The Realtime session against the strict fake server, without the media plane.

The test plays the paced sender: it pops frames from the playout queue itself, so "the caller
heard N frames" is exact. Caller audio goes in through the bridge's channel, as the RTP
receiver would send it; the fake's VAD stand-in hears an utterance after 600 ms of it.
"""

from __future__ import annotations

import json
import pathlib
import ssl
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import pytest
import trio

from media.bridge import CallBridge, EndReason
from media.playout import PlayoutQueue
from media.poller import SocketPoller
from openai_flavor import events
from openai_flavor.session import RealtimeSession, RealtimeSessionError
from openai_flavor.settings import RealtimeSettings, ToolSpec
from tests.fakes.realtime import FakeRealtimeServer, ScriptedResponse, tone
from tests.fakes.session import wait_until
from tests.fakes.webhook import FakeWebhook

pytestmark = pytest.mark.trio

FRAME = 160  # 20 ms of G.711 at 8 kHz
UTTERANCE_MS = 600  # the fake's respond_after_ms


@dataclass(frozen=True)
class Digit:
    """What the media plane puts on caller_events for a DTMF key."""

    digit: str


@dataclass
class Harness:
    server: FakeRealtimeServer
    session: RealtimeSession
    bridge: CallBridge
    keys: trio.MemorySendChannel
    ended: list[str] = field(default_factory=list)
    transfers: list[str] = field(default_factory=list)
    failure: list[BaseException] = field(default_factory=list)
    call_ended: trio.Event = field(default_factory=trio.Event)

    async def speak(self, ms: int = UTTERANCE_MS) -> None:
        for _ in range(ms // 20):
            self.bridge.caller_audio(b"\x55" * FRAME)  # as the media plane hands it over
        await trio.lowlevel.checkpoint()

    def play(self, frames: int) -> list[bytes]:
        """Send ``frames`` frames to the 'caller', as the pacer would."""
        played = []
        for _ in range(frames):
            frame = self.bridge.playout.pop_frame()
            assert frame is not None, "fewer frames queued than the test plays"
            played.append(frame)
        return played

    def play_all(self) -> int:
        n = 0
        while self.bridge.playout.pop_frame() is not None:
            n += 1
        self.bridge.playout_ran_dry()
        return n


def make_settings(url: str, **overrides) -> RealtimeSettings:
    base = dict(url=url, model="gpt-realtime-2.1", api_key="test-key")
    return RealtimeSettings(**{**base, **overrides})


@asynccontextmanager
async def harness(server: FakeRealtimeServer, *, tls: ssl.SSLContext | None = None, **settings):
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(server.serve, ssl_context=tls))
        poller = SocketPoller()  # the engine's, in production: it reads the WebSocket
        await nursery.start(poller.run)
        keys_send, keys_receive = trio.open_memory_channel[Digit](8)
        h_ended: list[str] = []
        h_transfers: list[str] = []
        bridge = CallBridge(
            call_id="call-1@test", codec="PCMU", ptime_ms=20,
            playout=PlayoutQueue(FRAME, max_bytes=120 * 8000), end_call=lambda kind, reason: h_ended.append(reason),
            transfer=h_transfers.append, caller_events=keys_receive,
        )
        session = RealtimeSession(make_settings(url, **settings), bridge, poller)
        h = Harness(server, session, bridge, keys_send, h_ended, h_transfers)
        original_end = bridge.end_call

        def end_call(kind: EndReason, reason: str) -> None:
            original_end(kind, reason)
            h.call_ended.set()

        bridge.end_call = end_call

        async def run() -> None:
            try:
                await session.run()
            except RealtimeSessionError as exc:
                h.failure.append(exc)
                h.call_ended.set()

        nursery.start_soon(run)
        yield h
        nursery.cancel_scope.cancel()
    assert server.crashes == []


def errors(fake) -> list[dict]:
    return [e for e in fake.server_events if e["type"] == "error"]


# --- barge-in and truncation ---------------------------------------------------------------


async def test_truncation_is_exact_play_n_frames_barge_in_audio_end_is_n_times_ptime():
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 2000), speed=0)
    with trio.fail_after(10):
        async with harness(server) as h:
            fake = await server.wait_for_session()
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.responses == 1)
            item_id = next(
                e["item_id"] for e in fake.server_events if e["type"] == "response.output_audio.delta"
            )
            n = 7
            h.play(n)
            await h.speak()  # the caller talks over the answer
            await fake.wait_until(lambda f: f.truncations)
            await wait_until(h.session, lambda s: s.stats.truncations == 1)
            assert fake.truncations == [
                {"item_id": item_id, "content_index": 0, "audio_end_ms": n * 20, "accepted": True}
            ]
            # The rest of the interrupted answer is gone from the queue at once.
            assert not h.bridge.playout.holds(item_id)
            assert h.session.stats.barge_ins == 1
            assert errors(fake) == []


async def test_an_item_still_being_generated_is_truncated_even_with_an_empty_queue():
    # The server produces 200 ms and then keeps "generating": the caller has heard all of it
    # when they barge in, but the item is not complete, so it must still be truncated.
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 2000), speed=0, stall_after_ms=200)
    with trio.fail_after(10):
        async with harness(server) as h:
            fake = await server.wait_for_session()
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.audio_received_bytes == 200 * 8)
            h.play(10)
            assert len(h.bridge.playout) == 0
            await h.speak()
            await fake.wait_until(lambda f: f.truncations)
            assert fake.truncations[0]["audio_end_ms"] == 200
            assert fake.truncations[0]["accepted"]
            # The stalled response was cancelled by the server; its deltas would be dropped.
            await wait_until(h.session, lambda s: s.stats.responses >= 1)
            assert h.session.stats.barge_ins == 1
            assert errors(fake) == []


async def test_a_wss_session_carries_the_conversation_over_tls(monkeypatch):
    """Production is wss://: the TLS path (memory BIOs under rtpai's WebSocket) end to end,
    trusting the test certificate the way an operator adds a CA: SSL_CERT_FILE."""
    tls_dir = pathlib.Path(__file__).parent / "fakes" / "tls"
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_dir / "localhost.crt"))
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(tls_dir / "localhost.crt", tls_dir / "localhost.key")
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 400), speed=0)
    with trio.fail_after(10):
        async with harness(server, tls=server_tls) as h:
            assert server.url.startswith("wss://localhost:")
            fake = await server.wait_for_session()
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.responses == 1)
            assert h.play_all() == 20
            assert len(fake.audio_in) == 30 * 160  # every caller frame arrived, decrypted
            assert h.session.state == "open" and errors(fake) == []


async def test_an_answer_played_to_its_end_is_not_truncated():
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 410), speed=0)
    with trio.fail_after(10):
        async with harness(server) as h:
            fake = await server.wait_for_session()
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.responses == 1)
            assert h.play_all() == 21  # 410 ms, the last frame padded
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.responses == 2)
            assert fake.events_of("conversation.item.truncate") == []
            assert h.session.stats.barge_ins == 0
            assert errors(fake) == []


async def test_nothing_heard_is_not_truncated_but_playout_is_dropped():
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 1000), speed=0)
    with trio.fail_after(10):
        async with harness(server) as h:
            fake = await server.wait_for_session()
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.responses == 1)
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.barge_ins == 1)
            assert fake.events_of("conversation.item.truncate") == []
            assert errors(fake) == []


async def test_protected_welcome_plays_through_barge_in_then_barge_in_works_again():
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 1000), speed=0)
    with trio.fail_after(10):
        async with harness(
            server, welcome_message="Welcome to the test line.", welcome_interruptible=False
        ) as h:
            fake = await server.wait_for_session()
            first = await fake.wait_for_client_event("session.update")
            # The server must not cancel the welcome either.
            assert first["session"]["audio"]["input"]["turn_detection"]["interrupt_response"] is False
            h.bridge.media_started.set()
            welcome = await fake.wait_for_client_event("response.create")
            assert "Welcome to the test line." in welcome["response"]["instructions"]
            await wait_until(h.session, lambda s: s.stats.responses == 1)
            h.play(5)
            await h.speak()  # the caller talks over the welcome
            await wait_until(h.session, lambda s: s.stats.barge_ins_ignored == 1)
            assert len(h.bridge.playout) >= 45 * FRAME  # the welcome keeps playing
            assert fake.events_of("conversation.item.truncate") == []
            await wait_until(h.session, lambda s: s.stats.responses == 2)
            h.play_all()
            update = await fake.wait_for_client_event("session.update", 2)
            assert update["session"]["audio"]["input"]["turn_detection"]["interrupt_response"] is True
            assert fake.session["audio"]["input"]["turn_detection"]["interrupt_response"] is True
            # From now on a barge-in is honoured.
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.responses == 3)
            h.play(3)
            await h.speak()
            await fake.wait_until(lambda f: f.truncations)
            assert fake.truncations[-1]["audio_end_ms"] == 60 and fake.truncations[-1]["accepted"]
            assert errors(fake) == []


async def test_welcome_is_spoken_once_media_flows_and_interruptible_by_default():
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 400), speed=0)
    with trio.fail_after(10):
        async with harness(server, welcome_message="Hi!") as h:
            fake = await server.wait_for_session()
            await fake.wait_for_client_event("session.update")
            assert fake.events_of("response.create") == []  # no media yet: nobody would hear
            h.bridge.media_started.set()
            await fake.wait_for_client_event("response.create")
            assert fake.session["audio"]["input"]["turn_detection"]["interrupt_response"] is True


# --- dialects ------------------------------------------------------------------------------


async def test_beta_dialect_end_to_end_against_the_fake_in_beta_mode():
    reply = tone("pcmu", 400)
    server = FakeRealtimeServer(beta=True, reply_audio=reply, speed=0)
    with trio.fail_after(10):
        async with harness(server, dialect="beta", model="gpt-4o-realtime-preview",
                           temperature=0.7, welcome_message="Hello") as h:
            fake = await server.wait_for_session()
            assert fake.headers["openai-beta"] == "realtime=v1"
            await fake.wait_for_client_event("session.update")
            assert fake.session["temperature"] == 0.7
            assert fake.session["input_audio_format"] == "g711_ulaw"
            h.bridge.media_started.set()
            await wait_until(h.session, lambda s: s.stats.responses == 1)
            assert b"".join(h.play(20)) == reply
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.responses == 2)
            assert bytes(fake.audio_in) == b"\x55" * FRAME * 30
            assert {e["role"] for e in h.session.stats.transcript} == {"caller", "assistant"}
            assert h.session.stats.usage["total_tokens"] > 0
            assert errors(fake) == []


async def test_ga_against_the_strict_fake_gets_no_error_event_at_all():
    """Everything rtpai sends in a busy GA call passes the strict schema: not one error."""
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 1000), speed=0)
    lookup = ToolSpec("lookup", "Look something up", {"type": "object", "properties": {}})
    webhook = FakeWebhook()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(webhook.serve)
            async with harness(
                server, welcome_message="Hi", welcome_interruptible=False, temperature=1.1,
                explicit=frozenset({"temperature"}), turn_detection_type="semantic_vad",
                transfer_target="sip:desk@example.com", tools=(lookup,), tool_webhook=url,
                instructions="Be brief.",
            ) as h:
                fake = await server.wait_for_session()
                h.bridge.media_started.set()
                await wait_until(h.session, lambda s: s.stats.responses == 1)
                h.play_all()
                await fake.wait_for_client_event("session.update", 2)
                server.queue_response(ScriptedResponse(function_call=("lookup", {}), audio=None))
                await h.speak()
                await fake.wait_for_client_event("conversation.item.create")
                await wait_until(h.session, lambda s: s.stats.responses == 3)
                h.play(4)
                await h.speak()
                await fake.wait_until(lambda f: f.truncations)
                await h.keys.send(Digit("5"))
                await h.keys.send(Digit("#"))
                await fake.wait_until(lambda f: len(f.events_of("conversation.item.create")) == 2)
                await wait_until(h.session, lambda s: s.stats.responses >= 5)
                assert "temperature" not in json.dumps(fake.events_of("session.update"))
                assert errors(fake) == []
            nursery.cancel_scope.cancel()


# --- tools ---------------------------------------------------------------------------------


async def test_end_call_hangs_up_only_after_the_goodbye_has_played():
    goodbye = tone("pcmu", 400)
    server = FakeRealtimeServer(speed=0)
    server.queue_response(ScriptedResponse(audio=goodbye, transcript="Goodbye!",
                                           function_call=("end_call", {"reason": "done"})))
    with trio.fail_after(10):
        async with harness(server) as h:
            fake = await server.wait_for_session()
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.tool_calls)
            assert h.session.stats.tool_calls[0]["result"] == "hang up"
            h.play(19)
            assert h.ended == []  # response.done came long ago; the goodbye is still playing
            h.play(1)
            h.bridge.playout_ran_dry()  # the pacer finds the queue empty
            assert h.ended == ["the AI ended the call: done"]
            assert errors(fake) == []


async def test_end_call_without_a_goodbye_asks_for_one_then_hangs_up_after_it():
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 200), speed=0)
    server.queue_response(ScriptedResponse(audio=None, function_call=("end_call", {})))
    with trio.fail_after(10):
        async with harness(server) as h:
            fake = await server.wait_for_session()
            await h.speak()
            output = await fake.wait_for_client_event("conversation.item.create")
            assert output["item"]["type"] == "function_call_output"
            assert "goodbye" in output["item"]["output"].lower()
            await fake.wait_for_client_event("response.create")
            await wait_until(h.session, lambda s: s.stats.responses == 2)
            assert h.ended == []
            assert h.play_all() == 10
            assert h.ended == ["the AI ended the call"]
            assert errors(fake) == []


@pytest.mark.parametrize(
    "target, allowed",
    [("sip:sales@example.com", True), ("sip:premium@example.com", False), (None, True)],
)
async def test_transfer_call_checks_the_allow_list(target, allowed):
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 200), speed=0)
    arguments = {"target": target} if target else {}
    server.queue_response(ScriptedResponse(audio=tone("pcmu", 200),
                                           function_call=("transfer_call", arguments)))
    with trio.fail_after(10):
        async with harness(server, transfer_target="sip:desk@example.com",
                           transfer_allow=("sip:sales@example.com",)) as h:
            fake = await server.wait_for_session()
            tools = {t["name"]: t for t in (await fake.wait_for_client_event("session.update"))["session"]["tools"]}
            assert tools["transfer_call"]["parameters"]["properties"]["target"]["enum"] == [
                "sip:desk@example.com", "sip:sales@example.com"]
            await h.speak()
            output = json.loads((await fake.wait_for_client_event("conversation.item.create"))["item"]["output"])
            # The model gets the result and goes on (it tells the caller).
            await fake.wait_for_client_event("response.create")
            assert output["ok"] is allowed
            if allowed:
                assert h.transfers == [target or "sip:desk@example.com"]
            else:
                assert h.transfers == [] and "sip:sales@example.com" in output["allowed targets"]
            assert h.ended == []
            assert errors(fake) == []


@pytest.mark.parametrize("chunked", [False, True])
async def test_custom_tool_goes_to_the_webhook_and_its_answer_to_the_model(chunked):
    lookup = ToolSpec("lookup_order", "Find an order",
                      {"type": "object", "properties": {"id": {"type": "string"}}})
    webhook = FakeWebhook(answer=lambda p: (200, b'{"status": "shipped"}'), chunked=chunked)
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 200), speed=0)
    server.queue_response(ScriptedResponse(audio=None, function_call=("lookup_order", {"id": "42"})))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(webhook.serve)
            async with harness(server, tools=(lookup,), tool_webhook=url) as h:
                fake = await server.wait_for_session()
                await h.speak()
                item = (await fake.wait_for_client_event("conversation.item.create"))["item"]
                await fake.wait_for_client_event("response.create")
                call_id = next(iter(fake.function_calls))
                assert item == {"type": "function_call_output", "call_id": call_id,
                                "output": '{"status": "shipped"}'}
                (request,) = webhook.requests
                assert request["request line"] == "POST /rtpai/tools?token=t HTTP/1.1"
                assert request["json"] == {"call_id": "call-1@test", "tool": "lookup_order",
                                           "arguments": {"id": "42"}}
                assert errors(fake) == []
            nursery.cancel_scope.cancel()


async def test_a_webhook_that_does_not_answer_in_time_gives_the_model_an_error(autojump_clock):
    lookup = ToolSpec("lookup_order", "Find an order", {"type": "object", "properties": {}})
    webhook = FakeWebhook(hang=True)
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 200), speed=0)
    server.queue_response(ScriptedResponse(audio=None, function_call=("lookup_order", {})))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(webhook.serve)
            async with harness(server, tools=(lookup,), tool_webhook=url, tool_timeout=3) as h:
                fake = await server.wait_for_session()
                start = trio.current_time()
                await h.speak()
                item = (await fake.wait_for_client_event("conversation.item.create"))["item"]
                assert 3 <= trio.current_time() - start < 4
                assert "did not answer in time" in item["output"]
                await fake.wait_for_client_event("response.create")
                assert h.session.stats.tool_calls[0]["result"] == "error"
            nursery.cancel_scope.cancel()


async def test_dtmf_digits_reach_the_model_as_one_message():
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 200), speed=0)
    with trio.fail_after(10):
        async with harness(server) as h:
            fake = await server.wait_for_session()
            await fake.wait_for_client_event("session.update")
            for key in "42#":
                await h.keys.send(Digit(key))
            item = (await fake.wait_for_client_event("conversation.item.create"))["item"]
            assert item["role"] == "user"
            assert "42#" in item["content"][0]["text"]
            await fake.wait_for_client_event("response.create")
            await wait_until(h.session, lambda s: s.stats.responses == 1)
            assert h.session.stats.dtmf_digits == 3
            assert errors(fake) == []


async def test_a_configured_terminator_ends_the_sequence():
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 200), speed=0)
    with trio.fail_after(10):
        async with harness(server, dtmf_terminator="*") as h:
            fake = await server.wait_for_session()
            await fake.wait_for_client_event("session.update")
            for key in "12*":  # sent at once: no pause could have ended it in time
                await h.keys.send(Digit(key))
            with trio.fail_after(1):  # less than the 1.5 s pause: '*' ended it
                item = (await fake.wait_for_client_event("conversation.item.create"))["item"]
            assert "12*" in item["content"][0]["text"]


async def test_dtmf_during_a_response_waits_for_it_to_finish():
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 2000), speed=0, stall_after_ms=100)
    with trio.fail_after(10):
        async with harness(server, turn_detection_type="none") as h:
            fake = await server.wait_for_session()
            await fake.wait_for_client_event("session.update")
            await h.keys.send(Digit("#"))
            await fake.wait_for_client_event("response.create")
            await wait_until(h.session, lambda s: s.stats.audio_received_bytes > 0)
            await h.keys.send(Digit("1"))
            await h.keys.send(Digit("#"))
            await fake.wait_for_client_event("conversation.item.create", 2)
            # The server is still busy: a second response.create would be refused.
            assert len(fake.events_of("response.create")) == 1
            await fake.wait_for_client_event("response.create")
            assert errors(fake) == []


async def test_a_failed_transfer_is_told_to_the_model_which_answers_the_caller():
    """The REFER goes out after playout, long after the tool call was answered {"ok": true}:
    when the proxy refuses it, the model hears so and a response follows."""
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 200), speed=0)
    with trio.fail_after(10):
        async with harness(server) as h:
            fake = await server.wait_for_session()
            await fake.wait_for_client_event("session.update")
            await wait_until(h.session, lambda s: s.ready)
            h.bridge.action_failed("transfer", "the caller answered 603 Declined")
            item = (await fake.wait_for_client_event("conversation.item.create"))["item"]
            assert item["role"] == "system"
            text = item["content"][0]["text"]
            assert "transfer you asked for did not go through" in text
            assert "603 Declined" in text
            await fake.wait_for_client_event("response.create")
            assert h.session.stats.errors[-1]["code"] == "transfer failed"
            assert errors(fake) == []


# --- failures and reconnects ---------------------------------------------------------------


async def test_invalid_key_is_fatal_and_never_retried():
    server = FakeRealtimeServer(api_key="the-right-key")
    with trio.fail_after(10):
        async with harness(server, api_key="sk-a-wrong-key") as h:
            await h.call_ended.wait()
            (failure,) = h.failure
            assert "invalid_api_key" in str(failure)
            assert "sk-a-wrong-key" not in str(failure) + repr(h.session.snapshot())
            assert len(server.sessions) == 1
            assert h.session.state == "failed"


async def test_beta_header_against_a_ga_server_is_fatal():
    server = FakeRealtimeServer()
    with trio.fail_after(10):
        async with harness(server, dialect="beta") as h:
            await h.call_ended.wait()
            assert "beta_api_shape_disabled" in str(h.failure[0])
            assert len(server.sessions) == 1


async def test_rate_limited_handshakes_are_retried_with_back_off(autojump_clock):
    server = FakeRealtimeServer(reject_first=3, reject_status=429)
    with trio.fail_after(60):
        async with harness(server) as h:
            start = trio.current_time()
            fake = await server.wait_for_session()
            await fake.wait_for_client_event("session.update")
            assert server.rejected == 3
            # Immediate, then two backed-off retries: 0.25-0.5 s and 0.5-1 s.
            assert 0.75 <= trio.current_time() - start <= 1.5
            assert h.session.stats.reconnects == 3 and h.ended == [] and h.failure == []


async def test_unreachable_ai_ends_the_call_after_the_bound(autojump_clock):
    server = FakeRealtimeServer(reject_connections=True, reject_status=503)
    with trio.fail_after(120):
        async with harness(server, reconnect_timeout=20) as h:
            start = trio.current_time()
            await h.call_ended.wait()
            assert trio.current_time() - start == pytest.approx(20, abs=0.01)
            assert "could not be reached within 20 s" in str(h.failure[0])
            assert "HTTP 503" in str(h.failure[0])
            assert server.rejected >= 6


async def test_server_error_events_are_logged_and_the_session_goes_on():
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 200), speed=0)
    with trio.fail_after(10):
        async with harness(server) as h:
            fake = await server.wait_for_session()
            await wait_until(h.session, lambda s: s.ready)
            await server.send_error_all("rate_limit_exceeded", "Rate limit reached.", "rate_limit_error")
            await wait_until(h.session, lambda s: s.stats.errors)
            assert h.session.stats.errors == [{"code": "rate_limit_exceeded", "message": "Rate limit reached."}]
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.responses == 1)
            assert h.session.stats.reconnects == 0 and h.ended == [] and not fake.closed.is_set()


async def test_a_fatal_error_event_ends_the_call_at_once():
    server = FakeRealtimeServer()
    with trio.fail_after(10):
        async with harness(server) as h:
            await wait_until(h.session, lambda s: s.ready)
            await server.send_error_all("insufficient_quota", "You exceeded your quota.", "insufficient_quota")
            await h.call_ended.wait()
            assert "insufficient_quota" in str(h.failure[0])
            assert len(server.sessions) == 1


@pytest.mark.parametrize("how", ["abort", "close 1011"])
async def test_abrupt_close_reconnects_and_recaps_the_conversation(how):
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 200), speed=0,
                                caller_transcript="I want to book a table",
                                reply_transcript="For how many people?")
    with trio.fail_after(10):
        async with harness(server, instructions="You take restaurant bookings.") as h:
            first = await server.wait_for_session()
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.responses == 1)
            assert len(h.session.stats.transcript) == 2
            if how == "abort":
                await server.abort_all()
            else:
                await server.close_all(1011, "internal error")
            second = await server.wait_for_session(2)
            update = await second.wait_for_client_event("session.update")
            instructions = update["session"]["instructions"]
            assert instructions.startswith("You take restaurant bookings.")
            assert "caller: I want to book a table\nassistant: For how many people?" in instructions
            # The call stays up and the new session works.
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.responses == 2)
            assert h.ended == [] and h.failure == []
            assert h.session.stats.reconnects == 1
            assert errors(first) == [] and errors(second) == []
            assert len(second.audio_in) == UTTERANCE_MS * 8  # no stale audio replayed


async def test_the_60_minute_session_cap_is_survived(autojump_clock):
    server = FakeRealtimeServer(close_after_s=3600, respond_after_ms=None)
    with trio.fail_after(4000):
        async with harness(server, welcome_message="Hi") as h:
            first = await server.wait_for_session()
            h.bridge.media_started.set()
            second = await server.wait_for_session(2)
            await second.wait_for_client_event("session.update")
            assert first.close_code == 1001
            assert trio.current_time() == pytest.approx(3600, abs=1)
            # A new session at once, no second welcome, the call still up.
            assert second.events_of("response.create") == []
            assert h.ended == [] and h.failure == []
            assert {"code": "session_expired"}.items() <= h.session.stats.errors[0].items()


async def test_one_sessions_failure_does_not_touch_another():
    good = FakeRealtimeServer(reply_audio=tone("pcmu", 200), speed=0)
    bad = FakeRealtimeServer(api_key="other")
    with trio.fail_after(10):
        async with harness(good) as ok, harness(bad) as failing:
            await failing.call_ended.wait()
            await ok.speak()
            await wait_until(ok.session, lambda s: s.stats.responses == 1)
            assert ok.ended == [] and ok.failure == [] and ok.session.state == "open"


async def test_a_bug_while_handling_an_event_ends_that_connection_and_not_the_call(monkeypatch):
    """Events are handled in the engine's poller: a bug there must not reach the poller's
    other sockets (every call's RTP), nor end the call; the session reconnects."""
    original = events.decode_audio_delta
    raised: list[str] = []

    def first_delta_breaks(event):
        if not raised:
            raised.append(event["type"])
            raise RuntimeError("a bug")
        return original(event)

    monkeypatch.setattr(events, "decode_audio_delta", first_delta_breaks)
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 400), speed=0)
    with trio.fail_after(10):
        async with harness(server) as h:
            await server.wait_for_session()
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.reconnects == 1)
            await server.wait_for_session(2)
            assert raised and h.failure == [] and h.ended == []
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.audio_received_bytes > 0)


async def test_a_failure_handling_server_events_is_the_ai_sessions_not_the_media_pollers(
        monkeypatch, caplog):
    """A bug met while handling a Realtime event is logged as this call's AI session's and
    ends that connection only (the session reconnects); the media poller, which serves every
    call's RTP, neither logs it nor drops anything of its own."""
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 200), speed=0)
    with trio.fail_after(10):
        async with harness(server) as h:
            await wait_until(h.session, lambda s: s.ready)

            def broken(total, usage):
                raise RuntimeError("a bug in usage accounting")

            monkeypatch.setattr(events, "add_usage", broken)
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.reconnects == 1)
            monkeypatch.undo()
            await server.wait_for_session(2)
            await wait_until(h.session, lambda s: s.ready)
    assert h.session.stats.last_loss == "internal error while handling the server's events"
    assert h.ended == [] and h.failure == []
    assert not [r for r in caplog.records if r.name == "rtpai.media"]
    logged = [r for r in caplog.records if r.name == "rtpai.openai" and r.exc_info]
    assert [r.getMessage() for r in logged] == [
        "call call-1@test: AI session: failed to handle Realtime API events; this connection ends"]
    assert "a bug in usage accounting" in str(logged[0].exc_info[1])

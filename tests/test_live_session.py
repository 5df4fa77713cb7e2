"""The GPT-Live session (openai_flavor/live/) against the strict fake GPT-Live server.

As in tests/test_openai_session.py the test plays the paced sender (it pops the playout queue
itself) and the media plane (it hands caller frames to the bridge). The fake's model answers
600 ms of caller speech and interrupts itself when the caller speaks over it.
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio

from media.bridge import CallBridge
from media.playout import PlayoutQueue
from media.poller import SocketPoller
from openai_flavor.errors import RealtimeSessionError, api_name, lost_from
from openai_flavor.live.session import LiveSession
from openai_flavor.live.settings import LiveSettings
from openai_flavor.settings import RealtimeSettings
from openai_flavor.websocket import CLOSE_ABNORMAL, ConnectionClosed, HandshakeRejected
from tests.fakes.live import FakeLiveServer, ScriptedTurn
from tests.fakes.realtime import tone
from tests.fakes.session import wait_until

pytestmark = pytest.mark.trio

FRAME = 160
UTTERANCE_MS = 600
# What rtpai must never send to GPT-Live: the model owns its turns.
REALTIME_TURN_EVENTS = {"response.cancel", "conversation.item.truncate",
                        "input_audio_buffer.commit", "input_audio_buffer.clear"}


@dataclass(frozen=True)
class Digit:
    digit: str


@dataclass
class Harness:
    server: FakeLiveServer
    session: LiveSession
    bridge: CallBridge
    keys: trio.MemorySendChannel
    ended: list[str] = field(default_factory=list)
    transfers: list[str] = field(default_factory=list)
    failure: list[BaseException] = field(default_factory=list)

    async def speak(self, ms: int = UTTERANCE_MS) -> None:
        for _ in range(ms // 20):
            self.bridge.caller_audio(b"\x55" * FRAME)
        await trio.lowlevel.checkpoint()

    def play(self, frames: int) -> None:
        for _ in range(frames):
            assert self.bridge.playout.pop_frame() is not None, "fewer frames queued"

    def play_all(self) -> int:
        n = 0
        while self.bridge.playout.pop_frame() is not None:
            n += 1
        self.bridge.playout_ran_dry()
        return n


def live_settings(url: str, **overrides) -> LiveSettings:
    base = RealtimeSettings(**{"url": url, "model": "gpt-realtime-2.1", "api_key": "test-key",
                               **overrides})
    return LiveSettings(base=base, url=url)


@asynccontextmanager
async def harness(server: FakeLiveServer, **settings):
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        poller = SocketPoller()
        await nursery.start(poller.run)
        keys_send, keys_receive = trio.open_memory_channel[Digit](8)
        ended: list[str] = []
        transfers: list[str] = []
        bridge = CallBridge(
            call_id="call-live@test", codec="PCMU", ptime_ms=20,
            playout=PlayoutQueue(FRAME, max_bytes=120 * 8000),
            end_call=lambda kind, reason: ended.append(reason), transfer=transfers.append,
            caller_events=keys_receive)
        session = LiveSession(live_settings(url, **settings), bridge, poller)
        h = Harness(server, session, bridge, keys_send, ended, transfers)

        async def run() -> None:
            try:
                await session.run()
            except RealtimeSessionError as exc:
                h.failure.append(exc)

        nursery.start_soon(run)
        yield h
        nursery.cancel_scope.cancel()
    assert server.crashes == []


def errors(fake) -> list[dict]:
    return [e for e in fake.server_events if e["type"] == "error"]


def sent_types(fake) -> set[str]:
    return {e["type"] for e in fake.client_events}


async def test_session_start_then_g711_both_ways_untranscoded():
    reply = tone("pcmu", 400, hz=440)
    server = FakeLiveServer(reply_audio=reply, speed=0)
    with trio.fail_after(10):
        async with harness(server, instructions="Be brief.") as h:
            fake = await server.wait_for_session()
            assert fake.path == "/v1/live/sessions"  # no query: the model is in session.start
            assert fake.headers["authorization"] == "Bearer test-key"
            assert "openai-beta" not in fake.headers
            start = await fake.wait_for_client_event("session.start")
            assert fake.client_events[0] is start
            session = start["session"]
            assert session["model"] == "gpt-live-1"
            assert session["audio"]["input"]["format"] == {"type": "audio/pcmu", "rate": 8000}
            assert session["audio"]["output"]["format"] == {"type": "audio/pcmu", "rate": 8000}
            assert session["instructions"] == "Be brief."
            assert "turn_detection" not in json.dumps(session)
            await wait_until(h.session, lambda s: s.ready)
            await h.speak()
            await fake.wait_until(lambda f: len(f.audio_in) >= UTTERANCE_MS * 8)
            assert bytes(fake.audio_in) == b"\x55" * (UTTERANCE_MS * 8)
            await wait_until(h.session, lambda s: s.stats.audio_received_bytes == len(reply))
            heard = b"".join(h.bridge.playout.pop_frame() for _ in range(len(reply) // FRAME))
            assert heard == reply  # byte for byte: no transcoding either way
            assert errors(fake) == []
            assert not sent_types(fake) & REALTIME_TURN_EVENTS
            assert sent_types(fake) == {"session.start", "session.input_audio.append"}
            snapshot = h.session.snapshot()
            assert snapshot["dialect"] == "live" and snapshot["model"] == "gpt-live-1"


async def test_the_model_yielding_to_the_caller_clears_what_rtpai_still_holds():
    server = FakeLiveServer(reply_audio=tone("pcmu", 3000), speed=0)
    with trio.fail_after(10):
        async with harness(server) as h:
            fake = await server.wait_for_session()
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.audio_received_bytes == 24000)
            h.play(10)  # 200 ms heard; 2.8 s of the model's answer still queued
            assert h.bridge.queued_bytes > 0
            await h.speak(100)  # the caller talks over it: the model stops for them
            await fake.wait_until(lambda f: f.truncations)
            await wait_until(h.session, lambda s: s.stats.barge_ins == 1)
            assert h.bridge.queued_bytes == 0  # the bridge's clear action ran
            last = h.session.stats.transcript[-1]
            assert (last["role"], last["text"]) == ("assistant", server.reply_transcript)
            assert last["at s"] >= 0  # on the call's timeline (docs/recording.md)
            # rtpai told the server nothing: the model had already stopped by itself.
            assert sent_types(fake) == {"session.start", "session.input_audio.append"}
            assert errors(fake) == []


async def test_end_call_plays_the_goodbye_then_hangs_up():
    goodbye = tone("pcmu", 400)
    server = FakeLiveServer(reply_audio=tone("pcmu", 200), speed=0)
    server.queue_turn(ScriptedTurn(audio=b"", function_call=("end_call", {"reason": "done"}),
                                   after_output=goodbye))
    with trio.fail_after(10):
        async with harness(server) as h:
            fake = await server.wait_for_session()
            await h.speak()
            output = await fake.wait_for_client_event("response.item.create")
            assert "goodbye" in output["item"]["output"].lower()
            await fake.wait_for_client_event("response.create")
            assert h.session.stats.tool_calls[0]["result"] == "hang up"
            # The model goes quiet after its goodbye: the hang-up waits for the playout.
            await wait_until(h.session, lambda s: h.bridge._hangup_reason is not None)
            h.play(19)
            assert h.ended == []  # the goodbye is still playing
            h.play(1)
            h.bridge.playout_ran_dry()
            assert h.ended == ["the AI ended the call: done"]
            assert errors(fake) == []


async def test_transfer_call_is_the_bridges_transfer_and_the_model_reads_the_result():
    server = FakeLiveServer(speed=0)
    server.queue_turn(ScriptedTurn(audio=tone("pcmu", 200), function_call=(
        "transfer_call", {"target": "sip:desk@example.com"}), after_output=tone("pcmu", 200)))
    with trio.fail_after(10):
        async with harness(server, transfer_target="sip:desk@example.com") as h:
            fake = await server.wait_for_session()
            await h.speak()
            output = await fake.wait_for_client_event("response.item.create")
            assert json.loads(output["item"]["output"]) == {"ok": True,
                                                            "target": "sip:desk@example.com"}
            assert h.transfers == ["sip:desk@example.com"]
            await wait_until(h.session, lambda s: s.stats.usage.get("total_tokens") == 132)
            assert errors(fake) == []


async def test_usage_is_the_sessions_cumulative_audio_seconds():
    server = FakeLiveServer(reply_audio=tone("pcmu", 200), speed=0)
    with trio.fail_after(10):
        async with harness(server) as h:
            fake = await server.wait_for_session()
            await h.speak()
            await fake.wait_until(lambda f: any(e["type"] == "session.usage.updated"
                                                for e in f.server_events))
            await wait_until(h.session, lambda s: "audio_seconds" in s.stats.usage)
            assert h.session.snapshot()["usage"] == {"audio_seconds": 0.6}


async def test_the_duration_limit_reconnects_with_a_recap():
    server = FakeLiveServer(reply_audio=tone("pcmu", 200), speed=0, close_after_s=1.0)
    with trio.fail_after(15):
        async with harness(server, instructions="Be brief.") as h:
            await server.wait_for_session(1)
            await h.speak()
            await wait_until(h.session, lambda s: len(s.stats.transcript) >= 1)
            second = await server.wait_for_session(2)
            start = await second.wait_for_client_event("session.start")
            recap = start["session"]["instructions"]
            assert recap.startswith("Be brief.")
            assert "already in progress" in recap and server.reply_transcript in recap
            await wait_until(h.session, lambda s: s.ready)
            assert h.session.stats.reconnects == 1
            assert "duration limit" in h.session.stats.last_loss
            assert h.failure == [] and h.ended == []


async def test_keypad_digits_and_the_welcome_reach_the_model_as_instructions():
    server = FakeLiveServer(reply_audio=tone("pcmu", 200), speed=0, respond_after_ms=None)
    with trio.fail_after(10):
        async with harness(server, welcome_message="Welcome to Acme.") as h:
            fake = await server.wait_for_session()
            await wait_until(h.session, lambda s: s.ready)
            h.bridge.media_started.set()
            greeting = await fake.wait_for_client_event("session.instructions.append")
            assert greeting["content"].endswith("Welcome to Acme.")
            await wait_until(h.session, lambda s: s.stats.audio_received_bytes == 1600)
            for key in "42#":
                await h.keys.send(Digit(key))
            keys = await fake.wait_for_client_event("session.instructions.append", 2)
            assert "42#" in keys["content"] and keys["delegation_id"] is None
            assert errors(fake) == []


async def test_a_content_close_ends_the_call_with_its_reason():
    server = FakeLiveServer(respond_after_ms=None)
    with trio.fail_after(10):
        async with harness(server) as h:
            fake = await server.wait_for_session()
            await wait_until(h.session, lambda s: s.ready)
            connection_events = fake.server_events
            assert connection_events[0]["type"] == "session.started"
            # What a safety filter's end looks like: session.closed, reason content.
            await _close_as(server, fake, "content")
            await wait_until(h, lambda h: h.failure)
            assert "content" in str(h.failure[0])
            assert h.session.stats.reconnects == 0


async def _close_as(server: FakeLiveServer, fake, reason: str) -> None:
    """Make the fake end its session with ``reason`` (a test hook on the live connection)."""
    (connection,) = server.connections
    await connection.send({"type": "session.closed", "reason": reason,
                           "session": fake.session, "usage": {"seconds": 0.0}})



async def test_max_call_s_asks_the_live_model_for_a_goodbye_and_ends_after_it():
    server = FakeLiveServer(reply_audio=tone("pcmu", 200), speed=0, respond_after_ms=None)
    with trio.fail_after(15):
        async with harness(server, max_call_s=0.5) as h:
            fake = await server.wait_for_session()
            await wait_until(h.session, lambda s: s.ready)
            h.bridge.media_started.set()
            goodbye = await fake.wait_for_client_event("session.instructions.append")
            assert "time limit" in goodbye["content"]
            # The fake's model does not speak on that instruction: the goodbye counts as said
            # once the model has been quiet for a second, and the playout is empty.
            await wait_until(h.session, lambda s: h.ended)
            assert h.ended == ["the call reached its maximum length (0.5 s)"]
            assert not sent_types(fake) & REALTIME_TURN_EVENTS


async def test_a_silent_caller_is_reprompted_through_an_instruction():
    server = FakeLiveServer(reply_audio=tone("pcmu", 200), speed=0, respond_after_ms=None)
    with trio.fail_after(15):
        async with harness(server, welcome_message="Hi.", idle_reprompt_s=0.3,
                           idle_reprompts=1) as h:
            fake = await server.wait_for_session()
            await wait_until(h.session, lambda s: s.ready)
            h.bridge.media_started.set()
            await fake.wait_for_client_event("session.instructions.append")  # the welcome
            await wait_until(h.session, lambda s: s.stats.audio_received_bytes == 1600)
            assert h.play_all() == 10  # the greeting has been heard; the caller says nothing
            reprompt = await fake.wait_for_client_event("session.instructions.append", 2)
            assert "still there" in reprompt["content"]
            assert errors(fake) == []


async def test_a_gpt_live_sessions_losses_name_the_gpt_live_api(caplog):
    caplog.set_level(logging.INFO, logger="rtpai")
    server = FakeLiveServer(reply_audio=tone("pcmu", 200), speed=0, close_after_s=1.0)
    with trio.fail_after(15):
        async with harness(server) as h:
            await server.wait_for_session(2)
            await wait_until(h.session, lambda s: s.ready)
    lines = [record.getMessage() for record in caplog.records]
    assert any("GPT-Live API connection lost" in line for line in lines), lines
    assert not [line for line in lines if "Realtime" in line]
    # The reasons a connection's end gives (in the log and the call's statistics) too.
    for exc in (HandshakeRejected(503), ConnectionClosed(CLOSE_ABNORMAL, "reset"),
                ConnectionClosed(1011, "server error"), ConnectionRefusedError()):
        reason = lost_from(exc, api_name("live")).reason
        assert "GPT-Live API" in reason and "Realtime" not in reason, reason

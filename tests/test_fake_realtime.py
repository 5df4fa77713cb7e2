"""Tests of the fake Realtime server itself, driven by a plain trio-websocket client.

If the fake drifts from the reference (docs/openai-realtime.md facts), every rtpai test built on
it lies; these tests pin its protocol behaviour event by event.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from tests.fakes.realtime import (
    FakeRealtimeServer,
    alaw_from_linear,
    linear_from_alaw,
    linear_from_ulaw,
    tone,
    ulaw_from_linear,
)

AUTH = [(b"Authorization", b"Bearer test-key")]
BETA = [*AUTH, (b"OpenAI-Beta", b"realtime=v1")]
REPO = Path(__file__).resolve().parent.parent

# G.711 input: 8 bytes per ms, one 20 ms RTP frame = 160 bytes.
FRAME = b"\xff" * 160

GA_PCMU_SESSION = {
    "type": "realtime",
    "instructions": "You are a friendly phone agent.",
    "output_modalities": ["audio"],
    "max_output_tokens": "inf",
    "audio": {
        "input": {
            "format": {"type": "audio/pcmu"},
            "transcription": {"model": "gpt-4o-mini-transcribe"},
            "noise_reduction": {"type": "near_field"},
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 200,
                "create_response": True,
                "interrupt_response": True,
                "idle_timeout_ms": 8000,
            },
        },
        "output": {"format": {"type": "audio/pcmu"}, "voice": "alloy"},
    },
    "tools": [],
    "tool_choice": "auto",
}


class Client:
    """A bare Realtime client: JSON events over one WebSocket."""

    def __init__(self, ws):
        self.ws = ws

    async def send(self, event_type: str, **fields) -> None:
        await self.ws.send_message(json.dumps({"type": event_type, **fields}))

    async def recv(self) -> dict:
        """The next event, skipping ``rate_limits.updated`` (informational, any time)."""
        while True:
            event = json.loads(await self.ws.get_message())
            if event["type"] != "rate_limits.updated":
                return event

    async def recv_until(self, event_type: str) -> list[dict]:
        """All events up to and including the first of ``event_type``."""
        events = []
        while True:
            events.append(await self.recv())
            if events[-1]["type"] == event_type:
                return events

    async def append(self, audio: bytes) -> None:
        await self.send("input_audio_buffer.append", audio=base64.b64encode(audio).decode())

    async def update(self, session: dict) -> dict:
        await self.send("session.update", session=session)
        return await self.recv()


@asynccontextmanager
async def running(**options):
    server = FakeRealtimeServer(**options)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        yield server, url
        nursery.cancel_scope.cancel()
    assert server.crashes == []


@asynccontextmanager
async def connect(url: str, headers=AUTH, query: str = "?model=gpt-realtime"):
    async with open_websocket_url(url + query, extra_headers=headers) as ws:
        yield Client(ws)


@asynccontextmanager
async def ga_call(**options):
    """A connected GA client with a G.711 mu-law session, past session.updated."""
    async with running(**options) as (server, url), connect(url) as client:
        assert (await client.recv())["type"] == "session.created"
        assert (await client.update(GA_PCMU_SESSION))["type"] == "session.updated"
        yield server, client


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def delta_audio(events: list[dict], name: str = "response.output_audio.delta") -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == name)


# -- G.711 -------------------------------------------------------------------------------------


def test_g711_golden_codes():
    # Silence and the clip points, as every G.711 implementation has them.
    assert ulaw_from_linear(0) == 0xFF
    assert ulaw_from_linear(32767) == 0x80
    assert ulaw_from_linear(-32768) == 0x00
    assert alaw_from_linear(0) == 0xD5
    assert alaw_from_linear(32767) == 0xAA
    assert alaw_from_linear(-32768) == 0x2A
    assert linear_from_ulaw(0xFF) == 0
    assert linear_from_alaw(0xD5) == 8


@pytest.mark.parametrize(
    ("encode", "decode", "not_round_tripping"),
    [
        (ulaw_from_linear, linear_from_ulaw, [0x7F]),  # mu-law's "negative zero" becomes 0xFF
        (alaw_from_linear, linear_from_alaw, []),
    ],
)
def test_g711_round_trip_within_quantisation(encode, decode, not_round_tripping):
    for sample in range(-32768, 32768):
        # Logarithmic companding: the error grows with the magnitude, within 1/16 of it + 8.
        assert abs(decode(encode(sample)) - sample) <= abs(sample) / 16 + 8
    assert [c for c in range(256) if encode(decode(c)) != c] == not_round_tripping


def test_tone_lengths_per_format():
    assert len(tone("pcmu", 1000)) == 8000
    assert len(tone("pcma", 20)) == 160
    assert len(tone("pcm", 1000)) == 48000
    # 400 Hz at 8 kHz repeats every 20 samples.
    ulaw = tone("pcmu", 100)
    assert ulaw[:20] == ulaw[20:40]


# -- handshake ---------------------------------------------------------------------------------


async def test_handshake_accepts_and_records_the_connection():
    async with running() as (server, url):
        async with connect(url, query="?model=gpt-realtime-2.1") as client:
            created = await client.recv()
            fake = await server.wait_for_session(1)
        with trio.fail_after(5):
            await fake.closed.wait()
    assert created["type"] == "session.created"
    assert created["event_id"].startswith("event_")
    session = created["session"]
    assert session["type"] == "realtime"
    assert session["id"].startswith("sess_")
    assert session["model"] == "gpt-realtime-2.1"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert session["audio"]["output"]["voice"] == "alloy"
    assert fake.model == "gpt-realtime-2.1"
    assert fake.path == "/v1/realtime?model=gpt-realtime-2.1"
    assert fake.headers["authorization"] == "Bearer test-key"
    assert fake.session == session
    assert fake.close_code == 1000  # the client's normal close


@pytest.mark.parametrize("headers", [[(b"Authorization", b"Bearer wrong")], []])
async def test_bad_or_missing_key_is_an_error_then_close_3000(headers):
    async with running() as (server, url), connect(url, headers=headers) as client:
        event = await client.recv()
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
    assert event["type"] == "error"
    assert event["error"]["code"] == "invalid_api_key"
    assert closed.value.reason.code == 3000
    assert server.sessions[0].close_code == 3000


async def test_beta_header_on_ga_server_is_beta_api_shape_disabled_close_4000():
    async with running() as (_, url), connect(url, headers=BETA) as client:
        event = await client.recv()
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
    assert event["error"]["code"] == "beta_api_shape_disabled"
    assert closed.value.reason.code == 4000


async def test_reject_connections_fails_the_http_upgrade():
    async with running(reject_connections=True) as (server, url):
        with pytest.raises(ConnectionRejected) as rejected:
            async with connect(url):
                pass
    assert rejected.value.status_code == 503
    assert server.sessions == []


# -- session.update strictness -----------------------------------------------------------------


async def test_unknown_parameter_is_an_error_and_the_session_survives():
    async with ga_call() as (server, client):
        await client.send(
            "session.update", event_id="evt_1", session={"type": "realtime", "temperature": 0.8}
        )
        error = await client.recv()
        # Still usable: a valid update goes through.
        updated = await client.update({"type": "realtime", "instructions": "Be brief."})
    assert error == {
        "type": "error",
        "event_id": error["event_id"],
        "error": {
            "type": "invalid_request_error",
            "code": "unknown_parameter",
            "message": "Unknown parameter: 'session.temperature'.",
            "param": "session.temperature",
            "event_id": "evt_1",
        },
    }
    assert updated["type"] == "session.updated"
    assert updated["session"]["instructions"] == "Be brief."
    # The merge kept the earlier update's audio settings.
    assert updated["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert server.sessions[0].session == updated["session"]


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        ({"instructions": "x"}, "missing_required_parameter", "session.type"),
        ({"type": "transcription"}, "invalid_value", "session.type"),
        (
            {"type": "realtime",
             "audio": {"input": {"turn_detection": {"type": "semantic_vad", "threshold": 0.5}}}},
            "unknown_parameter",
            "session.audio.input.turn_detection.threshold",
        ),
        (
            {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu",
                                                                 "rate": 8000}}}},
            "unknown_parameter",
            "session.audio.input.format.rate",
        ),
        ({"type": "realtime", "audio": {"input": {"format": {"type": "g711_ulaw"}}}},
         "invalid_value", "session.audio.input.format.type"),
        ({"type": "realtime", "input_audio_format": "g711_ulaw"},
         "unknown_parameter", "session.input_audio_format"),
        ({"type": "realtime", "voice": "alloy"}, "unknown_parameter", "session.voice"),
        ({"type": "realtime", "audio": {"output": {"voice": "nova"}}},
         "invalid_value", "session.audio.output.voice"),
        ({"type": "realtime", "output_modalities": ["audio", "text"]},
         "invalid_value", "session.output_modalities"),
        ({"type": "realtime", "max_output_tokens": 5000},
         "integer_above_max_value", "session.max_output_tokens"),
        ({"type": "realtime", "max_output_tokens": "infinite"},
         "invalid_type", "session.max_output_tokens"),
        ({"type": "realtime", "audio": {"input": {"noise_reduction": {"type": "loud"}}}},
         "invalid_value", "session.audio.input.noise_reduction.type"),
        ({"type": "realtime", "tools": [{"type": "function", "name": "hangup", "strict": True}]},
         "unknown_parameter", "session.tools[0].strict"),
    ],
)
async def test_session_update_is_validated_strictly(session, code, param):
    async with ga_call() as (server, client):
        before = server.sessions[0].session
        error = await client.update(session)
    assert error["type"] == "error"
    assert (error["error"]["code"], error["error"]["param"]) == (code, param)
    assert server.sessions[0].session == before  # nothing applied


async def test_semantic_vad_replaces_server_vad_whole():
    async with ga_call() as (_, client):
        updated = await client.update(
            {"type": "realtime",
             "audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}}}}
        )
    assert updated["session"]["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad", "eagerness": "low", "create_response": True,
        "interrupt_response": True,
    }


async def test_voice_cannot_change_after_audio_output():
    async with ga_call(speed=0) as (_, client):
        await client.send("response.create")
        await client.recv_until("response.done")
        same = await client.update({"type": "realtime", "audio": {"output": {"voice": "alloy"}}})
        error = await client.update({"type": "realtime", "audio": {"output": {"voice": "cedar"}}})
    assert same["type"] == "session.updated"
    assert error["error"]["param"] == "session.audio.output.voice"


async def test_response_create_is_strict_and_text_only_responses_have_no_audio():
    async with ga_call(speed=0) as (_, client):
        await client.send("response.create", response={"temperature": 0.7})
        error = await client.recv()
        await client.send("response.create", response={"output_modalities": ["text"]})
        events = await client.recv_until("response.done")
    assert error["error"]["param"] == "response.temperature"
    assert "response.output_text.delta" in types(events)
    assert not any("audio" in name for name in types(events))


# -- a full GA exchange ------------------------------------------------------------------------


async def test_full_ga_exchange_caller_speaks_and_the_model_answers():
    async with ga_call(speed=0, respond_after_ms=600) as (server, client):
        for _ in range(30):  # 30 x 20 ms = 600 ms of caller audio
            await client.append(FRAME)
        events = await client.recv_until("response.done")
        fake = server.sessions[0]

    assert types(events) == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.created",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        *["response.output_audio.delta"] * 9,
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    started, stopped, committed, created, _, transcribed = events[:6]
    assert started["audio_start_ms"] == 0
    assert stopped["audio_end_ms"] == 600
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    assert created["item"]["role"] == "user"
    assert transcribed["transcript"] == "hello"

    response_id = events[6]["response"]["id"]
    assert events[6]["response"]["status"] == "in_progress"
    item = events[7]["item"]
    assert (item["type"], item["role"]) == ("message", "assistant")
    deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
    assert {(d["response_id"], d["item_id"], d["output_index"], d["content_index"])
            for d in deltas} == {(response_id, item["id"], 0, 0)}
    # 1 s of 400 Hz mu-law tone in 100 ms chunks of 800 bytes.
    assert [len(base64.b64decode(d["delta"])) for d in deltas] == [800] * 10
    assert delta_audio(events) == tone("pcmu", 1000)

    done = events[-1]["response"]
    assert (done["id"], done["status"]) == (response_id, "completed")
    usage = done["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert set(usage["input_token_details"]) == {"text_tokens", "audio_tokens", "cached_tokens"}
    assert set(usage["output_token_details"]) == {"text_tokens", "audio_tokens"}
    assert usage["output_token_details"]["audio_tokens"] > 0

    assert bytes(fake.audio_in) == FRAME * 30
    assert fake.events_of("input_audio_buffer.append")[0] == {
        "type": "input_audio_buffer.append", "bytes": 160,
    }
    assert [e["bytes"] for e in fake.server_events
            if e["type"] == "response.output_audio.delta"] == [800] * 10
    assert fake.server_events[-1]["type"] == "rate_limits.updated"


async def test_greeting_then_second_response_create_is_rejected_while_active():
    # speed=0.01: 10 s between deltas, so the response is surely still active.
    async with ga_call(speed=0.01) as (_, client):
        await client.send("response.create", response={"instructions": "Greet the caller."})
        head = await client.recv_until("response.output_audio.delta")
        await client.send("response.create")
        error = await client.recv_until("error")
        await client.send("response.cancel")
        tail = await client.recv_until("response.done")
        await client.send("response.cancel")
        not_active = await client.recv()
    assert types(head)[:3] == [
        "response.created", "response.output_item.added", "response.content_part.added"
    ]
    assert error[-1]["error"]["code"] == "conversation_already_has_active_response"
    assert "response.output_audio.done" not in types(tail)
    assert types(tail)[-2:] == ["response.output_item.done", "response.done"]
    assert tail[-2]["item"]["status"] == "incomplete"
    done = tail[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert not_active["error"]["code"] == "response_cancel_not_active"


async def test_barge_in_cancels_the_active_response_and_answers_the_new_turn():
    async with ga_call(speed=0.01, respond_after_ms=200) as (server, client):
        await client.send("response.create")
        await client.recv_until("response.output_audio.delta")
        for _ in range(10):  # 200 ms of caller speech while the greeting plays
            await client.append(FRAME)
        events = await client.recv_until("response.created")
    assert types(events)[-9:] == [
        "input_audio_buffer.speech_started",
        "response.output_item.done",
        "response.done",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.created",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
    ]
    cancelled = events[-7]["response"]
    assert cancelled["status_details"]["reason"] == "turn_detected"


# -- truncation --------------------------------------------------------------------------------


async def test_truncate_beyond_the_audio_sent_is_rejected():
    async with ga_call(speed=0) as (server, client):
        await client.send("response.create")
        events = await client.recv_until("response.done")
        item_id = events[1]["item"]["id"]
        await client.send(
            "conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=1500
        )
        too_long = await client.recv()
        await client.send(
            "conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=400
        )
        truncated = await client.recv()
        # Once truncated, the item is 400 ms long.
        await client.send(
            "conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=600
        )
        again = await client.recv()
        fake = server.sessions[0]
    assert too_long["error"]["code"] == "invalid_value"
    assert too_long["error"]["message"] == "Audio content of 1000 ms is already shorter than 1500 ms"
    assert truncated == {
        "type": "conversation.item.truncated", "event_id": truncated["event_id"],
        "item_id": item_id, "content_index": 0, "audio_end_ms": 400,
    }
    assert again["error"]["message"] == "Audio content of 400 ms is already shorter than 600 ms"
    assert [(t["audio_end_ms"], t["accepted"]) for t in fake.truncations] == [
        (1500, False), (400, True), (600, False)
    ]


async def test_truncate_counts_only_the_audio_sent_so_far():
    async with ga_call(speed=0.01) as (_, client):
        await client.send("response.create")
        events = await client.recv_until("response.output_audio.delta")  # 100 ms sent
        item_id = events[1]["item"]["id"]
        await client.send("response.cancel")
        await client.recv_until("response.done")
        await client.send(
            "conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=120
        )
        error = await client.recv()
    assert error["error"]["message"] == "Audio content of 100 ms is already shorter than 120 ms"


# -- input buffer, items, unknown events -------------------------------------------------------


async def test_input_buffer_commit_clear_and_item_create():
    async with ga_call(respond_after_ms=None) as (_, client):
        await client.send("input_audio_buffer.commit")
        empty = await client.recv()
        for _ in range(5):  # 100 ms: the minimum a commit takes
            await client.append(FRAME)
        await client.send("input_audio_buffer.commit")
        committed = await client.recv_until(
            "conversation.item.input_audio_transcription.completed"
        )
        await client.append(FRAME)
        await client.send("input_audio_buffer.clear")
        cleared = await client.recv()
        await client.send(
            "conversation.item.create",
            item={"type": "function_call_output", "call_id": "call_1", "output": "{}"},
        )
        created = await client.recv()
        await client.send("output_audio_buffer.clear")
        webrtc_only = await client.recv()
        await client.send("session.teleport")
        unknown = await client.recv()
    assert empty["error"]["code"] == "input_audio_buffer_commit_empty"
    assert types(committed)[:2] == ["input_audio_buffer.committed", "conversation.item.created"]
    assert cleared["type"] == "input_audio_buffer.cleared"
    assert created["type"] == "conversation.item.created"
    assert created["item"]["call_id"] == "call_1"
    assert created["item"]["id"].startswith("item_")
    assert webrtc_only["type"] == "error"
    assert unknown["error"]["type"] == "invalid_request_error"
    assert unknown["error"]["param"] == "type"


async def test_wait_for_client_event_synchronises_without_sleeping():
    async with running() as (server, url), connect(url) as client:
        await client.recv()
        fake = await server.wait_for_session()
        await client.append(FRAME)
        with trio.fail_after(5):
            event = await fake.wait_for_client_event("input_audio_buffer.append")
    assert event == {"type": "input_audio_buffer.append", "bytes": 160}
    assert bytes(fake.audio_in) == FRAME


# -- beta dialect ------------------------------------------------------------------------------


async def test_beta_mode_accepts_the_beta_shape_and_names_audio_events_the_beta_way():
    async with running(beta=True, speed=0) as (server, url), connect(
        url, headers=BETA, query="?model=gpt-4o-realtime-preview"
    ) as client:
        created = await client.recv()
        ga_only = await client.update({"type": "realtime"})
        updated = await client.update(
            {"voice": "alloy", "input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw",
             "temperature": 0.8, "max_response_output_tokens": 4096,
             "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}
        )
        await client.send("response.create")
        events = await client.recv_until("response.done")
    assert created["session"]["input_audio_format"] == "pcm16"
    assert ga_only["error"]["param"] == "session.type"
    assert updated["type"] == "session.updated"
    assert updated["session"]["turn_detection"]["threshold"] == 0.5
    names = set(types(events))
    assert {"response.audio.delta", "response.audio.done", "response.audio_transcript.done"} <= names
    assert not any(name.startswith("response.output_audio") for name in names)
    assert delta_audio(events, "response.audio.delta") == tone("pcmu", 1000)
    assert server.sessions[0].model == "gpt-4o-realtime-preview"


async def test_beta_server_requires_the_beta_header():
    async with running(beta=True) as (_, url), connect(url) as client:
        event = await client.recv()
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
    assert event["error"]["code"] == "missing_beta_header"
    assert closed.value.reason.code == 4000


# -- pacing, closing ---------------------------------------------------------------------------


async def test_deltas_are_paced_at_speed_times_real_time(autojump_clock):
    async with ga_call(speed=2.0, chunk_ms=100) as (_, client):
        await client.send("response.create")
        times = []
        while True:
            event = await client.recv()
            if event["type"] == "response.output_audio.delta":
                times.append(trio.current_time())
            if event["type"] == "response.done":
                break
    # 10 chunks of 100 ms at 2x: 50 ms apart.
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps == pytest.approx([0.05] * 9)


async def test_close_after_s_mimics_the_session_cap(autojump_clock):
    async with running(close_after_s=3600) as (server, url), connect(url) as client:
        await client.recv()
        expired = await client.recv()
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
    assert expired["error"]["code"] == "session_expired"
    assert (closed.value.reason.code, closed.value.reason.reason) == (1001, "maximum duration")
    assert server.sessions[0].close_code == 1001


async def test_close_all_closes_every_connection_with_the_given_code():
    async with running() as (server, url), connect(url) as first, connect(url) as second:
        await first.recv()
        await second.recv()
        await server.close_all(1011, "fake outage")
        for client in (first, second):
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()
            assert closed.value.reason.code == 1011
    assert [s.close_code for s in server.sessions] == [1011, 1011]


async def test_standalone_prints_its_url_and_serves():
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.fakes.realtime", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(20):
            line = b""
            while not line.endswith(b"\n"):
                line += await process.stdout.receive_some(1)
            url = line.decode().strip().removeprefix("url=")
            assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/realtime")
            async with connect(url) as client:
                assert (await client.recv())["type"] == "session.created"
    finally:
        process.kill()
        await process.wait()
        await process.stdout.aclose()


# -- scripted responses, stalls, rejections, errors (what rtpai's feature tests drive) ------


END_CALL_TOOL = {"type": "function", "name": "end_call", "description": "Hang up.",
                 "parameters": {"type": "object", "properties": {}}}


async def test_scripted_function_call_streams_a_function_call_item():
    from tests.fakes.realtime import ScriptedResponse

    async with ga_call(respond_after_ms=None, speed=0) as (server, client):
        assert (await client.update({"type": "realtime", "tools": [END_CALL_TOOL]}))[
            "type"] == "session.updated"
        server.queue_response(ScriptedResponse(audio=tone("pcmu", 100), transcript="Bye!",
                                               function_call=("end_call", {"reason": "done"})))
        await client.send("response.create")
        events = await client.recv_until("response.done")
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert done["name"] == "end_call" and json.loads(done["arguments"]) == {"reason": "done"}
    assert delta_audio(events) == tone("pcmu", 100)
    response = events[-1]["response"]
    assert [o["type"] for o in response["output"]] == ["message", "function_call"]
    assert response["output"][1]["call_id"] == done["call_id"]
    assert types(events).index("response.output_audio.done") < types(events).index(
        "response.function_call_arguments.done")


async def test_stall_keeps_the_response_generating_until_barge_in():
    async with ga_call(respond_after_ms=600, speed=0, stall_after_ms=200) as (server, client):
        for _ in range(30):
            await client.append(FRAME)
        events = await client.recv_until("response.output_audio.delta")
        more = [await client.recv(), await client.recv()]
        for _ in range(30):  # the caller speaks again: the server cancels the stalled response
            await client.append(FRAME)
        rest = await client.recv_until("response.done")
        item_id = next(e for e in events if e["type"] == "response.output_audio.delta")["item_id"]
        # The server's item holds exactly the 200 ms it produced: 201 is rejected.
        await client.send("conversation.item.truncate", item_id=item_id, content_index=0,
                          audio_end_ms=201)
        rejected = (await client.recv_until("error"))[-1]
    audio = delta_audio(events + more + rest)
    assert len(audio) == 200 * 8
    assert rest[-1]["response"]["status"] == "cancelled"
    assert rejected["error"]["param"] == "audio_end_ms"


async def test_reject_first_then_accept():
    async with running(reject_first=1, reject_status=429) as (server, url):
        with pytest.raises(ConnectionRejected) as info:
            async with connect(url):
                pass
        assert info.value.status_code == 429
        async with connect(url) as client:
            assert (await client.recv())["type"] == "session.created"
        assert server.rejected == 1


async def test_error_injection_and_abort():
    async with running() as (server, url), connect(url) as client:
        assert (await client.recv())["type"] == "session.created"
        await server.wait_for_session(1)
        await server.send_error_all("rate_limit_exceeded", "Slow down.", "rate_limit_error")
        error = await client.recv()
        assert error["error"]["code"] == "rate_limit_exceeded"
        await server.abort_all()
        with pytest.raises(ConnectionClosed) as info:
            await client.recv()
        assert info.value.reason.code == 1006

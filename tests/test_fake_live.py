"""The fake GPT-Live server is as strict as the Realtime fake: a client that sends a wrong
field, an event out of order or a tool output nobody asked for hears of it, so rtpai's tests
against it mean something."""

from __future__ import annotations

import base64
import json
from contextlib import asynccontextmanager

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from tests.fakes.live import FakeLiveServer

pytestmark = pytest.mark.trio

AUTH = [("Authorization", "Bearer test-key")]
START = {"type": "session.start", "session": {
    "model": "gpt-live-1",
    "audio": {"input": {"format": {"type": "audio/pcmu", "rate": 8000}},
              "output": {"format": {"type": "audio/pcmu", "rate": 8000}, "voice": "marin"}},
    "delegation": {"type": "responses", "responses": {"model": "gpt-5.5"}}}}


@asynccontextmanager
async def connected(server: FakeLiveServer, *, headers=AUTH):
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        async with open_websocket_url(url, extra_headers=headers) as ws:
            yield ws
        nursery.cancel_scope.cancel()
    assert server.crashes == []


async def receive(ws) -> dict:
    return json.loads(await ws.get_message())


async def test_session_start_is_strict_about_unknown_fields():
    bad = json.loads(json.dumps(START))
    bad["session"]["audio"]["input"]["turn_detection"] = {"type": "server_vad"}
    with trio.fail_after(5):
        async with connected(FakeLiveServer()) as ws:
            await ws.send_message(json.dumps(bad))
            error = (await receive(ws))["error"]
            assert error["code"] == "unknown_parameter"
            assert error["param"] == "session.audio.input.turn_detection"
            await ws.send_message(json.dumps(START))
            started = await receive(ws)
            assert started["type"] == "session.started" and started["session"]["id"]


async def test_g711_needs_8_khz_and_models_are_gpt_live():
    with trio.fail_after(5):
        async with connected(FakeLiveServer()) as ws:
            wrong = json.loads(json.dumps(START))
            wrong["session"]["audio"]["input"]["format"]["rate"] = 16000
            await ws.send_message(json.dumps(wrong))
            assert (await receive(ws))["error"]["param"] == "session.audio.input.format.rate"
            wrong = json.loads(json.dumps(START))
            wrong["session"]["model"] = "gpt-realtime-2.1"
            await ws.send_message(json.dumps(wrong))
            assert (await receive(ws))["error"]["param"] == "session.model"


async def test_events_out_of_order_are_errors():
    audio = {"type": "session.input_audio.append", "audio": base64.b64encode(b"\xff").decode()}
    with trio.fail_after(5):
        async with connected(FakeLiveServer()) as ws:
            await ws.send_message(json.dumps(audio))
            assert (await receive(ws))["error"]["code"] == "session_not_started"
            await ws.send_message(json.dumps(START))
            assert (await receive(ws))["type"] == "session.started"
            await ws.send_message(json.dumps(START))
            assert (await receive(ws))["error"]["code"] == "session_already_started"
            output = {"type": "response.item.create", "delegation_id": None, "item": {
                "type": "function_call_output", "call_id": "call_x", "output": "{}"}}
            await ws.send_message(json.dumps(output))
            assert (await receive(ws))["error"]["code"] == "unknown_call_id"
            # Realtime's turn events do not exist here: the model owns its turns.
            for kind in ("response.cancel", "conversation.item.truncate"):
                await ws.send_message(json.dumps({"type": kind}))
                assert (await receive(ws))["error"]["param"] == "type"


async def test_the_handshake_takes_a_bearer_key_and_no_query():
    with trio.fail_after(5):
        async with connected(FakeLiveServer(), headers=[("Authorization", "Bearer nope")]) as ws:
            assert (await receive(ws))["error"]["code"] == "invalid_api_key"
        async with trio.open_nursery() as nursery:
            url = await nursery.start(FakeLiveServer().serve)
            with pytest.raises(ConnectionRejected):
                async with open_websocket_url(url + "?model=gpt-live-1", extra_headers=AUTH):
                    pass
            nursery.cancel_scope.cancel()


async def test_the_model_interrupts_itself_when_the_caller_speaks_over_it():
    server = FakeLiveServer(respond_after_ms=100, speed=1.0, chunk_ms=20, yield_after_ms=0)
    speech = {"type": "session.input_audio.append",
              "audio": base64.b64encode(b"\x55" * 800).decode()}
    with trio.fail_after(5):
        async with connected(server) as ws:
            await ws.send_message(json.dumps(START))
            await receive(ws)
            await ws.send_message(json.dumps(speech))  # 100 ms: the model answers
            kinds = []
            while kinds.count("session.output_audio.delta") < 3:
                kinds.append((await receive(ws))["type"])
            await ws.send_message(json.dumps(speech))  # the caller talks over it
            after = []
            while "session.input_transcript.delta" not in after:
                after.append((await receive(ws))["type"])
            # At most the deltas already on their way; then the caller's words, no more audio.
            assert after.count("session.output_audio.delta") <= 1
            with trio.move_on_after(0.3):
                assert (await receive(ws))["type"] != "session.output_audio.delta"

"""A strict fake of OpenAI's GPT-Live primary WebSocket (``wss://api.openai.com/v1/live/sessions``).

It follows what docs/openai.md lists as verified about GPT-Live, and is as strict as the
Realtime fake (tests/fakes/realtime.py, whose schema checks and G.711 helpers it uses):

* the handshake takes ``Authorization: Bearer <key>`` and no query parameters (the model goes in
  ``session.start``); a bad key is an ``invalid_api_key`` error and a close;
* ``session.start`` must come first and only once; it is checked against the session schema,
  an unknown field at any depth being an ``unknown_parameter`` error naming its path (the
  references: "a strict configuration object that rejects unknown fields"); every later client
  event is checked likewise, and one out of order (audio before ``session.start``, a tool
  output for a call never made) is an error event too;
* the scriptable model speaks ``reply_audio`` when the caller has spoken ``respond_after_ms``
  of audio (the caller's transcript first), **interrupts itself** when caller speech arrives
  while it is speaking (it stops sending audio, then the caller's transcript deltas come: the
  model owns barge-in, the client is never asked), calls delegated tools through a
  ``response.event`` carrying a Responses ``function_call`` item, reports cumulative audio
  seconds in ``session.usage.updated``, and ends the session at ``close_after_s`` with
  ``session.closed`` (reason ``expired``), as its duration limit does.

Event and field names the references do not give (the tool output's client events, the error
event's fields, close codes) are this fake's choice, mirrored by rtpai (docs/openai.md says so).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from tests.fakes.realtime import (
    _FUNCTION_TOOL,
    FakeSession,
    FakeWebSocketServer,
    _anything,
    _array,
    _boolean,
    _enum,
    _integer,
    _Invalid,
    _nullable,
    _object,
    _string,
    _tagged,
    tone,
)

logger = logging.getLogger(__name__)

LIVE_PATH = "/v1/live/sessions"
MODELS = ("gpt-live-1", "gpt-live-1.1")
SILENCE = {"audio/pcmu": 0xFF, "audio/pcma": 0xD5}
CLOSE_POLICY = 1008

_FORMAT = _tagged({"audio/pcmu": {"rate": _enum(8000)}, "audio/pcma": {"rate": _enum(8000)},
                   "audio/pcm": {"rate": _enum(24000)}})
_RESPONSES = _object({
    "model": _string, "instructions": _string, "max_output_tokens": _integer(1),
    "service_tier": _string, "reasoning": _anything, "text": _anything,
    "tools": _array(_tagged({"function": _FUNCTION_TOOL, "web_search": {}})),
    "tool_choice": _anything, "parallel_tool_calls": _boolean,
}, ["model"])
_SESSION = _object({
    "model": _enum(*MODELS),
    "instructions": _string,
    "audio": _object({
        "input": _object({"format": _FORMAT}),
        "output": _object({"format": _FORMAT, "voice": _string}),
    }),
    "delegation": _nullable(_tagged({"responses": {"responses": _RESPONSES}, "client": {}})),
}, ["model"])
_COMMON = {"type": _anything, "event_id": _string}
SCHEMAS: dict[str, Callable[[Any, str], None]] = {
    "session.start": _object({**_COMMON, "session": _SESSION}, ["session"]),
    "session.input_audio.append": _object({**_COMMON, "audio": _string}, ["audio"]),
    "session.instructions.append": _object(
        {**_COMMON, "content": _string, "delegation_id": _nullable(_string)},
        ["content", "delegation_id"]),
    "response.item.create": _object({
        **_COMMON, "delegation_id": _nullable(_string),
        "item": _object({"type": _enum("function_call_output"), "call_id": _string,
                         "output": _string}, ["type", "call_id", "output"]),
    }, ["item"]),
    "response.create": _object({**_COMMON, "delegation_id": _nullable(_string)}),
}


@dataclass(frozen=True)
class ScriptedTurn:
    """What the model does on its next turn instead of the default reply.

    ``audio`` is spoken first (None: the default reply audio; b"": nothing); ``function_call``
    ``(name, arguments)`` is then delegated; ``after_output`` is spoken once the client has
    answered that call (a goodbye after end_call, "transferring you" after transfer_call).
    """

    audio: bytes | None = None
    transcript: str | None = None
    function_call: tuple[str, dict] | None = None
    after_output: bytes | None = None


class FakeLiveServer(FakeWebSocketServer):
    """The fake server; ``url = await nursery.start(server.serve)``.

    :param reply_audio: what the model says on a turn (default: 1 s of a tone in the format).
    :param respond_after_ms: caller speech that makes a turn for the model (None: never).
    :param chunk_ms: audio per ``session.output_audio.delta``.
    :param speed: pacing as a multiple of real time (0: all at once, ahead of real time, as a
        network burst delivers it).
    :param yield_after_ms: after the model stopped for the caller, the caller's transcript
        deltas come this much later (the transcription's delay).
    :param close_after_s: end each session after this long with ``session.closed`` (expired).
    :param greet_on_instructions: speak ``reply_audio`` when told to greet the caller.
    """

    path = LIVE_PATH

    def __init__(self, *, api_key: str = "test-key", reply_audio: bytes | None = None,
                 respond_after_ms: int | None = 600, chunk_ms: int = 100, speed: float = 4.0,
                 yield_after_ms: int = 300, caller_transcript: str = "hello",
                 reply_transcript: str = "Hello! How can I help?",
                 close_after_s: float | None = None, greet_on_instructions: bool = True,
                 close_timeout_s: float = 2.0) -> None:
        super().__init__()
        self.api_key = api_key
        self.reply_audio = reply_audio
        self.respond_after_ms = respond_after_ms
        self.chunk_ms = chunk_ms
        self.speed = speed
        self.yield_after_ms = yield_after_ms
        self.caller_transcript = caller_transcript
        self.reply_transcript = reply_transcript
        self.close_after_s = close_after_s
        self.greet_on_instructions = greet_on_instructions
        self.close_timeout_s = close_timeout_s
        self.scripted: list[ScriptedTurn] = []

    def queue_turn(self, turn: ScriptedTurn) -> None:
        self.scripted.append(turn)

    async def _handle(self, request: WebSocketRequest) -> None:
        url = urlsplit(request.path)
        if url.path != LIVE_PATH:
            await request.reject(404, body=b"not found")
            return
        if url.query:  # the guide: no query parameters; the model goes in session.start
            await request.reject(400, body=b"GPT-Live takes no query parameters")
            return
        await self._accept(request, None, _LiveConnection)


class _LiveConnection:
    def __init__(self, server: FakeLiveServer, ws: WebSocketConnection, fake: FakeSession):
        self.server = server
        self.ws = ws
        self.fake = fake
        self.started = False
        self.format = "audio/pcmu"
        self.input_bytes = 0
        self.speech_bytes = 0  # caller speech since the model's last turn
        self.speaking_until = 0.0  # the model's audio, in real time, lasts until then
        self.turn_scope: trio.CancelScope | None = None
        self.calls: dict[str, trio.Event] = {}  # call id -> answered (output and create)
        self.outputs: dict[str, str] = {}
        self._nursery: trio.Nursery | None = None
        self.session_id = server.new_id("sess")

    async def send(self, event: dict, *, record: dict | None = None) -> None:
        event = {**event, "event_id": self.server.new_id("event")}
        self.fake.server_events.append(record or event)
        await self.ws.send_message(json.dumps(event))
        self.fake._notify()

    async def error(self, code: str, message: str, param: str | None = None,
                    client_event_id: str | None = None) -> None:
        await self.send({"type": "error", "error": {
            "type": "invalid_request_error", "code": code, "message": message, "param": param,
            "client_event_id": client_event_id}})

    async def close(self, code: int, reason: str) -> None:
        if self.fake.close_code is None:
            self.fake.close_code = code
        with trio.move_on_after(self.server.close_timeout_s):
            await self.ws.aclose(code, reason)

    async def run(self) -> None:
        try:
            if self.fake.headers.get("authorization") != f"Bearer {self.server.api_key}":
                await self.error("invalid_api_key", "Incorrect API key provided.")
                await self.close(CLOSE_POLICY, "invalid_api_key")
                return
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    while True:
                        await self._dispatch(await self.ws.get_message())
                except ConnectionClosed:
                    pass
                finally:
                    nursery.cancel_scope.cancel()
        except ConnectionClosed:
            pass
        except Exception as exc:
            self.server.crashes.append(exc)
            logger.exception("live fake crashed")
            with contextlib.suppress(ConnectionClosed):
                await self.error("fake_server_crash", repr(exc))
            raise

    async def _dispatch(self, message: str | bytes) -> None:
        try:
            event = json.loads(message)
            if not isinstance(event, dict):
                raise ValueError
        except ValueError:
            await self.error("invalid_json", "A client event must be a JSON object.")
            return
        kind = event.get("type")
        if kind == "session.input_audio.append":
            self.fake.client_events.append({"type": kind, "bytes": None})
        else:
            self.fake.client_events.append(event)
        try:
            schema = SCHEMAS.get(kind) if isinstance(kind, str) else None
            if schema is None:
                raise _Invalid("invalid_value", f"Invalid value: {kind!r}. Supported values "
                               f"are: {', '.join(map(repr, SCHEMAS))}.", "type")
            schema(event, "")
            if kind == "session.start":
                await self._on_start(event)
            elif not self.started:
                raise _Invalid("session_not_started",
                               "Send session.start first and wait for session.started.")
            else:
                await getattr(self, "_on_" + kind.replace(".", "_"))(event)
        except _Invalid as exc:
            await self.error(exc.code, exc.message, exc.param, event.get("event_id"))
        finally:
            self.fake._notify()

    # --- client events ----------------------------------------------------------------------

    async def _on_start(self, event: dict) -> None:
        if self.started:
            raise _Invalid("session_already_started", "session.start was already sent.")
        session = event["session"]
        self.started = True
        self.fake.model = session["model"]
        self.format = session.get("audio", {}).get("input", {}).get("format", {}).get(
            "type", "audio/pcm")
        self.fake.session = {**session, "id": self.session_id, "object": "live.session"}
        await self.send({"type": "session.started", "session": self.fake.session})
        if self.server.close_after_s is not None:
            assert self._nursery is not None
            self._nursery.start_soon(self._expire, self.server.close_after_s)

    async def _on_session_input_audio_append(self, event: dict) -> None:
        try:
            audio = base64.b64decode(event["audio"], validate=True)
        except (binascii.Error, ValueError):
            raise _Invalid("invalid_audio", "audio is not valid base64.", "audio") from None
        self.fake.client_events[-1]["bytes"] = len(audio)
        self.fake.audio_in += audio
        self.input_bytes += len(audio)
        silence = SILENCE.get(self.format)
        if silence is not None and audio.count(silence) == len(audio):
            return
        if trio.current_time() < self.speaking_until:
            await self._interrupted()
            return
        self.speech_bytes += len(audio)
        respond = self.server.respond_after_ms
        if respond is not None and self.speech_bytes >= respond * 8 and self.turn_scope is None:
            self.speech_bytes = 0
            await self.send({"type": "session.input_transcript.delta",
                             "delta": self.server.caller_transcript})
            self._start_turn()

    async def _on_session_instructions_append(self, event: dict) -> None:
        now_ms = round(self.input_bytes / 8)
        await self.send({"type": "session.instructions.appended", "start_ms": now_ms,
                         "end_ms": now_ms, "client_event_id": event.get("event_id")})
        if self.server.greet_on_instructions and event["content"].startswith("Greet the caller"):
            self._start_turn()

    async def _on_response_item_create(self, event: dict) -> None:
        call_id = event["item"]["call_id"]
        if call_id not in self.calls:
            raise _Invalid("unknown_call_id", f"No function call {call_id!r} is waiting.",
                           "item.call_id")
        self.outputs[call_id] = event["item"]["output"]

    async def _on_response_create(self, event: dict) -> None:
        waiting = [call_id for call_id in self.calls if call_id in self.outputs
                   and not self.calls[call_id].is_set()]
        if not waiting:
            raise _Invalid("no_pending_outputs", "response.create without tool outputs to read.")
        for call_id in waiting:
            self.calls[call_id].set()

    # --- the model --------------------------------------------------------------------------

    async def _interrupted(self) -> None:
        """The caller spoke over the model: it stops sending at once, and the caller's words
        come back as transcript deltas a moment later."""
        if self.turn_scope is not None:
            self.turn_scope.cancel()
        self.speaking_until = 0.0
        self.speech_bytes = 0
        self.fake.truncations.append({"interrupted_at": trio.current_time()})
        assert self._nursery is not None
        self._nursery.start_soon(self._caller_transcript_later)

    async def _caller_transcript_later(self) -> None:
        await trio.sleep(self.server.yield_after_ms / 1000)
        with contextlib.suppress(ConnectionClosed):
            await self.send({"type": "session.input_transcript.delta",
                             "delta": self.server.caller_transcript})

    def _start_turn(self) -> None:
        assert self._nursery is not None
        script = self.server.scripted.pop(0) if self.server.scripted else ScriptedTurn()
        self._nursery.start_soon(self._turn, script)

    def _default_audio(self) -> bytes:
        if self.server.reply_audio is not None:
            return self.server.reply_audio
        return tone("pcma" if self.format == "audio/pcma" else "pcmu", 1000)

    async def _turn(self, script: ScriptedTurn) -> None:
        with trio.CancelScope() as self.turn_scope:
            audio = self._default_audio() if script.audio is None else script.audio
            transcript = script.transcript or self.server.reply_transcript
            await self.send({"type": "session.output_transcript.delta", "delta": transcript})
            await self._speak(audio)
            if script.function_call is not None:
                await self._delegate(*script.function_call, after=script.after_output)
            await self.send({"type": "session.usage.updated",
                             "usage": {"seconds": self.input_bytes / 8000}})
        self.turn_scope = None

    async def _speak(self, audio: bytes) -> None:
        chunk = self.server.chunk_ms * 8
        self.speaking_until = max(self.speaking_until, trio.current_time()) + len(audio) / 8000
        for start in range(0, len(audio), chunk):
            piece = audio[start:start + chunk]
            await self.send({"type": "session.output_audio.delta",
                             "delta": base64.b64encode(piece).decode()},
                            record={"type": "session.output_audio.delta", "bytes": len(piece)})
            if self.server.speed:
                await trio.sleep(len(piece) / 8000 / self.server.speed)

    async def _delegate(self, name: str, arguments: dict, *, after: bytes | None) -> None:
        tools = self.fake.session.get("delegation", {}).get("responses", {}).get("tools", [])
        if not any(tool.get("name") == name for tool in tools):
            raise AssertionError(f"the model called {name}, which the session did not declare")
        delegation_id, call_id = self.server.new_id("dlg"), self.server.new_id("call")
        self.fake.function_calls[call_id] = name
        answered = self.calls[call_id] = trio.Event()
        await self.send({"type": "session.delegation.created", "delegation": {
            "id": delegation_id, "target": "responses"}})
        await self.send({"type": "response.event", "delegation_id": delegation_id, "event": {
            "type": "response.output_item.done", "output_index": 0, "item": {
                "type": "function_call", "id": self.server.new_id("fc"), "call_id": call_id,
                "name": name, "arguments": json.dumps(arguments)}}})
        await answered.wait()
        await self.send({"type": "response.event", "delegation_id": delegation_id, "event": {
            "type": "response.completed", "response": {"id": self.server.new_id("resp"),
                "usage": {"input_tokens": 120, "output_tokens": 12, "total_tokens": 132}}}})
        if after:
            await self._speak(after)

    async def _expire(self, after_s: float) -> None:
        await trio.sleep(after_s)
        with contextlib.suppress(ConnectionClosed):
            await self.send({"type": "session.closed", "reason": "expired",
                             "session": self.fake.session,
                             "usage": {"seconds": self.input_bytes / 8000}})
            await self.close(1000, "expired")

"""One call's OpenAI Realtime session: a WebSocket, a reader and a writer in a nursery.

The writer forwards caller audio (G.711 as received, no transcoding) as
``input_audio_buffer.append``; the reader turns the model's audio deltas into playout and
handles barge-in. The session ends with the call (its scope is cancelled) or fails on its own
with :class:`RealtimeSessionError`, which ends that call only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from media.bridge import CallBridge
from openai_flavor import events
from openai_flavor.settings import RealtimeSettings

log = logging.getLogger("rtpai.openai")

# Caller audio is sent as it comes; when the socket is slower than the caller, what queued up
# goes out as one append (at most this many frames), so back-pressure batches instead of lags.
MAX_FRAMES_PER_APPEND = 25  # 500 ms at 20 ms ptime
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
# trio-websocket's defaults (4 KiB reads, a 1-message queue) cost a task switch per delta.
RECEIVE_BUFFER_SIZE = 64 * 1024
MESSAGE_QUEUE_SIZE = 16


class RealtimeSessionError(Exception):
    """The AI session cannot go on; the reason is safe to log and to return in statistics."""


@dataclass
class RealtimeStats:
    state: str = "connecting"  # connecting -> open -> closed | failed
    model: str = ""
    dialect: str = ""
    session_id: str | None = None
    audio_sent_bytes: int = 0
    appends_sent: int = 0
    audio_received_bytes: int = 0
    responses: int = 0
    barge_ins: int = 0
    truncations: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    transcript: list[dict[str, str]] = field(default_factory=list)
    failure: str | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "model": self.model,
            "dialect": self.dialect,
            "session id": self.session_id,
            "audio sent bytes": self.audio_sent_bytes,
            "audio received bytes": self.audio_received_bytes,
            "responses": self.responses,
            "barge-ins": self.barge_ins,
            "truncations": self.truncations,
            "errors": list(self.errors[-10:]),
            "usage": self.usage,
            "transcript": list(self.transcript),
            "failure": self.failure,
        }


def redact(text: str, secret: str | None) -> str:
    """Servers echo parts of a bad key in error messages; never let a key reach a log."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "<redacted>")
    return text


class RealtimeSession:
    """The AI side of one call. ``run`` is started in the call's nursery."""

    def __init__(self, settings: RealtimeSettings, bridge: CallBridge) -> None:
        self.settings = settings
        self.bridge = bridge
        self.stats = RealtimeStats(model=settings.model, dialect=settings.dialect)
        self._session_ready = trio.Event()
        # Barge-in bookkeeping: the assistant item being played, audio received per item, and
        # responses whose late deltas must be dropped after an interruption.
        self._current_item: str | None = None
        self._current_response: str | None = None
        self._received_bytes: dict[str, int] = {}
        self._cancelled_responses: set[str] = set()

    def _headers(self) -> list[tuple[str, str]]:
        headers = [("Authorization", f"Bearer {self.settings.api_key}")]
        if self.settings.dialect == "beta":
            headers.append(("OpenAI-Beta", "realtime=v1"))
        return headers

    async def run(self) -> None:
        """Connect at once (the phone is still ringing), configure, then stream both ways."""
        url = self.settings.session_url()
        try:
            # connect_timeout bounds the TCP, TLS and WebSocket handshakes only, not the call.
            async with open_websocket_url(
                url,
                extra_headers=self._headers(),
                message_queue_size=MESSAGE_QUEUE_SIZE,
                receive_buffer_size=RECEIVE_BUFFER_SIZE,
                connect_timeout=CONNECT_TIMEOUT,
                disconnect_timeout=CLOSE_TIMEOUT,
            ) as ws:
                await self._converse(ws)
        except ConnectionTimeout:
            self._fail("connecting to the Realtime API timed out")
        except ConnectionRejected as exc:
            self._fail(f"the Realtime API rejected the connection (HTTP {exc.status_code})")
        except HandshakeError as exc:
            self._fail(f"WebSocket handshake failed: {type(exc).__name__}")
        except ConnectionClosed as exc:
            reason = exc.reason
            detail = f"{reason.code} {reason.reason or ''}".strip() if reason else "unknown"
            self._fail(f"the Realtime API closed the session ({detail})")
        except OSError as exc:
            self._fail(f"cannot reach the Realtime API: {exc.strerror or type(exc).__name__}")
        finally:
            if self.stats.state != "failed":
                self.stats.state = "closed"

    def _fail(self, reason: str) -> None:
        reason = redact(reason, self.settings.api_key)
        self.stats.state = "failed"
        if not self.stats.failure:
            self.stats.failure = reason
        raise RealtimeSessionError(self.stats.failure)

    async def _converse(self, ws: WebSocketConnection) -> None:
        self.stats.state = "open"
        self.bridge.mark("ai_session_open")
        await ws.send_message(json.dumps(events.session_update(self.settings, self.bridge.codec)))
        closed: list[ConnectionClosed] = []
        async with trio.open_nursery() as nursery:
            tasks = [self._read_events, self._send_caller_audio]
            if self.bridge.caller_events is not None:
                tasks.append(self._send_caller_events)
            if self.settings.welcome_message:
                tasks.append(self._welcome)
            for task in tasks:
                nursery.start_soon(self._until_closed, task, ws, nursery.cancel_scope, closed)
        if closed:
            # Re-raised bare (not in an ExceptionGroup) so that run() reports the close code.
            raise closed[0]

    @staticmethod
    async def _until_closed(task, ws, scope: trio.CancelScope, closed: list) -> None:
        """Run one side of the conversation; a closed socket ends both sides."""
        try:
            await task(ws)
        except ConnectionClosed as exc:
            closed.append(exc)
            scope.cancel()

    async def _welcome(self, ws: WebSocketConnection) -> None:
        """Greet as soon as media flows: before that the caller would miss the first words."""
        await self._session_ready.wait()
        await self.bridge.media_started.wait()
        await ws.send_message(json.dumps(events.welcome_response(self.settings)))

    async def _send_caller_audio(self, ws: WebSocketConnection) -> None:
        receive = self.bridge.caller_audio
        async for frame in receive:
            frames = [frame]
            while len(frames) < MAX_FRAMES_PER_APPEND:
                try:
                    frames.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            audio = b"".join(frames) if len(frames) > 1 else frame
            await ws.send_message(events.audio_append(audio))
            self.stats.audio_sent_bytes += len(audio)
            self.stats.appends_sent += 1
            self.bridge.mark("first_audio_to_ai")

    async def _send_caller_events(self, ws: WebSocketConnection) -> None:
        """Tell the model about key presses (RFC 4733 DTMF from the media plane) as user text.

        Minimal on purpose: the DTMF/tools work in this package will refine it.
        """
        async for event in self.bridge.caller_events:
            item = {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": f"The caller pressed {event.digit}"}],
            }
            await ws.send_message(json.dumps({"type": "conversation.item.create", "item": item}))

    async def _read_events(self, ws: WebSocketConnection) -> None:
        while True:
            message = await ws.get_message()
            try:
                event = events.decode_event(message)
            except ValueError:
                log.warning("call %s: ignoring a malformed Realtime event", self.bridge.call_id)
                continue
            await self._on_event(ws, event)

    async def _on_event(self, ws: WebSocketConnection, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind in events.AUDIO_DELTA:
            self._on_audio_delta(event)
        elif kind in events.AUDIO_DONE:
            if event.get("response_id") not in self._cancelled_responses:
                self.bridge.playout.finish_item(self.bridge.silence_byte)
        elif kind == "input_audio_buffer.speech_started":
            await self._barge_in(ws)
        elif kind == "response.done":
            response = event.get("response") or {}
            self.stats.responses += 1
            events.add_usage(self.stats.usage, response.get("usage"))
        elif kind in events.ASSISTANT_TRANSCRIPT_DONE:
            self._transcript("assistant", event.get("transcript"))
        elif kind == events.CALLER_TRANSCRIPT_DONE:
            self._transcript("caller", event.get("transcript"))
        elif kind in {"session.created", "session.updated"}:
            session = event.get("session") or {}
            self.stats.session_id = session.get("id") or self.stats.session_id
            if kind == "session.updated":
                self._session_ready.set()
        elif kind == "error":
            self._on_error(event.get("error") or {})

    def _on_audio_delta(self, event: dict[str, Any]) -> None:
        if event.get("response_id") in self._cancelled_responses:
            return  # a late delta of an interrupted response: the caller must not hear it
        audio = events.decode_audio_delta(event)
        item_id = event.get("item_id")
        self._current_item = item_id
        self._received_bytes[item_id] = self._received_bytes.get(item_id, 0) + len(audio)
        self._current_response = event.get("response_id")
        self.stats.audio_received_bytes += len(audio)
        self.bridge.mark("first_ai_audio")
        self.bridge.playout.push(audio, item_id)

    async def _barge_in(self, ws: WebSocketConnection) -> None:
        """The caller started speaking: stop playing and tell the server what was heard.

        Only the pacer knows what the caller heard: ``frames_sent x ptime`` is the truncation
        point, clamped to the audio received for the item. Wall-clock estimates overshoot and
        the server rejects a truncation past the item's audio.
        """
        item_id = self._current_item
        playout = self.bridge.playout
        if item_id is None or len(playout) == 0:
            return  # nothing is playing: the caller is not interrupting anyone
        playout.clear()
        self.stats.barge_ins += 1
        if self._current_response:
            self._cancelled_responses.add(self._current_response)
        sent_ms = playout.frames_sent.get(item_id, 0) * self.bridge.ptime_ms
        received_ms = self._received_bytes.get(item_id, 0) // self.bridge.bytes_per_ms
        end_ms = min(sent_ms, received_ms)
        if 0 < end_ms < received_ms:
            await ws.send_message(json.dumps(events.truncate_item(item_id, end_ms)))
            self.stats.truncations += 1

    def _on_error(self, error: dict[str, Any]) -> None:
        code = str(error.get("code") or error.get("type") or "error")
        message = redact(str(error.get("message") or ""), self.settings.api_key)
        self.stats.errors.append({"code": code, "message": message})
        log.warning("call %s: Realtime error %s: %s", self.bridge.call_id, code, message)

    def _transcript(self, role: str, text: Any) -> None:
        if isinstance(text, str) and text:
            self.stats.transcript.append({"role": role, "text": text})
            log.info("call %s: %s said: %s", self.bridge.call_id, role, text)

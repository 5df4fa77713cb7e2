"""One call's OpenAI Realtime session: connections, their tasks, and reconnects.

:meth:`RealtimeSession.run` lives in the call's nursery. It opens a WebSocket at once (the
phone is still ringing), configures the session and runs, in a nursery per connection:

* the reader: server events -> playout, barge-in, transcripts, usage, tool calls;
* the flusher: output the socket could not take at once (openai_flavor/websocket.py);
* the welcome message, once caller media flows; the caller's DTMF digits; tool calls.

Caller audio (G.711 as received, never transcoded) needs no task: the media plane hands each
frame to :meth:`RealtimeSession._append_caller_audio` through the bridge, which sends it as an
``input_audio_buffer.append`` there and then.

A lost connection is reopened with back-off while the call stays up, the new session getting
the instructions plus a recap of the conversation; a fatal failure (a refused key, a wrong API
shape) or a loss longer than ``reconnect_timeout`` raises :class:`RealtimeSessionError`, which
ends this call only. The assistant's response/playout state lives in :class:`Turns`.

Every phase of a connection is bounded (docs/reliability.md): the TCP/TLS connect and the
upgrade in :meth:`WebSocket.connect`, the rest by a per-connection :class:`Watchdog` (a pure
policy) that the watch task polls: ``session.created``/``session.updated``, server silence
while a response is expected, keepalive pongs, floods; the socket's own back-pressure bounds
in the flusher. An expiry is a lost connection like any other: reconnect, or end the call.
A malformed server event is counted and dropped; it never reaches the poller.
"""

from __future__ import annotations

import enum
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import trio

from media.bridge import AiSessionError, CallBridge
from media.poller import MediaPoller
from media.state import Machine, Transitions
from media.tones import reconnect_cue
from openai_flavor import events, keypad
from openai_flavor.reconnect import Backoff
from openai_flavor.settings import END_CALL_TOOL, TRANSFER_TOOL, RealtimeSettings
from openai_flavor.turns import FunctionCall, IllegalTransition, ResponseDone, Turns
from openai_flavor.watchdog import FLOOD_BURST, FLOOD_RATE, Bounds, Watchdog
from openai_flavor.webhook import WebhookError, post_json
from openai_flavor.websocket import (
    CLOSE_ABNORMAL,
    ConnectionClosed,
    HandshakeRejected,
    HandshakeTimeout,
    InvalidRequestHeader,
    WebSocket,
    WebSocketError,
)

log = logging.getLogger("rtpai.openai")

# Audio held while the connection opened goes out as appends of at most this many frames.
MAX_FRAMES_PER_APPEND = 25  # 500 ms at 20 ms ptime
# When a call ends, the close frame is written at once; this bounds the wait for the server's
# close in reply, in the call's own task (its ports are released after it). The delete's reply
# does not wait for it (ctl/engine.py): the proxy's worker is blocked until that reply.
CLOSE_ON_END = 0.05
# What a hostile server can make a call hold (docs/reliability.md): the statistics keep the
# last errors and a bounded transcript; an assistant item is a few per response, so more than
# MAX_ASSISTANT_ITEMS live at once is a server inventing item ids.
KEPT_ERRORS = 10
MAX_ERROR_CODE_CHARS = 64
MAX_ERROR_MESSAGE_CHARS = 500
MAX_TRANSCRIPT_ENTRIES = 2000  # a 60-minute call has a few hundred turns
MAX_TRANSCRIPT_ENTRY_CHARS = 8000
MAX_ASSISTANT_ITEMS = 64
# The ng reply carries the transcript; a UDP datagram holds at most ~64 KB, and a long call's
# transcript could exceed it. The reply keeps the most recent part; the log has all of it.
TRANSCRIPT_REPLY_CHARS = 16_000


class RealtimeSessionError(AiSessionError):
    """The AI session cannot go on; the reason is safe to log and to return in statistics."""


class _Lost(Exception):
    """One connection ended; ``fatal`` when retrying cannot help; ``since``: when the link
    stopped working, if before it was noticed (a watchdog expiry)."""

    def __init__(self, reason: str, *, fatal: bool = False, since: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fatal = fatal
        self.since = since


class SessionState(enum.StrEnum):
    """The session's life across its connections; the values are the statistics' (the
    ``ai.state`` of query replies, the SIGUSR1 line), which docs and proxies read."""

    CONNECTING = "connecting"  # the first connection is being opened
    OPEN = "open"  # a connection is up (session.update sent)
    RECONNECTING = "reconnecting"  # a connection was lost; the next one is being opened
    CLOSED = "closed"  # the call ended it
    FAILED = "failed"  # it gave up (``failure`` says why); the call ends


_C, _O, _R = SessionState.CONNECTING, SessionState.OPEN, SessionState.RECONNECTING
SESSION_TRANSITIONS = Transitions("AI session", {
    _C: {_O, _R, SessionState.FAILED, SessionState.CLOSED},
    _O: {_R, SessionState.FAILED, SessionState.CLOSED},
    # A reconnect attempt that fails stays reconnecting (the next one is scheduled).
    _R: {_O, _R, SessionState.FAILED, SessionState.CLOSED},
    SessionState.CLOSED: set(),
    SessionState.FAILED: set(),
})


@dataclass
class RealtimeStats:
    model: str = ""
    dialect: str = ""
    session_id: str | None = None
    connections: int = 0
    reconnects: int = 0
    audio_sent_bytes: int = 0
    appends_sent: int = 0
    audio_received_bytes: int = 0
    responses: int = 0
    barge_ins: int = 0
    barge_ins_ignored: int = 0  # during a protected welcome message
    truncations: int = 0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    dtmf_digits: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    malformed_events: int = 0  # type-confused, invalid JSON, binary: counted and dropped
    last_loss: str | None = None  # why the last connection was lost (the call went on)
    usage: dict[str, Any] = field(default_factory=dict)
    transcript: list[dict[str, str]] = field(default_factory=list)
    failure: str | None = None

    def snapshot(self, state: SessionState) -> dict[str, Any]:
        # The most recent transcript entries that fit the reply (see TRANSCRIPT_REPLY_CHARS).
        shown: list[dict[str, str]] = []
        size = 0
        for entry in reversed(self.transcript):
            size += len(entry["text"]) + 16
            if size > TRANSCRIPT_REPLY_CHARS:
                break
            shown.append(entry)
        shown.reverse()
        return {
            "state": state.value,
            "model": self.model,
            "dialect": self.dialect,
            "session id": self.session_id,
            "connections": self.connections,
            "reconnects": self.reconnects,
            "audio sent bytes": self.audio_sent_bytes,
            "audio received bytes": self.audio_received_bytes,
            "responses": self.responses,
            "barge-ins": self.barge_ins,
            "barge-ins ignored": self.barge_ins_ignored,
            "truncations": self.truncations,
            "tool calls": list(self.tool_calls[-20:]),
            "dtmf digits": self.dtmf_digits,
            "errors": list(self.errors[-10:]),
            "malformed events": self.malformed_events,
            "last loss": self.last_loss,
            "usage": self.usage,
            "transcript": shown,
            "transcript omitted": len(self.transcript) - len(shown),
            "failure": self.failure,
        }


def redact(text: str, secret: str | None) -> str:
    """Servers echo parts of a bad key in error messages; never let a key reach a log."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "<redacted>")
    return text


class RealtimeSession:
    """The AI side of one call. ``run`` is started in the call's nursery."""

    def __init__(self, settings: RealtimeSettings, bridge: CallBridge,
                 poller: MediaPoller) -> None:
        self.settings = settings
        self.bridge = bridge
        self._poller = poller  # the engine's: reads the WebSocket as it does RTP
        self.stats = RealtimeStats(model=settings.model, dialect=settings.dialect)
        self._state = Machine(SESSION_TRANSITIONS, SessionState.CONNECTING,
                              f"AI session of call {bridge.call_id}")
        # Across connections: the welcome is spoken once, and protected until it has played.
        self._welcome_sent = False
        self._welcome_played = not settings.welcome_guarded
        # A hang-up the model asked for in a response without a goodbye: after the next one.
        self._hang_up_after_next: str | None = None
        self._backoff = Backoff(settings.reconnect_timeout)
        # Per connection (reset by _converse).
        self._ws: WebSocket | None = None
        self._turns = self._new_turns()
        self._ready = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._reader_ended = trio.Event()
        self._reader_stop: Exception | None = None
        self._watchdog = Watchdog(self._bounds(), 0.0)
        self._watch_scope = trio.CancelScope()
        # Failures of actions the model asked for, to tell it once a connection is ready.
        self._untold_failures: list[str] = []
        bridge.listen_for_failures(self._action_failed)

    @property
    def state(self) -> SessionState:
        """A ``str`` (the statistics' name) as the AiSession protocol asks."""
        return self._state.state

    def snapshot(self) -> dict[str, Any]:
        """The session's statistics, for the ``ai`` key of the call's statistics."""
        return self.stats.snapshot(self._state.state)

    def _new_turns(self) -> Turns:
        return Turns(
            ptime_ms=self.bridge.ptime_ms,
            bytes_per_ms=self.bridge.bytes_per_ms,
            guard_welcome=not self._welcome_played,
        )

    def _bounds(self) -> Bounds:
        settings = self.settings
        return Bounds(session=settings.session_timeout, response=settings.response_timeout,
                      ping_interval=settings.ping_interval)

    def _headers(self) -> list[tuple[str, str]]:
        headers = [("Authorization", f"Bearer {self.settings.api_key}")]
        if self.settings.dialect == "beta":
            headers.append(("OpenAI-Beta", "realtime=v1"))
        return headers

    # --- connections and reconnects -----------------------------------------------------------

    async def run(self) -> None:
        """Connect at once, converse, reconnect on transient losses; raise when giving up."""
        backoff = self._backoff
        try:
            while True:
                try:
                    await self._connect_once()  # ends by _Lost, or by the call's cancellation
                except _Lost as lost:
                    reason = redact(lost.reason, self.settings.api_key)
                    self.stats.last_loss = reason
                    if lost.fatal:
                        self._fail(reason)
                    delay = backoff.failed(trio.current_time(), working_until=lost.since)
                    if delay is None:
                        self._fail(
                            f"the Realtime API could not be reached within "
                            f"{self.settings.reconnect_timeout:g} s ({reason})"
                        )
                    self._state.to(SessionState.RECONNECTING)
                    self.stats.reconnects += 1
                    log.warning(
                        "call %s: Realtime connection lost (%s); reconnecting in %.1f s",
                        self.bridge.call_id, reason, delay,
                    )
                    self._play_reconnect_cue()
                    await trio.sleep(delay)
        finally:
            self.bridge.detach_caller_audio(for_good=True)
            if self._state.state is not SessionState.FAILED:
                self._state.to(SessionState.CLOSED)
            if self.stats.usage:
                log.info("call %s: AI usage %s", self.bridge.call_id, json.dumps(self.stats.usage))

    def _play_reconnect_cue(self) -> None:
        """Tell the caller the line is alive while the AI link recovers (``reconnect_tone``).

        Silence frames keep flowing regardless ([rtp] send_silence): the pacer does not
        depend on the AI link. The cue follows whatever was already queued, once per loss,
        and only once the caller is there to hear it."""
        if not self.settings.reconnect_tone or not self.bridge.media_started.is_set():
            return
        self.bridge.end_item()  # the cue starts on a frame boundary
        self.bridge.play(reconnect_cue(self.bridge.codec), "reconnect cue")

    def _fail(self, reason: str) -> None:
        self._state.to(SessionState.FAILED)
        if not self.stats.failure:
            self.stats.failure = reason
        raise RealtimeSessionError(self.stats.failure)

    async def _connect_once(self) -> None:
        """One WebSocket connection, from handshake to close; raises :class:`_Lost`."""
        self.stats.connections += 1
        settings = self.settings
        try:
            ws = await WebSocket.connect(
                settings.session_url(), self._headers(),
                connect_timeout=settings.connect_timeout,
                upgrade_timeout=settings.upgrade_timeout,
                max_message=settings.max_message_bytes,
                send_buffer=settings.send_buffer_bytes,
                send_timeout=settings.send_timeout,
            )
            try:
                await self._converse(ws)
            finally:
                self.bridge.detach_caller_audio()
                # Also when the call is deleted (cancelled): close with 1000 so the server
                # ends the session at once, shielded but bounded so delete never hangs.
                with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_ON_END):
                    await ws.aclose()
        except HandshakeRejected as exc:
            raise _Lost(
                f"the Realtime API rejected the connection (HTTP {exc.status})",
                fatal=exc.status in events.FATAL_HTTP_STATUS,
            ) from None
        except HandshakeTimeout as exc:
            raise _Lost(str(exc)) from None
        except ConnectionClosed as exc:
            detail = f"{exc.code} {exc.reason}".strip()
            if exc.local:
                what = f"rtpai closed the session: the server broke the protocol ({detail})"
            elif exc.code == CLOSE_ABNORMAL:  # no close frame: a network or back-pressure loss
                what = f"the connection to the Realtime API was lost ({exc.reason})"
            else:
                what = f"the Realtime API closed the session ({detail})"
            raise _Lost(
                what,
                fatal=exc.code in events.FATAL_CLOSE_CODES,
            ) from None
        except InvalidRequestHeader as exc:
            # Our own request cannot be sent: no retry would send a different one.
            raise _Lost(f"WebSocket handshake failed: {exc}", fatal=True) from None
        except WebSocketError as exc:
            raise _Lost(f"WebSocket handshake failed: {exc}") from None
        except OSError as exc:
            raise _Lost(
                f"cannot reach the Realtime API: {exc.strerror or type(exc).__name__}"
            ) from None

    async def _converse(self, ws: WebSocket) -> None:
        reconnect = self.stats.connections > 1
        self._ws = ws
        self._turns = self._new_turns()
        self._ready = trio.Event()
        # The bounds run from the 101: session.created, and session.updated to the
        # session.update sent just below.
        self._watchdog = Watchdog(self._bounds(), trio.current_time())
        self._state.to(SessionState.OPEN)
        self.bridge.mark("ai_session_open")
        instructions = self.settings.instructions
        if reconnect:
            # The new session knows nothing: give it the conversation so far.
            instructions = events.recap_instructions(instructions, self.stats.transcript)
            # Audio held while disconnected is old: the new session must not answer it.
            self.bridge.drop_caller_backlog()
        self._send(
            events.session_update(
                self.settings, self.bridge.codec, instructions=instructions,
                interrupt=self._welcome_played,
            )
        )
        backlog = self.bridge.attach_caller_audio(self._append_caller_audio)
        for start in range(0, len(backlog), MAX_FRAMES_PER_APPEND):
            self._append_caller_audio(b"".join(backlog[start : start + MAX_FRAMES_PER_APPEND]))
        ended: list[BaseException] = []
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            tasks = [self._read_events, ws.flush, self._watch]
            if self.settings.welcome_message and not self._welcome_sent:
                tasks.append(self._welcome)
            if self.bridge.caller_events is not None:
                tasks.append(self._forward_dtmf)
            for task in tasks:
                nursery.start_soon(self._until_lost, task, ended)
        if ended:
            # Re-raised bare (not in an ExceptionGroup) so that the close code is classified.
            # The list is emptied as it goes: it is a local of the frames in the exception's
            # traceback, and holding the exception would make a reference cycle of them (and
            # of the session they hold) for the cycle collector (issue 18).
            lost = ended[0]
            ended.clear()
            try:
                raise lost
            finally:
                del lost

    async def _until_lost(self, task, ended: list[BaseException]) -> None:
        """Run one side of the conversation; a lost connection ends every side."""
        try:
            await task()
        except (ConnectionClosed, _Lost) as exc:
            ended.append(exc)
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()

    def _send(self, event: dict[str, Any]) -> None:
        """Send a client event now. A broken connection surfaces in the reader and flusher
        (openai_flavor/websocket.py), which end this connection; here it is dropped."""
        assert self._ws is not None
        self._ws.send_text(json.dumps(event))
        if event["type"] == "response.create":
            self._expect_response()

    # --- the watchdog ---------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Poll the connection's watchdog when it asks to be; raise :class:`_Lost` when a
        bound expires. Keepalive pings go out from here."""
        assert self._ws is not None
        while True:
            verdict = self._watchdog.poll(trio.current_time())
            if verdict.expired is not None:
                raise _Lost(verdict.expired, since=verdict.since)
            if verdict.ping is not None:
                self._ws.send_ping(verdict.ping)
            with trio.CancelScope(deadline=verdict.wake_at) as self._watch_scope:
                await trio.sleep_forever()

    def _expect_response(self) -> None:
        """A response is due: the server's silence is bounded from now on."""
        if self._watchdog.expect_response(trio.current_time()):
            self._watch_scope.deadline = -math.inf  # poll now: the deadline moved earlier

    # --- the writer side ------------------------------------------------------------------------

    async def _welcome(self) -> None:
        """Greet as soon as media flows: before that the caller would miss the first words."""
        await self._ready.wait()
        await self.bridge.media_started.wait()
        if self._welcome_sent:
            return
        self._welcome_sent = True
        if self._turns.request_response(welcome=True):
            self._send(events.welcome_response(self.settings))

    def _append_caller_audio(self, audio: bytes) -> bool:
        """The bridge's consumer: one frame of caller audio (or a backlog batch), sent now.
        Runs in the media plane's task; False (dropped, counted there) when the connection
        is backed up or gone."""
        assert self._ws is not None
        if not self._ws.send_text(events.audio_append(audio), droppable=True):
            return False
        stats = self.stats
        stats.audio_sent_bytes += len(audio)
        stats.appends_sent += 1
        if stats.appends_sent == 1:
            self.bridge.mark("first_audio_to_ai")
        return True

    async def _forward_dtmf(self) -> None:
        """The caller's keypad digits, to the model as a user message, then a response:
        one message per sequence (openai_flavor/keypad.py)."""
        caller_events = self.bridge.caller_events
        assert caller_events is not None
        await self._ready.wait()
        more = True
        while more:
            sequence = keypad.KeySequence(terminator=self.settings.dtmf_terminator)
            text, more = await keypad.next_sequence(caller_events, sequence)
            if not text:
                continue
            self.stats.dtmf_digits += len(text)
            log.info("call %s: caller pressed %s", self.bridge.call_id, text)
            self._send(events.caller_text(events.dtmf_text(text)))
            self._want_response()

    def _want_response(self) -> None:
        if self._turns.request_response():
            self._send(events.response_create())

    # --- the reader side ------------------------------------------------------------------------

    async def _read_events(self) -> None:
        """Handle server events as they arrive; return only by raising the connection's end.

        The socket sits in the engine's poller (media/poller.py) beside every call's RTP
        sockets, which calls :meth:`_readable` when data is there: no task switch and no
        epoll re-arm per read, as with a task waiting on the socket. This task only waits
        for the end.
        """
        ws = self._ws
        assert ws is not None
        ended = self._reader_ended = trio.Event()
        self._reader_stop = None
        self._poller.register(ws.socket, self._readable, self._reader_failed)
        try:
            self._readable(trio.current_time())  # events that came with the 101
            await ended.wait()
        finally:
            self._poller.unregister(ws.socket)
        # Taken off the session before it is raised: a raised exception's traceback holds
        # this frame, and so the session (a reference cycle per call otherwise, issue 18).
        why, self._reader_stop = self._reader_stop, None
        assert why is not None
        try:
            raise why
        finally:
            del why

    def _readable(self, now: float) -> None:
        """The poller's call: what one read brought, event by event, synchronously."""
        if self._reader_ended.is_set():
            return
        ws = self._ws
        assert ws is not None
        frames = ws.frames_received
        messages, ended = ws.read_ready()
        frames = ws.frames_received - frames
        if frames:
            dog = self._watchdog
            if not dog.frames(now, frames):
                # Parsing it would hold up every call's media in the poller: give it up.
                self._stop_reading(_Lost(
                    f"a flood of server frames (more than {FLOOD_BURST} at once or "
                    f"{FLOOD_RATE:g} a second)"))
                return
            if ws.pong is not None:
                dog.pong(ws.pong, now)
                ws.pong = None
            if ws.binary_dropped:
                self.stats.malformed_events += ws.binary_dropped
                ws.binary_dropped = 0
        try:
            for message in messages:
                try:
                    self._on_event(events.decode_event(message), now)
                except (ValueError, IllegalTransition) as exc:
                    # ValueError: not JSON, not an event, or events.MalformedEvent.
                    self._malformed(exc)
        except _Lost as lost:
            # Handed on from inside the handler, which forgets `lost` as it ends: a local
            # holding it would keep this frame (in its traceback) and the session in a cycle.
            self._stop_reading(lost)
            return
        if ended is not None:
            self._stop_reading(ended)

    def _malformed(self, exc: Exception) -> None:
        """A server event that makes no sense: counted and dropped, the call goes on."""
        stats = self.stats
        stats.malformed_events += 1
        if stats.malformed_events <= 3 or log.isEnabledFor(logging.DEBUG):
            log.warning("call %s: dropped a malformed Realtime event (%s; %d so far)",
                        self.bridge.call_id, type(exc).__name__, stats.malformed_events)

    def _reader_failed(self) -> None:
        """The poller dropped the socket after ``_readable`` raised (a bug): end this
        connection; the call goes on and a new connection is opened."""
        self._stop_reading(_Lost("internal error while reading Realtime events"))

    def _stop_reading(self, why: Exception) -> None:
        assert self._ws is not None
        self._poller.unregister(self._ws.socket)  # level-triggered: an end stays readable
        self._reader_stop = why
        self._reader_ended.set()

    def _on_event(self, event: dict[str, Any], now: float) -> None:
        """One server event. Fields are read through ``events.field_*``, which raise
        MalformedEvent for a wrong type before anything changes (the caller drops it)."""
        kind = event["type"]
        turns = self._turns
        if kind not in events.NO_PROGRESS and not kind.startswith("input_audio_buffer."):
            # Progress towards a response. VAD events, errors and rate limits are not: a
            # server that hears the caller but never answers is as mute as a silent one.
            self._watchdog.heard(now)
        if kind in events.AUDIO_DELTA:
            audio = events.decode_audio_delta(event)
            item_id = events.field_str(event, "item_id") or ""
            if item_id not in turns.items and len(turns.items) >= MAX_ASSISTANT_ITEMS:
                raise events.MalformedEvent("too many assistant items at once")
            # False for a late delta of an interrupted response: the caller must not hear it.
            if turns.audio_delta(events.field_str(event, "response_id"), item_id, len(audio)):
                self.stats.audio_received_bytes += len(audio)
                self.bridge.mark("first_ai_audio")
                self.bridge.play(audio, item_id)
        elif kind in events.AUDIO_DONE:
            response_id = events.field_str(event, "response_id")
            if turns.audio_done(response_id, events.field_str(event, "item_id") or ""):
                self.bridge.end_item()
        elif kind == events.SPEECH_STARTED:
            self._barge_in()
        elif kind in events.TURN_ENDED:
            # The server's VAD ended the caller's turn: it creates a response (create_response).
            if self.settings.turn_detection_type != "none":
                self._expect_response()
        elif kind == events.RESPONSE_CREATED:
            response = events.field_object(event, "response")
            turns.response_created(events.field_str(response, "id") or "", self.bridge)
            self._expect_response()
        elif kind == events.FUNCTION_CALL_DONE:
            call_id, name, arguments = events.parse_function_call(event)
            turns.function_call(events.field_str(event, "response_id"),
                                FunctionCall(call_id, name, arguments))
        elif kind == events.RESPONSE_DONE:
            response = events.field_object(event, "response")
            done = turns.response_done(events.field_str(response, "id"))
            self.stats.responses += 1
            events.add_usage(self.stats.usage, response.get("usage"))
            # Settled before what follows sends a response.create, which expects anew.
            self._watchdog.response_settled()
            self._on_response_done(done)
        elif kind in events.ASSISTANT_TRANSCRIPT_DONE:
            self._transcript("assistant", event.get("transcript"))
        elif kind == events.CALLER_TRANSCRIPT_DONE:
            self._transcript("caller", event.get("transcript"))
        elif kind in {"session.created", "session.updated"}:
            session_id = events.field_str(events.field_object(event, "session"), "id")
            self.stats.session_id = session_id or self.stats.session_id
            if kind == "session.created":
                self._watchdog.session_created()
            else:
                self._watchdog.session_updated()
                if not self._ready.is_set():
                    self._ready.set()
                    self._backoff.connected(now)
                    self._tell_failures()  # any that happened while disconnected
        elif kind == "error":
            self._on_error(events.field_object(event, "error"))

    def _barge_in(self) -> None:
        """The caller started speaking: stop playing at once and tell the server what was heard.

        The decision and the clear happen in one step with no checkpoint between them, so
        the frames counted are exactly the frames sent: the caller hears at most the one
        frame already on the wire. The server cancels the response itself (interrupt_response
        is on whenever barge-in is honoured), so no response.cancel is sent.
        """
        decision = self._turns.barge_in(self.bridge)
        if decision.ignored:
            self.stats.barge_ins_ignored += 1
            return
        if not decision.interrupted:
            return
        self.bridge.clear_playout()
        self.stats.barge_ins += 1
        for item_id, end_ms in decision.truncate:
            self._send(events.truncate_item(item_id, end_ms))
            self.stats.truncations += 1

    def _on_response_done(self, done: ResponseDone) -> None:
        if done.was_welcome and not self._welcome_played:
            assert self._nursery is not None
            self._nursery.start_soon(self._unguard_welcome)
        if self._hang_up_after_next is not None and not done.calls:
            self.bridge.hang_up_after_playout(self._hang_up_after_next)
            return
        if done.calls:
            assert self._nursery is not None
            self._nursery.start_soon(self._run_tools, done)
        elif done.send_response:
            self._send(events.response_create())

    async def _unguard_welcome(self) -> None:
        """The welcome has been generated; once it has played, barge-in works again."""
        await self.bridge.wait_playout_idle()
        self._welcome_played = True
        self._turns.guard_welcome = False
        self._send(events.interrupt_update(self.settings, True))

    # --- tools ----------------------------------------------------------------------------------

    async def _run_tools(self, done: ResponseDone) -> None:
        """Answer a response's function calls, then let the model go on (or hang up)."""
        outputs: dict[str, str] = {}
        hang_up: str | None = None
        records = []
        async with trio.open_nursery() as nursery:
            for call in done.calls:
                records.append({"name": call.name, "call id": call.call_id})
                log.info("call %s: the model calls %s(%s)", self.bridge.call_id, call.name,
                         json.dumps(call.arguments))
                if call.name == END_CALL_TOOL and self.settings.end_call_tool:
                    reason = (call.arguments or {}).get("reason")
                    hang_up = "the AI ended the call" + (f": {reason}" if reason else "")
                elif call.name == TRANSFER_TOOL and self.settings.transfer_enabled:
                    outputs[call.call_id] = self._transfer(call)
                elif any(tool.name == call.name for tool in self.settings.tools):
                    nursery.start_soon(self._call_webhook, call, outputs)
                else:
                    outputs[call.call_id] = json.dumps({"error": f"unknown tool {call.name}"})
        for call, record in zip(done.calls, records, strict=True):
            output = outputs.get(call.call_id)
            # The outcome only, not the output: it may carry the webhook's customer data.
            record["result"] = "hang up" if output is None else (
                "error" if output.startswith(('{"error"', '{"ok": false')) else "ok")
            self.stats.tool_calls.append(record)
            if output is not None:
                self._send(events.function_call_output(call.call_id, output))
        if hang_up is not None:
            if done.had_audio:
                # The goodbye was in this response: end once it has been heard.
                self.bridge.hang_up_after_playout(hang_up)
                return
            # No goodbye yet: let the model say it, and hang up after that response.
            self._hang_up_after_next = hang_up
            end_call = next(c for c in done.calls if c.name == END_CALL_TOOL)
            self._send(events.function_call_output(
                end_call.call_id, json.dumps({"ok": True, "note": "Say goodbye now; the call "
                                              "ends when you finish."})))
        if done.send_response:
            # A response.create was deferred while this response ran (turns counts it as
            # on its way): it also makes the model read these outputs.
            self._send(events.response_create())
        elif outputs or hang_up is not None:
            self._want_response()

    def _transfer(self, call: FunctionCall) -> str:
        target = (call.arguments or {}).get("target") or self.settings.transfer_target
        if not isinstance(target, str) or not self.settings.transfer_allowed(target):
            log.warning("call %s: transfer to %r refused: not in the allow-list",
                        self.bridge.call_id, target)
            allowed = sorted({*self.settings.transfer_allow,
                              *filter(None, [self.settings.transfer_target])})
            return json.dumps({"ok": False, "error": "this target is not allowed",
                               "allowed targets": allowed})
        self.bridge.transfer(target)
        return json.dumps({"ok": True, "target": target})

    async def _call_webhook(self, call: FunctionCall, outputs: dict[str, str]) -> None:
        url = self.settings.tool_webhook
        assert url is not None  # the configuration requires it with tools
        payload = {"call_id": self.bridge.call_id, "tool": call.name,
                   "arguments": call.arguments}
        output = None
        with trio.move_on_after(self.settings.tool_timeout):
            try:
                status, body = await post_json(url, payload)
            except WebhookError as exc:
                output = json.dumps({"error": f"the tool failed: {exc}"})
            else:
                text = body.decode("utf-8", "replace")
                output = text if 200 <= status < 300 else json.dumps(
                    {"error": f"the tool failed (HTTP {status})"})
        if output is None:
            output = json.dumps({"error": "the tool did not answer in time"})
        if output.startswith('{"error"'):
            log.warning("call %s: tool %s: %s", self.bridge.call_id, call.name, output)
        outputs[call.call_id] = output

    def _action_failed(self, action: str, why: str) -> None:
        """A transfer or hang-up the model asked for did not happen (the proxy refused or
        failed, after the tool call was answered): the model must know, so that the caller
        hears it rather than silence."""
        log.warning("call %s: the model is told that its %s failed: %s", self.bridge.call_id,
                    action, why)
        self.stats.errors.append({"code": f"{action} failed", "message": why})
        self._untold_failures.append(events.action_failed_text(action, why))
        # While reconnecting the old connection's state lingers: wait for the new session.
        if self._state.state is SessionState.OPEN and self._ready.is_set():
            self._tell_failures()

    def _tell_failures(self) -> None:
        for text in self._untold_failures:
            self._send(events.system_text(text))
        if self._untold_failures:
            self._untold_failures.clear()
            self._want_response()

    # --- errors and transcripts ---------------------------------------------------------------

    def _on_error(self, error: dict[str, Any]) -> None:
        # Bounded: a hostile server may send errors of any size at any rate (within the
        # flood bound); the statistics keep the last few, each cut to a readable length.
        code = str(error.get("code") or error.get("type") or "error")[:MAX_ERROR_CODE_CHARS]
        message = redact(str(error.get("message") or ""), self.settings.api_key)
        message = message[:MAX_ERROR_MESSAGE_CHARS]
        errors = self.stats.errors
        errors.append({"code": code, "message": message})
        if len(errors) > KEPT_ERRORS:
            del errors[0]
        log.warning("call %s: Realtime error %s: %s", self.bridge.call_id, code, message)
        if code in events.FATAL_ERROR_CODES:
            # Retrying cannot help (a bad key, no quota): end the call now, not after a close.
            raise _Lost(f"the Realtime API refused the session ({code})", fatal=True)

    def _transcript(self, role: str, text: Any) -> None:
        if isinstance(text, str) and text:
            transcript = self.stats.transcript
            transcript.append({"role": role, "text": text[:MAX_TRANSCRIPT_ENTRY_CHARS]})
            if len(transcript) > MAX_TRANSCRIPT_ENTRIES:
                del transcript[0]
            log.info("call %s: %s said: %s", self.bridge.call_id, role, text)

"""One Realtime connection's conversation, from ``session.update`` to the connection's end.

:meth:`Conversation.run` configures the session (with a recap of the conversation so far on
a reconnect) and runs, in a nursery of its own:

* the reader (openai_flavor/reader.py), which hands server events to :meth:`handle`:
  playout, barge-in, transcripts, usage, tool calls;
* the flusher: output the socket could not take at once (openai_flavor/websocket.py);
* the watchdog's task, which also sends the keepalive pings;
* the welcome message, once caller media flows; the caller's DTMF digits; tool calls.

Caller audio needs no task: the bridge hands each frame to :meth:`append_caller_audio`.
The first of these to end (a close, a :class:`ConnectionLost`) ends them all, and ``run``
raises it. What outlives a connection (statistics, the welcome and the hang-up, failures
still to tell the model, the back-off) is the session's, handed in.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import trio

from media.bridge import CallBridge
from media.poller import MediaPoller
from openai_flavor import events, keypad
from openai_flavor.errors import ConnectionLost, redact
from openai_flavor.reader import EventReader
from openai_flavor.reconnect import Backoff
from openai_flavor.settings import RealtimeSettings
from openai_flavor.stats import RealtimeStats
from openai_flavor.tools import ToolCalls
from openai_flavor.turns import FunctionCall, ResponseDone, Turns
from openai_flavor.watchdog import Bounds, Watchdog
from openai_flavor.websocket import ConnectionClosed, WebSocket
from openai_flavor.welcome import WelcomeAndGoodbye

log = logging.getLogger("rtpai.openai")

# Audio held while the connection opened goes out as appends of at most this many frames.
MAX_FRAMES_PER_APPEND = 25  # 500 ms at 20 ms ptime
# An assistant item is a few per response: more than this many live at once is a server
# inventing item ids (docs/reliability.md).
MAX_ASSISTANT_ITEMS = 64


class Conversation:
    def __init__(self, ws: WebSocket, *, settings: RealtimeSettings, bridge: CallBridge,
                 poller: MediaPoller, stats: RealtimeStats, manners: WelcomeAndGoodbye,
                 backoff: Backoff, untold_failures: list[str]) -> None:
        self._ws = ws
        self.settings = settings
        self.bridge = bridge
        self._poller = poller
        self.stats = stats
        self._manners = manners
        self._backoff = backoff
        self._untold_failures = untold_failures  # the session's: told once ready
        self.turns = Turns(ptime_ms=bridge.ptime_ms, bytes_per_ms=bridge.bytes_per_ms,
                           guard_welcome=manners.guarding)
        self.ready = trio.Event()  # session.updated came: the session is configured
        # The bounds run from the 101: session.created, and session.updated to the
        # session.update sent by run.
        self._watchdog = Watchdog(Bounds(session=settings.session_timeout,
                                         response=settings.response_timeout,
                                         ping_interval=settings.ping_interval),
                                  trio.current_time())
        self._watch_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._tools = ToolCalls(settings, bridge, stats)

    async def run(self, *, reconnect: bool) -> None:
        """Converse until the connection ends; raise what ended it."""
        instructions = self.settings.instructions
        if reconnect:
            # The new session knows nothing: give it the conversation so far.
            instructions = events.recap_instructions(instructions, self.stats.transcript)
            # Audio held while disconnected is old: the new session must not answer it.
            self.bridge.drop_caller_backlog()
        self.send(events.session_update(self.settings, self.bridge.codec,
                                        instructions=instructions,
                                        interrupt=not self._manners.guarding))
        backlog = self.bridge.attach_caller_audio(self.append_caller_audio)
        for start in range(0, len(backlog), MAX_FRAMES_PER_APPEND):
            self.append_caller_audio(b"".join(backlog[start : start + MAX_FRAMES_PER_APPEND]))
        ended: list[BaseException] = []
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            tasks = [self._read_events, self._ws.flush, self._watch]
            if self._manners.welcome_due:
                tasks.append(self._welcome)
            if self.bridge.caller_events is not None:
                tasks.append(self._forward_dtmf)
            for task in tasks:
                nursery.start_soon(self._until_lost, task, ended)
        if ended:
            # Re-raised bare (not in an ExceptionGroup) so that the close code is classified.
            # The list is emptied as it goes: it is a local of the frames in the exception's
            # traceback, and holding the exception would make a reference cycle of them (and
            # of the conversation they hold) for the cycle collector (issue 18).
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
        except (ConnectionClosed, ConnectionLost) as exc:
            ended.append(exc)
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()

    async def _read_events(self) -> None:
        await EventReader(self._ws, self._poller, self._watchdog, self.stats, self.handle,
                          self.bridge.call_id).run()

    def send(self, event: dict[str, Any]) -> None:
        """Send a client event now. A broken connection surfaces in the reader and flusher
        (openai_flavor/websocket.py), which end this connection; here it is dropped."""
        self._ws.send_text(json.dumps(event))
        if event["type"] == "response.create":
            self._expect_response()

    def want_response(self) -> None:
        """Ask for a response unless one is on its way (turns decides)."""
        if self.turns.request_response():
            self.send(events.response_create())

    # --- the watchdog ---------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Poll the connection's watchdog when it asks to be; raise :class:`ConnectionLost`
        when a bound expires. Keepalive pings go out from here."""
        while True:
            verdict = self._watchdog.poll(trio.current_time())
            if verdict.expired is not None:
                raise ConnectionLost(verdict.expired, since=verdict.since)
            if verdict.ping is not None:
                self._ws.send_ping(verdict.ping)
            with trio.CancelScope(deadline=verdict.wake_at) as self._watch_scope:
                await trio.sleep_forever()

    def _expect_response(self) -> None:
        """A response is due: the server's silence is bounded from now on."""
        if self._watchdog.expect_response(trio.current_time()):
            self._watch_scope.deadline = -math.inf  # poll now: the deadline moved earlier

    # --- what the caller side sends -------------------------------------------------------------

    async def _welcome(self) -> None:
        """Greet as soon as media flows: before that the caller would miss the first words."""
        await self.ready.wait()
        await self.bridge.media_started.wait()
        if self._manners.take_welcome() and self.turns.request_response(welcome=True):
            self.send(events.welcome_response(self.settings))

    def append_caller_audio(self, audio: bytes) -> bool:
        """The bridge's consumer: one frame of caller audio (or a backlog batch), sent now.
        Runs in the media plane's task; False (dropped, counted there) when the connection
        is backed up or gone."""
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
        await self.ready.wait()
        more = True
        while more:
            sequence = keypad.KeySequence(terminator=self.settings.dtmf_terminator)
            text, more = await keypad.next_sequence(caller_events, sequence)
            if not text:
                continue
            self.stats.dtmf_digits += len(text)
            log.info("call %s: caller pressed %s", self.bridge.call_id, text)
            self.send(events.caller_text(events.dtmf_text(text)))
            self.want_response()

    def tell_failures(self) -> None:
        """Tell the model of actions it asked for that failed (the session's list)."""
        for text in self._untold_failures:
            self.send(events.system_text(text))
        if self._untold_failures:
            self._untold_failures.clear()
            self.want_response()

    # --- server events --------------------------------------------------------------------------

    def handle(self, event: dict[str, Any], now: float) -> None:
        """One server event. Fields are read through ``events.field_*``, which raise
        MalformedEvent for a wrong type before anything changes (the reader drops it)."""
        kind = event["type"]
        turns = self.turns
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
            self._response_done(done)
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
                if not self.ready.is_set():
                    self.ready.set()
                    self._backoff.connected(now)
                    self.tell_failures()  # any that happened while disconnected
        elif kind == "error":
            self._error(events.field_object(event, "error"))

    def _barge_in(self) -> None:
        """The caller started speaking: stop playing at once and tell the server what was heard.

        The decision and the clear happen in one step with no checkpoint between them, so
        the frames counted are exactly the frames sent: the caller hears at most the one
        frame already on the wire. The server cancels the response itself (interrupt_response
        is on whenever barge-in is honoured), so no response.cancel is sent.
        """
        decision = self.turns.barge_in(self.bridge)
        if decision.ignored:
            self.stats.barge_ins_ignored += 1
            return
        if not decision.interrupted:
            return
        self.bridge.clear_playout()
        self.stats.barge_ins += 1
        for item_id, end_ms in decision.truncate:
            self.send(events.truncate_item(item_id, end_ms))
            self.stats.truncations += 1

    def _response_done(self, done: ResponseDone) -> None:
        assert self._nursery is not None
        if self._manners.welcome_generated(done):
            self._nursery.start_soon(self._unguard_welcome)
        hang_up = self._manners.hang_up_due(done)
        if hang_up is not None:
            self.bridge.hang_up_after_playout(hang_up)
        elif done.calls:
            self._nursery.start_soon(self._answer_tools, done)
        elif done.send_response:
            self.send(events.response_create())

    async def _unguard_welcome(self) -> None:
        """The welcome has been generated; once it has played, barge-in works again."""
        await self.bridge.wait_playout_idle()
        self._manners.welcome_played()
        self.turns.guard_welcome = False
        self.send(events.interrupt_update(self.settings, True))

    async def _answer_tools(self, done: ResponseDone) -> None:
        """Answer a response's function calls, then let the model go on (or hang up)."""
        answers = await self._tools.answer(done)
        for call_id, output in answers.outputs:
            self.send(events.function_call_output(call_id, output))
        if answers.hang_up is not None:
            if self._manners.model_hangs_up(answers.hang_up, said_goodbye=done.had_audio):
                # The goodbye was in this response: end once it has been heard.
                self.bridge.hang_up_after_playout(answers.hang_up)
                return
            # No goodbye yet: let the model say it; the call ends after that response.
            assert answers.end_call_id is not None
            self.send(events.function_call_output(
                answers.end_call_id, json.dumps({"ok": True, "note": "Say goodbye now; the "
                                                 "call ends when you finish."})))
        if done.send_response:
            # A response.create was deferred while this response ran (turns counts it as
            # on its way): it also makes the model read these outputs.
            self.send(events.response_create())
        elif answers.outputs or answers.hang_up is not None:
            self.want_response()

    def _error(self, error: dict[str, Any]) -> None:
        # Bounded by the statistics: a hostile server may send errors of any size at any
        # rate (within the flood bound).
        code, message = self.stats.add_error(
            str(error.get("code") or error.get("type") or "error"),
            redact(str(error.get("message") or ""), self.settings.api_key))
        log.warning("call %s: Realtime error %s: %s", self.bridge.call_id, code, message)
        if code in events.FATAL_ERROR_CODES:
            # Retrying cannot help (a bad key, no quota): end the call now, not after a close.
            raise ConnectionLost(f"the Realtime API refused the session ({code})", fatal=True)

    def _transcript(self, role: str, text: Any) -> None:
        if isinstance(text, str) and text:
            self.stats.add_transcript(role, text)
            log.info("call %s: %s said: %s", self.bridge.call_id, role, text)

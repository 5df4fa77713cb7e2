"""What the server's events do to one connection's conversation: playout, barge-in, responses,
tool calls, errors, transcripts.

:class:`ServerEvents` is the half of :class:`~openai_flavor.conversation.Conversation` that the
reader (openai_flavor/reader.py) calls, one event at a time, synchronously, inside the poller's
callback: nothing here waits. Fields are read through ``events.field_*``, which raise
MalformedEvent for a wrong type before anything changes (the reader drops the event). What
waits (tools, the welcome's playout, the goodbye's) is started in the connection's nursery.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from media.bridge import CallBridge
from openai_flavor import events
from openai_flavor.barge_in import BargeInJudge, Plan
from openai_flavor.errors import ConnectionLost, redact
from openai_flavor.idle import SilenceWatch
from openai_flavor.reconnect import Backoff
from openai_flavor.session_update import interrupt_update
from openai_flavor.settings import RealtimeSettings
from openai_flavor.stats import RealtimeStats
from openai_flavor.tools import ToolCalls
from openai_flavor.turns import FunctionCall, ResponseDone, Turns
from openai_flavor.watchdog import Watchdog
from openai_flavor.welcome import WelcomeAndGoodbye

log = logging.getLogger("rtpai.openai")

# An assistant item is a few per response: more than this many live at once is a server
# inventing item ids (docs/reliability.md).
MAX_ASSISTANT_ITEMS = 64


class ServerEvents:
    __slots__ = ()  # the conversation's slots hold its state (issue 16's per-call cost)

    # What the conversation provides (openai_flavor/conversation.py).
    settings: RealtimeSettings
    bridge: CallBridge
    stats: RealtimeStats
    turns: Turns
    ready: trio.Event
    _watchdog: Watchdog
    _manners: WelcomeAndGoodbye
    _backoff: Backoff
    _tools: ToolCalls
    _silence: SilenceWatch
    _judge: BargeInJudge | None
    _held: list[tuple[Any, bytes | None]] | None  # a paused answer (barge-in being judged)
    _held_bytes: int
    _nursery: trio.Nursery | None
    _goodbye: str | None  # the length cap's goodbye: "asked", then its response id
    _goodbye_played: trio.Event  # (a no-op stand-in without a length cap: conversation.py)
    _audio_bytes_at_connect: int  # caller audio sent before this connection (audio_end_ms)

    def send(self, event: dict[str, Any]) -> None: ...
    def want_response(self) -> None: ...
    def tell_failures(self) -> None: ...
    def apply(self, plan: Plan) -> None: ...
    def _expect_response(self) -> None: ...

    def handle(self, event: dict[str, Any], now: float) -> None:
        """One server event."""
        kind = event["type"]
        turns = self.turns
        if kind not in events.NO_PROGRESS and not kind.startswith("input_audio_buffer."):
            # Progress towards a response. VAD events, errors and rate limits are not: a
            # server that hears the caller but never answers is as mute as a silent one.
            self._watchdog.last_heard = now  # Watchdog.heard, inlined: per server event
        if kind in events.AUDIO_DELTA:
            # The most frequent event: events.field_str and bridge.play inlined (the same
            # checks, the same queue), calls that a38b145 did not make (issue 16).
            audio = events.decode_audio_delta(event)
            item_id = event.get("item_id")
            if not isinstance(item_id, str):
                if item_id is not None:
                    raise events.MalformedEvent("item_id is not a string")
                item_id = ""
            if item_id not in turns.items and len(turns.items) >= MAX_ASSISTANT_ITEMS:
                raise events.MalformedEvent("too many assistant items at once")
            response_id = event.get("response_id")
            if response_id is not None and not isinstance(response_id, str):
                raise events.MalformedEvent("response_id is not a string")
            # False for a late delta of an interrupted response: the caller must not hear it.
            if turns.audio_delta(response_id, item_id, len(audio)):
                self.stats.audio_received_bytes += len(audio)
                self.bridge.mark("first_ai_audio")
                if self._held is None:
                    self.bridge.playout.push(audio, item_id)
                elif self._held_bytes + len(audio) <= self.bridge.playout.max_bytes:
                    # Paused: it waits with the rest, bounded as the playout queue is.
                    self._held.append((item_id, audio))
                    self._held_bytes += len(audio)
        elif kind in events.AUDIO_DONE:
            response_id = events.field_str(event, "response_id")
            if turns.audio_done(response_id, events.field_str(event, "item_id") or ""):
                if self._held is None:
                    self.bridge.end_item()
                else:
                    self._held.append((None, None))
        elif kind == events.SPEECH_STARTED:
            self._silence.caller_active()
            if self._judge is None:
                self._barge_in()
            else:
                self.apply(self._judge.speech_started(
                    events.field_str(event, "item_id") or "",
                    events.field_int(event, "audio_start_ms"), now,
                    model_speaking=self._model_speaking()))
        elif kind in events.TURN_ENDED:
            if kind == events.SPEECH_STOPPED:
                self._speech_stopped(event, now)
            if self._judge is not None:
                item_id = events.field_str(event, "item_id") or ""
                if kind == events.SPEECH_STOPPED:
                    self.apply(self._judge.speech_stopped(
                        item_id, events.field_int(event, "audio_end_ms")))
                else:
                    self.apply(self._judge.committed(item_id, now))
            elif self.settings.turn_detection_type != "none":
                # The server's VAD ended the caller's turn: it creates a response.
                self._expect_response()
        elif kind == events.RESPONSE_CREATED:
            response_id = events.field_str(events.field_object(event, "response"), "id") or ""
            turns.response_created(response_id, self.bridge)
            self._silence.busy()
            if self._goodbye == "asked":
                self._goodbye = response_id
            self._expect_response()
        elif kind == events.FUNCTION_CALL_DONE:
            call_id, name, arguments = events.parse_function_call(event)
            turns.function_call(events.field_str(event, "response_id"),
                                FunctionCall(call_id, name, arguments))
        elif kind == events.RESPONSE_DONE:
            response = events.field_object(event, "response")
            response_id = events.field_str(response, "id")
            done = turns.response_done(response_id)
            self.stats.responses += 1
            events.add_usage(self.stats.usage, response.get("usage"))
            # Settled before what follows sends a response.create, which expects anew.
            self._watchdog.response_settled()
            self._response_done(done, response_id)
        elif kind in events.ASSISTANT_TRANSCRIPT_DONE:
            self._transcript("assistant", event.get("transcript"))
        elif kind in (events.CALLER_TRANSCRIPT_DONE, events.CALLER_TRANSCRIPT_FAILED):
            text = event.get("transcript") if kind == events.CALLER_TRANSCRIPT_DONE else None
            self._transcript("caller", text)
            if self._judge is not None:
                item_id = events.field_str(event, "item_id") or ""
                self.apply(self._judge.transcript(item_id,
                                                  text if isinstance(text, str) else None))
        elif kind in events.SESSION_CREATED or kind == "session.updated":
            if kind != "conversation.created":  # xAI's carries a conversation, no session
                session_id = events.field_str(events.field_object(event, "session"), "id")
                self.stats.session_id = session_id or self.stats.session_id
            if kind in events.SESSION_CREATED:
                self._watchdog.session_created()
            else:
                self._watchdog.session_updated()
                if not self.ready.is_set():
                    self.ready.set()
                    self._backoff.connected(now)
                    self.tell_failures()  # any that happened while disconnected
        elif kind == "error":
            self._error(events.field_object(event, "error"))

    def _model_speaking(self) -> bool:
        """The caller's speech would interrupt something (not a guarded welcome)."""
        if self.turns.guard_welcome and self.turns.welcome_playing(self.bridge):
            self.stats.barge_ins_ignored += 1
            return False
        return self.turns.generating or self.bridge.queued_bytes > 0 or self._held is not None

    def _speech_stopped(self, event: dict[str, Any], now: float) -> None:
        """When the caller stopped speaking, for the response latency (media/figures.py).

        The server says where in this connection's audio speech ended (``audio_end_ms``);
        what it received after that is the silence its VAD waited for, which the caller
        waited through too. Caller audio flows in real time, so speech ended that much
        before ``now``. The media plane measures from there to the answer's first frame."""
        end_ms = event.get("audio_end_ms")
        waited_ms = 0.0
        if isinstance(end_ms, int) and not isinstance(end_ms, bool):
            sent_ms = ((self.stats.audio_sent_bytes - self._audio_bytes_at_connect)
                       / self.bridge.bytes_per_ms)
            waited_ms = min(max(sent_ms - end_ms, 0.0), 10_000.0)  # the server's number
        self.bridge.turn_ended_at = now - waited_ms / 1000

    def _barge_in(self) -> None:
        """The caller interrupts: stop playing at once and tell the server what was heard.

        The decision and the clear happen in one step with no checkpoint between them, so
        the frames counted are exactly the frames sent: the caller hears at most the one
        frame already on the wire. When the server decides barge-in it cancels the response
        itself (interrupt_response); when rtpai does, it sends the response.cancel.
        """
        generating = self.turns.generating
        decision = self.turns.barge_in(self.bridge)
        if decision.ignored:
            self.stats.barge_ins_ignored += 1
            return
        if not decision.interrupted:
            return
        self.bridge.clear_playout()
        self.stats.barge_ins += 1
        self.bridge.figures.barge_ins += 1
        if generating and self._judge is not None:
            self.send(events.response_cancel())
        if not self.settings.endpoint.truncate:
            return  # xAI: no truncate in its protocol; its server stopped the answer itself
        for item_id, end_ms in decision.truncate:
            self.send(events.truncate_item(item_id, end_ms))
            self.stats.truncations += 1

    def _response_done(self, done: ResponseDone, response_id: str | None) -> None:
        assert self._nursery is not None
        if self._manners.welcome_generated(done):
            self._nursery.start_soon(self._unguard_welcome)
        if response_id is not None and response_id == self._goodbye:
            self._nursery.start_soon(self._goodbye_heard)
        hang_up = self._manners.hang_up_due(done)
        if hang_up is not None:
            self.bridge.hang_up_after_playout(hang_up)
        elif done.calls:
            self._nursery.start_soon(self._answer_tools, done)
        elif done.send_response:
            self.send(events.response_create())
        elif self.turns.settled and self._held is None:
            self._silence.model_done()  # the caller's turn, once this has been heard

    async def _unguard_welcome(self) -> None:
        """The welcome has been generated; once it has played, barge-in works again."""
        await self.bridge.wait_playout_idle()
        self._manners.welcome_played()
        self.turns.guard_welcome = False
        update = interrupt_update(self.settings, True)
        if update is not None:
            self.send(update)

    async def _goodbye_heard(self) -> None:
        await self.bridge.wait_playout_idle()
        self._goodbye_played.set()

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
        self.bridge.figures.count_ai_error(code, events.KNOWN_ERROR_CODES)
        if code in events.FATAL_ERROR_CODES:
            # Retrying cannot help (a bad key, no quota): end the call now, not after a close.
            raise ConnectionLost(f"the Realtime API refused the session ({code})", fatal=True)

    def _transcript(self, role: str, text: Any) -> None:
        if isinstance(text, str) and text:
            now = trio.current_time()
            self.stats.add_transcript(role, text, now - self.bridge.timeline.get("offer", now))
            log.info("call %s: %s said: %s", self.bridge.call_id, role, text)

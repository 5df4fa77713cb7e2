"""One GPT-Live connection, from ``session.start`` to the connection's end.

It is a Realtime :class:`~openai_flavor.conversation.Conversation` in its plumbing (the reader
on the engine's poller, the flusher, the watchdog's task and keepalive pings, a lost
connection ending every task) with GPT-Live's events in place of Realtime's:

* ``session.start`` once, then nothing is sent but caller audio until ``session.started``;
* the model's audio is played as it comes; the model owns the turns, so no response is ever
  asked for, cancelled or truncated: when it yields to the caller, the audio rtpai still
  holds is cleared (openai_flavor/live/turns.py decides when);
* the welcome, keypad digits and failed actions reach the model as appended instructions;
* function calls arrive from the delegated Responses backend and are answered by the same
  tools (end_call, transfer_call, webhooks) through the same bridge actions;
* ``session.closed`` ends the connection: ``expired`` (the duration limit) as a loss the
  session reconnects from with a recap, ``content`` as a refusal that ends the call;
* ``idle_reprompt_s`` and ``max_call_s`` run the Realtime conversation's own tasks on rtpai's
  playout clock (openai_flavor/idle.py), with the model told through instructions.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from openai_flavor import events as realtime
from openai_flavor import keypad
from openai_flavor.conversation import MAX_FRAMES_PER_APPEND, Conversation
from openai_flavor.errors import ConnectionLost
from openai_flavor.live import events
from openai_flavor.live.turns import Floor
from openai_flavor.turns import FunctionCall, ResponseDone

log = logging.getLogger("rtpai.openai")


class LiveConversation(Conversation):
    """Built with a Conversation's arguments; ``settings`` is a LiveSettings."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.floor = Floor()
        self._floor_changed = trio.Event()
        # The playout item the model's audio goes to: a new one after each clear, so that
        # nothing cleared is mistaken for what follows (built once, not per delta).
        self._spurts = 0
        self._item = "live 0"
        self._audio_seconds_before = float(self.stats.usage.get("audio_seconds", 0.0))

    async def run(self, *, reconnect: bool) -> None:
        """Converse until the connection ends; raise what ended it."""
        instructions = self.settings.instructions
        if reconnect:
            # The new session knows nothing (a duration limit, a lost link): a recap.
            instructions = realtime.recap_instructions(instructions, self.stats.transcript)
            self.bridge.drop_caller_backlog()
        self.send(events.session_start(self.settings, self.bridge.codec,
                                       instructions=instructions))
        try:
            await self._converse(self._follow_floor)
        finally:
            self._keep_transcript(self.floor.flush())

    def send(self, event: dict[str, Any]) -> None:
        """Send a client event now (a broken connection surfaces in the reader)."""
        self._ws.send_text(events.encode(event))

    def append_caller_audio(self, audio: bytes) -> bool:
        """The bridge's consumer once ``session.started`` came; False when backed up."""
        if not self._ws.send_text(events.audio_append(audio), droppable=True):
            return False
        stats = self.stats
        stats.audio_sent_bytes += len(audio)
        stats.appends_sent += 1
        if stats.appends_sent == 1:
            self.bridge.mark("first_audio_to_ai")
        return True

    def _instruct(self, text: str) -> None:
        """A re-prompt or the length cap's goodbye: the live model is told, and decides when
        to say it (no response is asked for). The cap's goodbye counts as played once the
        model has gone quiet and the playout has run dry (the floor's goodbye)."""
        self.send(events.instructions_append(text))
        if self._goodbye == "asked" and self.floor.goodbye_since is None:
            self.floor.end_call("", trio.current_time(), cap=True)
            self._floor_moved()

    def tell_failures(self) -> None:
        """Actions the model asked for that failed: told as instructions it acts on."""
        for text in self._untold_failures:
            self.send(events.instructions_append(text))
        self._untold_failures.clear()

    # --- the caller side ------------------------------------------------------------------

    async def _welcome(self) -> None:
        """The welcome, as soon as the caller can hear it: the live model is told to say it
        (it decides when to speak, so it is an instruction, not a response asked for)."""
        await self.ready.wait()
        await self.bridge.media_started.wait()
        if self._manners.take_welcome():
            self.send(events.instructions_append(events.welcome_text(
                self.settings.welcome_message)))

    async def _forward_dtmf(self) -> None:
        """Keypad digits as text (GPT-Live's DTMF events belong to its SIP transport; a
        WebSocket client has no DTMF event to send): one instruction per sequence."""
        caller_events = self.bridge.caller_events
        assert caller_events is not None
        await self.ready.wait()
        more = True
        while more:
            sequence = keypad.KeySequence(terminator=self.settings.dtmf_terminator)
            text, more = await keypad.next_sequence(caller_events, sequence)
            if text:
                self._silence.caller_active()
                self.stats.dtmf_digits += len(text)
                log.info("call %s: caller pressed %s", self.bridge.call_id, text)
                self.send(events.instructions_append(realtime.dtmf_text(text)))

    # --- the floor: clearing what the model no longer says, and the goodbye -----------------

    async def _follow_floor(self) -> None:
        """Act on the floor's decisions when they fall due (openai_flavor/live/turns.py)."""
        floor, bridge = self.floor, self.bridge
        while True:
            now = trio.current_time()
            if floor.spurt_ended(now):
                bridge.end_item()  # the talkspurt's last partial frame plays now
                self._silence.model_done()  # the caller's turn, once it has been heard
            if floor.clear_due(now, playout_holds_audio=bridge.queued_bytes > 0):
                # The model yielded to the caller: what it said before, still queued, must
                # not play over them. Nothing is sent: the model already stopped.
                bridge.clear_playout()
                self._spurts += 1
                self._item = f"live {self._spurts}"
                self.stats.barge_ins += 1
            reason = floor.goodbye_due(now)
            if floor.cap_goodbye_said:
                floor.cap_goodbye_said = False
                assert self._nursery is not None
                self._nursery.start_soon(self._cap_goodbye_played)
            elif reason is not None:
                bridge.hang_up_after_playout(reason)
            with trio.move_on_at(floor.wake_at()):
                await self._floor_changed.wait()

    async def _cap_goodbye_played(self) -> None:
        await self.bridge.wait_playout_idle()
        self._goodbye_played.set()  # the length cap (inherited _cap_length) hangs up now

    def _floor_moved(self) -> None:
        self._floor_changed.set()
        self._floor_changed = trio.Event()

    # --- server events --------------------------------------------------------------------

    def handle(self, event: dict[str, Any], now: float) -> None:
        """One server event; a wrong field type raises MalformedEvent (the reader drops it)."""
        kind = event["type"]
        self._watchdog.heard(now)
        if kind == events.OUTPUT_AUDIO:
            audio = events.decode_audio(event)
            if not self.floor.spurt_open:
                self._silence.busy()  # the model speaks: no caller silence is counted
            self.floor.model_audio(now)
            self.stats.audio_received_bytes += len(audio)
            self.bridge.mark("first_ai_audio")
            self.bridge.play(audio, self._item)
            self._floor_moved()
        elif kind == events.INPUT_TRANSCRIPT:
            self._silence.caller_active()
            self.floor.caller_speech(now)
            self._keep_transcript(self.floor.transcript_delta(
                "caller", events.transcript_delta(event)))
            self._floor_moved()
        elif kind == events.OUTPUT_TRANSCRIPT:
            self._keep_transcript(self.floor.transcript_delta(
                "assistant", events.transcript_delta(event)))
        elif kind == events.USAGE:
            self._audio_seconds(event)
        elif kind == events.DELEGATED:
            self._delegated(event)
        elif kind == events.SESSION_STARTED:
            self._started(event, now)
        elif kind == events.CLOSED:
            self._closed(event)
        elif kind == events.ERROR:
            code, message = events.error_of(event)
            self._error({"code": code, "message": message})

    def _started(self, event: dict[str, Any], now: float) -> None:
        session_id = realtime.field_str(realtime.field_object(event, "session"), "id")
        self.stats.session_id = session_id or self.stats.session_id
        # One event both creates and configures a GPT-Live session.
        self._watchdog.session_created()
        self._watchdog.session_updated()
        if self.ready.is_set():
            return
        self.ready.set()
        self._backoff.connected(now)
        # Audio only now (the guide: wait for session.started); held frames go first.
        backlog = self.bridge.attach_caller_audio(self.append_caller_audio)
        for start in range(0, len(backlog), MAX_FRAMES_PER_APPEND):
            self.append_caller_audio(b"".join(backlog[start : start + MAX_FRAMES_PER_APPEND]))
        self.tell_failures()

    def _closed(self, event: dict[str, Any]) -> None:
        self._audio_seconds(event)
        reason = realtime.field_str(event, "reason") or "unknown"
        if reason == events.CLOSED_EXPIRED:
            # As the Realtime API's 60-minute cap: a new session, with a recap.
            raise ConnectionLost("GPT-Live ended the session at its duration limit (expired)")
        raise ConnectionLost(f"GPT-Live closed the session ({reason})",
                             fatal=reason == events.CLOSED_CONTENT)

    def _audio_seconds(self, event: dict[str, Any]) -> None:
        seconds = events.audio_seconds(event)
        if seconds is not None:
            # Cumulative per session: this connection's, on top of the earlier ones'.
            self.stats.usage["audio_seconds"] = round(self._audio_seconds_before + seconds, 3)

    def _delegated(self, event: dict[str, Any]) -> None:
        usage = events.delegated_usage(event)
        if usage is not None:
            realtime.add_usage(self.stats.usage, usage)
            self.stats.responses += 1
            return
        call = events.delegated_call(event)
        if call is not None:
            assert self._nursery is not None
            self._nursery.start_soon(self._answer_call, *call)

    async def _answer_call(self, delegation_id: str | None, call_id: str, name: str,
                           arguments: dict | None) -> None:
        """One delegated function call, answered by the flavor's tools; end_call starts the
        goodbye (the call ends once the model has gone quiet and its words have played)."""
        done = ResponseDone(calls=(FunctionCall(call_id, name, arguments),), had_audio=False,
                            was_welcome=False, send_response=False)
        answers = await self._tools.answer(done)
        for answered_id, output in answers.outputs:
            self.send(events.tool_output(delegation_id, answered_id, output))
        if answers.hang_up is not None and answers.end_call_id is not None:
            self.send(events.tool_output(delegation_id, answers.end_call_id, json.dumps(
                {"ok": True, "note": "Say a short goodbye now; the call ends when you stop."})))
            self.floor.end_call(answers.hang_up, trio.current_time())
            self._floor_moved()
        self.send(events.tool_continue(delegation_id))

    def _keep_transcript(self, entries: list[tuple[str, str]]) -> None:
        for role, text in entries:
            self._transcript(role, text)

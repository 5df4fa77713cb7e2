"""One Realtime connection's conversation, from ``session.update`` to the connection's end.

:meth:`Conversation.run` configures the session (with a recap of the conversation so far on
a reconnect) and runs, in a nursery of its own:

* the reader (openai_flavor/reader.py), which hands server events to :meth:`handle`:
  playout, barge-in, transcripts, usage, tool calls;
* the flusher: output the socket could not take at once (openai_flavor/websocket/);
* the watchdog's task, which also sends the keepalive pings;
* the welcome message, once caller media flows; the caller's DTMF digits; tool calls;
* with ``idle_reprompt_s``, the wait for a silent caller; with ``max_call_s``, the length
  cap (openai_flavor/idle.py); with ``barge_in_min_ms``, the barge-in judge's timer
  (openai_flavor/barge_in.py).

Caller audio needs no task: the bridge hands each frame to :meth:`append_caller_audio`. The
server's events are handled by the :class:`~openai_flavor.server_events.ServerEvents` half.
The first of these to end (a close, a :class:`ConnectionLost`) ends them all, and ``run``
raises it. What outlives a connection (statistics, the welcome and the hang-up, failures
still to tell the model, the back-off) is the session's, handed in.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from media.bridge import CallBridge, EndReason
from media.poller import MediaPoller
from openai_flavor import events, keypad, session_update
from openai_flavor.barge_in import BargeInJudge, Plan
from openai_flavor.errors import ConnectionLost
from openai_flavor.idle import (
    GOODBYE_BOUND,
    GOODBYE_TEXT,
    UNWATCHED,
    CallCap,
    Silence,
    SilenceWatch,
    Unwatched,
)
from openai_flavor.reader import EventReader
from openai_flavor.reconnect import Backoff
from openai_flavor.server_events import ServerEvents
from openai_flavor.settings import RealtimeSettings
from openai_flavor.stats import RealtimeStats
from openai_flavor.tools import ToolCalls
from openai_flavor.turns import Turns
from openai_flavor.watchdog import Bounds, Watchdog
from openai_flavor.websocket import ConnectionClosed, WebSocket
from openai_flavor.welcome import WelcomeAndGoodbye

log = logging.getLogger("rtpai.openai")

# Audio held while the connection opened goes out as appends of at most this many frames.
MAX_FRAMES_PER_APPEND = 25  # 500 ms at 20 ms ptime


class _NeverWaited:
    """The length cap's "goodbye played" when there is no cap: nobody waits for it."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NEVER_WAITED = _NeverWaited()


def raise_first(ended: list[BaseException]) -> None:
    """Raise what ended a conversation, if anything did: bare (not in an ExceptionGroup) so
    that its close code is classified.

    The list is emptied as it goes: it is a local of the frames in the exception's traceback,
    and holding the exception would make a reference cycle of them (and of the conversation
    they hold) for the cycle collector (issue 18)."""
    if not ended:
        return
    lost = ended[0]
    ended.clear()
    try:
        raise lost
    finally:
        del lost


class Conversation(ServerEvents):
    # Slots (issue 16's per-call cost): one per connection, nothing assigns others (GPT-Live's
    # subclass has a dict for its own).
    __slots__ = (
        "_audio_bytes_at_connect", "_backoff", "_cap", "_goodbye", "_goodbye_played", "_held",
        "_held_bytes", "_judge", "_judge_scope", "_judge_wake", "_manners", "_nursery", "_poller",
        "_silence", "_tools", "_untold_failures", "_watch_scope", "_watchdog", "_ws", "bridge",
        "ready", "settings", "stats", "turns",
    )

    def __init__(self, ws: WebSocket, *, settings: RealtimeSettings, bridge: CallBridge,
                 poller: MediaPoller, stats: RealtimeStats, manners: WelcomeAndGoodbye,
                 backoff: Backoff, untold_failures: list[str], silence: Silence,
                 cap: CallCap) -> None:
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
        # The watch task's sleep, once it runs (issue 16: no placeholder scope per connection).
        self._watch_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._tools = ToolCalls(settings, bridge, stats)
        # Only when re-prompts are on: otherwise a shared no-op (issue 16's per-call cost).
        self._silence: SilenceWatch | Unwatched = (
            SilenceWatch(silence, bridge) if settings.idle_reprompt_s else UNWATCHED)
        self._cap = cap
        self._goodbye: str | None = None
        # Waited for by the length cap's task only; set by ServerEvents (or GPT-Live's floor).
        self._goodbye_played = trio.Event() if settings.max_call_s else _NEVER_WAITED
        self._judge = (BargeInJudge(settings.barge_in_min_ms,
                                    transcribed=bool(settings.transcription_model))
                       if session_update.rtpai_decides_barge_in(settings) else None)
        self._held: list[tuple[Any, bytes | None]] | None = None
        self._held_bytes = 0
        self._judge_wake = math.inf
        # The judge timer's sleep, once it runs; None without a judge (issue 16).
        self._judge_scope: trio.CancelScope | None = None
        # The server's audio_end_ms counts from this connection's first byte of caller audio.
        self._audio_bytes_at_connect = stats.audio_sent_bytes

    async def run(self, *, reconnect: bool) -> None:
        """Converse until the connection ends; raise what ended it."""
        instructions = self.settings.instructions
        if reconnect:
            # The new session knows nothing: give it the conversation so far.
            instructions = events.recap_instructions(instructions, self.stats.transcript)
            # Audio held while disconnected is old: the new session must not answer it.
            self.bridge.drop_caller_backlog()
        self.send(session_update.session_update(self.settings, self.bridge.codec,
                                                instructions=instructions,
                                                interrupt=not self._manners.guarding))
        backlog = self.bridge.attach_caller_audio(self.append_caller_audio)
        for start in range(0, len(backlog), MAX_FRAMES_PER_APPEND):
            self.append_caller_audio(b"".join(backlog[start : start + MAX_FRAMES_PER_APPEND]))
        await self._converse(self._judge_timer if self._judge is not None else None)

    async def _converse(self, *own: Callable[[], Awaitable[None]] | None) -> None:
        """Every side of one connection in one nursery, until the connection is lost; then
        raise what ended it. The sides both protocols have, plus the protocol's ``own``."""
        # The reader and the watchdog are one task (EventReader.run's ``watch``).
        tasks = [self._read_events, self._ws.flush]
        if self._manners.welcome_due:
            tasks.append(self._welcome)
        if self.bridge.caller_events is not None:
            tasks.append(self._forward_dtmf)
        if self.settings.idle_reprompt_s:
            # The callbacks are the task's arguments: gone with it (no reference cycle).
            assert isinstance(self._silence, SilenceWatch)
            tasks.append(partial(self._silence.run, self._instruct, self._caller_silent))
        if self.settings.max_call_s:
            tasks.append(self._cap_length)
        tasks += [task for task in own if task is not None]
        ended: list[BaseException] = []
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for task in tasks[1:]:
                nursery.start_soon(self._until_lost, task, ended)
            # The first side runs as the nursery's body, in this task: one task per
            # connection fewer (issue 16's per-call cost), the same scope and end.
            await self._until_lost(tasks[0], ended)
        raise_first(ended)

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
                          self.bridge.call_id).run(self._watch)

    def send(self, event: dict[str, Any]) -> None:
        """Send a client event now. A broken connection surfaces in the reader and flusher
        (openai_flavor/websocket/), which end this connection; here it is dropped."""
        self._ws.send_text(json.dumps(event))
        if event["type"] == "response.create":
            self._silence.busy()
            self._expect_response()

    def want_response(self) -> None:
        """Ask for a response unless one is on its way (turns decides)."""
        if self.turns.request_response():
            self.send(events.response_create())

    # --- the watchdog ---------------------------------------------------------------------------

    async def _watch(self, reading_ended: trio.Event) -> None:
        """Poll the connection's watchdog when it asks to be, until the reader has ended
        (the reader's task: EventReader.run); raise :class:`ConnectionLost` when a bound
        expires. Keepalive pings go out from here."""
        while not reading_ended.is_set():
            verdict = self._watchdog.poll(trio.current_time())
            if verdict.expired is not None:
                raise ConnectionLost(verdict.expired, since=verdict.since)
            if verdict.ping is not None:
                self._ws.send_ping(verdict.ping)
            with trio.CancelScope(deadline=verdict.wake_at) as self._watch_scope:
                await reading_ended.wait()

    def _expect_response(self) -> None:
        """A response is due: the server's silence is bounded from now on."""
        now = trio.current_time()
        if self._watchdog.expect_response(now) and self._watch_scope is not None:
            # The response bound now runs: wake then (or earlier, as already set), not now.
            # Polling at once cost a wake-up of the watch task per response (0.3 per call-
            # second at the bench's pace, issue 16); the bound can end no earlier than this
            # (the poll at the wake-up takes later server events into account and re-arms).
            scope = self._watch_scope
            scope.deadline = min(scope.deadline, now + self._watchdog.bounds.response)

    # --- what the caller side sends -------------------------------------------------------------

    async def _welcome(self) -> None:
        """Greet as soon as media flows: before that the caller would miss the first words."""
        await self.ready.wait()
        await self.bridge.media_started.wait()
        if self._manners.take_welcome() and self.turns.request_response(welcome=True):
            for event in events.instructed_response(self.settings,
                                                    events.welcome_text(self.settings)):
                self.send(event)

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
            self._silence.caller_active()
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

    def _instruct(self, text: str) -> None:
        """Tell the model what to do next (a re-prompt, the goodbye) and ask it to: a system
        message, so a response.create deferred behind a running response still carries it."""
        self.send(events.system_text(text))
        self.want_response()

    def _caller_silent(self, reason: str) -> None:
        log.info("call %s: %s; hanging up", self.bridge.call_id, reason)
        self.bridge.end_call(EndReason.CALLER_SILENT, reason)

    # --- the length cap -------------------------------------------------------------------------

    async def _cap_length(self) -> None:
        """At ``max_call_s`` from the caller's first RTP: ask for a goodbye, and end the call
        once it has played, or GOODBYE_BOUND after asking in any case."""
        cap = self._cap
        await self.bridge.media_started.wait()
        await trio.sleep_until(cap.deadline(trio.current_time()))
        if cap.goodbye_asked_at is None:
            await self.ready.wait()
            cap.goodbye_asked_at = trio.current_time()
            self._goodbye = "asked"
            self._instruct(GOODBYE_TEXT)
        with trio.move_on_at(cap.goodbye_asked_at + GOODBYE_BOUND):
            await self._goodbye_played.wait()
        log.info("call %s: %s; hanging up", self.bridge.call_id, cap.reason)
        self.bridge.end_call(EndReason.MAX_DURATION, cap.reason)

    # --- barge-in decided by rtpai --------------------------------------------------------------

    def apply(self, plan: Plan) -> None:
        """Carry out the barge-in judge's plan (openai_flavor/barge_in.py), synchronously."""
        if plan.pause and self._held is None:
            self._held = list(self.bridge.hold_playout())
            self._held_bytes = sum(len(audio) for _, audio in self._held)
        if plan.resume or plan.interrupt:
            held, self._held = self._held or [], None
            for item, audio in held:  # back where it stopped, in order
                if audio is None:
                    self.bridge.end_item()
                else:
                    self.bridge.play(audio, item)
        if plan.interrupt:
            self._barge_in()
        if plan.forget is not None:
            self.send(events.delete_item(plan.forget))
        if plan.respond:
            self.want_response()
        elif plan.resume and self.turns.settled:
            self._silence.model_done()
        if plan.wake_at is not None:
            self._judge_wake = plan.wake_at  # the timer's next sleep starts with it
            if self._judge_scope is not None:
                self._judge_scope.deadline = plan.wake_at

    async def _judge_timer(self) -> None:
        assert self._judge is not None
        while True:
            with trio.CancelScope(deadline=self._judge_wake) as self._judge_scope:
                await trio.sleep_forever()
            now = trio.current_time()
            if now >= self._judge_wake:
                self._judge_wake = math.inf
                self.apply(self._judge.timer(now))

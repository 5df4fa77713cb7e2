"""The assistant's side of one Realtime connection, sans-IO: the one place its state lives.

What the session must know to get barge-in, welcome messages and tools right:

* the **response phase** mirrored from the server (``response.created`` .. ``response.done``),
  an explicit two-state machine where an illegal transition raises;
* per assistant **item**, the audio received and whether it is complete, so a barge-in can
  tell "still being generated", "partly heard" and "played to its end" apart;
* the **cancelled** responses whose late deltas must be dropped;
* the **welcome** response, which may be protected from barge-in;
* the function calls of the current response, and whether a ``response.create`` is wanted
  once the server is free.

What was actually sent to the caller is the media plane's to know: a :class:`Playout` view of it
(the call's bridge; a bare playout queue in tests) is passed in, never copied. No trio, no
sockets: tested with plain calls.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

from media import state


class Playout(Protocol):
    """What barge-in needs to know of the playout (media/bridge.py's ``CallBridge``)."""

    @property
    def queued_bytes(self) -> int: ...

    def holds(self, item: Hashable) -> bool: ...

    def frames_sent_of(self, item: Hashable) -> int: ...


class Phase(enum.Enum):
    LISTENING = "listening"  # no response in progress on the server
    RESPONDING = "responding"  # between response.created and response.done


class IllegalTransition(state.IllegalTransition):
    """The server's events broke the response lifecycle (two responses at once, ...): the
    session drops the event as malformed, which it catches apart from its own machines'."""


PHASES = state.Transitions("response phase", {
    Phase.LISTENING: {Phase.RESPONDING},
    Phase.RESPONDING: {Phase.LISTENING},
}, error=IllegalTransition)


@dataclass
class ItemAudio:
    response_id: str | None
    received_bytes: int = 0
    complete: bool = False  # audio.done or response.done: no more audio will come


@dataclass(frozen=True)
class FunctionCall:
    call_id: str
    name: str
    arguments: dict[str, Any] | None  # None: the model sent arguments that are not an object


@dataclass(frozen=True)
class BargeIn:
    """What to do when the caller starts speaking."""

    interrupted: bool  # something was playing or being generated: clear the playout
    ignored: bool = False  # the protected welcome message is playing: do nothing at all
    truncate: tuple[tuple[str, int], ...] = ()  # (item_id, audio_end_ms) per item


@dataclass(frozen=True)
class ResponseDone:
    calls: tuple[FunctionCall, ...]  # empty for a response the caller interrupted
    had_audio: bool
    was_welcome: bool
    send_response: bool  # a response.create was wanted while this one ran: send it now


# Slotted (issue 16's per-call cost): one or more per call.
@dataclass(slots=True)
class Turns:
    ptime_ms: int
    bytes_per_ms: int
    guard_welcome: bool = False  # the welcome message cannot be interrupted
    _phase: state.Machine[Phase] = field(
        default_factory=lambda: state.Machine(PHASES, Phase.LISTENING), init=False, repr=False)
    response_id: str | None = None
    items: dict[str, ItemAudio] = field(default_factory=dict)
    calls: list[FunctionCall] = field(default_factory=list)
    welcome_response: str | None = None
    # Enough history to recognise every late delta: the server cancels one response per
    # barge-in and sends its response.done promptly.
    _cancelled: deque[str] = field(default_factory=lambda: deque(maxlen=16))
    _welcome_expected: bool = False
    _response_requested: bool = False  # a response.create is on its way to the server
    _response_wanted: bool = False  # ... and another one should follow once it is free

    @property
    def phase(self) -> Phase:
        return self._phase.state

    @property
    def settled(self) -> bool:
        """No response in progress and none asked for: the model has nothing more to say."""
        return self.phase is Phase.LISTENING and not (
            self._response_requested or self._response_wanted)

    @property
    def generating(self) -> bool:
        """A response is being generated and the caller has not interrupted it."""
        return self.phase is Phase.RESPONDING and not self.is_cancelled(self.response_id)

    def is_cancelled(self, response_id: str | None) -> bool:
        return response_id is not None and response_id in self._cancelled

    # --- asking for responses -----------------------------------------------------------------

    def request_response(self, *, welcome: bool = False) -> bool:
        """May a ``response.create`` go out now? If not, one is sent after ``response.done``.

        The server refuses a second active response (conversation_already_has_active_response),
        so tool results and DTMF that arrive mid-response wait for it to finish.
        """
        if welcome:
            self._welcome_expected = True
        if self.phase is Phase.LISTENING and not self._response_requested:
            self._response_requested = True
            return True
        self._response_wanted = True
        return False

    # --- server events ------------------------------------------------------------------------

    def response_created(self, response_id: str, playout: Playout | None = None) -> None:
        self._phase.to(Phase.RESPONDING)
        if playout is not None:
            # Items complete and fully played can no longer be interrupted: forget them, so a
            # long call does not carry one entry per answer.
            for item_id in [i for i, a in self.items.items()
                            if a.complete and not playout.holds(i)]:
                del self.items[item_id]
        self.response_id = response_id
        self.calls = []
        self._response_requested = False
        # The first response after our welcome request is the welcome: the server answers
        # response.create in order, and nothing else is created before media flows.
        if self._welcome_expected:
            self._welcome_expected = False
            self.welcome_response = response_id

    def audio_delta(self, response_id: str | None, item_id: str, size: int) -> bool:
        """Account for a delta; False if it belongs to a cancelled response (drop it)."""
        if response_id is not None and response_id in self._cancelled:  # is_cancelled
            return False
        # Per delta: no ItemAudio built (as setdefault would) unless the item is new.
        audio = self.items.get(item_id)
        if audio is None:
            audio = self.items[item_id] = ItemAudio(response_id)
        audio.received_bytes += size
        return True

    def audio_done(self, response_id: str | None, item_id: str) -> bool:
        """The item's audio is complete; False if its response was cancelled."""
        if self.is_cancelled(response_id):
            return False
        if item_id in self.items:
            self.items[item_id].complete = True
        return True

    def function_call(self, response_id: str | None, call: FunctionCall) -> None:
        # A cancelled response's call never runs: the caller interrupted before it mattered.
        if not self.is_cancelled(response_id):
            self.calls.append(call)

    def response_done(self, response_id: str | None) -> ResponseDone:
        self._phase.to(Phase.LISTENING)
        cancelled = self.is_cancelled(response_id)
        had_audio = False
        for audio in self.items.values():
            if audio.response_id == response_id:
                audio.complete = True
                had_audio = had_audio or audio.received_bytes > 0
        send = self._response_wanted
        self._response_wanted = False
        if send:
            self._response_requested = True
        done = ResponseDone(
            calls=() if cancelled else tuple(self.calls),
            had_audio=had_audio,
            was_welcome=response_id is not None and response_id == self.welcome_response,
            send_response=send,
        )
        self.response_id = None
        self.calls = []
        return done

    # --- barge-in -----------------------------------------------------------------------------

    def welcome_playing(self, playout: Playout) -> bool:
        """The welcome is still being generated, or some of it still waits to be played."""
        welcome = self.welcome_response
        if welcome is None:
            return self._welcome_expected
        if self.phase is Phase.RESPONDING and self.response_id == welcome:
            return True
        return any(a.response_id == welcome and playout.holds(i) for i, a in self.items.items())

    def barge_in(self, playout: Playout) -> BargeIn:
        """The caller started speaking: what was heard of each item, and what to cancel.

        Only the pacer knows what the caller heard, so an item's truncation point is
        ``frames sent x ptime``, clamped to the audio received for it (a padded last frame
        must not claim audio the server never produced: it rejects a truncation beyond the
        item's audio). Truncation is skipped when nothing was heard (the reference's rule)
        and when the item played to its end, i.e. it is complete and none of it is queued:
        the server's copy is then exactly what the caller heard. An item that is still being
        generated is truncated even if everything received so far was played: the server
        has (or is producing) more of it than the caller heard.
        """
        if self.guard_welcome and self.welcome_playing(playout):
            return BargeIn(interrupted=False, ignored=True)
        truncate: list[tuple[str, int]] = []
        for item_id, audio in self.items.items():
            if audio.complete and not playout.holds(item_id):
                continue
            sent_ms = playout.frames_sent_of(item_id) * self.ptime_ms
            received_ms = audio.received_bytes // self.bytes_per_ms
            end_ms = min(sent_ms, received_ms)
            if end_ms <= 0 or (audio.complete and end_ms >= received_ms):
                continue
            truncate.append((item_id, end_ms))
        generating = self.generating
        if generating:
            # The server cancels it itself (interrupt_response); we drop its late deltas.
            self._cancelled.append(self.response_id)
        # Whatever was audible is settled now: cleared from the queue, truncated or complete.
        self.items.clear()
        return BargeIn(
            interrupted=generating or bool(truncate) or playout.queued_bytes > 0,
            truncate=tuple(truncate),
        )

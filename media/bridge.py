"""The flavor-neutral meeting point of one call's media plane and its AI session.

The media plane hands caller audio over and plays what the AI queues; the AI session takes the
former and fills the latter. Nothing here knows OpenAI's event names, so another AI flavor is
a sibling of ``openai_flavor/``, not a change to the media plane.
"""

from __future__ import annotations

import enum
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from media.figures import UNREAD, EngineFigures
from media.playout import PlayoutQueue
from media.rfc4733 import Dtmf
from media.rtp import SILENCE_BYTE

# What the media plane tells the AI session about the caller besides audio. Only DTMF today;
# hold and hang-up would join it here, as flavor-neutral dataclasses.
CallerEvent = Dtmf


class EndReason(enum.Enum):
    """Why a call ended, as counted; the value is its name for metrics. The human detail (the
    ``end reason`` of the query/delete replies, e.g. "media timeout (30 s without RTP)")
    travels beside it: counting reads the kind, never the text."""

    DELETED = "deleted"  # the proxy's delete, or its delete-delay running out
    MEDIA_TIMEOUT = "media_timeout"  # no caller RTP for [rtp] timeout (ng: timeoutsessions)
    MEDIA_FAILURE = "media_failure"  # a bug in the call's media handling
    AI_FAILED = "ai_failed"  # the AI session gave up (ng: aifailures)
    MODEL_HUNG_UP = "model_hung_up"  # the model's end_call, once its goodbye played
    CALLER_SILENT = "caller_silent"  # no word from the caller, re-prompts used up
    MAX_DURATION = "max_duration"  # the call's length cap, after the goodbye
    TRANSFERRED = "transferred"  # the proxy carried out a transfer the model asked for
    PROXY_DID_NOT_HANG_UP = "proxy_did_not_hang_up"  # accepted a hang-up, no delete came
    SHUTDOWN = "shutdown"  # the engine stopped or drained


class AiSessionError(Exception):
    """The AI session cannot go on; the reason is safe to log and to return in statistics."""


class AiSession(Protocol):
    """What a call needs of its AI session, whatever the flavor (media/flavor.py).

    ``run`` lives in the call's nursery for the call's whole life: it connects, converses and
    reconnects, and raises :class:`AiSessionError` when the session cannot go on (the call then
    ends). Closing is cancelling it: the call's scope ends, and the session closes its
    connection in ``run``'s own bounded ``finally``. ``state`` and ``snapshot`` are for the
    statistics (the ``ai`` key of a query's reply, the SIGUSR1 state line).
    """

    @property
    def state(self) -> str: ...

    async def run(self) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...


# Caller frames held while no AI connection takes them (early media while the WebSocket
# opens): 50 frames is a second at 20 ms. Beyond it frames are dropped and counted.
CALLER_AUDIO_BACKLOG_FRAMES = 50


def weak_method(method: Callable[..., Any]) -> Callable[..., None]:
    """``method``, bound without keeping its object alive; a no-op once that object is gone.

    For back-pointers: what a call owns (its bridge, its stream) calls back into the call, and
    a bound method there would make every call a reference cycle that only the cycle collector
    frees, in a full collection that pauses every live call's audio (issue 18). Only for rare
    calls (ending, a transfer, the first packet): a per-packet callback is dropped with its
    owner's scope instead (``MediaStream.close``), without the cost of a dereference.
    """
    if getattr(method, "__self__", None) is None:
        return method  # a plain function holds no object to point back at
    return _WeakMethod(method)


class _WeakMethod:
    """A slotted object, not ``weakref.WeakMethod`` in a closure (issue 16's per-call cost):
    that was a WeakMethod, a weak reference to the function, the WeakMethod's own callback
    closure and ours with their cells, ~450 bytes per callback and five callbacks per call.
    This is 56 bytes, and every callback to the same object shares one weak reference
    (CPython hands out the same ``weakref.ref`` for an object while it has no callback)."""

    __slots__ = ("_ref", "_function")

    def __init__(self, method: Any) -> None:
        self._ref = weakref.ref(method.__self__)
        self._function = method.__func__

    def __call__(self, *args: Any) -> None:
        bound = self._ref()
        if bound is not None:
            self._function(bound, *args)


# Slotted (issue 16's per-call cost): one or more per call.
@dataclass(slots=True)
class CallBridge:
    """Shared by a call's media tasks and its AI session (same trio thread: no locks)."""

    call_id: str
    codec: str  # "PCMU" or "PCMA": the G.711 variant both sides speak, never transcoded
    ptime_ms: int
    playout: PlayoutQueue
    # Ask for the call to end: the kind (counted) and the detail (the statistics' text).
    end_call: Callable[[EndReason, str], None]
    transfer: Callable[[str], None]  # ask for the caller to be transferred to a target
    # The AI's own hang-up (end_call, after its goodbye); None: end_call serves for it too.
    hang_up: Callable[[str], None] | None = None
    media_started: trio.Event = field(default_factory=trio.Event)  # first valid caller RTP
    # What the caller does besides speaking, for the AI: key presses (RFC 4733) in the order
    # pressed. Bounded: the media plane drops and counts when the AI session does not read
    # them. None in tests that build a bare bridge.
    caller_events: trio.MemoryReceiveChannel[CallerEvent] | None = None
    # Milestones of the call on trio's clock (offer, ai_session_open, first_caller_rtp, ...),
    # first occurrence only: they make the demo's timeline and the latency figures.
    timeline: dict[str, float] = field(default_factory=dict)
    # The engine's event figures (media/figures.py): what the media plane and the AI session
    # record when it happens (a connect, a response's latency), for the metrics.
    figures: EngineFigures = UNREAD
    # When the caller's last turn ended (the AI's voice activity detection, trio's clock),
    # until the answer's first frame is sent: the response latency is measured between them.
    turn_ended_at: float | None = None
    # The last such latency, seconds (the ``ai`` statistics: rtpai-ctl top, query).
    last_response_latency: float | None = None
    _audio_consumer: Callable[[bytes], bool] | None = field(default=None, init=False, repr=False)
    _audio_backlog: list[bytes] = field(default_factory=list, init=False, repr=False)
    _audio_closed: bool = field(default=False, init=False, repr=False)
    _hangup_reason: str | None = field(default=None, init=False, repr=False)
    _ran_dry: trio.Event = field(default_factory=trio.Event, init=False, repr=False)
    # The AI session's ear for the outcome of what it asked for (set by the session).
    _outcome_listener: Callable[[str, str], None] | None = field(
        default=None, init=False, repr=False)

    def mark(self, milestone: str) -> None:
        if milestone not in self.timeline:
            self.timeline[milestone] = trio.current_time()

    # --- caller audio: media plane -> AI session ----------------------------------------------
    #
    # A plain call, not a channel: a channel costs a task switch per 20 ms frame in the AI
    # session's writer, which was a large share of rtpai's CPU (docs/performance.md). The AI
    # session attaches a consumer while it can send (it sends without blocking and says
    # whether it took the frame); until then frames wait in a small backlog.

    def caller_audio(self, frame: bytes) -> bool:
        """The media plane's hand-off of one caller frame; False if it was dropped."""
        consumer = self._audio_consumer
        if consumer is not None:
            return consumer(frame)
        if self._audio_closed:
            return True  # the AI session is over; the call's media goes on regardless
        if len(self._audio_backlog) >= CALLER_AUDIO_BACKLOG_FRAMES:
            return False
        self._audio_backlog.append(frame)
        return True

    def attach_caller_audio(self, consumer: Callable[[bytes], bool]) -> list[bytes]:
        """The AI session takes caller audio from now on; returns (and forgets) the backlog."""
        self._audio_consumer = consumer
        backlog, self._audio_backlog = self._audio_backlog, []
        return backlog

    def detach_caller_audio(self, *, for_good: bool = False) -> None:
        """The AI connection is gone: frames wait in the backlog again (or, ``for_good``,
        are no longer wanted)."""
        self._audio_consumer = None
        self._audio_closed = for_good

    def drop_caller_backlog(self) -> int:
        """Forget frames held while disconnected (a new session must not answer old audio)."""
        dropped = len(self._audio_backlog)
        self._audio_backlog.clear()
        return dropped

    # --- playout: AI session -> media plane ----------------------------------------------------
    #
    # The AI session plays through these and never touches the queue itself: the queue and the
    # paced sender that empties it are the media plane's.

    def play(self, audio: bytes, item: Hashable) -> None:
        """Queue the AI's ``audio`` (codec bytes) for assistant ``item``."""
        self.playout.push(audio, item)

    def end_item(self) -> None:
        """The current item's audio is complete: its last partial frame is padded and plays."""
        self.playout.finish_item(SILENCE_BYTE[self.codec])

    def clear_playout(self) -> int:
        """Stop playing at once (barge-in); returns the bytes dropped."""
        return self.playout.clear()

    def hold_playout(self) -> list[tuple[Hashable, bytes]]:
        """Stop playing at once but keep what was queued (a barge-in still being judged):
        returns it, item by item, for :meth:`play` to put back where it stopped."""
        return self.playout.take()

    def holds(self, item: Hashable) -> bool:
        """Some of ``item``'s audio still waits to be played."""
        return self.playout.holds(item)

    def frames_sent_of(self, item: Hashable) -> int:
        """Frames of ``item`` the caller was sent: what was heard of it (for truncation)."""
        return self.playout.frames_sent_of(item)

    @property
    def queued_bytes(self) -> int:
        """Audio waiting to be played, a partial frame included."""
        return len(self.playout)

    @property
    def playout_idle(self) -> bool:
        """No whole frame is left to play (a partial one only exists while audio arrives)."""
        return self.playout.queued_frames == 0

    # --- actions the AI asks for, and the playout signal they need ----------------------------

    def hang_up_after_playout(self, reason: str) -> None:
        """End the call once everything queued has been sent: a goodbye is never cut off.

        The generator being done (the model's "response done") says nothing about playback;
        only the paced sender knows when the last frame left, so it calls
        :meth:`playout_ran_dry` and the hang-up happens there.
        """
        if self.playout_idle:
            self._hang_up_now(reason)
        elif self._hangup_reason is None:
            self._hangup_reason = reason

    def _hang_up_now(self, reason: str) -> None:
        if self.hang_up is not None:
            self.hang_up(reason)
        else:
            self.end_call(EndReason.MODEL_HUNG_UP, reason)

    def playout_ran_dry(self) -> None:
        """The paced sender found nothing more to play: a talkspurt just ended."""
        if self._hangup_reason is not None:
            reason, self._hangup_reason = self._hangup_reason, None
            self._hang_up_now(reason)
        self._ran_dry.set()
        self._ran_dry = trio.Event()

    def listen_for_failures(self, listener: Callable[[str, str], None]) -> None:
        """The AI session's: ``listener(action, why)`` hears of an action it asked for (a
        transfer, a hang-up) that failed after its tool call was answered. Held weakly: the
        session holds this bridge, and a bound method back would make both a reference cycle."""
        self._outcome_listener = weak_method(listener)

    def action_failed(self, action: str, why: str) -> None:
        """The control plane's: ``action`` ("transfer", "hang-up") did not happen."""
        if self._outcome_listener is not None:
            self._outcome_listener(action, why)

    async def wait_playout_idle(self) -> None:
        """Return once everything queued so far has been played."""
        while not self.playout_idle:
            await self._ran_dry.wait()

    @property
    def silence_byte(self) -> int:
        return SILENCE_BYTE[self.codec]

    @property
    def bytes_per_ms(self) -> int:
        return 8  # G.711: 8000 samples/s, one byte each

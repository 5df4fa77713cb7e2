"""The media send thread's Python side: every call's paced RTP sent by one pthread, off trio.

With the compiled fast path built, the engine's media clock (media/clock.py) starts a
:class:`SendThread` beside its own loop (``[rtp] media_thread = auto``, the default). Its C
half (media/_fast_sendthread.c, ``media._fast.SendEngine``) owns the send grid of every call
registered with it and sends every frame itself, without the GIL: a call's
:class:`~media.sender.PacedSender` registers there instead of ticking on the clock, and its
playout queue (media/playout.py, *ring mode*) hands the thread whole frames. What the Python
path did per frame (a trio wake-up, ``tick``, ``pop_frame``, ``send``) is then C in another
thread; what is left in Python is per *talkspurt*: the events below.

The thread tells this side, through a bounded event ring and an eventfd, what the call's
Python needs to know, and one trio task (:meth:`SendThread.run`, in the clock's nursery, so
the engine's) drains them in batches:

* a talkspurt started: the ``first_rtp_to_caller`` milestone and the response latency, with
  the time the frame was sent (trio's time: the thread reads CLOCK_MONOTONIC plus trio's
  SystemClock offset);
* the playout ran dry: ``bridge.playout_ran_dry`` (a hang-up waiting for the goodbye goes);
* each wake-up's lateness, for ``pacing_lateness`` (the clock's figure).

Which calls stay on the Python sender (media/sender.py decides, and says why in a comment): a
call being recorded (its recorder is handed each frame as it is sent), ``[rtp] ai_batch_ms``
above 0 (its caller-audio batches are flushed by the sender's ticks), a destination that only
``socket.sendto`` resolves (a scoped IPv6 address), a socket stand-in in tests, and every call
under a test's ``MockClock`` (the thread follows the real clock) or with
``RTPAI_PURE_PYTHON=1``. A call moves to the Python sender mid-call when a recording starts or
its destination becomes one of those; it never moves back.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from media import native
from media.figures import UNREAD, EngineFigures

if TYPE_CHECKING:
    from media.sender import PacedSender

log = logging.getLogger("rtpai.media")

_fast = native.load("media._fast")

# media/_fast_sendthread.c's event kinds.
EVENT_TALKSPURT = 1
EVENT_RAN_DRY = 2


def available() -> bool:
    """The compiled send thread exists in this process (built, and not RTPAI_PURE_PYTHON)."""
    return _fast is not None and hasattr(_fast, "SendEngine")


def trio_clock_offset() -> float | None:
    """trio time minus CLOCK_MONOTONIC, or None when trio does not run on the real clock (a
    test's MockClock: the thread could not follow it)."""
    clock = trio.lowlevel.current_clock()
    kind = type(clock)
    if kind.__name__ != "SystemClock" or not kind.__module__.startswith("trio."):
        return None
    return float(clock.offset)


class SendThread:
    """The engine's send thread: the C engine, which call each stream id is, and the drain.

    ``manual`` (tests and benches): no thread; the caller steps the engine with
    ``engine.set_now(t)`` and ``engine.run_due()`` and drains with :meth:`drain`.
    """

    def __init__(self, figures: EngineFigures = UNREAD, *, offset: float = 0.0,
                 manual: bool = False) -> None:
        assert _fast is not None
        self.figures = figures
        self.engine = _fast.SendEngine(offset, manual)
        self.manual = manual
        self._senders: dict[int, PacedSender] = {}
        self.events_lost = 0  # events the thread could not post (its ring was full)

    def __len__(self) -> int:
        return len(self._senders)

    def register(self, sender: PacedSender, *args: Any) -> Any:
        """``sender``'s stream on the thread (``SendEngine.register``'s arguments after the
        descriptor's); None when the thread cannot take it (stopped, a value it refuses):
        the sender then stays on the Python path."""
        try:
            handle = self.engine.register(*args)
        except (RuntimeError, ValueError, OSError) as exc:
            log.debug("call %s: paced in Python: %s", sender.bridge.call_id, exc)
            return None
        self._senders[handle.id] = sender
        return handle

    def forget(self, handle: Any) -> tuple:
        """Unregister ``handle``'s stream: never sent on again; returns its last state."""
        stream_id = handle.id
        state = handle.unregister()
        self._senders.pop(stream_id, None)
        return state

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the thread, drain its events until cancelled, then stop and join it. Runs in
        the media clock's nursery (the engine's)."""
        engine = self.engine
        engine.start()
        try:
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(engine.event_fd)
                self.drain()
        finally:
            # The join is microseconds: the thread only waits in poll() or sends a batch.
            engine.stop()
            trio.lowlevel.notify_closing(engine.event_fd)

    def drain(self) -> None:
        """Hand the thread's events to their calls, in the order they happened."""
        events, lateness, lost = self.engine.drain()
        if lost != self.events_lost:
            log.warning("media send thread: %d events lost (the drain fell behind)",
                        lost - self.events_lost)
            self.events_lost = self.figures.send_thread_events_lost = lost
        observe = self.figures.pacing_lateness.observe
        for late in lateness:
            observe(late)
        senders = self._senders
        for kind, stream_id, at in events:
            sender = senders.get(stream_id)
            if sender is None:
                continue  # unregistered since (the call ended, or moved to Python)
            try:
                if kind == EVENT_TALKSPURT:
                    sender.talkspurt_started(at)
                elif kind == EVENT_RAN_DRY:
                    sender.ran_dry()
            except Exception:
                # One call's bug must not stop every call's events (the clock's rule).
                log.exception("media send thread: a call's event failed")
                sender.pacing_failed()

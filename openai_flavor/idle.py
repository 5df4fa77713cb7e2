"""A silent caller and a call's length cap, measured on rtpai's own playout clock.

The Realtime server has its own idle timer (``turn_detection.idle_timeout_ms``), but it starts
when the server finished *generating* (``response.done`` plus the audio's length), not when the
caller finished *hearing* it: rtpai paces the audio and knows better. So:

* **Silence** (``idle_reprompt_s``, ``idle_reprompts``): the wait starts once a response is
  done, no other is due, and everything it said has been played to the caller (the pacer ran
  dry). If the caller neither speaks (server VAD's ``speech_started``) nor presses a key for
  ``idle_reprompt_s``, the model is asked to check that the caller is still there, at most
  ``idle_reprompts`` times in a row; after that the call is hung up through the proxy (end
  reason ``caller_silent``). A word or a key from the caller resets the count.
* **Length** (``max_call_s``): counted from the caller's first RTP. When it is reached the
  model is asked to say goodbye; the call ends once that goodbye has played, or
  :data:`GOODBYE_BOUND` seconds after the request whatever happens (end reason
  ``max_duration``): the cap is hard.

The policies here are sans-IO and outlive a connection (a reconnect neither resets the count
nor the cap); :class:`SilenceWatch` is one connection's task that waits on trio's clock.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from media.bridge import CallBridge

REPROMPT_TEXT = ("The caller has not said anything for a while. In one short sentence, check "
                 "politely that they are still there; do not repeat your last answer.")
GOODBYE_TEXT = ("The call has reached its time limit. Tell the caller so in one short "
                "sentence and say goodbye.")
# Seconds a goodbye at the length cap may take to be generated and played.
GOODBYE_BOUND = 15.0


class Silence:
    """How often a silent caller has been re-prompted (``after_s`` 0: never)."""

    def __init__(self, after_s: float, reprompts: int) -> None:
        self.after_s = after_s
        self.reprompts = reprompts
        self.reprompted = 0

    def caller_active(self) -> None:
        self.reprompted = 0

    def expired(self) -> str | None:
        """The caller stayed silent: None to re-prompt, or why the call ends."""
        if self.reprompted < self.reprompts:
            self.reprompted += 1
            return None
        tries = f"after {self.reprompted} re-prompt{'s' * (self.reprompted != 1)}"
        return f"the caller stayed silent ({self.after_s:g} s, {tries})"


class SilenceWatch:
    """One connection's wait for a silent caller. The conversation tells it when the model
    is done (:meth:`model_done`), when the model has the floor again (:meth:`busy`) and when
    the caller did something (:meth:`caller_active`)."""

    def __init__(self, silence: Silence, bridge: CallBridge) -> None:
        self._silence = silence
        self._bridge = bridge
        self._model_done = trio.Event()
        self._activity = trio.Event()

    def model_done(self) -> None:
        """A response ended and none is due: the caller's turn, once it has been heard."""
        self._model_done.set()

    def busy(self) -> None:
        """A response was asked for or started: the silence (if any) is over."""
        if self._model_done.is_set():
            self._model_done = trio.Event()
        self._activity.set()
        self._activity = trio.Event()

    def caller_active(self) -> None:
        self._silence.caller_active()
        self.busy()

    async def run(self, reprompt: Callable[[str], None], hang_up: Callable[[str], None]) -> None:
        """Re-prompt or hang up when the caller stays silent; returns after a hang-up.
        The callbacks are arguments, not attributes: nothing here points back at the
        conversation once the task has ended (no reference cycle, issue 18)."""
        silence = self._silence
        while True:
            await self._model_done.wait()
            activity = self._activity
            await self._bridge.wait_playout_idle()  # its last words have been heard
            with trio.move_on_after(silence.after_s):
                await activity.wait()
            if activity.is_set() or not self._model_done.is_set():
                continue
            reason = silence.expired()
            self.busy()
            if reason is not None:
                hang_up(reason)
                return
            reprompt(REPROMPT_TEXT)


class Unwatched:
    """``idle_reprompt_s`` 0: nothing waits for a silent caller, so there is nothing to tell.
    One shared instance stands in for :class:`SilenceWatch` (issue 16's per-call cost: no two
    Events per connection for a feature that is off)."""

    __slots__ = ()

    def model_done(self) -> None:
        pass

    def busy(self) -> None:
        pass

    def caller_active(self) -> None:
        pass


UNWATCHED = Unwatched()


class CallCap:
    """The call's length cap: when it is reached, and whether the goodbye was asked for."""

    def __init__(self, max_call_s: float) -> None:
        self.max_call_s = max_call_s
        self.started_at: float | None = None
        self.goodbye_asked_at: float | None = None

    def deadline(self, now: float) -> float:
        """When the cap is reached; the first caller RTP (``now`` at the first ask) starts it."""
        if self.started_at is None:
            self.started_at = now
        return self.started_at + self.max_call_s

    @property
    def reason(self) -> str:
        return f"the call reached its maximum length ({self.max_call_s:g} s)"

"""The call's opening and closing: the welcome message and the model's hang-up. Sans-IO.

Both outlive a connection (a reconnect must neither greet twice nor forget a goodbye), so they
are the session's, kept here in one place; the playout side of a hang-up (after the last
frame was sent) is the bridge's :meth:`~media.bridge.CallBridge.hang_up_after_playout`.

* The welcome is spoken once, as soon as caller media flows. With ``welcome_interruptible``
  off it is *guarded* until it has played: barge-in is ignored (by rtpai, and by the server:
  ``interrupt_response`` is off in the session's turn detection meanwhile).
* The model hangs up with the ``end_call`` tool. If the response that called it said goodbye
  (it had audio) the call ends once that has played; otherwise the model is asked to say
  goodbye, and the call ends after the next response without tool calls has played.
"""

from __future__ import annotations

from openai_flavor.turns import ResponseDone


class WelcomeAndGoodbye:
    # Slots (issue 16's per-call cost): one per call; nothing assigns others.
    __slots__ = ("_hang_up_after_next", "_welcome_played", "_welcome_sent", "_welcome_wanted")

    def __init__(self, *, welcome: bool, guarded: bool) -> None:
        self._welcome_wanted = welcome
        self._welcome_sent = False
        self._welcome_played = not guarded
        # A hang-up the model asked for in a response without a goodbye: after the next one.
        self._hang_up_after_next: str | None = None

    @property
    def welcome_due(self) -> bool:
        """A welcome is configured and was not sent on an earlier connection."""
        return self._welcome_wanted and not self._welcome_sent

    def take_welcome(self) -> bool:
        """True once only: the welcome is sent now."""
        if self._welcome_sent:
            return False
        self._welcome_sent = True
        return True

    @property
    def guarding(self) -> bool:
        """Barge-in is ignored: a guarded welcome has not finished playing."""
        return not self._welcome_played

    def welcome_generated(self, done: ResponseDone) -> bool:
        """True when ``done`` ended the guarded welcome: wait for its playout, then
        :meth:`welcome_played`."""
        return done.was_welcome and not self._welcome_played

    def welcome_played(self) -> None:
        self._welcome_played = True

    def model_hangs_up(self, reason: str, *, said_goodbye: bool) -> bool:
        """The model called ``end_call``: True to end once playout is done, False when it must
        say goodbye first (the hang-up then waits for :meth:`hang_up_due`)."""
        if said_goodbye:
            return True
        self._hang_up_after_next = reason
        return False

    def hang_up_due(self, done: ResponseDone) -> str | None:
        """The reason to end the call once ``done``'s audio has played: the goodbye the model
        was asked for (a response that calls tools again is not it)."""
        if self._hang_up_after_next is not None and not done.calls:
            return self._hang_up_after_next
        return None

"""Barge-in decided by rtpai (``barge_in_min_ms`` above 0): a minimum of speech, and noise that
resumes the answer instead of cutting it. Sans-IO: time is an argument, and each method returns
a :class:`Plan` that the conversation carries out.

With ``barge_in_min_ms`` 0 the server decides, as before: its VAD's ``speech_started`` cancels
the response (``interrupt_response``) and rtpai clears the playout and truncates at once. Above
0 the session is configured with ``interrupt_response`` and ``create_response`` both false, so
the server neither cancels an answer nor starts one when it hears the caller, and rtpai does:

1. ``speech_started`` while the model speaks (its audio playing or being generated; not during
   a guarded welcome): the caller *may* be interrupting. The answer goes on playing.
2. The caller keeps speaking for ``barge_in_min_ms`` (on rtpai's clock, from speech_started;
   or the server's ``audio_end_ms - audio_start_ms`` says so at speech_stopped): rtpai
   **pauses** the answer: what was queued is held, and what the server still sends joins it.
3. The turn ends (``input_audio_buffer.committed``) and its transcript arrives
   (``conversation.item.input_audio_transcription.completed``):

   * words: a **barge-in**, confirmed. The held audio is put back and handled exactly as a
     server-decided barge-in: the playout cleared, ``conversation.item.truncate`` at what
     the caller heard, ``response.cancel`` if it was still being generated, and a
     ``response.create`` for the caller's turn.
   * no words (empty transcript): **noise**. "Resume" means: the held audio is put back
     where it stopped and plays on (the caller hears the rest of the answer, after a pause
     as long as the noise); nothing is truncated and nothing cancelled, so the server's copy
     of the answer is again exactly what the caller hears; the noise's user item is deleted
     (``conversation.item.delete``) and no response is asked for, so the model neither
     answers the noise nor remembers it.
4. Speech shorter than ``barge_in_min_ms`` (speech_stopped first) is noise too, and never
   paused anything. A transcript that fails, or does not come within
   :data:`TRANSCRIPT_WAIT` seconds (or a session without transcription), confirms the barge-in:
   when unsure, the caller wins.

A turn that interrupts nothing (the model was silent) is answered at once, as the server
would have (``response.create`` at its commit).
"""

from __future__ import annotations

from dataclasses import dataclass

# Seconds a paused answer waits for the turn's transcript before the barge-in is confirmed.
TRANSCRIPT_WAIT = 3.0


@dataclass(frozen=True)
class Plan:
    """What the conversation does now; all false: nothing."""

    pause: bool = False  # hold the playout (and what arrives meanwhile)
    resume: bool = False  # put the held audio back: it plays on where it stopped
    interrupt: bool = False  # confirmed: put it back, then clear, cancel, truncate
    respond: bool = False  # ask for a response to the caller's turn
    forget: str | None = None  # the noise turn's user item, to delete
    wake_at: float | None = None  # call :meth:`BargeInJudge.timer` then


NOTHING = Plan()


@dataclass
class _Judging:
    item_id: str
    started_at: float  # rtpai's clock
    audio_start_ms: int | None  # the server's caller-audio clock
    paused: bool = False
    long_enough: bool = False
    committed: bool = False
    deadline: float | None = None  # pause (before the commit) or confirm (after it) then


class BargeInJudge:
    def __init__(self, min_ms: int, *, transcribed: bool) -> None:
        self.min_s = min_ms / 1000
        self.min_ms = min_ms
        self.transcribed = transcribed
        self._judging: _Judging | None = None

    @property
    def paused(self) -> bool:
        return self._judging is not None and self._judging.paused

    def speech_started(self, item_id: str, audio_start_ms: int | None, now: float, *,
                       model_speaking: bool) -> Plan:
        if not model_speaking:
            return NOTHING  # an ordinary turn: answered at its commit
        judging = self._judging
        if judging is not None and judging.paused:
            # A second turn while the first is judged: it judges on as this one.
            judging.item_id, judging.audio_start_ms = item_id, audio_start_ms
            return NOTHING
        self._judging = _Judging(item_id, now, audio_start_ms, deadline=now + self.min_s)
        return Plan(wake_at=now + self.min_s)

    def speech_stopped(self, item_id: str, audio_end_ms: int | None) -> Plan:
        judging = self._mine(item_id)
        if judging is None:
            return NOTHING
        if judging.audio_start_ms is not None and audio_end_ms is not None:
            judging.long_enough = audio_end_ms - judging.audio_start_ms >= self.min_ms
        if judging.long_enough and not judging.paused:
            judging.paused = True
            return Plan(pause=True)
        return NOTHING

    def timer(self, now: float) -> Plan:
        judging = self._judging
        if judging is None or judging.deadline is None or now < judging.deadline:
            return NOTHING
        judging.deadline = None
        if judging.committed:
            return self._confirm()  # no transcript in time: the caller wins
        if judging.paused:
            return NOTHING
        judging.long_enough = judging.paused = True  # still speaking after min_ms
        return Plan(pause=True)

    def committed(self, item_id: str, now: float) -> Plan:
        judging = self._mine(item_id)
        if judging is None:
            return Plan(respond=True)
        judging.committed = True
        if not judging.long_enough:
            return self._noise()
        if not self.transcribed:
            return self._confirm()
        judging.deadline = now + TRANSCRIPT_WAIT
        return Plan(wake_at=judging.deadline)

    def transcript(self, item_id: str, text: str | None) -> Plan:
        """The turn's transcript (None: its transcription failed)."""
        judging = self._mine(item_id)
        if judging is None or not judging.committed or not judging.long_enough:
            return NOTHING
        if text is not None and not text.strip():
            return self._noise()
        return self._confirm()

    def _mine(self, item_id: str) -> _Judging | None:
        judging = self._judging
        return judging if judging is not None and judging.item_id == item_id else None

    def _noise(self) -> Plan:
        judging = self._judging
        assert judging is not None
        self._judging = None
        return Plan(resume=judging.paused, forget=judging.item_id)

    def _confirm(self) -> Plan:
        self._judging = None
        return Plan(interrupt=True, respond=True)

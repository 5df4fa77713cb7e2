"""Keypad digits typed in one go (a PIN, an extension) become one message for the model.

A sequence ends at the terminator key (``#``), at ``max_digits``, or after ``pause`` seconds
without a key. The pause runs from the *last* key: a person typing "1 5 #" at 0.8 s a key is
typing one sequence, however long it takes in all.

:class:`KeySequence` is the pure rule (time is an argument); :func:`next_sequence` reads it off
a channel of caller events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import trio

# Longer than the gap between keys of someone reading a number off a card (about 1 s), short
# enough that the model answers a single key without a noticeable wait.
PAUSE = 1.5
TERMINATOR = "#"
# A card number with its PIN fits; a stuck key or a fax tone cannot build an endless message.
MAX_DIGITS = 32


@dataclass
class KeySequence:
    """The keys of one sequence so far, and when it ends if no key comes."""

    pause: float = PAUSE
    terminator: str | None = TERMINATOR
    max_digits: int = MAX_DIGITS
    digits: list[str] = field(default_factory=list)
    deadline: float = math.inf

    def add(self, digit: str, now: float) -> bool:
        """Take one key pressed at ``now``; True when the sequence is complete."""
        self.digits.append(digit)
        self.deadline = now + self.pause
        return digit == self.terminator or len(self.digits) >= self.max_digits

    @property
    def text(self) -> str:
        return "".join(self.digits)


async def next_sequence(
    events: trio.abc.ReceiveChannel, sequence: KeySequence
) -> tuple[str, bool]:
    """Collect one sequence from ``events`` (objects with a ``digit``).

    Returns ``(digits, more)``: ``more`` is False once the channel has ended; ``digits`` may
    then be empty.
    """
    try:
        first = await events.receive()
    except trio.EndOfChannel:
        return "", False
    if sequence.add(first.digit, trio.current_time()):
        return sequence.text, True
    while True:
        # Each key moves the deadline: the pause counts from the last key, not the first.
        with trio.move_on_at(sequence.deadline):
            try:
                event = await events.receive()
            except trio.EndOfChannel:
                return sequence.text, False
            if sequence.add(event.digit, trio.current_time()):
                return sequence.text, True
            continue
        return sequence.text, True

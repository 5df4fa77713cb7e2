"""Keypad sequences: the pause runs from the last key, '#' ends at once, a length cap.

On trio's MockClock: the keys arrive over a memory channel at exact virtual times.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import trio
import trio.testing

from openai_flavor.keypad import PAUSE, KeySequence, next_sequence


@dataclass(frozen=True)
class Key:
    digit: str


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def press(keys: trio.MemorySendChannel, digits: str, gap: float) -> None:
    async with keys:
        for n, digit in enumerate(digits):
            if n:
                await trio.sleep(gap)
            await keys.send(Key(digit))
        await trio.sleep(60)  # the caller stays on the line; the channel stays open


async def sequences(digits: str, gap: float, **rule) -> list[tuple[str, float]]:
    """Each sequence read, with the virtual time it was complete at."""
    send, receive = trio.open_memory_channel[Key](8)
    read: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(press, send, digits, gap)
        start = trio.current_time()
        while sum(len(text) for text, _ in read) < len(digits):
            text, more = await next_sequence(receive, KeySequence(**rule))
            read.append((text, round(trio.current_time() - start, 6)))
            assert more
        nursery.cancel_scope.cancel()
    return read


async def test_three_keys_0_8_s_apart_are_one_sequence(autojump_clock):
    # The softphone's "1 5 #" at 0.8 s a key, less the '#': the pause must count from the
    # last key (1.6 s in all is more than the 1.5 s pause from the first).
    assert await sequences("159", 0.8) == [("159", 1.6 + PAUSE)]


async def test_keys_1_6_s_apart_are_separate_sequences(autojump_clock):
    assert await sequences("12", 1.6) == [("1", PAUSE), ("2", 1.6 + PAUSE)]


async def test_the_terminator_ends_a_sequence_at_once(autojump_clock):
    assert await sequences("15#", 0.8) == [("15#", 1.6)]


async def test_a_configured_terminator_and_a_length_cap(autojump_clock):
    assert await sequences("12*", 0.5, terminator="*") == [("12*", 1.0)]
    assert await sequences("12345", 0.1, max_digits=3) == [("123", 0.2), ("45", round(0.4 + PAUSE, 6))]


async def test_a_closed_channel_ends_the_last_sequence(autojump_clock):
    send, receive = trio.open_memory_channel[Key](8)
    async with send:
        await send.send(Key("7"))
    assert await next_sequence(receive, KeySequence()) == ("7", False)
    assert await next_sequence(receive, KeySequence()) == ("", False)


def test_the_rule_is_pure():
    sequence = KeySequence(pause=1.5)
    assert not sequence.add("1", now=10.0) and sequence.deadline == 11.5
    assert not sequence.add("2", now=11.0) and sequence.deadline == 12.5
    assert sequence.add("#", now=11.2) and sequence.text == "12#"

"""The assistant's response/playout state, sans-IO: barge-in decisions and the response phase."""

from __future__ import annotations

import pytest

from media.playout import PlayoutQueue
from openai_flavor.turns import FunctionCall, IllegalTransition, Phase, Turns

FRAME = 160  # 20 ms of G.711


def setup(guard_welcome: bool = False) -> tuple[Turns, PlayoutQueue]:
    return Turns(ptime_ms=20, bytes_per_ms=8, guard_welcome=guard_welcome), PlayoutQueue(
        FRAME, max_bytes=100 * FRAME
    )


def receive(turns: Turns, playout: PlayoutQueue, response: str, item: str, ms: int) -> None:
    assert turns.audio_delta(response, item, ms * 8)
    playout.push(b"\x01" * (ms * 8), item)


def play(playout: PlayoutQueue, frames: int) -> None:
    for _ in range(frames):
        assert playout.pop_frame() is not None


def test_truncate_at_frames_sent_times_ptime():
    turns, playout = setup()
    turns.response_created("r1")
    receive(turns, playout, "r1", "i1", 1000)
    play(playout, 7)
    decision = turns.barge_in(playout)
    assert decision.interrupted and decision.truncate == (("i1", 140),)
    # Late deltas of the interrupted response are dropped.
    assert not turns.audio_delta("r1", "i1", 800)
    assert not turns.audio_done("r1", "i1")
    done = turns.response_done("r1")
    assert done.calls == () and turns.phase is Phase.LISTENING


def test_item_still_being_generated_is_truncated_even_with_an_empty_queue():
    turns, playout = setup()
    turns.response_created("r1")
    receive(turns, playout, "r1", "i1", 200)
    play(playout, 10)  # everything received so far was played, more is coming
    assert len(playout) == 0
    decision = turns.barge_in(playout)
    assert decision.interrupted and decision.truncate == (("i1", 200),)
    assert turns.is_cancelled("r1")


def test_played_to_its_end_is_not_truncated_and_not_an_interruption():
    turns, playout = setup()
    turns.response_created("r1")
    receive(turns, playout, "r1", "i1", 410)  # not a whole number of frames
    assert turns.audio_done("r1", "i1")
    playout.finish_item(0xFF)
    turns.response_done("r1")
    play(playout, 21)
    decision = turns.barge_in(playout)
    assert decision.truncate == () and not decision.interrupted


def test_padded_last_frame_is_clamped_to_the_audio_received():
    turns, playout = setup()
    turns.response_created("r1")
    receive(turns, playout, "r1", "i1", 410)
    turns.audio_done("r1", "i1")
    playout.finish_item(0xFF)
    play(playout, 20)  # 400 ms sent; the last 10 ms (+10 ms padding) still queued
    assert turns.barge_in(playout).truncate == (("i1", 400),)


def test_nothing_heard_is_not_truncated_but_the_response_is_cancelled():
    turns, playout = setup()
    turns.response_created("r1")
    receive(turns, playout, "r1", "i1", 300)
    decision = turns.barge_in(playout)
    assert decision.interrupted and decision.truncate == ()
    assert turns.is_cancelled("r1")


def test_nothing_playing_nothing_generating_is_no_barge_in():
    turns, playout = setup()
    decision = turns.barge_in(playout)
    assert not decision.interrupted and not decision.ignored


def test_protected_welcome_ignores_barge_in_until_played():
    turns, playout = setup(guard_welcome=True)
    assert turns.request_response(welcome=True)
    turns.response_created("w")
    receive(turns, playout, "w", "iw", 400)
    assert turns.barge_in(playout).ignored
    turns.audio_done("w", "iw")
    assert turns.response_done("w").was_welcome
    play(playout, 10)
    assert turns.barge_in(playout).ignored  # half of it still queued
    play(playout, 10)
    # Played: the next barge-in is a normal one.
    turns.response_created("r2")
    receive(turns, playout, "r2", "i2", 400)
    play(playout, 3)
    decision = turns.barge_in(playout)
    assert not decision.ignored and decision.truncate == (("i2", 60),)


def test_response_requests_wait_for_the_active_response():
    turns, playout = setup()
    assert turns.request_response()
    assert not turns.request_response()  # one is already on its way
    turns.response_created("r1")
    assert not turns.request_response()  # the server is busy: later
    turns.function_call("r1", FunctionCall("c1", "end_call", {}))
    done = turns.response_done("r1")
    assert done.send_response and done.calls == (FunctionCall("c1", "end_call", {}),)
    assert not turns.request_response()  # the deferred one is on its way now


def test_a_cancelled_responses_function_calls_never_run():
    turns, playout = setup()
    turns.response_created("r1")
    turns.barge_in(playout)
    turns.function_call("r1", FunctionCall("c1", "end_call", {}))
    assert turns.response_done("r1").calls == ()


def test_illegal_transitions_raise():
    turns, _ = setup()
    with pytest.raises(IllegalTransition):
        turns.response_done("r0")
    turns.response_created("r1")
    with pytest.raises(IllegalTransition):
        turns.response_created("r2")


def test_played_items_are_forgotten_when_the_next_response_starts():
    turns, playout = setup()
    turns.response_created("r1")
    receive(turns, playout, "r1", "i1", 100)
    turns.response_done("r1")
    play(playout, 5)
    turns.response_created("r2", playout)
    assert "i1" not in turns.items

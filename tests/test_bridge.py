"""The flavor-neutral actions on the call bridge: hang up after playout, transfer, drain."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from media.bridge import CALLER_AUDIO_BACKLOG_FRAMES, CallBridge
from media.playout import PlayoutQueue

pytestmark = pytest.mark.trio


def bridge(ended: list[str], transfers: list[str] | None = None) -> CallBridge:
    return CallBridge(
        call_id="c", codec="PCMU", ptime_ms=20,
        playout=PlayoutQueue(160, max_bytes=16000), end_call=lambda kind, reason: ended.append(reason),
        transfer=(transfers if transfers is not None else []).append,
    )


async def test_hang_up_waits_for_the_queue_to_run_dry():
    ended: list[str] = []
    b = bridge(ended)
    b.playout.push(b"\x01" * 320, "goodbye")
    b.hang_up_after_playout("the AI ended the call")
    b.hang_up_after_playout("a later reason")  # the first reason is the one kept
    assert ended == []
    b.playout.pop_frame()
    assert ended == []  # one frame still queued
    b.playout.pop_frame()
    b.playout_ran_dry()  # what the paced sender says when it finds nothing to play
    assert ended == ["the AI ended the call"]


async def test_hang_up_with_nothing_queued_is_immediate():
    ended: list[str] = []
    b = bridge(ended)
    b.playout.push(b"\x01" * 80, "partial")  # less than a frame: nothing left to play
    b.hang_up_after_playout("bye")
    assert ended == ["bye"]


async def test_wait_playout_idle_returns_when_the_sender_ran_dry():
    b = bridge([])
    b.playout.push(b"\x01" * 160, "item")
    done = trio.Event()

    async def waiter():
        await b.wait_playout_idle()
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        b.playout.pop_frame()
        b.playout_ran_dry()
        await done.wait()


async def test_transfer_is_delivered_to_the_owner():
    transfers: list[str] = []
    b = bridge([], transfers)
    b.transfer("sip:sales@example.com")
    assert transfers == ["sip:sales@example.com"]


# --- caller audio: the media plane's hand-off to the AI session ------------------------------


async def test_caller_audio_waits_in_a_bounded_backlog_until_the_ai_session_attaches():
    b = bridge([])
    frames = [bytes([n % 256]) * 160 for n in range(CALLER_AUDIO_BACKLOG_FRAMES)]
    assert all(b.caller_audio(frame) for frame in frames)
    assert not b.caller_audio(b"\x00" * 160)  # full: dropped (the media plane counts it)
    taken: list[bytes] = []
    assert b.attach_caller_audio(lambda frame: taken.append(frame) is None) == frames
    assert b.caller_audio(b"\x01" * 160) and taken == [b"\x01" * 160]


async def test_a_reconnect_forgets_the_backlog_and_an_ended_session_takes_nothing():
    b = bridge([])
    b.caller_audio(b"\x01" * 160)
    assert b.drop_caller_backlog() == 1
    assert b.attach_caller_audio(lambda frame: True) == []
    b.detach_caller_audio(for_good=True)
    # The call's media goes on after its AI session ended: frames are neither kept nor
    # counted as dropped.
    assert b.caller_audio(b"\x02" * 160)
    assert b.attach_caller_audio(lambda frame: True) == []

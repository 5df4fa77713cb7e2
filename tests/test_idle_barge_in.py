"""A silent caller, the call's length cap (on trio's MockClock) and rtpai-decided barge-in
(with the fake's VAD): issue 15, parts 4 and 5.

The test plays the paced sender (tests/test_openai_session.py's harness): the model's words
have been *heard* only once the test plays them out, so "silence after the model finished
speaking" is measured from that moment, not from response.done.
"""

from __future__ import annotations

import pytest
import trio

from media.bridge import EndReason
from openai_flavor.barge_in import BargeInJudge
from openai_flavor.idle import GOODBYE_BOUND, GOODBYE_TEXT, REPROMPT_TEXT
from tests.fakes.realtime import FakeRealtimeServer, tone
from tests.fakes.session import wait_until
from tests.test_openai_session import FRAME, errors, harness


def system_texts(fake) -> list[str]:
    return [e["item"]["content"][0]["text"] for e in fake.events_of("conversation.item.create")
            if e["item"].get("role") == "system"]


def kinds_of_ends(h) -> list[EndReason]:
    kinds: list[EndReason] = []
    original = h.bridge.end_call

    def end_call(kind: EndReason, reason: str) -> None:
        kinds.append(kind)
        original(kind, reason)

    h.bridge.end_call = end_call
    return kinds


# --- a silent caller -------------------------------------------------------------------------


@pytest.mark.trio
async def test_a_silent_caller_is_reprompted_then_hung_up_on_the_playout_clock(autojump_clock):
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 1000), speed=0)
    with trio.fail_after(600):
        async with harness(server, welcome_message="Hi", idle_reprompt_s=8,
                           idle_reprompts=2) as h:
            kinds = kinds_of_ends(h)
            fake = await server.wait_for_session()
            h.bridge.media_started.set()
            await wait_until(h.session, lambda s: s.stats.responses == 1)
            # The welcome is generated but not heard yet: no silence is counted.
            await trio.sleep(60)
            assert system_texts(fake) == []
            for reprompt in (1, 2):
                h.play_all()  # the model's words have now been played to the caller
                heard = trio.current_time()
                await fake.wait_until(lambda f, n=reprompt: len(system_texts(f)) == n)
                assert trio.current_time() - heard == pytest.approx(8, abs=0.05)
                assert system_texts(fake)[-1] == REPROMPT_TEXT
                await wait_until(h.session, lambda s, n=reprompt: s.stats.responses == n + 1)
            h.play_all()
            heard = trio.current_time()
            await h.call_ended.wait()
            assert trio.current_time() - heard == pytest.approx(8, abs=0.05)
            assert h.ended == ["the caller stayed silent (8 s, after 2 re-prompts)"]
            assert kinds == [EndReason.CALLER_SILENT]
            assert errors(fake) == []


@pytest.mark.trio
async def test_the_caller_speaking_resets_the_reprompts(autojump_clock):
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 400), speed=0)
    with trio.fail_after(600):
        async with harness(server, welcome_message="Hi", idle_reprompt_s=5,
                           idle_reprompts=1) as h:
            fake = await server.wait_for_session()
            h.bridge.media_started.set()
            await wait_until(h.session, lambda s: s.stats.responses == 1)
            h.play_all()
            await fake.wait_until(lambda f: len(system_texts(f)) == 1)  # re-prompt 1 of 1
            await wait_until(h.session, lambda s: s.stats.responses == 2)
            h.play_all()
            await h.speak()  # the caller answers before the 5 s are up: the count resets
            await wait_until(h.session, lambda s: s.stats.responses == 3)
            h.play_all()
            await fake.wait_until(lambda f: len(system_texts(f)) == 2)  # re-prompted again
            await wait_until(h.session, lambda s: s.stats.responses == 4)
            assert h.ended == []
            h.play_all()
            await h.call_ended.wait()
            assert h.ended == ["the caller stayed silent (5 s, after 1 re-prompt)"]


# --- the length cap --------------------------------------------------------------------------


@pytest.mark.trio
async def test_max_call_s_asks_for_a_goodbye_and_ends_once_it_has_played(autojump_clock):
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 1000), speed=0, respond_after_ms=None)
    with trio.fail_after(600):
        async with harness(server, max_call_s=120) as h:
            kinds = kinds_of_ends(h)
            fake = await server.wait_for_session()
            await trio.sleep(30)  # ringing: the cap counts from the caller's first RTP
            h.bridge.media_started.set()
            answered = trio.current_time()
            await fake.wait_until(lambda f: system_texts(f) == [GOODBYE_TEXT])
            assert trio.current_time() - answered == pytest.approx(120, abs=0.05)
            await wait_until(h.session, lambda s: s.stats.responses == 1)
            await trio.sleep(3)
            assert h.ended == []  # the goodbye is not cut off: it has not been played yet
            h.play_all()
            await h.call_ended.wait()
            assert h.ended == ["the call reached its maximum length (120 s)"]
            assert kinds == [EndReason.MAX_DURATION]


@pytest.mark.trio
async def test_max_call_s_is_hard_even_when_no_goodbye_comes(autojump_clock):
    # The goodbye's response starts and never finishes (generation stalls).
    server = FakeRealtimeServer(respond_after_ms=None, stall_after_ms=0)
    with trio.fail_after(600):
        async with harness(server, max_call_s=60, response_timeout=300) as h:
            h.bridge.media_started.set()
            start = trio.current_time()
            await h.call_ended.wait()
            assert trio.current_time() - start == pytest.approx(60 + GOODBYE_BOUND, abs=0.05)
            assert h.ended == ["the call reached its maximum length (60 s)"]


# --- barge-in decided by rtpai ---------------------------------------------------------------


def test_the_judge_needs_min_ms_of_speech_and_a_transcript_with_words():
    judge = BargeInJudge(300, transcribed=True)
    # Too short (the server's own clock says 200 ms): noise, nothing was paused.
    assert judge.speech_started("i1", 1000, 0.0, model_speaking=True).wake_at == 0.3
    assert not judge.speech_stopped("i1", 1200).pause
    plan = judge.committed("i1", 0.25)
    assert (plan.resume, plan.forget, plan.respond, plan.interrupt) == (False, "i1", False, False)
    # Long enough: paused at once, then the transcript decides.
    judge.speech_started("i2", 2000, 1.0, model_speaking=True)
    assert judge.timer(1.3).pause  # still speaking 300 ms later
    judge.speech_stopped("i2", 2600)
    assert judge.committed("i2", 1.7).wake_at == pytest.approx(1.7 + 3.0)
    plan = judge.transcript("i2", "  ")
    assert (plan.resume, plan.forget, plan.interrupt) == (True, "i2", False)
    judge.speech_started("i3", 3000, 2.0, model_speaking=True)
    judge.speech_stopped("i3", 3500)
    judge.committed("i3", 2.6)
    assert judge.transcript("i3", "stop please").interrupt
    # No transcript in time: the caller wins.
    judge.speech_started("i4", 4000, 5.0, model_speaking=True)
    judge.speech_stopped("i4", 4500)
    judge.committed("i4", 5.6)
    assert judge.timer(8.6).interrupt
    # Nothing playing: an ordinary turn, answered at its commit.
    assert judge.speech_started("i5", 0, 9.0, model_speaking=False).wake_at is None
    assert judge.committed("i5", 9.5).respond


@pytest.mark.trio
async def test_noise_over_the_answer_resumes_it_where_it_stopped():
    """Speech long enough to pause, but no words: the answer plays on, nothing truncated,
    nothing cancelled, the noise item deleted and never answered."""
    reply = tone("pcmu", 2000)
    server = FakeRealtimeServer(reply_audio=reply, speed=0, caller_transcript="")
    with trio.fail_after(10):
        async with harness(server, barge_in_min_ms=300) as h:
            fake = await server.wait_for_session()
            update = await fake.wait_for_client_event("session.update")
            detection = update["session"]["audio"]["input"]["turn_detection"]
            assert (detection["create_response"], detection["interrupt_response"]) == (False,
                                                                                       False)
            await h.speak()  # an ordinary turn: rtpai asks for the answer itself
            await wait_until(h.session, lambda s: s.stats.responses == 1)
            first = b"".join(h.play(10))
            await h.speak()  # 600 ms of "speech" that transcribes to nothing: noise
            deleted = await fake.wait_for_client_event("conversation.item.delete")
            committed = [e for e in fake.server_events
                         if e["type"] == "input_audio_buffer.committed"]
            assert deleted["item_id"] == committed[-1]["item_id"]  # the noise turn's item
            rest = b"".join(h.play(len(reply) // FRAME - 10))
            assert first + rest == reply  # resumed exactly where it stopped
            assert fake.truncations == [] and fake.events_of("response.cancel") == []
            assert len(fake.events_of("response.create")) == 1  # the noise is not answered
            assert h.session.stats.barge_ins == 0
            assert errors(fake) == []


@pytest.mark.trio
async def test_speech_with_words_interrupts_truncates_and_is_answered():
    reply = tone("pcmu", 2000)
    server = FakeRealtimeServer(reply_audio=reply, speed=0, stall_after_ms=1000,
                                caller_transcript="wait, stop")
    with trio.fail_after(10):
        async with harness(server, barge_in_min_ms=300) as h:
            fake = await server.wait_for_session()
            await h.speak()
            await fake.wait_until(lambda f: len(f.events_of("response.create")) == 1)
            await wait_until(h.session, lambda s: s.bridge.queued_bytes >= 1000 * 8)
            h.play(7)
            await h.speak()  # still being generated (stalled): the caller's words win
            await fake.wait_until(lambda f: f.truncations)
            assert fake.truncations[0]["audio_end_ms"] == 140 and fake.truncations[0]["accepted"]
            await fake.wait_for_client_event("response.cancel")  # the server would not
            # The cancelled answer's response.done, then the answer to the caller's words.
            await fake.wait_until(lambda f: len(f.events_of("response.create")) == 2)
            assert h.session.stats.responses == 1
            assert h.session.stats.barge_ins == 1
            assert fake.events_of("conversation.item.delete") == []
            assert errors(fake) == []


@pytest.mark.trio
async def test_speech_shorter_than_the_minimum_never_stops_the_answer():
    reply = tone("pcmu", 2000)
    server = FakeRealtimeServer(reply_audio=reply, speed=0, caller_transcript="uh")
    with trio.fail_after(10):
        async with harness(server, barge_in_min_ms=1000) as h:  # the fake hears 600 ms
            fake = await server.wait_for_session()
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.responses == 1)
            first = b"".join(h.play(5))
            await h.speak()
            await fake.wait_for_client_event("conversation.item.delete")
            assert first + b"".join(h.play(len(reply) // FRAME - 5)) == reply
            assert fake.truncations == [] and len(fake.events_of("response.create")) == 1
            assert errors(fake) == []

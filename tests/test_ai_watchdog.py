"""The AI link's watchdog against a hostile Realtime server (tests/fakes/hostile.py).

Each fault is picked by the session's URL, as the tests of the strict fake pick theirs. With
``times=1`` the fault hits the first connection only: the call must recover within the fault's
bound. Without it, every connection is faulty: the call must end, with a reason naming the
bound, once ``reconnect_timeout`` has passed. Time is trio's MockClock (autojump) where the
sockets allow it, so a 5 s bound is asserted as 5 s, not "soon".
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import pytest
import trio

from ctl.config import load_config
from ctl.engine import Engine
from media.bridge import CallBridge
from media.playout import PlayoutQueue
from media.poller import SocketPoller
from media.sdp import parse_sdp
from media.tones import reconnect_cue
from openai_flavor.session import RealtimeSession, RealtimeSessionError
from tests.fakes.caller import FakeCaller
from tests.fakes.hostile import GARBAGE, HostileRealtimeServer
from tests.fakes.http import FakeHttpServer
from tests.fakes.proxy import FakeProxy
from tests.fakes.realtime import FakeRealtimeServer
from tests.fakes.session import wait_until
from tests.test_openai_session import FRAME, Harness, make_settings

pytestmark = pytest.mark.trio


@asynccontextmanager
async def hostile(fault: str, *, times: int | None = None, tls: bool = False, **settings):
    """A session (no media plane) whose server misbehaves as ``fault`` says (``tls``: the
    URL says wss://, which this server never speaks)."""
    server = HostileRealtimeServer()
    async with trio.open_nursery() as nursery:
        base = await nursery.start(server.serve)
        if tls:
            base = base.replace("ws://", "wss://")
        url = f"{base}?fault={fault}&call=c1" + (f"&times={times}" if times else "")
        poller = SocketPoller()
        await nursery.start(poller.run)
        ended: list[str] = []
        bridge = CallBridge(
            call_id="call-1@test", codec="PCMU", ptime_ms=20,
            playout=PlayoutQueue(FRAME, max_bytes=120 * 8000), end_call=lambda kind, reason: ended.append(reason),
            transfer=lambda target: None,
        )
        session = RealtimeSession(make_settings(url, **settings), bridge, poller)
        h = Harness(server, session, bridge, None, ended)  # type: ignore[arg-type]

        async def run() -> None:
            try:
                await session.run()
            except RealtimeSessionError as exc:
                h.failure.append(exc)
                h.call_ended.set()

        nursery.start_soon(run)
        yield h
        nursery.cancel_scope.cancel()


def recovered(s: RealtimeSession) -> bool:
    """A new connection after a loss has its session configured."""
    return s.stats.reconnects >= 1 and s.state == "open" and s.ready


# --- each phase's bound: recover when the next connection is healthy ----------------------


@pytest.mark.parametrize(("fault", "bound", "reason"), [
    ("no-upgrade", 5.0, "no answer to the WebSocket upgrade within 5 s"),
    ("silent-101", 5.0, "no session.created within 5 s"),
    ("no-session-updated", 5.0, "no session.updated within 5 s"),
    # Not reading: the keepalive ping goes out at 5 s; no pong before the next one is due.
    ("not-reading", 10.0, "no pong within 5 s"),
])
async def test_a_silent_phase_is_given_up_at_its_bound_and_the_call_recovers(
        autojump_clock, fault, bound, reason):
    with trio.fail_after(100):
        async with hostile(fault, times=1) as h:
            start = trio.current_time()
            await wait_until(h.session, recovered)
            assert trio.current_time() - start == pytest.approx(bound, abs=0.1)  # + the bounded close
            assert h.session.stats.last_loss == reason
            assert h.failure == [] and h.ended == []
            assert [c.fault for c in h.server.connections] == [fault, "none"]


async def test_a_server_that_never_answers_the_tls_handshake_is_bounded_by_connect_timeout(
        autojump_clock):
    with trio.fail_after(100):
        async with hostile("no-upgrade", tls=True, connect_timeout=3, reconnect_timeout=0) as h:
            start = trio.current_time()
            await h.call_ended.wait()
            assert trio.current_time() - start == pytest.approx(3, abs=0.01)
            assert "(no TLS session within 3 s)" in str(h.failure[0])


@pytest.mark.parametrize("fault", ["no-upgrade", "silent-101", "no-session-updated"])
async def test_a_server_that_never_gets_past_a_phase_ends_the_call_after_reconnect_timeout(
        autojump_clock, fault):
    with trio.fail_after(200):
        async with hostile(fault, reconnect_timeout=20) as h:
            start = trio.current_time()
            await h.call_ended.wait()
            # The first loss at 5 s, then retries until 20 s after it; the last attempt
            # may begin just before the window closes and take its own 5 s.
            assert 20 <= trio.current_time() - start <= 5 + 20 + 5 + 0.1
            failure = str(h.failure[0])
            assert failure.startswith("the Realtime API could not be reached within 20 s (")
            assert "within 5 s)" in failure
            assert h.session.state == "failed"


async def test_server_silence_while_a_response_is_expected_reconnects_then_ends(autojump_clock):
    """A server that configures the session and then never answers the caller: each
    connection is given up response_timeout after the caller's turn ended, and the call ends
    because those connections never worked (they are not 'stable' however long they stood)."""
    with trio.fail_after(300):
        async with hostile("mute-response", reconnect_timeout=20) as h:
            losses: list[float] = []
            opened = 0
            while True:
                await wait_until(h.session,
                    lambda s, n=opened: (s.stats.connections > n and s.state == "open"
                                         and s.ready) or s.stats.failure)
                if h.session.stats.failure:
                    break
                opened = h.session.stats.connections
                spoke = trio.current_time()
                for _ in range(30):
                    h.bridge.caller_audio(b"\x55" * FRAME)
                lost = len(losses)
                await wait_until(h.session,
                    lambda s, n=lost: s.stats.reconnects > n or s.stats.failure)
                losses.append(trio.current_time() - spoke)
            await h.call_ended.wait()
            assert losses and all(loss == pytest.approx(10, abs=0.1) for loss in losses)
            assert "no response event within 10 s while a response was expected" in str(
                h.failure[0])
            assert len(losses) <= 4


# Late (the set-up bound's wake-up long past) and without keepalive pings (0), nothing else
# wakes the watch task: the response.create must re-arm its sleep (conversation.py
# _expect_response), or a mute server would hold the call for ever.
@pytest.mark.parametrize(("ping_interval", "after_s"), [(5.0, 0), (0, 30)])
async def test_response_create_unanswered_is_bounded_too(autojump_clock, ping_interval, after_s):
    with trio.fail_after(100):
        async with hostile("mute-response", times=1, welcome_message="Hi",
                           ping_interval=ping_interval) as h:
            await wait_until(h.session, lambda s: s.ready)
            await trio.sleep(after_s)
            h.bridge.media_started.set()  # the welcome's response.create goes out at once
            start = trio.current_time()
            await wait_until(h.session, recovered)
            assert trio.current_time() - start == pytest.approx(10, abs=0.1)
            assert "while a response was expected" in h.session.stats.last_loss


async def test_a_quiet_server_is_fine_when_nothing_is_expected(autojump_clock):
    """No false alarm: a configured session with the caller silent for ten minutes."""
    with trio.fail_after(1000):
        async with hostile("none") as h:
            await wait_until(h.session, lambda s: s.ready)
            await trio.sleep(600)
            assert h.session.stats.reconnects == 0 and h.session.stats.last_loss is None
            # And a turn is answered as before.
            for _ in range(30):
                h.bridge.caller_audio(b"\x55" * FRAME)
            await wait_until(h.session, lambda s: s.stats.responses == 1)


# --- hostile traffic ----------------------------------------------------------------------


async def test_type_confused_events_are_counted_and_dropped_and_the_call_goes_on():
    with trio.fail_after(10):
        async with hostile("garbage") as h:
            await wait_until(h.session, lambda s: s.stats.malformed_events >= len(GARBAGE))
            assert h.session.stats.malformed_events == len(GARBAGE)
            assert h.session.stats.reconnects == 0 and h.failure == []
            for _ in range(30):
                h.bridge.caller_audio(b"\x55" * FRAME)
            await wait_until(h.session, lambda s: s.stats.responses == 1)
            assert h.session.stats.audio_received_bytes == 400 * 8


async def test_a_16_mib_message_closes_with_1009_and_the_call_recovers():
    with trio.fail_after(20):
        async with hostile("huge", times=1) as h:
            await wait_until(h.session, recovered)
            assert h.session.stats.last_loss == (
                "rtpai closed the session: the server broke the protocol (1009 message too big)")
            assert h.failure == []


async def test_a_ping_flood_is_cut_off_and_the_call_recovers():
    with trio.fail_after(20):
        async with hostile("ping-flood", times=1) as h:
            await wait_until(h.session, recovered)
            loss = h.session.stats.last_loss
            assert "flood" in loss or "frames in one read" in loss, loss
            assert h.failure == []


async def test_a_server_that_stops_reading_is_bounded_by_back_pressure(autojump_clock):
    """Keepalive off: the caller's audio backs up in the socket, the flusher waits
    send_timeout for the socket to take anything, then the connection is given up."""
    with trio.fail_after(100):
        async with hostile("not-reading", times=1, ping_interval=0,
                           send_buffer_bytes=16 * 1024) as h:
            await wait_until(h.session, lambda s: s.ready)
            while h.session.stats.reconnects == 0:
                for _ in range(500):  # as the media plane hands it over, 10 s at a time
                    h.bridge.caller_audio(b"\x55" * FRAME)
                await trio.sleep(1)
            assert "the server took no output for 5 s" in h.session.stats.last_loss
            await wait_until(h.session, recovered)
            assert h.failure == []


# --- the caller is told -------------------------------------------------------------------


async def test_the_reconnect_cue_is_played_once_per_loss_when_configured(autojump_clock):
    with trio.fail_after(100):
        async with hostile("no-session-updated", times=1, reconnect_tone=True) as h:
            h.bridge.media_started.set()
            await wait_until(h.session, recovered)
            cue = reconnect_cue("PCMU")
            assert len(cue) == 300 * 8
            queued = b"".join(iter(h.bridge.playout.pop_frame, None))
            assert queued == cue


async def test_no_cue_by_default(autojump_clock):
    with trio.fail_after(100):
        async with hostile("no-session-updated", times=1) as h:
            h.bridge.media_started.set()
            await wait_until(h.session, recovered)
            assert h.bridge.playout.pop_frame() is None


# --- through the engine: the faulty call ends via the proxy, the healthy one keeps pace ------


async def test_a_faulty_ai_link_ends_its_call_through_the_proxy_while_a_healthy_call_keeps_pace(
        tmp_path):
    """Real time, real RTP: one call's Realtime server never answers session.update (its
    profile points at the hostile server); the other's is the strict fake. The faulty caller
    keeps hearing silence frames while rtpai retries, then the proxy is told to hang up with
    the reason; the healthy caller's RTP stays paced throughout."""
    hostile_server, healthy_server, http = HostileRealtimeServer(), FakeRealtimeServer(), (
        FakeHttpServer())
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bad_url = await nursery.start(hostile_server.serve)
            good_url = await nursery.start(healthy_server.serve)
            hook = await nursery.start(http.serve)
            ini = tmp_path / "rtpai.conf"
            ini.write_text(
                "[openai:faulty]\n"
                f"url = {bad_url}?fault=no-session-updated&call=bad\n"
                "session_timeout = 0.5\nreconnect_timeout = 1.5\n")
            engine = Engine(load_config(str(ini), environ={
                "NG_LISTEN": "127.0.0.1:0", "RTP_MIN_PORT": "45300", "RTP_MAX_PORT": "45399",
                "OPENAI_URL": good_url, "OPENAI_API_KEY": "test-key",
                "PROXY_TYPE": "webhook", "PROXY_URL": hook}))
            address = await nursery.start(engine.run)
            good, bad = FakeCaller(), FakeCaller()
            for caller in (good, bad):
                await caller.bind()
                nursery.start_soon(caller.receive)
            async with FakeProxy(address) as proxy:
                ports = {}
                for name, caller, extra in (("good", good, {}), ("bad", bad,
                                                                  {"profile": "faulty"})):
                    reply = await proxy.command("offer", **{
                        "call-id": name, "from-tag": "ft", "to-tag": "tt",
                        "sdp": caller.sdp_offer(), **extra})
                    assert reply["result"] == "ok", reply
                    ports[name] = parse_sdp(reply["sdp"]).media[0].port
                silence = [bytes([0xFF]) * 160] * 150  # 3 s of a quiet caller each
                nursery.start_soon(good.stream, ("127.0.0.1", ports["good"]), silence)
                nursery.start_soon(bad.stream, ("127.0.0.1", ports["bad"]), silence)
                start = trio.current_time()
                await http.wait_for(1)
                ended_after = trio.current_time() - start
                event = json.loads(http.requests[0].body)
                assert event["call_id"] == "bad" and event["event"] == "hangup"
                assert event["reason"] == ("AI session failed: the Realtime API could not be "
                                           "reached within 1.5 s (no session.updated within "
                                           "0.5 s)")
                assert ended_after < 0.5 + 1.5 + 0.5 + 1.0
                # The faulty caller was not left in dead silence while rtpai retried.
                heard = [p.at for p in bad.received if p.at <= start + ended_after]
                assert heard and max(b - a for a, b in zip(heard, heard[1:],
                                                            strict=False)) < 0.2
                # The healthy call: paced, and still up with its session open.
                await trio.sleep(0.5)
                gaps = sorted(b.at - a.at for a, b in zip(good.received, good.received[1:],
                                                          strict=False))
                assert len(gaps) > 50
                p99 = gaps[int(0.99 * (len(gaps) - 1))]
                assert abs(p99 - 0.020) < 0.015, p99
                query = await proxy.command("query", **{"call-id": "good"})
                assert query["rtpai"]["state"] == "active"
                assert query["rtpai"]["ai"]["state"] == "open"
            nursery.cancel_scope.cancel()


async def test_a_server_that_keeps_hearing_the_caller_but_never_answers_is_mute_too(
        autojump_clock):
    """VAD events every 2 s (the caller keeps talking) are not progress towards a response."""
    with trio.fail_after(100):
        async with hostile("mute-response", times=1) as h:
            await wait_until(h.session, lambda s: s.ready)
            start = trio.current_time()
            while not recovered(h.session):
                for _ in range(30):
                    h.bridge.caller_audio(b"\x55" * FRAME)
                with trio.move_on_after(2):
                    await wait_until(h.session, recovered)
            assert trio.current_time() - start == pytest.approx(10, abs=0.1)
            assert "no response event within 10 s" in h.session.stats.last_loss


async def test_what_a_hostile_server_can_make_a_call_hold_is_bounded():
    """Invented item ids, error floods and endless transcripts: each kept within a bound."""
    from openai_flavor import events, server_events, stats
    from openai_flavor.conversation import Conversation
    from openai_flavor.idle import CallCap, Silence
    from openai_flavor.reconnect import Backoff
    from openai_flavor.welcome import WelcomeAndGoodbye

    bridge = CallBridge(call_id="c", codec="PCMU", ptime_ms=20,
                        playout=PlayoutQueue(FRAME, max_bytes=8000), end_call=lambda kind, reason: None,
                        transfer=lambda t: None)
    settings = make_settings("ws://127.0.0.1:9/")
    conversation = Conversation(
        None, settings=settings, bridge=bridge, poller=None,  # type: ignore[arg-type]
        stats=stats.RealtimeStats(), manners=WelcomeAndGoodbye(welcome=False, guarded=False),
        backoff=Backoff(1.0), untold_failures=[], silence=Silence(0, 0), cap=CallCap(0))
    dropped = 0
    for n in range(1000):
        try:
            conversation.handle({"type": "response.output_audio.delta", "item_id": f"i{n}",
                                      "delta": ""}, 0.0)
        except events.MalformedEvent:
            dropped += 1
    assert len(conversation.turns.items) == server_events.MAX_ASSISTANT_ITEMS
    assert dropped == 1000 - server_events.MAX_ASSISTANT_ITEMS
    for _ in range(1000):
        conversation.handle({"type": "error", "error": {"code": "x" * 10_000,
                                                           "message": "m" * 100_000}}, 0.0)
        conversation.handle({"type": "response.output_audio_transcript.done",
                                  "transcript": "t" * 100_000}, 0.0)
    snapshot = conversation.stats
    assert len(snapshot.errors) == stats.KEPT_ERRORS
    assert all(len(e["code"]) <= 64 and len(e["message"]) <= 500 for e in snapshot.errors)
    assert len(snapshot.transcript) == 1000
    assert all(len(e["text"]) == stats.MAX_TRANSCRIPT_ENTRY_CHARS
               for e in snapshot.transcript)

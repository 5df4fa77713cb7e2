"""rtpai ends and transfers calls through the proxy: bounded, owned by the call, truthful.

On trio's MockClock (virtual time jumps whenever every task waits): the engine runs with real
loopback sockets that nothing sends to, its ng handlers are called directly, and the proxy is
a fake that answers as the test says (``FakeProxyControl``), so the bounds are exact.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from ctl import replies
from ctl.call import CallState
from ctl.call_control import TRANSFER_PLAYOUT_WAIT
from ctl.config import load_config
from ctl.engine import Engine
from ctl.ng import NgRequest
from ctl.proxy import ProxyEvent, ProxyOutcome
from media.bridge import EndReason
from tests.fakes.engine import handle, reply_of


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


class FakeProxyControl:
    """Stands in for ProxyNotifier.carry_out: records each request and its virtual time, and
    answers ``outcome`` (accepted, by default) without ever sending a delete."""

    enabled = True
    transfer_ends_dialog = True  # as Kamailio's dlg_refer
    timeout, retries = 2.0, 2

    def __init__(self, outcome: ProxyOutcome | None = None) -> None:
        self.outcome = outcome or ProxyOutcome(True, "done")
        self.requests: list[tuple[float, ProxyEvent]] = []

    async def carry_out(self, event: ProxyEvent) -> ProxyOutcome:
        self.requests.append((trio.current_time(), event))
        await trio.lowlevel.checkpoint()
        return self.outcome

    async def notify(self, event: ProxyEvent) -> bool:
        return (await self.carry_out(event)).ok


def silent_ai() -> socket.socket:
    """A listening socket that never accepts: the AI session's handshake waits, and the
    call stays up without any Realtime traffic (its connect timeout is 10 virtual seconds)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener


def offer_sdp(direction: str = "sendrecv") -> str:
    return ("v=0\r\no=phone 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
            "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n"
            f"a={direction}\r\n")


def make_engine(ai: socket.socket, **env: str) -> Engine:
    port = ai.getsockname()[1]
    return Engine(load_config(None, environ={
        "NG_LISTEN": "127.0.0.1:0", "RTP_MIN_PORT": "46000", "RTP_MAX_PORT": "46099",
        "OPENAI_URL": f"ws://127.0.0.1:{port}/v1/realtime", "OPENAI_API_KEY": "test-key",
        "OPENAI_RECONNECT_TIMEOUT": "60", "PROXY_TYPE": "kamailio",
        "PROXY_URL": "http://127.0.0.1:9/RPC", **env}))


async def start_call(engine: Engine, call_id: str = "c1", direction: str = "sendrecv"):
    """Offer a call and let its tasks start (the engine starts them after the reply)."""
    reply_of(handle(engine, NgRequest("offer", {"call-id": call_id, "from-tag": "ft",
                                              "to-tag": "tt", "sdp": offer_sdp(direction)})))
    (call,) = engine.calls.select(call_id)
    await trio.testing.wait_all_tasks_blocked()
    return call


async def test_a_hangup_the_proxy_accepts_but_never_completes_ends_at_the_bound(autojump_clock):
    with silent_ai() as ai:
        async with trio.open_nursery() as nursery:
            engine = make_engine(ai, PROXY_HANGUP_TIMEOUT="7")
            proxy = engine.control.proxy = FakeProxyControl()
            await nursery.start(engine.run)
            call = await start_call(engine)
            await trio.sleep(1)
            call.hang_up(EndReason.MEDIA_TIMEOUT, "media timeout (60 s without RTP)")
            await call.ended.wait()
            ((asked_at, event),) = proxy.requests
            assert event.event == "hangup" and event.reason.startswith("media timeout")
            # Exactly the bound after the proxy accepted, and not a moment before.
            assert trio.current_time() - asked_at == pytest.approx(7)
            assert call.end_reason == "proxy did not hang up (media timeout (60 s without RTP))"
            assert call.hangup["status"] == "no delete"
            await trio.testing.wait_all_tasks_blocked()
            assert engine.ports.in_use == 0 and len(engine.calls) == 0  # not listed for ever
            assert call.ai.state in ("closed", "failed")
            totals = engine.statistics(NgRequest("statistics", {}))["statistics"]
            assert totals["totalstatistics"]["hanguptimeouts"] == 1
            nursery.cancel_scope.cancel()


async def test_the_proxys_delete_within_the_bound_ends_the_call_for_the_reason_asked(
        autojump_clock):
    with silent_ai() as ai:
        async with trio.open_nursery() as nursery:
            engine = make_engine(ai)
            engine.control.proxy = FakeProxyControl()
            await nursery.start(engine.run)
            call = await start_call(engine)
            call.hang_up(EndReason.MEDIA_TIMEOUT, "media timeout (60 s without RTP)")
            await trio.sleep(0.2)
            assert call.hangup["status"] == "sent" and engine.ports.in_use == 1
            reply = handle(engine, NgRequest("delete", {"call-id": "c1", "from-tag": "ft"}))
            assert reply["rtpai"]["end reason"] == "media timeout (60 s without RTP)"
            await trio.sleep(60)  # the bound's task died with the call
            totals = engine.statistics(NgRequest("statistics", {}))["statistics"]
            assert totals["totalstatistics"]["hanguptimeouts"] == 0
            assert totals["totalstatistics"]["timeoutsessions"] == 1
            nursery.cancel_scope.cancel()


async def test_no_refer_after_the_call_has_ended(autojump_clock):
    """Issue 16: the transfer waited for playout in the engine's nursery, so 15 s after the
    call was deleted rtpai still asked the proxy to REFER a caller who was gone."""
    with silent_ai() as ai:
        async with trio.open_nursery() as nursery:
            engine = make_engine(ai)
            proxy = engine.control.proxy = FakeProxyControl()
            await nursery.start(engine.run)
            # 20 s of words to play before the REFER (held: paced, but nothing leaves).
            call = await start_call(engine, direction="sendonly")
            call.bridge.playout.push(b"\xff" * 160 * 1000, "item-1")
            call.transfer("sip:agent@example.com")
            await trio.sleep(1)
            handle(engine, NgRequest("delete", {"call-id": "c1", "from-tag": "ft"}))
            await trio.sleep(TRANSFER_PLAYOUT_WAIT + 5)
            assert proxy.requests == []
            nursery.cancel_scope.cancel()


async def test_a_refused_transfer_is_told_to_the_model_and_recorded(autojump_clock):
    with silent_ai() as ai:
        async with trio.open_nursery() as nursery:
            engine = make_engine(ai, PROXY_TYPE="opensips", PROXY_URL="http://127.0.0.1:9/mi")
            engine.control.proxy = FakeProxyControl(ProxyOutcome(False, "the caller answered 603"))
            await nursery.start(engine.run)
            call = await start_call(engine)
            told: list[tuple[str, str]] = []
            call.bridge.listen_for_failures(lambda action, why: told.append((action, why)))
            call.transfer("sip:agent@example.com")
            await trio.testing.wait_all_tasks_blocked()
            assert told == [("transfer", "the caller answered 603")]
            (record,) = replies.rtpai_statistics(call)["transfers"]
            assert record["status"] == "failed" and record["error"] == "the caller answered 603"
            assert call.state.value == "offered"  # the call goes on: the model speaks
            nursery.cancel_scope.cancel()


async def test_an_accepted_opensips_transfer_is_followed_by_a_hangup(autojump_clock):
    with silent_ai() as ai:
        async with trio.open_nursery() as nursery:
            engine = make_engine(ai, PROXY_TYPE="opensips", PROXY_URL="http://127.0.0.1:9/mi")
            proxy = engine.control.proxy = FakeProxyControl()
            engine.proxy.transfer_ends_dialog = False  # as ProxyNotifier says for OpenSIPS
            await nursery.start(engine.run)
            call = await start_call(engine)
            call.transfer("sip:agent@example.com")
            await trio.testing.wait_all_tasks_blocked()
            assert [event.event for _, event in proxy.requests] == ["transfer", "hangup"]
            assert proxy.requests[1][1].reason == "transferred to sip:agent@example.com"
            reply = handle(engine, NgRequest("delete", {"call-id": "c1", "from-tag": "ft"}))
            assert reply["rtpai"]["end reason"] == "transferred to sip:agent@example.com"
            nursery.cancel_scope.cancel()


async def test_a_refused_hangup_the_model_asked_for_is_told_to_it(autojump_clock):
    with silent_ai() as ai:
        async with trio.open_nursery() as nursery:
            engine = make_engine(ai)
            engine.control.proxy = FakeProxyControl(ProxyOutcome(False, "JSON-RPC error: 500"))
            await nursery.start(engine.run)
            call = await start_call(engine)
            told: list[tuple[str, str]] = []
            call.bridge.listen_for_failures(lambda action, why: told.append((action, why)))
            call.bridge.hang_up_after_playout("the AI ended the call: done")
            await trio.testing.wait_all_tasks_blocked()
            assert told == [("hang-up", "JSON-RPC error: 500")]
            assert call.hangup["status"] == "failed"
            assert call.state.value == "offered"  # still up: the caller hears the model
            totals = engine.statistics(NgRequest("statistics", {}))["statistics"]
            assert totals["totalstatistics"]["hangupfailures"] == 1
            nursery.cancel_scope.cancel()


async def test_a_refused_hangup_rtpai_asked_for_ends_the_call_here(autojump_clock):
    with silent_ai() as ai:
        async with trio.open_nursery() as nursery:
            engine = make_engine(ai)
            engine.control.proxy = FakeProxyControl(ProxyOutcome(False, "timed out"))
            await nursery.start(engine.run)
            call = await start_call(engine)
            call.hang_up(EndReason.MEDIA_TIMEOUT, "media timeout (60 s without RTP)")
            await call.ended.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert call.end_reason.startswith("media timeout")
            assert engine.ports.in_use == 0 and len(engine.calls) == 0
            nursery.cancel_scope.cancel()


class RefusingUntilConfirmed(FakeProxyControl):
    """Kamailio before the caller's ACK: it refuses to end the dialog for ``refusals`` tries."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals
        self.accepted = trio.Event()

    async def carry_out(self, event: ProxyEvent) -> ProxyOutcome:
        outcome = await super().carry_out(event)
        if len(self.requests) <= self.refusals:
            return ProxyOutcome(False, "terminating non-confirmed dialogs not supported")
        self.accepted.set()
        return outcome


async def test_a_refused_hangup_rtpai_asked_for_is_asked_again_until_accepted(autojump_clock):
    """A media timeout before the dialog is confirmed: the proxy refuses, rtpai asks again
    (bounded) instead of leaving the caller's dialog up with no media behind it."""
    with silent_ai() as ai:
        async with trio.open_nursery() as nursery:
            engine = make_engine(ai)
            engine.control.proxy = proxy = RefusingUntilConfirmed(refusals=2)
            await nursery.start(engine.run)
            call = await start_call(engine)
            call.hang_up(EndReason.MEDIA_TIMEOUT, "media timeout (1 s without RTP)")
            await proxy.accepted.wait()
            await trio.testing.wait_all_tasks_blocked()
            times = [at for at, _ in proxy.requests]
            assert len(times) == 3 and call.hangup["status"] == "sent"
            assert times[1] - times[0] == pytest.approx(0.25)
            assert times[2] - times[1] == pytest.approx(0.5)
            assert not call.ended.is_set()  # up until the proxy's delete
            reply = handle(engine, NgRequest("delete", {"call-id": "c1", "from-tag": "ft"}))
            assert reply["rtpai"]["end reason"].startswith("media timeout")
            totals = engine.statistics(NgRequest("statistics", {}))["statistics"]
            assert totals["totalstatistics"]["hangupretries"] == 2
            assert totals["totalstatistics"]["hangupfailures"] == 0
            nursery.cancel_scope.cancel()


async def test_a_refused_hangup_is_asked_again_only_within_hangup_timeout(autojump_clock):
    with silent_ai() as ai:
        async with trio.open_nursery() as nursery:
            engine = make_engine(ai, PROXY_HANGUP_TIMEOUT="3")
            engine.control.proxy = proxy = RefusingUntilConfirmed(refusals=100)
            await nursery.start(engine.run)
            call = await start_call(engine)
            start = trio.current_time()
            call.hang_up(EndReason.AI_FAILED, "AI session failed")
            await call.ended.wait()
            # 0, 0.25, 0.75, 1.75: the next try (3.75) would be past the 3 s bound.
            assert [round(at - start, 2) for at, _ in proxy.requests] == [0, 0.25, 0.75, 1.75]
            assert call.hangup["status"] == "failed"
            assert engine.ports.in_use == 0 and len(engine.calls) == 0
            nursery.cancel_scope.cancel()


def test_tools_a_proxy_cannot_carry_out_are_not_offered(caplog):
    with silent_ai() as ai:
        none = make_engine(ai, PROXY_TYPE="none", OPENAI_TRANSFER_TARGET="sip:desk@example.com")
        assert not none.settings.end_call_tool and not none.settings.transfer_enabled
        assert set(none.withheld_tools) == {"end_call", "transfer_call"}
        for kind in ("kamailio", "opensips", "webhook"):
            able = make_engine(ai, PROXY_TYPE=kind, OPENAI_TRANSFER_TARGET="sip:desk@example.com")
            assert able.settings.end_call_tool and able.settings.transfer_enabled
            assert able.withheld_tools == {}


async def test_start_up_says_once_which_tools_are_withheld(caplog, autojump_clock):
    caplog.set_level(logging.WARNING)
    with silent_ai() as ai:
        async with trio.open_nursery() as nursery:
            engine = make_engine(ai, PROXY_TYPE="none")
            await nursery.start(engine.run)
            nursery.cancel_scope.cancel()
    withheld = [r.message for r in caplog.records if "not offered" in r.message]
    assert withheld == ["the model is not offered end_call: no [proxy] is configured to end or "
                        "transfer calls"]


async def test_an_accepted_hangup_is_not_asked_again_when_the_engine_stops(autojump_clock):
    with silent_ai() as ai:
        async with trio.open_nursery() as nursery:
            engine = make_engine(ai)
            proxy = engine.control.proxy = FakeProxyControl()
            await nursery.start(engine.run)
            call = await start_call(engine)
            call.hang_up(EndReason.MEDIA_TIMEOUT, "media timeout (60 s without RTP)")
            await trio.sleep(0.5)
            await engine.drain(grace=0)  # ends what is left: the proxy's BYE is on its way
            assert [event.event for _, event in proxy.requests] == ["hangup"]
            assert call.end_reason == "engine shutdown"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("tasks_started", [True, False])
async def test_the_shutdown_hang_up_is_the_ended_calls_own_task(autojump_clock, tasks_started):
    """Issue 16: a call's work is its own, also the request that follows its end. Drained
    after its tasks ran, or before they first ran (offered just as the drain began), the
    hang-up request runs under the call's ``run``, never in the engine's nursery."""

    class RecordingProxy(FakeProxyControl):
        owners: list[str] = []

        async def notify(self, event: ProxyEvent) -> bool:
            owner = trio.lowlevel.current_task().parent_nursery.parent_task
            self.owners.append(owner.name)
            return await super().notify(event)

    with silent_ai() as ai:
        async with trio.open_nursery() as nursery:
            engine = make_engine(ai)
            proxy = engine.control.proxy = RecordingProxy()
            await nursery.start(engine.run)
            if tasks_started:
                call = await start_call(engine)
            else:
                reply_of(handle(engine, NgRequest("offer", {
                    "call-id": "c1", "from-tag": "ft", "to-tag": "tt", "sdp": offer_sdp()})))
                (call,) = engine.calls.select("c1")
            await engine.drain(grace=0)
            assert call.state is CallState.ENDED
            assert [event.event for _, event in proxy.requests] == ["hangup"]
            assert proxy.owners == ["ctl.call.Call.run"]
            assert not engine.control.under_way  # the drain waited for it
            nursery.cancel_scope.cancel()


async def test_the_ng_totals_count_ended_calls_by_every_end_reason(autojump_clock):
    with silent_ai() as ai:
        async with trio.open_nursery() as nursery:
            engine = make_engine(ai)
            await nursery.start(engine.run)
            for kind in EndReason:
                call = await start_call(engine, f"ended-{kind.value}")
                call.end(kind, f"ended: {kind.value}", tell_proxy=False)
            await trio.testing.wait_all_tasks_blocked()
            totals = engine.statistics(NgRequest("statistics", {}))["statistics"][
                "totalstatistics"]
            # Every reason, each once: the totals say why every call ended, as the metrics do.
            assert totals["endreasons"] == {kind.value: 1 for kind in EndReason}
            assert totals["endedsessions"] == len(EndReason)
            assert totals["timeoutsessions"] == totals["aifailures"] == 1
            nursery.cancel_scope.cancel()


def test_the_docs_name_every_end_reason():
    docs = Path(__file__).parent.parent / "docs"
    for page in ("ng-protocol.md", "operations.md"):
        text = (docs / page).read_text()
        assert [kind.value for kind in EndReason if f"{kind.value}," not in text
                and f"{kind.value} " not in text and f"`{kind.value}`" not in text] == [], page


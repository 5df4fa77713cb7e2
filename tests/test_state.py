"""Explicit state (STYLE.md rule 2): the transition-table helper (media/state.py), the machines
built on it, and calls counted by why they ended (the kind, never the reason's text)."""

from __future__ import annotations

import enum

import pytest
import trio

from ctl.call import CALL_TRANSITIONS, CallState
from ctl.engine import Engine
from media.bridge import EndReason
from media.state import IllegalTransition, Machine, Transitions
from openai_flavor.session import SESSION_TRANSITIONS, SessionState
from openai_flavor.turns import IllegalTransition as ResponseOutOfOrder
from openai_flavor.turns import Turns
from openai_flavor.websocket import WS_TRANSITIONS, ConnectionClosed, Link, WebSocket
from tests.fakes.engine import handle
from tests.fakes.realtime import FakeRealtimeServer
from tests.test_media_engine import DEAD_AI, config, offer, request
from tests.test_websocket import start_server


class Light(enum.Enum):
    RED = "red"
    GREEN = "green"
    AMBER = "amber"


LIGHTS = Transitions("light", {
    Light.RED: {Light.GREEN},
    Light.GREEN: {Light.AMBER},
    Light.AMBER: {Light.RED},
})


# --- the helper -----------------------------------------------------------------------------


def test_legal_transitions_move_the_machine():
    light = Machine(LIGHTS, Light.RED)
    for state in (Light.GREEN, Light.AMBER, Light.RED):
        assert light.can(state)
        light.to(state)
        assert light.state is state


def test_an_illegal_transition_raises_naming_both_states_and_leaves_the_state():
    light = Machine(LIGHTS, Light.RED, "the light at the corner")
    assert not light.can(Light.AMBER)
    with pytest.raises(IllegalTransition, match=r"^the light at the corner: red -> amber$") as err:
        light.to(Light.AMBER)
    assert (err.value.current, err.value.new) == (Light.RED, Light.AMBER)
    assert light.state is Light.RED
    with pytest.raises(IllegalTransition, match="^light: red -> red$"):  # no implicit self-loop
        Machine(LIGHTS, Light.RED).to(Light.RED)


def test_a_table_must_give_every_state_a_row():
    with pytest.raises(ValueError, match="light: no row for amber"):
        Transitions("light", {Light.RED: {Light.GREEN}, Light.GREEN: {Light.RED}})


def test_a_machine_may_raise_its_own_subclass():
    class OutOfOrder(IllegalTransition):
        pass

    table = Transitions("light", {s: set() for s in Light}, error=OutOfOrder)
    with pytest.raises(OutOfOrder):
        Machine(table, Light.RED).to(Light.GREEN)


def test_the_machines_tables():
    call = Machine(CALL_TRANSITIONS, CallState.OFFERED)
    call.to(CallState.ACTIVE)
    with pytest.raises(IllegalTransition, match="call: active -> offered"):
        call.to(CallState.OFFERED)
    session = Machine(SESSION_TRANSITIONS, SessionState.CONNECTING)
    for state in (SessionState.RECONNECTING, SessionState.RECONNECTING, SessionState.OPEN,
                  SessionState.RECONNECTING, SessionState.OPEN, SessionState.CLOSED):
        session.to(state)
    with pytest.raises(IllegalTransition, match="AI session: closed -> failed"):
        session.to(SessionState.FAILED)
    ws = Machine(WS_TRANSITIONS, Link.OPEN)
    ws.to(Link.CLOSING)
    ws.to(Link.CLOSED)
    ws.to(Link.FAILED)  # output queued before the end may still fail to go out
    with pytest.raises(IllegalTransition, match="WebSocket: failed -> open"):
        ws.to(Link.OPEN)


def test_the_response_phase_raises_its_own_subclass():
    # The session drops an event that breaks the response lifecycle as malformed: it catches
    # this subclass only, so a bug in another machine is never taken for a server's fault.
    turns = Turns(ptime_ms=20, bytes_per_ms=8)
    with pytest.raises(ResponseOutOfOrder, match="^response phase: listening -> listening$"):
        turns.response_done("r0")
    assert issubclass(ResponseOutOfOrder, IllegalTransition)


def test_the_session_states_are_the_statistics_strings():
    # Pinned by docs/ng-protocol.md and the SIGUSR1 line: an enum, and the same words.
    assert [s.value for s in SessionState] == ["connecting", "open", "reconnecting", "closed",
                                               "failed"]
    assert SessionState.OPEN == "open" and f"{SessionState.FAILED}" == "failed"


# --- the machines in place ------------------------------------------------------------------


@pytest.mark.trio
async def test_an_ended_call_and_its_failed_session_refuse_to_move_back():
    async with trio.open_nursery() as nursery:
        engine = Engine(config(OPENAI_URL=DEAD_AI))
        await nursery.start(engine.run)
        await offer(engine, "dead-ai", address="127.0.0.1")
        call = engine.calls["dead-ai"]
        await call.ended.wait()
        assert call.state is CallState.ENDED and call.end_kind is EndReason.AI_FAILED
        with pytest.raises(IllegalTransition, match="^call dead-ai: ended -> active$"):
            call._lifecycle.to(CallState.ACTIVE)
        assert call.ai.state is SessionState.FAILED
        with pytest.raises(IllegalTransition,
                           match="^AI session of call dead-ai: failed -> open$"):
            call.ai._state.to(SessionState.OPEN)
        # The AI failure is counted as one, by its kind, once the proxy deletes the call.
        handle(engine, request("delete", **{"call-id": "dead-ai"}))
        assert engine.totals["ai failures"] == 1 and engine.totals["timeouts"] == 0
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_websocket_closed_by_the_server_sends_nothing_more_and_stays_closed():
    async def handler(request):
        ws = await request.accept()
        await ws.aclose(1000, "bye")

    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, handler)
        ws = await WebSocket.connect(url, [])
        assert ws.state is Link.OPEN and ws.send_text("hello")
        with pytest.raises(ConnectionClosed), trio.fail_after(5):
            await ws.receive()
        # The close was echoed (OPEN -> CLOSING) and the end recorded, as data beside it.
        assert ws.state is Link.CLOSED and (ws.closed.code, ws.closed.reason) == (1000, "bye")
        assert not ws.send_text("too late")
        with pytest.raises(IllegalTransition, match="^WebSocket: closed -> closing$"):
            ws._link.to(Link.CLOSING)
        await ws.aclose()
        assert ws.state is Link.CLOSED
        nursery.cancel_scope.cancel()


# --- counting by kind -----------------------------------------------------------------------


@pytest.mark.trio
async def test_a_reason_that_merely_reads_like_another_kind_is_not_counted_as_it():
    """The text is for people: a delete whose detail starts "media timeout", a model hang-up
    whose detail starts "AI session failed" (a prefix test counted both), and a media timeout
    whose detail does not (which it missed), are each counted by their kind."""
    server = FakeRealtimeServer(respond_after_ms=None)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        engine = Engine(config(OPENAI_URL=url))
        await nursery.start(engine.run)
        for call_id in ("a", "b", "c"):
            await offer(engine, call_id, address="127.0.0.1")
        await trio.sleep(0)  # the calls' tasks start
        engine.calls["a"].end(EndReason.DELETED, "media timeout (says the proxy)",
                              tell_proxy=False)
        assert engine.totals["ended"] == 1 and engine.totals["timeouts"] == 0
        engine.calls["b"].hang_up(EndReason.MODEL_HUNG_UP, "AI session failed to please")
        engine.calls["c"].hang_up(EndReason.MEDIA_TIMEOUT, "no RTP for a while")
        for call_id in ("b", "c"):
            reply = handle(engine, request("delete", **{"call-id": call_id}))
            assert reply["rtpai"]["end reason"] in ("AI session failed to please",
                                                    "no RTP for a while")
        assert engine.totals["ended"] == 3
        assert engine.totals["timeouts"] == 1 and engine.totals["ai failures"] == 0
        nursery.cancel_scope.cancel()

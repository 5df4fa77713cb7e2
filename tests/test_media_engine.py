"""The media plane through the Engine: ports, hold and re-offers, NAT, IPv6, timeout, MOS.

ng handlers are called directly (the ng codec has its own tests); sockets are real, on
loopback. SDP-in/SDP-out pairs use RFC 5737 documentation addresses wherever no packet has to
reach the address.
"""

from __future__ import annotations

import random
import socket
import struct

import pytest
import trio
import trio.testing

from ctl.call import CallState
from ctl.config import load_config
from ctl.engine import Engine
from ctl.ng import NgError, NgRequest
from media.rtcp import build_report
from media.sdp import parse_sdp
from tests.fakes.engine import handle, reply_of
from tests.fakes.realtime import FakeRealtimeServer

DEAD_AI = "ws://127.0.0.1:9/v1/realtime"  # refused at once: every call's AI fails quickly


def config(**env):
    return load_config(
        None,
        environ={
            "NG_LISTEN": "127.0.0.1:0",
            "RTP_MIN_PORT": "43000",
            "RTP_MAX_PORT": "43099",
            "OPENAI_URL": DEAD_AI,
            "OPENAI_API_KEY": "test-key",
            # An unreachable AI ends its call at once: no reconnect attempts in these tests.
            "OPENAI_RECONNECT_TIMEOUT": "0",
            **env,
        },
    )


def request(command, **params):
    return NgRequest(command, params)


def offer_sdp(address="192.0.2.10", port=40000, *, family="IP4", direction="sendrecv", extra=""):
    return (
        "v=0\r\n"
        f"o=phone 1 1 IN {family} {address}\r\n"
        "s=-\r\n"
        f"c=IN {family} {address}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 96\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:96 telephone-event/8000\r\n"
        "a=fmtp:96 0-16\r\n"
        "a=ptime:20\r\n"
        f"{extra}"
        f"a={direction}\r\n"
    )


async def offer(engine, call_id, sdp=None, **kw):
    reply = reply_of(handle(engine, request("offer", **{"call-id": call_id, "from-tag": "ft",
                                                      "sdp": sdp or offer_sdp(**kw)})))
    return reply["sdp"]


def answer_port(sdp_text):
    return parse_sdp(sdp_text).media[0].port


# --- ports --------------------------------------------------------------------------------------


async def test_ports_exhausted_then_reused_after_delete():
    server = FakeRealtimeServer(respond_after_ms=None)  # the AI stays up: calls hold ports
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        engine = Engine(config(RTP_MIN_PORT="43000", RTP_MAX_PORT="43005", OPENAI_URL=url))
        await nursery.start(engine.run)
        ports = {answer_port(await offer(engine, f"c{n}")) for n in range(3)}
        assert ports == {43000, 43002, 43004}  # even RTP ports; RTCP 43001/3/5 inside the range
        with pytest.raises(NgError, match="^Ran out of ports$"):
            await offer(engine, "c3")
        deleted = engine.calls["c1"]
        handle(engine, request("delete", **{"call-id": "c1"}))  # answered at once ...
        await deleted.ended.wait()  # ... its ports are free once its sockets are closed
        assert answer_port(await offer(engine, "c4")) in ports
        nursery.cancel_scope.cancel()


class FailingAI:
    """A Realtime endpoint that accepts connections and holds them, answering nothing, until
    the test makes it fail: then it drops every connection, current and new, until it
    recovers. Calls' AI failures thus happen when the test says, not when a race decides."""

    def __init__(self) -> None:
        self.failing = False
        self._dropped = trio.Event()
        self._held: list[trio.SocketStream] = []

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(f"ws://127.0.0.1:{port}/v1/realtime")
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            while not self.failing:
                await self._dropped.wait()

    def fail(self) -> None:
        self.failing = True
        self._dropped.set()
        self._dropped = trio.Event()

    def recover(self) -> None:
        self.failing = False


async def test_port_churn_through_the_engine_frees_every_port_on_every_exit_path():
    """Two thousand calls through four port pairs, ending by delete, by AI failure, by
    delete of an already-ended call, and finally by engine shutdown: no pair is ever handed
    out twice while held, and every port is free afterwards."""
    rng = random.Random(4)
    ai = FailingAI()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(ai.serve)
            engine = Engine(config(RTP_MIN_PORT="43100", RTP_MAX_PORT="43107", OPENAI_URL=url))
            await nursery.start(engine.run)
            live: dict[str, int] = {}  # calls not deleted yet, by call-id: their RTP port

            def held() -> list[int]:
                # A call that ended by itself has already released its pair; the others hold.
                return [port for c, port in live.items()
                        if engine.calls[c].state is not CallState.ENDED]

            refused = 0
            for n in range(2000):
                call_id = f"churn-{n}"
                try:
                    port = answer_port(await offer(engine, call_id))
                except NgError as exc:
                    assert str(exc) == "Ran out of ports"
                    assert len(held()) == engine.ports.capacity  # only when truly full
                    refused += 1
                else:
                    assert port not in held(), "a held pair was handed out twice"
                    assert port % 2 == 0 and 43100 <= port <= 43106
                    live[call_id] = port
                assert engine.ports.in_use == len(held())
                if live and rng.random() < 0.6:
                    victim = rng.choice(list(live))
                    if rng.random() < 0.5:
                        call = engine.calls[victim]
                        ai.fail()  # every held call's AI connection drops
                        await call.ended.wait()  # the AI failed: the call ended by itself
                        ai.recover()
                        assert call.end_reason.startswith("AI session failed")
                    deleted = engine.calls[victim]
                    handle(engine, request("delete", **{"call-id": victim}))
                    await deleted.ended.wait()  # its ports are free once it has closed
                    del live[victim]
                if rng.random() < 0.1:
                    await trio.testing.wait_all_tasks_blocked()  # let AI failures land
                    assert engine.ports.in_use == len(held())
            assert 0 < refused < 2000  # the range ran out, and recovered, many times
            assert engine.totals["calls"] == 2000 - refused
            nursery.cancel_scope.cancel()  # engine shutdown ends whatever is left
    assert engine.ports.in_use == 0
    for port in range(43100, 43108):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", port))


# --- hold and re-offers: SDP in, SDP out ---------------------------------------------------------


def media_lines(sdp_text):
    lines = sdp_text.split("\r\n")
    return [line for line in lines if line.startswith(("o=", "c=", "m=", "a="))]


@pytest.mark.parametrize(
    "change, answer_direction, sending, caller_sends, answer_changes",
    [
        ({"direction": "sendonly"}, "recvonly", False, True, True),  # hold: music on hold to us
        ({"direction": "inactive"}, "inactive", False, False, True),
        # RFC 2543 hold: our answer reads the same (sendrecv, our address), so its o= version
        # stays (RFC 3264 s.8: it changes only when the SDP does); the stream still stops.
        ({"address": "0.0.0.0"}, "sendrecv", False, False, False),
        ({"direction": "recvonly"}, "sendonly", True, False, True),
    ],
)
async def test_hold_reoffer_answers_in_kind_and_keeps_the_ports(
    change, answer_direction, sending, caller_sends, answer_changes
):
    server = FakeRealtimeServer(respond_after_ms=None)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        engine = Engine(config(OPENAI_URL=url, RTP_IP="203.0.113.5"))
        await nursery.start(engine.run)
        first = await offer(engine, "hold")
        port = answer_port(first)
        assert media_lines(first)[1:] == [
            "c=IN IP4 203.0.113.5",
            f"m=audio {port} RTP/AVP 0 96",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:96 telephone-event/8000",
            "a=fmtp:96 0-16",
            "a=ptime:20",
            "a=sendrecv",
        ]
        call = engine.calls["hold"]
        assert call.stream.sending and call.stream.caller_sends

        held = await offer(engine, "hold", **change)
        lines = media_lines(held)
        version = 2 if answer_changes else 1
        assert lines[0].split()[:3] == media_lines(first)[0].split()[:2] + [str(version)]
        assert f"m=audio {port} RTP/AVP 0 96" in lines and lines[-1] == f"a={answer_direction}"
        assert engine.calls["hold"] is call and call.media.local_port == port
        assert (call.stream.sending, call.stream.caller_sends) == (sending, caller_sends)

        # A retransmitted re-offer gets the same answer; resuming restores both directions.
        assert await offer(engine, "hold", **change) == held
        resumed = await offer(engine, "hold")
        assert media_lines(resumed)[-1] == "a=sendrecv"
        assert f" {version + 1 if answer_changes else 1} IN IP4" in media_lines(resumed)[0]
        assert call.stream.sending and call.stream.caller_sends
        assert call.stream.remote == ("192.0.2.10", 40000)
        nursery.cancel_scope.cancel()


async def test_advertised_address_differs_from_the_bound_one_for_nat():
    server = FakeRealtimeServer(respond_after_ms=None)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        engine = Engine(config(OPENAI_URL=url, RTP_IP="203.0.113.5", RTP_BIND_IP="127.0.0.1"))
        await nursery.start(engine.run)
        answer = parse_sdp(await offer(engine, "nat"))
        assert answer.connection_address == "203.0.113.5"
        assert answer.origin.address == "203.0.113.5"
        rtp_socket = engine.calls["nat"].stream.rtp_socket
        assert rtp_socket.getsockname() == ("127.0.0.1", answer.media[0].port)
        nursery.cancel_scope.cancel()


async def test_ipv6_offer_answered_on_ipv6_and_media_latches():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = FakeRealtimeServer(respond_after_ms=None)
    caller = trio.socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        await caller.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with caller, trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine = Engine(config(OPENAI_URL=url, RTP_BIND_IP="::1"))
            await nursery.start(engine.run)
            caller_port = caller.getsockname()[1]
            answer = await offer(engine, "v6", address="::1", port=caller_port, family="IP6")
            assert "c=IN IP6 ::1\r\n" in answer and "o=rtpai " in answer
            port = answer_port(answer)
            call = engine.calls["v6"]
            rtp = struct.pack("!BBHII", 0x80, 0, 1, 160, 0xABC) + b"\xff" * 160
            await caller.sendto(rtp, ("::1", port))
            await call.bridge.media_started.wait()
            assert call.stream.latch.latched == ("::1", caller_port)
            data, source = await caller.recvfrom(2048)  # our paced RTP comes back over v6
            assert source[:2] == ("::1", port) and len(data) == 12 + 160
            nursery.cancel_scope.cancel()


# --- media timeout and statistics ----------------------------------------------------------------


async def test_media_timeout_ends_the_call_frees_ports_and_records_why(autojump_clock):
    server = FakeRealtimeServer(respond_after_ms=None)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        engine = Engine(config(OPENAI_URL=url, RTP_TIMEOUT="60"))
        await nursery.start(engine.run)
        port = answer_port(await offer(engine, "quiet", address="127.0.0.1"))
        call = engine.calls["quiet"]
        start = trio.current_time()
        await call.ended.wait()
        # 60 s, plus the bounded wait for the AI session's WebSocket close frame.
        assert trio.current_time() - start == pytest.approx(60, abs=0.1)
        assert call.end_reason == "media timeout (60 s without RTP)"
        assert engine.ports.in_use == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", port))
        deleted = handle(engine, request("delete", **{"call-id": "quiet"}))
        assert deleted["rtpai"]["end reason"] == "media timeout (60 s without RTP)"
        assert engine.totals["timeouts"] == 1
        nursery.cancel_scope.cancel()


async def test_query_carries_the_ssrc_mos_entries_kamailio_reads():
    server = FakeRealtimeServer(respond_after_ms=None)
    caller = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with caller, trio.fail_after(10):
        await caller.bind(("127.0.0.1", 0))
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine = Engine(config(OPENAI_URL=url))
            await nursery.start(engine.run)
            caller_port = caller.getsockname()[1]
            port = answer_port(await offer(engine, "mos", address="127.0.0.1", port=caller_port))
            call = engine.calls["mos"]
            for seq in range(5):
                header = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x5EED)
                await caller.sendto(header + b"\xff" * 160, ("127.0.0.1", port))
            await call.bridge.media_started.wait()
            sr = build_report(0x5EED, b"phone", [], sender=(1 << 32, 800, 5, 860))
            await caller.sendto(sr, ("127.0.0.1", port + 1))
            while call.stream.stats.rtcp_in.packets == 0 or call.stream.reorder.delivered < 5:
                await trio.sleep(0.001)
            call.stream.send_report()  # what the 5 s RTCP timer does
            reply = handle(engine, request("query", **{"call-id": "mos"}))
            stream = reply["tags"]["ft"]["medias"][0]["streams"][0]
            entry = reply["SSRC"][str(stream["SSRC"])]
            assert stream["SSRC"] == 0x5EED
            average = entry["average MOS"]
            assert set(average) == {"MOS", "round-trip time", "jitter", "packet loss", "samples"}
            assert average["samples"] == 1 and average["packet loss"] == 0
            assert 40 <= average["MOS"] <= 45
            assert reply["rtpai"]["lost"] == 0 and reply["totals"]["RTCP"]["packets"] == 1
            nursery.cancel_scope.cancel()


# --- DTMF to the AI session ----------------------------------------------------------------------


def item_texts(session):
    return [
        part["text"]
        for event in session.events_of("conversation.item.create")
        for part in event["item"]["content"]
        if part.get("type") == "input_text"
    ]


async def test_dtmf_reaches_the_ai_session_as_a_user_text_item():
    server = FakeRealtimeServer(respond_after_ms=None)
    caller = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with caller, trio.fail_after(10):
        await caller.bind(("127.0.0.1", 0))
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine = Engine(config(OPENAI_URL=url))
            await nursery.start(engine.run)
            port = answer_port(await offer(engine, "dtmf", address="127.0.0.1",
                                           port=caller.getsockname()[1]))
            session = await server.wait_for_session(1)
            seq = 0
            for n, event in enumerate((4, 2, 11)):  # "4", "2", "#", on the offer's PT 96
                for duration, end in ((0, 0), (160, 0), (320, 0x80), (320, 0x80), (320, 0x80)):
                    payload = struct.pack("!BBH", event, end | 10, duration)
                    header = struct.pack("!BBHII", 0x80, 96, seq, 8000 * n, 0xD7)
                    await caller.sendto(header + payload, ("127.0.0.1", port))
                    seq += 1
            await session.wait_until(lambda s: len(item_texts(s)) >= 1)
            # The AI session sends a key sequence as one message; # ends it.
            assert item_texts(session) == [
                "[The caller pressed these keys on the phone keypad: 42#]",
            ]
            assert not [e for e in session.server_events if e.get("type") == "error"]
            stats = handle(engine, request("query", **{"call-id": "dtmf"}))
            assert stats["rtpai"]["dtmf"] == 3
            nursery.cancel_scope.cancel()


async def test_delete_delay_is_a_deadline_of_the_calls_own(autojump_clock):
    """delete-delay: the statistics now, the call queryable meanwhile, its end at the deadline.
    The wait is a deadline on the call's own scope: no task in the engine nursery, nothing of
    the call that could outlive it."""
    server = FakeRealtimeServer(respond_after_ms=None)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        engine = Engine(config(OPENAI_URL=url))
        await nursery.start(engine.run)
        await offer(engine, "later")
        call = engine.calls["later"]
        await trio.testing.wait_all_tasks_blocked()
        assert engine._calls_nursery is not None
        engine_tasks = len(engine._calls_nursery.child_tasks)
        start = trio.current_time()
        reply = handle(engine, request("delete", **{"call-id": "later", "delete-delay": 30}))
        assert reply["rtpai"]["state"] == "offered"
        assert len(engine._calls_nursery.child_tasks) == engine_tasks
        await trio.sleep(29)
        assert handle(engine, request("query", **{"call-id": "later"}))["rtpai"]["state"] == "offered"
        await call.ended.wait()
        assert trio.current_time() - start == pytest.approx(30, abs=0.1)
        assert call.end_reason == "deleted by the proxy (after 30 s delay)"
        assert engine.calls.call_ids() == [] and engine.totals["ended"] == 1
        assert engine.ports.in_use == 0
        nursery.cancel_scope.cancel()

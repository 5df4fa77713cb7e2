"""The pool of pre-bound RTP/RTCP pairs ([rtp] port_pool, ctl/rtp_ports.py): pairs of the range
like any other -- same ports, same exhaustion, nothing left bound after the engine stops -- and
what reached a pooled pair before its call is not the call's."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from ctl.ng import NgError, NgRequest
from ctl.rtp_ports import PortBinder
from media.ports import PortPairAllocator
from media.sdp import parse_sdp
from tests.fakes.engine import engine_for_test, handle, reply_of
from tests.fakes.realtime import FakeRealtimeServer

LOW, HIGH = 43600, 43619  # ten pairs

SDP = (
    "v=0\r\no=phone 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
)


def offer(engine, call_id: str) -> int:
    reply = reply_of(handle(engine, NgRequest(
        "offer", {"call-id": call_id, "from-tag": "ft", "sdp": SDP})))
    return parse_sdp(reply["sdp"]).media[0].port


def all_bindable(low: int, high: int) -> None:
    for port in range(low, high + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", port))


async def test_a_burst_larger_than_the_pool_is_served_from_the_range_and_nothing_leaks():
    server = FakeRealtimeServer(respond_after_ms=None)  # the AI stays up: calls hold ports
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        engine = engine_for_test(url, RTP_MIN_PORT=str(LOW), RTP_MAX_PORT=str(HIGH),
                                 RTP_PORT_POOL="3")
        await nursery.start(engine.run)
        # Bound ahead, but free: not "in use" in statistics or metrics.
        assert engine.ports.pooled == 3 and engine.ports.in_use == 0
        assert engine.statistics(None)["statistics"]["currentstatistics"]["portsinuse"] == 0
        # Seven offers in one go (no refill can run between them): three from the pool,
        # four bound inline, all distinct even ports of the range.
        ports = [offer(engine, f"burst-{n}") for n in range(7)]
        assert len(set(ports)) == 7
        assert all(port % 2 == 0 and LOW <= port < HIGH for port in ports)
        assert engine.ports.pooled == 0 and engine.ports.in_use == 7
        await trio.testing.wait_all_tasks_blocked()
        assert engine.ports.pooled == 3  # refilled after the burst, from the rest
        # The range ends where it ended without a pool: ten calls, the eleventh refused.
        ports += [offer(engine, f"more-{n}") for n in range(3)]
        with pytest.raises(NgError, match="^Ran out of ports$"):
            offer(engine, "one-too-many")
        assert engine.ports.in_use == 10 and engine.ports.pooled == 0
        deleted = engine.calls["burst-0"]
        handle(engine, NgRequest("delete", {"call-id": "burst-0"}))
        await deleted.ended.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert engine.ports.pooled == 1 and engine.ports.in_use == 9  # the freed pair, pooled
        assert offer(engine, "after-delete") == ports[0]
        deleted = engine.calls["burst-1"]
        handle(engine, NgRequest("delete", {"call-id": "burst-1"}))
        await deleted.ended.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert engine.ports.pooled == 1  # the engine stops with a pair in the pool
        nursery.cancel_scope.cancel()
    assert engine.ports.in_use == 0 and engine.ports.pooled == 0
    all_bindable(LOW, HIGH)  # the calls' pairs and the pool's: every port closed


async def test_a_port_taken_by_another_process_is_skipped_by_the_pool():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", LOW + 2))  # the second pair's RTP port
        binder = PortBinder(PortPairAllocator(LOW, LOW + 5), "127.0.0.1", pool=16)
        async with trio.open_nursery() as nursery:
            await nursery.start(binder.run)
            assert binder.pooled == 2  # three pairs in the range, one unbindable
            taken = {binder.bind()[0], binder.bind()[0]}
            assert taken == {LOW, LOW + 4}
            with pytest.raises(NgError, match="^Ran out of ports$"):
                binder.bind()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("bind_ip", ["127.0.0.1", "::1"])
async def test_what_reached_a_pooled_pair_before_its_offer_is_dropped(bind_ip):
    if ":" in bind_ip and not socket.has_ipv6:
        pytest.skip("no IPv6")
    family = socket.AF_INET6 if ":" in bind_ip else socket.AF_INET
    binder = PortBinder(PortPairAllocator(LOW, LOW + 1), bind_ip, pool=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(binder.run)
        assert binder.pooled == 1
        with socket.socket(family, socket.SOCK_DGRAM) as stray:
            # A former call's caller still sending: RTP and RTCP, queued on the pooled pair.
            for _ in range(3):
                stray.sendto(b"\x80\x00stale rtp", (bind_ip, LOW))
                stray.sendto(b"\x81\xc8stale rtcp", (bind_ip, LOW + 1))
            port, sockets = binder.bind()
            assert port == LOW
            assert [s.family for s in sockets] == [family, family]
            assert [s.getsockname()[1] for s in sockets] == [LOW, LOW + 1]
            for sock in sockets:
                with pytest.raises(BlockingIOError):
                    sock.recv(2048)  # nothing of before the offer
            stray.sendto(b"\x80\x00fresh", (bind_ip, LOW))
            await trio.lowlevel.wait_readable(sockets[0])
            assert sockets[0].recv(2048) == b"\x80\x00fresh"  # what comes after is the call's
        binder.unbind(port, sockets)
        nursery.cancel_scope.cancel()
    assert binder.ports.in_use == 0


async def test_without_a_pool_every_offer_binds_its_own_pair():
    binder = PortBinder(PortPairAllocator(LOW, HIGH), "127.0.0.1", pool=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(binder.run)
        assert binder.pooled == 0 and binder.ports.in_use == 0
        port, sockets = binder.bind()
        await trio.testing.wait_all_tasks_blocked()
        assert binder.pooled == 0 and binder.in_use == 1
        binder.unbind(port, sockets)
        nursery.cancel_scope.cancel()

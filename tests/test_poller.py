"""The engine's poller: one datagram per handler call, every waiting one in one wake-up."""

from __future__ import annotations

import socket

import pytest
import trio

from media.poller import MAX_ROUNDS, SocketPoller


@pytest.fixture
def sockets():
    made = []

    def make():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close()


def reader(sock, log, name=None):
    """A handler as the streams' are: one datagram per call."""
    name = sock.getsockname()[1] if name is None else name

    def handler(now):
        log.append((name, sock.recv(2048)))

    return handler


def clock():
    return 0.0


def test_every_waiting_datagram_is_taken_in_one_wake_up_round_robin(sockets):
    poller = SocketPoller()
    caller = sockets()
    log = []
    receivers = [sockets() for _ in range(3)]
    for n, sock in enumerate(receivers):
        poller.register(sock, reader(sock, log, n), lambda: None)
        for k in range(n + 1):  # 1, 2 and 3 datagrams waiting
            caller.sendto(b"%d" % k, sock.getsockname())
    poller.dispatch(clock)
    # Level-triggered: each round takes one datagram from every socket still readable.
    assert sorted(log[:3]) == [(0, b"0"), (1, b"0"), (2, b"0")]
    assert sorted(log[3:5]) == [(1, b"1"), (2, b"1")]
    assert log[5:] == [(2, b"2")]
    poller.dispatch(clock)  # nothing left: nothing called
    assert len(log) == 6


def test_the_clock_is_read_once_per_round_and_handed_to_each_handler(sockets):
    poller = SocketPoller()
    caller = sockets()
    times = iter([1.0, 2.0, 3.0])
    seen = []
    receivers = [sockets() for _ in range(2)]
    for n, sock in enumerate(receivers):
        poller.register(sock, lambda now, sock=sock, n=n: seen.append((n, now, sock.recv(9))),
                        lambda: None)
    for data in (b"a", b"b"):
        caller.sendto(data, receivers[0].getsockname())
    caller.sendto(b"c", receivers[1].getsockname())
    poller.dispatch(lambda: next(times))
    assert sorted(seen[:2]) == [(0, 1.0, b"a"), (1, 1.0, b"c")]
    assert seen[2:] == [(0, 2.0, b"b")]  # second round, second reading; no third round


def test_a_flooded_socket_yields_after_max_rounds_and_others_are_served(sockets):
    poller = SocketPoller()
    caller = sockets()
    flooded, quiet = sockets(), sockets()
    log = []
    poller.register(flooded, reader(flooded, log), lambda: None)
    poller.register(quiet, reader(quiet, log), lambda: None)
    for _ in range(MAX_ROUNDS + 10):
        caller.sendto(b"x", flooded.getsockname())
    caller.sendto(b"q", quiet.getsockname())
    poller.dispatch(clock)
    assert len(log) == MAX_ROUNDS + 1
    assert (quiet.getsockname()[1], b"q") in log
    poller.dispatch(clock)  # the next wake-up takes the rest
    assert len(log) == MAX_ROUNDS + 11


def test_a_handler_that_raises_is_dropped_and_its_owner_told(sockets):
    poller = SocketPoller()
    caller = sockets()
    good, bad = sockets(), sockets()
    log, failed = [], []

    def broken(now):
        raise RuntimeError("a bug")

    poller.register(good, reader(good, log), lambda: None)
    poller.register(bad, broken, lambda: failed.append(True))
    caller.sendto(b"a", good.getsockname())
    caller.sendto(b"b", bad.getsockname())
    poller.dispatch(clock)
    assert failed == [True] and len(poller) == 1
    assert log == [(good.getsockname()[1], b"a")]


async def test_registering_with_a_stopped_poller_is_harmless():
    """At shutdown a call's AI session may connect after the engine's poller has stopped."""
    poller = SocketPoller()
    async with trio.open_nursery() as nursery:
        await nursery.start(poller.run)
        nursery.cancel_scope.cancel()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        poller.register(sock, lambda now: None, lambda: None)
        poller.unregister(sock)
    assert len(poller) == 0

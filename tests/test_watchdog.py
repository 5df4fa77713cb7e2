"""The AI link's watchdog policy with time as plain numbers (openai_flavor/watchdog.py)."""

import math

from openai_flavor.watchdog import FLOOD_BURST, FLOOD_RATE, Bounds, Phase, Watchdog

BOUNDS = Bounds(session=5.0, response=10.0, ping_interval=0.0)


def test_setup_names_the_event_that_did_not_come():
    dog = Watchdog(BOUNDS, 100.0)
    assert dog.poll(100.0).wake_at == 105.0
    assert dog.poll(105.0).expired == "no session.created within 5 s"
    dog = Watchdog(BOUNDS, 100.0)
    dog.session_created()
    verdict = dog.poll(105.0)
    assert verdict.expired == "no session.updated within 5 s" and verdict.since == 100.0
    dog = Watchdog(BOUNDS, 100.0)
    dog.session_updated()
    dog.session_created()
    assert dog.phase is Phase.OPEN and dog.poll(105.0).expired is None


def open_dog(now=0.0, bounds=BOUNDS):
    dog = Watchdog(bounds, now)
    dog.session_created()
    dog.session_updated()
    return dog


def test_a_quiet_server_is_fine_until_a_response_is_expected():
    dog = open_dog()
    assert dog.poll(1000.0).expired is None and dog.poll(1000.0).wake_at == math.inf
    assert dog.expect_response(1000.0) is True  # the deadline moved earlier: poll again
    assert dog.expect_response(1001.0) is False  # already waiting: from the first
    assert dog.poll(1005.0).wake_at == 1010.0
    dog.heard(1008.0)  # progress: the silence is counted from here
    assert dog.poll(1010.0).wake_at == 1018.0
    verdict = dog.poll(1018.0)
    assert verdict.expired == "no response event within 10 s while a response was expected"
    assert verdict.since == 1008.0  # when the link stopped working, for the back-off


def test_a_settled_response_ends_the_wait():
    dog = open_dog()
    dog.expect_response(0.0)
    dog.response_settled()
    assert dog.poll(100.0).expired is None


def test_keepalive_needs_each_pong_before_the_next_ping():
    dog = open_dog(bounds=Bounds(session=5.0, response=10.0, ping_interval=5.0))
    first = dog.poll(5.0)
    assert first.ping is not None and first.wake_at == 10.0
    dog.pong(b"not ours", 6.0)  # an unsolicited or stale pong proves nothing
    verdict = dog.poll(10.0)
    assert verdict.expired == "no pong within 5 s" and verdict.since == 0.0
    dog = open_dog(bounds=Bounds(session=5.0, response=10.0, ping_interval=5.0))
    ping = dog.poll(5.0).ping
    dog.pong(ping, 5.001)
    second = dog.poll(10.0)
    assert second.expired is None and second.ping not in (None, ping)


def test_flood_bound_is_a_burst_and_a_rate():
    dog = open_dog()
    assert dog.frames(0.0, FLOOD_BURST)
    assert not dog.frames(0.0, 1)
    dog = open_dog()
    for second in range(60):  # a steady rate under the bound is never a flood
        assert dog.frames(float(second), int(FLOOD_RATE * 0.9))

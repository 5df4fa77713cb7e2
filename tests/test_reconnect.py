"""The reconnect back-off policy, with time as plain numbers."""

from openai_flavor.reconnect import STABLE_AFTER, Backoff


def test_first_retry_is_immediate_then_exponential_capped_and_bounded():
    policy = Backoff(20.0, jitter=lambda: 1.0)  # no jitter: the full step
    now = 100.0
    delays = []
    while (delay := policy.failed(now)) is not None:
        delays.append(delay)
        now += delay
    assert delays[:6] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert max(delays) == 8.0
    assert now == 120.0  # the last wait ends exactly at the window: never beyond it


def test_jitter_keeps_at_least_half_the_step():
    policy = Backoff(60.0, jitter=lambda: 0.0)
    assert [policy.failed(0.0) for _ in range(4)] == [0.0, 0.25, 0.5, 1.0]


def test_zero_window_gives_up_at_once():
    assert Backoff(0.0).failed(5.0) is None


def test_a_stable_connection_starts_a_fresh_series_a_flapping_one_does_not():
    policy = Backoff(20.0, jitter=lambda: 1.0)
    assert policy.failed(0.0) == 0.0
    policy.connected(0.0)
    assert policy.failed(1.0) == 0.5  # up for 1 s: the same series goes on
    policy.connected(2.0)
    assert policy.failed(2.0 + STABLE_AFTER) == 0.0  # up long enough: a fresh series
    policy.connected(13.0)
    assert policy.failed(14.0) == 0.5
    assert policy.failed(40.0) is None  # 20 s after the series began


def test_a_connection_that_went_silent_counts_as_stable_only_until_it_went_silent():
    policy = Backoff(20.0, jitter=lambda: 1.0)
    policy.connected(0.0)
    # Up 30 s, but silent since 2 s: not a stable connection, the series goes on from here.
    assert policy.failed(30.0, working_until=2.0) == 0.0
    policy.connected(30.0)
    assert policy.failed(45.0, working_until=31.0) == 0.5  # the same series
    policy.connected(46.0)
    assert policy.failed(56.0, working_until=47.0) is None  # 26 s after the series began
    # Working for 10 s before it went silent: a fresh series.
    policy = Backoff(20.0, jitter=lambda: 1.0)
    policy.connected(0.0)
    assert policy.failed(30.0, working_until=12.0) == 0.0
    policy.connected(31.0)
    assert policy.failed(60.0, working_until=45.0) == 0.0

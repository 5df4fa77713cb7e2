"""Fuzz of the ng codec and dispatcher, with a real Engine behind it (issue 11).

No exception escapes; every datagram with a cookie gets exactly one reply, with its cookie,
that decodes; none without one gets a reply; the engine's tables stay bounded. ``make fuzz``
(tests/fuzz_ng.py) runs the same checks over a million datagrams and against a real daemon.
"""

from __future__ import annotations

import random

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctl.dispatcher import MAX_ERROR_REASONS
from ctl.engine import UNSUPPORTED_COMMANDS
from ctl.ng import bencode
from ctl.reply_cache import REPLY_CACHE_MAX_BYTES
from tests.fuzz_ng import Datagram, fuzz_dispatcher, make_datagram

# Values as a peer could send them, bencode's and JSON's (texts with surrogates are JSON's).
_values = st.recursive(
    st.integers(-(2**80), 2**80) | st.text(max_size=40) | st.binary(max_size=40)
    | st.sampled_from(["offer", "delete", "query", "answer", "list", "ping", "statistics"]),
    lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(st.sampled_from(["call-id", "from-tag", "to-tag", "sdp", "flags",
                                       "delete-delay", "limit", "command", "x"]), inner,
                      max_size=6),
    max_leaves=30,
)


def _encoded(message, as_json: bool) -> bytes:
    import json

    if as_json:
        return json.dumps(message, default=lambda b: b.decode("latin-1")).encode(
            "utf-8", "surrogatepass")
    return bencode(message)


_generated = st.builds(
    lambda message, as_json, n: Datagram(b"h%d " % n + _encoded(message, as_json), b"h%d" % n),
    st.dictionaries(st.sampled_from(["command", "call-id", "from-tag", "sdp", "flags",
                                     "delete-delay", "limit", "profile"]), _values, max_size=6),
    st.booleans(),
    st.integers(0, 10**6),
)
_raw = st.builds(lambda body, n: Datagram(b"r%d " % n + body, b"r%d" % n),
                 st.binary(max_size=200), st.integers(0, 10**6))
_mutated = st.builds(lambda seed: make_datagram(random.Random(seed), seed),
                     st.integers(0, 2**32))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_generated | _raw | _mutated, min_size=1, max_size=25))
def test_every_datagram_is_answered_once_and_nothing_escapes(datagrams):
    tally, memory = trio.run(_run, datagrams)
    assert tally.crashes == 0, tally.crash_samples
    assert tally.unanswered == tally.bad_replies == tally.unexpected_replies == 0


async def _run(datagrams):
    return await fuzz_dispatcher(len(datagrams), 60.0, 0, quiet=True,
                                 datagram_source=iter(datagrams))


async def test_twenty_thousand_mutated_datagrams_leave_the_engine_answering_and_bounded():
    """CI's share of ``make fuzz``: bounded in time, so a slow machine sends fewer."""
    tally, memory = await fuzz_dispatcher(20_000, 10.0, seed=11, quiet=True)
    assert tally.sent >= 2_000
    assert tally.crashes == 0, tally.crash_samples
    assert tally.unanswered == tally.bad_replies == tally.unexpected_replies == 0
    assert set(tally.results) <= {"ok", "error", "pong", "load limit"}
    # Bounded tables: the reply cache by its budget, command names by the dispatch table,
    # error reasons by MAX_ERROR_REASONS ("other" and the internal ones besides), calls by ports.
    assert memory["reply cache bytes"][1] <= REPLY_CACHE_MAX_BYTES
    assert memory["command names"][1] <= 8 + len(UNSUPPORTED_COMMANDS)
    assert memory["error reasons"][1] <= MAX_ERROR_REASONS + 3
    assert memory["calls"][1] <= 200

"""ctl/host_wide.py on its own: the front's list/statistics against workers that stall."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import trio

from ctl.bencode import py_bdecode
from ctl.host_wide import GATHER_TIMEOUT, MAX_GATHERS, REASON_NO_ANSWER, HostWide

SOURCE = ("127.0.0.1", 5060)


class StalledSender:
    """A worker's channel whose buffer is full for good (the worker is SIGSTOPped)."""

    async def send(self, message: bytes) -> None:
        await trio.sleep_forever()


@dataclass
class StalledWorker:
    alive: bool = True
    sender: StalledSender = StalledSender()


async def test_a_worker_whose_channel_is_full_costs_a_gathering_its_bound_not_its_slot(
        autojump_clock):
    replies: list[bytes] = []

    async def send(datagram, source, pktinfo, copies):
        replies.append(datagram)

    host = HostWide([StalledWorker()], send, lambda reply: None, itertools.count())
    body = b"d7:command10:statisticse"
    with trio.fail_after(2 * (MAX_GATHERS + 4) * GATHER_TIMEOUT):
        async with trio.open_nursery() as nursery:
            # More than the gatherings allowed at once, one after the other: each must give
            # its slot back at the deadline, or the later ones would be dropped unanswered.
            for n in range(MAX_GATHERS + 4):
                started = trio.current_time()
                host.arrive(nursery, b"c%d" % n, body, SOURCE, b"")
                while len(replies) <= n:
                    await trio.sleep(GATHER_TIMEOUT / 10)
                assert trio.current_time() - started <= GATHER_TIMEOUT * 1.5
    assert host.dropped == 0
    for n, datagram in enumerate(replies):
        cookie, _, rest = datagram.partition(b" ")
        assert cookie == b"c%d" % n
        assert py_bdecode(rest) == {"result": "error", "error-reason": REASON_NO_ANSWER}

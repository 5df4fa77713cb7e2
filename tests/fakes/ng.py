"""The ng dispatcher driven without a socket, for tests and the fuzzer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ctl.dispatcher import Deferred, Dispatcher


async def handle(
    dispatcher: Dispatcher, cookie: bytes, body: bytes, source: Any, now: Callable[[], float]
) -> tuple[bytes, int]:
    """What the server does with one datagram: :meth:`Dispatcher.answer`, ``finish`` if the
    handler is async, and the follow-up work; returns the reply and how many times to send it."""
    outcome = dispatcher.answer(cookie, body, source, now())
    if isinstance(outcome, Deferred):
        outcome = await dispatcher.finish(outcome, source, now)
    dispatcher.follow_up(outcome)
    return outcome.datagram, outcome.copies

"""Waiting for the state of a real AI session (openai_flavor/session.py) in tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")

# Short enough that a test waits no longer than the event it waits for; on a MockClock
# (autojump) each poll moves time by this much at most, well within any bound a test checks.
POLL = 0.001


async def wait_until(session: T, predicate: Callable[[T], object]) -> None:
    """Block until ``predicate(session)`` holds, polling: the session keeps no hook for tests."""
    while not predicate(session):
        await trio.sleep(POLL)

"""Waiting for the state of a real AI session (openai_flavor/session.py) in tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class _Holds(trio.abc.Instrument):
    """Asks ``predicate`` after every task step of the run: state only changes in a task's
    step (the poller's callbacks included), so the first step after which it holds is seen,
    without a timer. ``held`` is set then (or if it raises: the waiter asks again, and
    raises in the test's own task)."""

    def __init__(self, predicate: Callable[[], object]) -> None:
        self._predicate = predicate
        self.held = trio.Event()

    def after_task_step(self, task: Any) -> None:
        if self.held.is_set():
            return
        try:
            holds = self._predicate()
        except Exception:
            holds = True
        if holds:
            self.held.set()


async def wait_until(session: T, predicate: Callable[[T], object]) -> None:
    """Block until ``predicate(session)`` holds: the session keeps no hook for tests, so the
    run's instrument hook asks after each task step (no 1 ms polling task: on a MockClock
    time jumps straight to the next deadline, as it would without the test waiting)."""
    while not predicate(session):
        holds = _Holds(lambda: predicate(session))
        trio.lowlevel.add_instrument(holds)
        try:
            await holds.held.wait()
        finally:
            trio.lowlevel.remove_instrument(holds)

"""Graceful shutdown (SIGTERM): refuse new calls, let the running ones finish, hang up the rest.

The engine refuses offers from the start of the drain (``load limit``: the proxy moves new
calls to another engine of its set); this module waits, bounded at every step, for what the
running calls still have to do.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from ctl.call import Call
from ctl.call_control import CallControl
from media.bridge import EndReason


async def drain(calls: Iterable[Call], grace: float, control: CallControl) -> None:
    """Let ``calls`` (the registry: read again at each step) finish for ``grace`` seconds,
    then end the rest, each asking the proxy to hang its caller up (``control``), and wait,
    bounded, for the calls to end and for those requests, sent or given up."""
    with trio.move_on_after(grace):
        for call in list(calls):
            await call.ended.wait()
    for call in list(calls):
        call.end(EndReason.SHUTDOWN, "engine shutdown")
    # One request's worst case (its retries), plus a second for the calls' own closing.
    with trio.move_on_after(control.longest_request + 1):
        for call in list(calls):
            await call.ended.wait()
        for done in list(control.under_way):
            await done.wait()

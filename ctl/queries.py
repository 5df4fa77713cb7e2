"""The read-only ng commands -- ``query``, ``list``, ``statistics`` -- and the statistics a
``delete`` answers with: replies read from the registry and the counters, changing nothing.

The wire shapes are ctl/replies.py's; this module picks the call a request names and the
instant the figures are taken at.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from ctl import gcstats, replies
from ctl.call import Call, CallState
from ctl.ng import REASON_UNKNOWN_CALL, NgError
from ctl.ng_requests import CallSelector, ListRequest
from ctl.registry import CallRegistry

if TYPE_CHECKING:
    from ctl.dispatcher import Dispatcher
    from ctl.rtp_ports import PortBinder
    from media.bridge import EndReason


def call_statistics(call: Call, *, parties: bool = True) -> dict[str, Any]:
    """The query/delete reply for ``call``, as of now."""
    return replies.call_statistics(call, wall=time.time(), now=trio.current_time(),
                                   parties=parties)


def select(calls: CallRegistry[Call], select: CallSelector) -> list[Call]:
    """The calls a request's call-id, via-branch and tags name."""
    return calls.select(
        select.call_id, branch=select.branch, from_tag=select.from_tag, to_tag=select.to_tag
    )


def query(calls: CallRegistry[Call], request: CallSelector) -> dict[str, Any]:
    selected = select(calls, request)
    if selected:
        return call_statistics(selected[0])
    # As rtpengine: a known call-id with tags naming nobody lists no party.
    others = calls.select(request.call_id)
    if not others:
        raise NgError(REASON_UNKNOWN_CALL)
    return call_statistics(others[0], parties=False)


def list_calls(calls: CallRegistry[Call], request: ListRequest) -> dict[str, Any]:
    return {"calls": calls.call_ids()[: request.limit]}


def active_calls(calls: CallRegistry[Call]) -> int:
    """The calls not yet ended (``sessionsown``; ``[ng] max_sessions`` counts these)."""
    return sum(1 for call in calls if call.state is not CallState.ENDED)


def statistics(
    calls: CallRegistry[Call],
    *,
    started: float,
    ports: PortBinder,
    rtp: Mapping[str, Any],
    totals: dict[str, int],
    ended_by: Mapping[EndReason, int],
    dispatcher: Dispatcher,
    recording: dict[str, int] | None = None,
    cdr: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """The engine's counters, and the cycle collector's when it is monitored."""
    gc_figures = gcstats.monitor.snapshot() if gcstats.monitor is not None else {}
    return replies.engine_statistics(
        wall=time.time(), gc=gc_figures, started=started, sessions_own=active_calls(calls),
        sessions_total=len(calls), ports=ports, rtp=rtp, totals=totals, ended_by=ended_by,
        dispatcher=dispatcher,
        recording=recording or {}, cdr=cdr or {},
    )


def state_line(calls: CallRegistry[Call], ports: PortBinder, requests_under_way: int,
               draining: bool) -> str:
    """The SIGUSR1 line: calls by state, ports in use, AI sessions by state, requests to the
    proxy under way."""
    states: dict[str, int] = {}
    ai: dict[str, int] = {}
    for call in calls:
        states[call.state.value] = states.get(call.state.value, 0) + 1
        if call.state is not CallState.ENDED:
            ai[call.ai.state] = ai.get(call.ai.state, 0) + 1

    def counts(table: dict[str, int]) -> str:
        return ", ".join(f"{n} {name}" for name, n in sorted(table.items())) or "none"

    return (
        f"calls: {counts(states)}; ports in use: {ports.in_use}/{ports.capacity} "
        f"pairs; AI sessions: {counts(ai)}; proxy requests under way: "
        f"{requests_under_way}{'; draining' if draining else ''}"
    )

"""``rtpai-ctl top``: the engine's calls as a live table, refreshed like ``top``.

Everything comes over ng, as for the other commands (``statistics``, ``list``, then a
``query`` per call), so ``top`` works against any rtpai an operator can reach, and needs
nothing the proxy does not have. The screen is drawn with curses (the standard library's:
it knows the terminal, its size and its resizes); ``q`` quits. ``--once`` prints one frame
to stdout instead, for scripts and for terminals without curses.

The frame itself is :func:`render`: a pure function of the replies, the time and the width,
tested without a terminal.
"""

from __future__ import annotations

import contextlib
import curses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Queries for a screenful must not freeze the screen when the engine is gone: one short try
# and one retransmit each (the proxies' 1 s x 5 is for commands that change state).
QUERY_INTERVAL = 0.3
QUERY_RETRANSMITS = 1

COLUMNS = ("CALL-ID", "STATE", "AGE", "CODEC", "RX", "TX", "LOST", "MOS", "AI", "LATENCY",
           "TOKENS", "COST")


@dataclass
class Frame:
    """One refresh's replies: the engine's statistics and each listed call's query."""

    statistics: dict[str, Any] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    error: str | None = None  # the engine did not answer
    taken_at: float = 0.0


def fetch(send: Callable[..., dict[str, Any]], *, limit: int) -> Frame:
    """The replies for one frame; ``send(command, params)`` is the ng client's."""
    frame = Frame(taken_at=time.time())
    try:
        frame.statistics = send("statistics", {}).get("statistics") or {}
        listing = send("list", {"limit": limit})
        for call_id in listing.get("calls") or []:
            frame.calls.append((call_id, send("query", {"call-id": call_id})))
    except Exception as exc:  # NgClientError, OSError, a bad reply: shown, and tried again
        frame.error = str(exc) or type(exc).__name__
    return frame


def _age(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}"


def _mos(reply: dict[str, Any]) -> str:
    """The lowest average MOS of the call's streams (rtpengine's SSRC entries), e.g. 4.3."""
    averages = [entry["average MOS"]["MOS"] for entry in (reply.get("SSRC") or {}).values()
                if isinstance(entry, dict) and entry.get("average MOS")]
    return f"{min(averages) / 10:.1f}" if averages else "-"


def _latency(ai: dict[str, Any]) -> str:
    """The AI's last response latency (speech stopped -> first audio to the caller), if the
    session reports one."""
    latency = ai.get("response latency ms")
    if isinstance(latency, dict):
        latency = latency.get("last")
    return f"{latency:.0f}ms" if isinstance(latency, int | float) else "-"


def call_row(call_id: str, reply: dict[str, Any], now: float) -> tuple[str, ...]:
    if reply.get("result") != "ok":
        return (call_id, "gone", *("-" for _ in COLUMNS[2:]))
    ours = reply.get("rtpai") or {}
    ai = ours.get("ai") or {}
    usage = ai.get("usage") or {}
    cost = ai.get("cost") or {}
    return (
        call_id,
        str(ours.get("state", "?")),
        _age(now - reply.get("created", now)),
        f"{ours.get('codec', '?')}/{ours.get('ptime', '?')}",
        str((ours.get("rtp in") or {}).get("packets", 0)),
        str((ours.get("rtp out") or {}).get("packets", 0)),
        str(ours.get("lost", 0)),
        _mos(reply),
        str(ai.get("state", "-")),
        _latency(ai),
        str(usage.get("total_tokens", 0)),
        f"${cost['usd']:.4f}" if isinstance(cost.get("usd"), int | float) else "-",
    )


def render(frame: Frame, *, width: int, address: str) -> list[str]:
    """The lines of one frame, each at most ``width`` characters."""
    stats = frame.statistics
    current = stats.get("currentstatistics") or {}
    totals = stats.get("totalstatistics") or {}
    clock = time.strftime("%H:%M:%S", time.localtime(frame.taken_at))
    lines = [
        f"rtpai top - {address} - {clock} - q quits",
        f"calls {current.get('sessionsown', '?')} active, {totals.get('managedsessions', '?')} "
        f"since start, ports {current.get('portsinuse', '?')}/"
        f"{current.get('portscapacity', '?')}, AI failures {totals.get('aifailures', '?')}",
    ]
    if frame.error:
        lines.append(f"no answer: {frame.error}")
    rows = [COLUMNS, *(call_row(call_id, reply, frame.taken_at)
                       for call_id, reply in frame.calls)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    widths[0] = min(widths[0], 36)  # long call-ids are cut, the figures are what matter
    lines.append("")
    for row in rows:
        cells = [cell[:w].ljust(w) for cell, w in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return [line[:width] for line in lines]


def run_curses(send: Callable[..., dict[str, Any]], *, address: str, interval: float,
               limit: int) -> int:
    # The terminal's size from the terminal, not from $LINES/$COLUMNS: a shell or a tool may
    # have exported them at another size, and they do not follow a resize. (ncurses'
    # use_env(False) is not that: it would take terminfo's fixed 80x24.)
    os.environ.pop("LINES", None)
    os.environ.pop("COLUMNS", None)
    return curses.wrapper(_loop, send, address, interval, limit)


def _loop(screen: Any, send: Callable[..., dict[str, Any]], address: str, interval: float,
          limit: int) -> int:
    with contextlib.suppress(curses.error):  # a terminal that cannot hide its cursor
        curses.curs_set(0)
    screen.timeout(100)  # key presses are read between refreshes, every 100 ms
    frame: Frame | None = None
    due = 0.0
    while True:
        if time.monotonic() >= due:
            frame = fetch(send, limit=limit)
            due = time.monotonic() + interval
            _draw(screen, frame, address)
        key = screen.getch()
        if key in (ord("q"), ord("Q")):
            return 0
        if key == curses.KEY_RESIZE and frame is not None:
            curses.update_lines_cols()
            _draw(screen, frame, address)


def _draw(screen: Any, frame: Frame, address: str) -> None:
    height, width = screen.getmaxyx()
    screen.erase()
    for y, line in enumerate(render(frame, width=max(width - 1, 1), address=address)[:height]):
        attribute = curses.A_BOLD if y == 0 or line.startswith("CALL-ID") else curses.A_NORMAL
        with contextlib.suppress(curses.error):  # the terminal shrank: the resize redraws
            screen.addnstr(y, 0, line, max(width - 1, 1), attribute)
    screen.refresh()

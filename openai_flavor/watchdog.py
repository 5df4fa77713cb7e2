"""How long each phase of a Realtime connection may take, sans-IO (time is an argument).

One :class:`Watchdog` per WebSocket connection, from the 101 to its end. The session tells it
what happened (a server message, a pong, a response asked for or finished) with the time it
happened; :meth:`Watchdog.poll` says whether a bound has expired (the reason, for the log and
the call's end reason), whether a keepalive ping is due, and when to ask again. The session's
watch task sleeps until then: a single timer per connection, re-armed lazily (a server event
only records its time; nothing is rescheduled per event).

The bounds (``[openai]`` settings, docs/reliability.md):

* ``session_timeout``: ``session.created`` must arrive within it of the 101, and
  ``session.updated`` within it of our ``session.update`` (sent right after the 101);
* ``response_timeout``: while a response is expected (we sent ``response.create``; the
  server's VAD committed the caller's turn; a response is in progress) the server may not
  go longer than this without an event that makes progress (VAD events, errors and rate
  limits do not: a server that hears the caller and never answers is mute too);
* ``ping_interval``: a keepalive ping goes out this often, and its pong must be back before
  the next one is due. It catches a server that stopped reading when nothing else would (the
  caller silent, the model listening): the kernel's buffers take minutes of caller audio
  before our own back-pressure bound would see it;
* a flood bound: at most :data:`FLOOD_BURST` frames at once and :data:`FLOOD_RATE` a second
  on average, so that parsing one connection's flood cannot hold up every call's media.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass

# Frames a connection may bring in a burst, and per second on average (a token bucket). A real
# server sends a few hundred events a second at most (audio and transcript deltas, faster than
# real time); one frame costs the engine a few microseconds, so a burst is ~10 ms of work.
FLOOD_BURST = 4000
FLOOD_RATE = 2000.0

_PING = struct.Struct("!Q")


class Phase(enum.Enum):
    SETUP = "setup"  # waiting for session.created and session.updated
    OPEN = "open"  # configured: the conversation runs


@dataclass(frozen=True)
class Bounds:
    session: float = 5.0
    response: float = 10.0
    ping_interval: float = 5.0  # 0: no keepalive


@dataclass(frozen=True)
class Verdict:
    expired: str | None  # why the connection must be given up, or None
    since: float  # when the link stopped working (for the reconnect policy)
    ping: bytes | None  # a keepalive ping to send now, or None
    wake_at: float  # when to poll again (inf: only when told something changed)


class Watchdog:
    # Slots (issue 16's per-call cost): one per call; nothing assigns others.
    __slots__ = (
        "_last_pong", "_next_ping", "_ping_payload", "_ping_sent_at", "_pings", "_tokens",
        "_tokens_at", "bounds", "created", "expecting_since", "last_heard", "opened_at", "phase",
        "updated",
    )

    def __init__(self, bounds: Bounds, now: float) -> None:
        self.bounds = bounds
        self.phase = Phase.SETUP
        self.opened_at = now
        self.created = False
        self.updated = False
        self.last_heard = now
        self.expecting_since: float | None = None
        self._pings = 0
        self._ping_sent_at: float | None = None  # the outstanding ping, if any
        self._ping_payload: bytes | None = None
        self._last_pong = now
        self._next_ping = now + bounds.ping_interval if bounds.ping_interval else math.inf
        self._tokens = float(FLOOD_BURST)
        self._tokens_at = now

    # --- what happened ----------------------------------------------------------------------

    def frames(self, now: float, count: int) -> bool:
        """Server frames arrived (pings and pongs too); False past the flood bound."""
        tokens = min(FLOOD_BURST, self._tokens + (now - self._tokens_at) * FLOOD_RATE)
        self._tokens_at = now
        self._tokens = tokens - count
        return self._tokens >= 0

    def heard(self, now: float) -> None:
        """The server made progress towards a response (an event other than VAD, errors,
        rate limits; not a pong: a server that answers pings but never the caller is mute)."""
        self.last_heard = now

    def session_created(self) -> None:
        self.created = True
        self._maybe_open()

    def session_updated(self) -> None:
        self.updated = True
        self._maybe_open()

    def _maybe_open(self) -> None:
        if self.created and self.updated:
            self.phase = Phase.OPEN

    def expect_response(self, now: float) -> bool:
        """A response is due; True if this starts the wait (the deadline moved earlier)."""
        if self.expecting_since is None:
            self.expecting_since = now
            return True
        return False

    def response_settled(self) -> None:
        """The response is done and no other is due: the server may be quiet now."""
        self.expecting_since = None

    def pong(self, payload: bytes, now: float) -> None:
        if payload == self._ping_payload:
            self._ping_sent_at = None
            self._ping_payload = None
            self._last_pong = now

    # --- what to do ---------------------------------------------------------------------------

    def poll(self, now: float) -> Verdict:
        bounds = self.bounds
        if self.phase is Phase.SETUP:
            deadline = self.opened_at + bounds.session
            if now >= deadline:
                missing = "session.created" if not self.created else "session.updated"
                return Verdict(f"no {missing} within {bounds.session:g} s", self.opened_at,
                               None, math.inf)
            wake_at = deadline
        else:
            wake_at = math.inf
            if self.expecting_since is not None:
                quiet_from = max(self.last_heard, self.expecting_since)
                deadline = quiet_from + bounds.response
                if now >= deadline:
                    return Verdict(
                        f"no response event within {bounds.response:g} s while a response "
                        "was expected", quiet_from, None, math.inf)
                wake_at = deadline
        ping = None
        if now >= self._next_ping:
            if self._ping_sent_at is not None:
                return Verdict(f"no pong within {bounds.ping_interval:g} s", self._last_pong,
                               None, math.inf)
            self._pings += 1
            ping = self._ping_payload = _PING.pack(self._pings)
            self._ping_sent_at = now
            self._next_ping = now + bounds.ping_interval
        return Verdict(None, now, ping, min(wake_at, self._next_ping))

"""When to retry a lost Realtime connection and when to give up, sans-IO (time is an argument).

The call stays up while rtpai reconnects; the caller hears whatever was already queued, then
silence. The first retry is immediate: most losses (the 60-minute session cap, a dropped
TCP connection) are over at once. Later ones back off exponentially with jitter, so that a
provider outage does not meet every call's retry at the same instant. Past ``window`` seconds
of failing, the call is ended.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# A connection that stayed up this long was healthy: its loss starts a fresh series. A server
# that accepts and then drops every connection at once must not be retried forever.
STABLE_AFTER = 10.0


class Backoff:
    # Slots (issue 16's per-call cost): one per call; nothing assigns others.
    __slots__ = ("attempt", "base", "cap", "connected_at", "failing_since", "jitter", "window")

    def __init__(
        self,
        window: float,
        *,
        base: float = 0.5,
        cap: float = 8.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.window = window
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.attempt = 0
        self.failing_since: float | None = None
        self.connected_at: float | None = None

    def connected(self, now: float) -> None:
        """A session is up and configured."""
        self.connected_at = now

    def failed(self, now: float, *, working_until: float | None = None) -> float | None:
        """The connection was lost (or never made): seconds to wait, or None to give up.

        ``working_until``: when the link last did its job, if that was before ``now`` (a
        watchdog expiry: the server went silent, a keepalive went unanswered). Only that
        time counts towards the connection having been stable, so a server that accepts,
        configures and then never answers cannot keep a call retrying forever.
        """
        up_until = now if working_until is None else min(now, working_until)
        if self.connected_at is not None and up_until - self.connected_at >= STABLE_AFTER:
            self.attempt = 0
            self.failing_since = None
        self.connected_at = None
        if self.failing_since is None:
            self.failing_since = now
        remaining = self.failing_since + self.window - now
        if remaining <= 0:
            return None
        if self.attempt == 0:
            delay = 0.0
        else:
            full = min(self.cap, self.base * 2 ** (self.attempt - 1))
            delay = full * (0.5 + self.jitter() / 2)  # "equal jitter": at least half the step
        self.attempt += 1
        return min(delay, remaining)

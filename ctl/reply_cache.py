"""The ng retransmit cache, sans-IO: a retransmitted request is answered, never run twice.

Time is passed in; nothing here does I/O. The dispatcher (ctl/dispatcher.py) owns one.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class _Pending:
    """Marks a request being handled; counts the duplicates that arrived meanwhile."""

    __slots__ = ("duplicates",)

    def __init__(self) -> None:
        self.duplicates = 0


# What one cached reply costs besides its bytes: the dictionary entry, the (time, reply) tuple
# and the time (~170 bytes, measured with tracemalloc), and the key it holds on to, the source
# address and the cookie (~200 bytes with a proxy's ~30-byte cookie; cookies are at most
# ctl.ng's MAX_COOKIE_LENGTH, so the worst case adds 20,000 x 226 bytes, ~4.5 MB, beyond the
# budget).
REPLY_CACHE_ENTRY_OVERHEAD = 400
# The cache's bytes, overhead included. A retransmit comes at most ~6 s after the original
# (both proxy modules: 5 retries, 1 s apart), so the cache must hold 6 s of replies: at ~1.5 KB
# per entry on average (an offer's reply is ~0.4 KB, a delete's, with the call's statistics,
# ~1.8 KB, plus the overhead above), 10 MiB hold ~7000 entries, 7 s of 1000 commands a second,
# i.e. 500 calls set up and torn down every second, far beyond what one rtpai handles (see
# docs/performance.md). Without it the 20,000 entries of ``max_entries`` could take ~44 MB.
REPLY_CACHE_MAX_BYTES = 10 << 20


class ReplyCache:
    """Replies by (source address, cookie), so a retransmit never runs a command twice.

    Both proxy modules resend the same datagram after 1 s, up to 5 times; rtpengine keeps
    replies for 30-60 s. We keep them ``ttl`` seconds (45 by default: past the modules' last
    retry with margin), and at most ``max_entries`` of them taking at most ``max_bytes`` (the
    oldest go first; see REPLY_CACHE_MAX_BYTES), so memory is bounded whatever a peer sends.
    Time is passed in, never read here.
    """

    def __init__(
        self,
        *,
        ttl: float = 45.0,
        max_entries: int = 20_000,
        max_bytes: int = REPLY_CACHE_MAX_BYTES,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0  # what the entries take, REPLY_CACHE_ENTRY_OVERHEAD each included
        # key -> (inserted_at, _Pending | bytes); insertion order is time order.
        self._entries: OrderedDict[tuple[Any, bytes], tuple[float, _Pending | bytes]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _size(state: _Pending | bytes) -> int:
        if isinstance(state, _Pending):
            return REPLY_CACHE_ENTRY_OVERHEAD
        return REPLY_CACHE_ENTRY_OVERHEAD + len(state)

    def _put(self, key: tuple[Any, bytes], state: _Pending | bytes, now: float) -> None:
        self._entries[key] = (now, state)
        self.bytes += self._size(state)

    def _pop(self, key: tuple[Any, bytes]) -> tuple[float, _Pending | bytes] | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= self._size(entry[1])
        return entry

    def _expire(self, now: float, room: int = 0) -> None:
        """Drop expired entries, and the oldest ones until ``room`` more (pending) fit."""
        entries = self._entries
        while entries:
            key, (inserted_at, _) = next(iter(entries.items()))
            if (
                now - inserted_at < self.ttl
                and len(entries) + room <= self.max_entries
                and self.bytes + room * REPLY_CACHE_ENTRY_OVERHEAD <= self.max_bytes
            ):
                break
            self._pop(key)

    def begin(self, key: tuple[Any, bytes], now: float) -> bytes | None | bool:
        """Start handling ``key``.

        Returns ``True`` when the request is new and must be handled; cached reply bytes when
        it was answered already (send them again); ``None`` when the first copy is still being
        handled (its reply will be sent once more for this duplicate by :meth:`complete`).
        """
        entry = self._entries.get(key)
        if entry is not None and now - entry[0] >= self.ttl:
            entry = None
        if entry is None:
            self._expire(now, room=1)
            self._pop(key)
            self._put(key, _Pending(), now)
            return True
        state = entry[1]
        if isinstance(state, _Pending):
            state.duplicates += 1
            return None
        return state

    def complete(self, key: tuple[Any, bytes], reply: bytes, now: float) -> int:
        """Store the reply; returns how many duplicates arrived while it was being made.

        A reply larger than ``max_bytes`` on its own is not kept.
        """
        entry = self._pop(key)
        duplicates = entry[1].duplicates if entry and isinstance(entry[1], _Pending) else 0
        self._put(key, reply, now)
        self._expire(now)
        return duplicates

    def forget(self, key: tuple[Any, bytes]) -> None:
        """Drop ``key`` (a request begun and then not handled: its retransmit is new)."""
        self._pop(key)

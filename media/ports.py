"""RTP/RTCP port pairs, sans-IO: which even ports of the range are free.

RFC 3550 section 11: RTP on an even port, RTCP on the odd port above it. The search starts at a
random pair and then goes round the range, so ports cannot be predicted by someone who wants
to inject media (and a restarted engine does not reuse the ports of calls that just ended).
"""

from __future__ import annotations

import secrets


class PortsExhausted(Exception):
    """Every pair of the range is held."""


class PortPairAllocator:
    def __init__(self, min_port: int, max_port: int) -> None:
        first = min_port + (min_port & 1)  # round up to even
        last = max_port - 1  # the RTCP port (rtp + 1) must still be inside the range
        if first > last:
            raise ValueError(f"no even/odd port pair fits in {min_port}..{max_port}")
        self._first = first
        self._pairs = (last - first) // 2 + 1
        self._in_use: set[int] = set()
        self._cursor = secrets.randbelow(self._pairs)

    @property
    def capacity(self) -> int:
        return self._pairs

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    def allocate(self) -> int:
        """Reserve the next free pair; returns its even RTP port."""
        for _ in range(self._pairs):
            port = self._first + 2 * self._cursor
            self._cursor = (self._cursor + 1) % self._pairs
            if port not in self._in_use:
                self._in_use.add(port)
                return port
        raise PortsExhausted

    def release(self, rtp_port: int) -> None:
        self._in_use.discard(rtp_port)

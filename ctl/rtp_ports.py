"""The RTP/RTCP port pairs an offer binds: reserved from ``[rtp]``'s range, bound on
``[rtp] bind_ip``, given back when no call takes them over.

Binding a pair (two sockets, two ``bind``) was a tenth of an offer's time in the daemon, so up
to ``[rtp] port_pool`` pairs are bound ahead, by :meth:`PortBinder.run` (a task of the engine
nursery), and an offer takes one; when the pool is empty it binds inline as before. A pooled
pair is a pair of the range like any other: the range holds as many calls with a pool as
without, and "Ran out of ports" comes at the same call. Pairs are never reused: a call's
sockets are closed when it ends and its ports go back to the range; a fresh pair is bound for
the pool later (the range's cursor goes round, so not soon the same ports).
"""

from __future__ import annotations

import collections
import errno
import logging
import select
import socket

import trio

from ctl.ng import REASON_NO_PORTS, NgError
from media.ports import PortPairAllocator, PortsExhausted
from media.stream import MAX_DATAGRAM, bind_pair

log = logging.getLogger("rtpai.engine")

# Binding retries when another process holds a port of our range.
BIND_ATTEMPTS = 16
# Datagrams read and dropped from a pooled pair's sockets before a call takes it: more than a
# socket's default receive buffer holds of RTP (what a stray sender could have queued).
MAX_STRAYS = 512

Pair = tuple[socket.socket, socket.socket]


class PortBinder:
    """Binds pairs from ``ports`` (the allocator that counts them) on ``bind_ip``, and keeps up
    to ``pool`` of them bound ahead (while :meth:`run` runs)."""

    def __init__(self, ports: PortPairAllocator, bind_ip: str, *, pool: int = 0) -> None:
        self.ports = ports
        self.bind_ip = bind_ip
        self.pool_size = pool
        self._pool: collections.deque[tuple[int, Pair]] = collections.deque()
        self._wanted = trio.Event()  # set when the pool may be refilled: a take, a release
        self._running = False
        self._failing: str | None = None  # why the last refill could not bind, if it could not

    @property
    def capacity(self) -> int:
        return self.ports.capacity

    @property
    def in_use(self) -> int:
        """Pairs held by calls (the pool's are free for the next offers, not counted)."""
        return self.ports.in_use - len(self._pool)

    @property
    def pooled(self) -> int:
        return len(self._pool)

    def bind(self) -> tuple[int, Pair]:
        """A pair for a new call, from the pool if it has one: its RTP port and its (RTP,
        RTCP) sockets. Raises :class:`NgError` with the reason the proxy gets."""
        if self._pool:
            port, sockets = self._pool.popleft()
            self._wanted.set()
            _drop_strays(sockets)
            return port, sockets
        return self._bind_new()

    def _bind_new(self) -> tuple[int, Pair]:
        """Reserve a pair and bind it. A port taken by another process is skipped."""
        for _ in range(BIND_ATTEMPTS):
            try:
                port = self.ports.allocate()
            except PortsExhausted:
                raise NgError(REASON_NO_PORTS) from None
            try:
                return port, bind_pair(self.bind_ip, port)
            except OSError as exc:
                self.ports.release(port)
                if exc.errno != errno.EADDRINUSE:
                    raise NgError(f"Cannot bind RTP port: {exc.strerror}") from None
        raise NgError(REASON_NO_PORTS)

    def unbind(self, rtp_port: int, sockets: Pair) -> None:
        """Give back a pair that no call took over (closed, not pooled again)."""
        for sock in sockets:
            sock.close()
        self.release(rtp_port)

    def release(self, rtp_port: int) -> None:
        """A call's pair is closed: its ports are free again, maybe for the pool."""
        self.ports.release(rtp_port)
        if self._running and len(self._pool) < self.pool_size:
            self._wanted.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the pool full while the range has free pairs; on the way out (the engine
        stops) close the pooled pairs and give their ports back."""
        self._running = True
        try:
            while len(self._pool) < self.pool_size and self._bind_one():
                pass  # at start-up, before the first offer can come
            task_status.started()
            while True:
                await self._wanted.wait()
                self._wanted = trio.Event()
                # One pair per scheduler pass: after a burst of offers emptied the pool, the
                # media clock's ticks and the next replies go between the binds.
                while len(self._pool) < self.pool_size and self._bind_one():
                    await trio.lowlevel.checkpoint()
        finally:
            self._running = False
            while self._pool:
                self.unbind(*self._pool.pop())

    def _bind_one(self) -> bool:
        """Bind a pair into the pool; False when none can be (a release wakes the task)."""
        try:
            self._pool.append(self._bind_new())
        except NgError as exc:
            if exc.reason != REASON_NO_PORTS and exc.reason != self._failing:
                # Not the range being full: said once (an offer's inline bind then reports
                # it to the proxy, as without a pool).
                log.warning("RTP port pool: %s", exc.reason)
            self._failing = exc.reason
            return False
        self._failing = None
        return True


def _drop_strays(sockets: Pair) -> None:
    """Read away what reached a pooled pair before its call existed (a former call's caller
    still sending to these ports): the call sees only what arrives after its offer, as with
    a pair bound for it. One poll(2) for both sockets (usually nothing is there) instead of a
    failing recv on each."""
    waiting = select.poll()
    for sock in sockets:
        waiting.register(sock, select.POLLIN)
    for fd, _ in waiting.poll(0):
        sock = sockets[0] if sockets[0].fileno() == fd else sockets[1]
        for _ in range(MAX_STRAYS):
            try:
                sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError:
                continue  # a queued ICMP error: nothing for the call either

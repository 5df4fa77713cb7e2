"""One receive wake-up for every call's sockets: an epoll set owned by the engine.

With a task per call waiting in ``trio.lowlevel.wait_readable`` on its own socket, every
packet costs a task switch and an ``epoll_ctl`` (trio re-arms a socket's registration each
time a task waits on it). Here every call's RTP and RTCP sockets sit in one level-triggered
``select.epoll``; one task waits for that epoll's descriptor to be readable (trio watches it
like any socket) and then, for each ready socket, calls its handler synchronously. Packets
arriving together for many calls (a 1 ms burst) cost one wake-up.

The AI sessions' WebSocket sockets sit here too (openai_flavor/reader.py): the poller knows
nothing of what a socket carries, only whom to call. For TCP a handler takes one read.

A handler takes **one** datagram and the poller asks epoll again until no socket is ready:
level-triggered, a socket with more waiting is simply reported again. A handler that drained
its socket instead would end every turn with a ``recvfrom`` that fails with EAGAIN, and
Python turns that into a ``BlockingIOError`` (with its message decoded from the locale):
~1.2 us and ~8 800 instructions per packet at one packet per socket and wake-up, which is the
usual case, against one empty ``epoll_wait`` (~0.3 us) per wake-up for all of them. The price
is paid by a socket with a backlog (a burst after a stall, a flood): an ``epoll_wait`` per
datagram after its first in a wake-up, and no more than ``MAX_ROUNDS`` of them.

Linux only (epoll), as rtpai's deployments are.
"""

from __future__ import annotations

import logging
import select
import socket
from collections.abc import Callable

import trio

log = logging.getLogger("rtpai.media")

# Ready sockets taken per round. Sockets not taken this round are reported again in the next.
MAX_EVENTS = 256
# Rounds per wake-up: a socket flooded with datagrams gives up at most this many before the
# clock (and every other task) gets its turn; every other ready socket is served in each round.
MAX_ROUNDS = 64


class SocketPoller:
    """Calls ``handler(now)`` whenever a registered socket has something to read.

    Named for what it does, not for one of its users: it reads every call's RTP and RTCP
    sockets and every AI session's WebSocket alike (it was ``MediaPoller``).

    A handler should take one datagram (or the error that made the socket readable) per call;
    it is called again, in the same wake-up, while its socket stays readable. ``now`` is the
    trio time the round of ready sockets was polled: their datagrams' arrival time, as near as
    we can tell (the clock is read once per round, not per datagram: ~1 000 instructions
    each, and a datagram handled late in a round did not arrive any later).
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        # fd -> (handler, on_failure); unregistered before the socket is closed, so a reused
        # descriptor number never reaches an old call's handler.
        self._handlers: dict[int, tuple[Callable[[float], None], Callable[[], None]]] = {}
        self.wakeups = 0

    def __len__(self) -> int:
        return len(self._handlers)

    def register(self, sock: socket.socket, handler: Callable[[float], None],
                 on_failure: Callable[[], None]) -> None:
        """Call ``handler(now)`` when ``sock`` is readable; ``on_failure`` if it raises."""
        if self._epoll.closed:
            # The poller has stopped: the engine is shutting down, and its nursery is
            # cancelling every call (one may still be connecting its AI session).
            return
        fd = sock.fileno()
        self._epoll.register(fd, select.EPOLLIN)
        self._handlers[fd] = (handler, on_failure)

    def unregister(self, sock: socket.socket) -> None:
        """Stop watching ``sock`` (before it is closed)."""
        fd = sock.fileno()
        # At shutdown the poller may have stopped (and closed its epoll) before the calls.
        if self._handlers.pop(fd, None) is not None and not self._epoll.closed:
            self._epoll.unregister(fd)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Dispatch readiness until cancelled. Runs in the engine nursery."""
        epoll = self._epoll
        task_status.started()
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                self.wakeups += 1
                self.dispatch(trio.current_time)
        finally:
            trio.lowlevel.notify_closing(epoll.fileno())
            epoll.close()

    def dispatch(self, clock: Callable[[], float]) -> None:
        """One wake-up's work, synchronous: call the handler of every readable socket, and
        again while any stays readable (at most ``MAX_ROUNDS`` times); ``clock()`` is read
        once per round."""
        poll = self._epoll.poll
        handlers = self._handlers
        for _ in range(MAX_ROUNDS):
            ready = poll(0, MAX_EVENTS)
            if not ready:
                return
            now = clock()
            for fd, _ in ready:
                entry = handlers.get(fd)
                if entry is None:
                    continue  # unregistered by an earlier handler in this round
                try:
                    entry[0](now)
                except Exception:
                    # One call's bug must not stop every call's media: drop it, end it.
                    log.exception("socket poller: a socket handler failed")
                    handlers.pop(fd, None)
                    self._epoll.unregister(fd)
                    entry[1]()


# The old name, for ctl/, openai_flavor/ and bench/, which other work is restructuring now;
# media/ and tests/ use SocketPoller. Remove once those have moved.
MediaPoller = SocketPoller

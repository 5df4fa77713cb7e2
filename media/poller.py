"""One receive wake-up for every call's sockets: an epoll set owned by the engine.

With a task per call waiting in ``trio.lowlevel.wait_readable`` on its own socket, every
packet costs a task switch and an ``epoll_ctl`` (trio re-arms a socket's registration each
time a task waits on it). Here every call's RTP and RTCP sockets sit in one level-triggered
``select.epoll``; one task waits for that epoll's descriptor to be readable (trio watches it
like any socket) and then, for each ready socket, calls its handler synchronously, which drains
it. Packets arriving together for many calls (a 1 ms burst) cost one wake-up.

Linux only (epoll), as rtpai's deployments are.
"""

from __future__ import annotations

import logging
import select
import socket
from collections.abc import Callable

import trio

log = logging.getLogger("rtpai.media")

# Ready sockets taken per wake-up. Level-triggered: sockets not taken this time (and sockets a
# handler did not drain, see BATCH_LIMIT in stream.py) are reported again at once.
MAX_EVENTS = 256


class MediaPoller:
    """Calls ``handler()`` whenever a registered socket has datagrams waiting."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        # fd -> (handler, on_failure); unregistered before the socket is closed, so a reused
        # descriptor number never reaches an old call's handler.
        self._handlers: dict[int, tuple[Callable[[], None], Callable[[], None]]] = {}
        self.wakeups = 0

    def __len__(self) -> int:
        return len(self._handlers)

    def register(self, sock: socket.socket, handler: Callable[[], None],
                 on_failure: Callable[[], None]) -> None:
        """Call ``handler`` when ``sock`` is readable; ``on_failure`` if the handler raises."""
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
                self.dispatch()
        finally:
            trio.lowlevel.notify_closing(epoll.fileno())
            epoll.close()

    def dispatch(self) -> None:
        """One wake-up's work, synchronous: call the handler of every readable socket."""
        epoll = self._epoll
        handlers = self._handlers
        for fd, _ in epoll.poll(0, MAX_EVENTS):
            entry = handlers.get(fd)
            if entry is None:
                continue  # unregistered by an earlier handler in this batch
            try:
                entry[0]()
            except Exception:
                # One call's bug must not stop every call's media: drop it, end it.
                log.exception("media poller: a socket handler failed")
                handlers.pop(fd, None)
                epoll.unregister(fd)
                entry[1]()

"""Reading one connection's server events: from the engine's poller to the conversation.

The socket sits in the engine's poller (media/poller.py) beside every call's RTP sockets,
which calls :meth:`EventReader._readable` when data is there: no task switch and no epoll
re-arm per read, as with a task waiting on the socket. :meth:`EventReader.run` only waits
for the connection's end, and raises it.

What goes wrong in here is the AI session's, never the poller's: a flood of frames ends the
connection; a malformed event is counted and dropped; a fatal error event
(:class:`ConnectionLost` from the handler) ends it; and any other failure while handling an
event (a bug) is logged as this call's AI session's and ends the connection, which the
session reopens, so that the poller, which serves every call's media, never sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import trio

from media.poller import MediaPoller
from openai_flavor import events
from openai_flavor.errors import ConnectionLost, api_name
from openai_flavor.stats import RealtimeStats
from openai_flavor.turns import IllegalTransition
from openai_flavor.watchdog import FLOOD_BURST, FLOOD_RATE, Watchdog
from openai_flavor.websocket import WebSocket

log = logging.getLogger("rtpai.openai")

INTERNAL_ERROR = "internal error while handling the server's events"


class EventReader:
    """Hands each decoded server event to ``handle(event, now)``, synchronously."""

    # Slots (issue 16's per-call cost): one per call; nothing assigns others.
    __slots__ = ("_call_id", "_ended", "_handle", "_poller", "_stats", "_stop", "_watchdog", "_ws")

    def __init__(self, ws: WebSocket, poller: MediaPoller, watchdog: Watchdog,
                 stats: RealtimeStats, handle: Callable[[dict[str, Any], float], None],
                 call_id: str) -> None:
        self._ws = ws
        self._poller = poller
        self._watchdog = watchdog
        self._stats = stats
        self._handle = handle
        self._call_id = call_id
        self._ended = trio.Event()
        self._stop: Exception | None = None

    async def run(self, watch: Callable[[trio.Event], Awaitable[None]] | None = None,
                  ) -> NoReturn:
        """Read until the connection ends; raise what ended it (ConnectionClosed or
        :class:`ConnectionLost`).

        The task only waits for the end (the poller reads): ``watch(ended)``, if given, is
        that wait, done by the connection's watchdog (conversation.py ``_watch``), which
        returns once ``ended`` is set or raises ConnectionLost when a bound expires. One
        task for both instead of two (issue 16's per-call cost)."""
        ws = self._ws
        self._poller.register(ws.socket, self._readable, self._poller_dropped)
        try:
            self._readable(trio.current_time())  # events that came with the 101
            if watch is None:
                await self._ended.wait()
            else:
                await watch(self._ended)
        finally:
            self._poller.unregister(ws.socket)
        # Taken off the reader before it is raised: a raised exception's traceback holds
        # this frame, and so the reader (a reference cycle per call otherwise, issue 18).
        why, self._stop = self._stop, None
        assert why is not None
        try:
            raise why
        finally:
            del why

    def _readable(self, now: float) -> None:
        """The poller's call: what one read brought, event by event."""
        if self._ended.is_set():
            return
        try:
            self._read(now)
        except Exception:
            # A bug in handling this call's events: this session's, not the poller's.
            log.exception("call %s: AI session: failed to handle %s events; this "
                          "connection ends", self._call_id, api_name(self._stats.dialect))
            self._stop_reading(ConnectionLost(INTERNAL_ERROR))

    def _read(self, now: float) -> None:
        ws = self._ws
        frames = ws.frames_received
        messages, ended = ws.read_ready()
        frames = ws.frames_received - frames
        if frames:
            dog = self._watchdog
            if not dog.frames(now, frames):
                # Parsing it would hold up every call's media in the poller: give it up.
                self._stop_reading(ConnectionLost(
                    f"a flood of server frames (more than {FLOOD_BURST} at once or "
                    f"{FLOOD_RATE:g} a second)"))
                return
            if ws.pong is not None:
                dog.pong(ws.pong, now)
                ws.pong = None
            if ws.binary_dropped:
                self._stats.malformed_events += ws.binary_dropped
                ws.binary_dropped = 0
        try:
            for message in messages:
                try:
                    self._handle(events.decode_event(message), now)
                except (ValueError, IllegalTransition) as exc:
                    # ValueError: not JSON, not an event, or events.MalformedEvent.
                    self._malformed(exc)
        except ConnectionLost as lost:
            # Handed on from inside the handler, which forgets `lost` as it ends: a local
            # holding it would keep this frame (in its traceback) and the reader in a cycle.
            self._stop_reading(lost)
            return
        if ended is not None:
            self._stop_reading(ended)

    def _malformed(self, exc: Exception) -> None:
        """A server event that makes no sense: counted and dropped, the call goes on."""
        stats = self._stats
        stats.malformed_events += 1
        if stats.malformed_events <= 3 or log.isEnabledFor(logging.DEBUG):
            log.warning("call %s: dropped a malformed %s event (%s; %d so far)",
                        self._call_id, api_name(stats.dialect), type(exc).__name__,
                        stats.malformed_events)

    def _poller_dropped(self) -> None:
        """The poller dropped the socket after ``_readable`` raised (it catches everything,
        so only a failure in its own logging): end this connection."""
        self._stop_reading(ConnectionLost(INTERNAL_ERROR))

    def _stop_reading(self, why: Exception) -> None:
        self._poller.unregister(self._ws.socket)  # level-triggered: an end stays readable
        self._stop = why
        self._ended.set()

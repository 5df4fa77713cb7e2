"""The front's answers for the whole host (``list``, ``statistics``): gathered from every live
worker, merged (ctl/routing.py), and kept by cookie for the proxy's retransmits.

A proxy that misses a reply sends the same datagram again (both modules: after 1 s, up to 5
times). A worker answers its retransmits from its own reply cache (ctl/reply_cache.py); the
front answers these two commands itself, so it keeps their replies too, in a cache of its own:
a retransmit of a ``statistics`` whose reply was lost gets the very reply the proxy missed (the
same figures, not a second gathering from every worker), and one that arrives while the first
copy is still being gathered is answered when it is done, once per copy, as a worker does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol

import trio

from ctl.channel import ChannelClosed, Envelope, Kind, Sender, pack
from ctl.dispatcher import REASON_INTERNAL
from ctl.ng import NgError, decode_reply, decode_request, encode_reply
from ctl.reply_cache import ReplyCache
from ctl.routing import merge_lists, merge_statistics

log = logging.getLogger("rtpai.front")

# How long `list`/`statistics` wait for each worker's part (the proxy modules wait 1 s).
GATHER_TIMEOUT = 0.5
# Host-wide requests under way at once; more are dropped (the proxy asks again).
MAX_GATHERS = 16
# The front's reply cache. Host-wide commands come from monitoring, a few a second at most
# (a proxy sends none unless its script asks): 1024 replies hold minutes of them, and 4 MiB
# bounds them whatever their size (a `list` of 20,000 call-ids is ~0.5 MB; a reply too large
# for one datagram is an error of a few bytes). The ttl is the workers' (ReplyCache's).
HOST_WIDE_CACHE_ENTRIES = 1024
HOST_WIDE_CACHE_BYTES = 4 << 20
# Answered when no worker is up, or none answered in time: the host cannot speak for its calls.
REASON_NO_WORKER = "no rtpai worker is running"
REASON_NO_ANSWER = "no rtpai worker answered in time"


class Worker(Protocol):
    alive: bool
    sender: Sender | None


Send = Callable[[bytes, tuple[str, int], bytes, int], Awaitable[None]]


class HostWide:
    """``list``/``statistics`` for the front: ``arrive`` per datagram, ``on_part`` per
    worker's answer. ``extra(reply)`` adds the front's own figures to a ``statistics``."""

    def __init__(self, workers: Sequence[Worker], send: Send,
                 extra: Callable[[dict[str, Any]], None], tags: Iterator[int]) -> None:
        self.workers = workers
        self._send = send
        self._extra = extra
        self.cache = ReplyCache(max_entries=HOST_WIDE_CACHE_ENTRIES,
                                max_bytes=HOST_WIDE_CACHE_BYTES)
        self.retransmits = 0  # answered from the cache (or once the first copy was answered)
        self.dropped = 0  # more than MAX_GATHERS at once: the proxy asks again
        self._tags = tags  # the front's: a worker's REPLY carries either kind of tag
        self._gathers: dict[int, tuple[list[bytes], int, trio.Event]] = {}
        self._slots = trio.CapacityLimiter(MAX_GATHERS)

    def arrive(self, nursery: trio.Nursery, cookie: bytes, body: bytes,
               source: tuple[str, int], pktinfo: bytes) -> None:
        """A host-wide request: answered from the cache, or gathered by a task of
        ``nursery`` (a retransmit of one under way waits for it)."""
        key = (source, cookie)
        state = self.cache.begin(key, trio.current_time())
        if state is None:  # its first copy is being gathered: answered with it
            self.retransmits += 1
            return
        if state is not True:
            self.retransmits += 1
            nursery.start_soon(self._send, state, source, pktinfo, 1)
            return
        token = object()
        try:
            self._slots.acquire_on_behalf_of_nowait(token)
        except trio.WouldBlock:
            self.cache.forget(key)  # not answered: its retransmit is a new request
            self.dropped += 1
            return
        nursery.start_soon(self._answer, cookie, body, source, pktinfo, token)

    async def _answer(self, cookie: bytes, body: bytes, source: tuple[str, int],
                      pktinfo: bytes, token: object) -> None:
        key = (source, cookie)
        try:
            as_json = body.lstrip().startswith(b"{")
            try:
                reply = await self._reply(body, source)
            except NgError as exc:
                reply = {"result": "error", "error-reason": exc.reason}
            except Exception:
                # A bug here costs this reply, never the front (and every call of the host).
                log.exception("ng: a host-wide answer failed")
                reply = {"result": "error", "error-reason": REASON_INTERNAL}
            datagram = encode_reply(cookie, reply, as_json=as_json)
            copies = 1 + self.cache.complete(key, datagram, trio.current_time())
        except BaseException:
            self.cache.forget(key)  # cancelled (the front stops): nothing to remember
            raise
        finally:
            self._slots.release_on_behalf_of(token)
        await self._send(datagram, source, pktinfo, copies)

    async def _reply(self, body: bytes, source: tuple[str, int]) -> dict[str, Any]:
        request = decode_request(body)
        if not any(w.alive for w in self.workers):
            raise NgError(REASON_NO_WORKER)
        parts = await self._gather(source, body)
        if not parts:
            raise NgError(REASON_NO_ANSWER)
        if request.command == "list":
            return merge_lists(parts, request.integer("limit"))
        reply = merge_statistics(parts)
        self._extra(reply)
        return reply

    async def _gather(self, source: tuple[str, int], body: bytes) -> list[dict[str, Any]]:
        """Every live worker's answer to ``body`` (those that answer within GATHER_TIMEOUT)."""
        tag = next(self._tags)
        parts: list[bytes] = []
        live = [w for w in self.workers if w.alive and w.sender is not None]
        done = trio.Event()
        self._gathers[tag] = (parts, len(live), done)
        try:
            # One deadline for the whole gathering, the sends included: a stopped worker's
            # channel fills, and a send waiting on it for ever would hold this gathering's
            # slot for ever (after MAX_GATHERS of them, no list/statistics would be answered).
            with trio.move_on_after(GATHER_TIMEOUT):
                for worker in live:
                    if worker.sender is not None:
                        message = pack(Envelope(Kind.GATHER, source, tag), b"g%d " % tag + body)
                        try:
                            await worker.sender.send(message)
                        except ChannelClosed:
                            continue
                await done.wait()
        finally:
            del self._gathers[tag]
        return [decode_reply(part)[1] for part in parts if part]

    def on_part(self, tag: int, datagram: bytes) -> bool:
        """A worker's part of gathering ``tag``; False when it is no gathering's."""
        gather = self._gathers.get(tag)
        if gather is None:
            return False
        parts, expected, done = gather
        parts.append(datagram)
        if len(parts) >= expected:
            done.set()
        return True

"""The front's channel to one worker: a SOCK_SEQPACKET socketpair, one ng datagram a message.

Why a socketpair of sequenced packets: it keeps the ng datagram's boundaries (no framing to
parse), costs one ``send`` and one ``recv`` per hop with no pickling, and the kernel bounds it
(its buffer) and tells each end when the other has gone (``recv`` returns b"" once the peer's
end is closed, which a SOCK_DGRAM pair never says: a worker whose front was killed stops,
rather than serve calls no proxy can reach).

Every message is a fixed :data:`HEADER` and the datagram. The header carries the proxy's
address (and, on a wildcard ng address, the destination its request reached, IP_PKTINFO's
bytes) so that the worker's dispatcher sees the request exactly as a single-process rtpai
would (the ``[ng] allow`` check, the retransmit cache keyed by the proxy and cookie), and the
worker echoes it back with the reply: the front keeps no table of requests in flight.

Replies go back through the front, not out of an inherited ng socket: the front then sees
every offer's and delete's outcome (the calls each worker holds, for ending them through the
proxy if the worker dies, and the host's call count for ``load limit``), and no two processes
write to the ng socket. The cost is one more hop per request (docs/performance.md: the offer
p50 through the front).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import trio

from ctl.dispatcher import Answer, Deferred, Dispatcher, Handle, Ignored, Resend

log = logging.getLogger("rtpai.worker")


class Kind:
    REQUEST = 1  # front -> worker: a proxy's datagram; answered by one REPLY
    REPLY = 2  # worker -> front: the reply to a REQUEST (empty: nothing to send)
    STATUS = 4  # worker -> front: alive, with its call count (every STATUS_INTERVAL)
    READY = 5  # worker -> front: its engine runs; requests may come


# kind, copies, family (4/6), pktinfo length, port, tag, calls, address, pktinfo bytes
HEADER = struct.Struct("!BBBBHII16s20s")
# A reply of up to 65507 bytes with its header; the buffers hold dozens of them.
CHANNEL_BUFFER = 4 * 1024 * 1024
# How often an idle worker tells the front its call count (calls also end without a request:
# media timeout, AI failure); every reply tells it too.
STATUS_INTERVAL = 0.5
# Async handlers under way at once in a worker (as ctl/ng_server.py's), then back-pressure.
MAX_CONCURRENT_REQUESTS = 64


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message's header, decoded."""

    kind: int
    source: tuple[str, int] = ("", 0)
    tag: int = 0
    copies: int = 1
    calls: int = 0
    pktinfo: bytes = b""  # the destination of the proxy's datagram (wildcard ng address only)


def pack(envelope: Envelope, datagram: bytes = b"") -> bytes:
    host, port = envelope.source[:2]
    if ":" in host:
        family, address = 6, socket.inet_pton(socket.AF_INET6, host)
    elif host:
        family, address = 4, socket.inet_pton(socket.AF_INET, host)
    else:
        family, address = 0, b""
    return HEADER.pack(envelope.kind, min(envelope.copies, 255), family, len(envelope.pktinfo),
                       port, envelope.tag, envelope.calls, address, envelope.pktinfo) + datagram


def unpack(message: bytes) -> tuple[Envelope, bytes]:
    kind, copies, family, info_length, port, tag, calls, address, info = HEADER.unpack_from(
        message)
    if family == 6:
        host = socket.inet_ntop(socket.AF_INET6, address)
    elif family == 4:
        host = socket.inet_ntop(socket.AF_INET, address[:4])
    else:
        host = ""
    return (Envelope(kind, (host, port), tag, copies, calls, info[:info_length]),
            message[HEADER.size:])


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(the front's end, the worker's end), non-blocking, with room for bursts."""
    front, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (front, worker):
        end.setblocking(False)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            end.setsockopt(socket.SOL_SOCKET, option, CHANNEL_BUFFER)
    return front, worker


class ChannelClosed(Exception):
    """The other end of the channel is gone."""


class Sender:
    """Sends messages on a channel; waits (one waiter at a time) when its buffer is full."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._writable = trio.Lock()

    async def send(self, message: bytes) -> None:
        while True:
            try:
                self.sock.send(message)
                return
            except BlockingIOError:
                async with self._writable:
                    await trio.lowlevel.wait_writable(self.sock)
            except OSError as exc:  # ECONNREFUSED / EPIPE: the other end has closed
                raise ChannelClosed(str(exc)) from None


async def serve_channel(
    sock: socket.socket,
    dispatcher: Dispatcher,
    calls: Callable[[], int],
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A worker's ng server: requests from the front's channel, replies back on it.

    The same steps as ctl/ng_server.py's socket loop (the dispatcher's begin, answer, finish
    and follow-up), with the proxy's address from the envelope. ``calls()`` is the worker's
    live call count, sent with every reply and every STATUS. Returns when the front is gone.
    """
    sender = Sender(sock)
    limiter = trio.CapacityLimiter(MAX_CONCURRENT_REQUESTS)

    async def reply(envelope: Envelope, answer: Answer | None) -> None:
        echoed = Envelope(Kind.REPLY, envelope.source, envelope.tag,
                          answer.copies if answer else 0, calls(), envelope.pktinfo)
        try:
            await sender.send(pack(echoed, answer.datagram if answer else b""))
        except ChannelClosed:
            pass  # the front is gone: the receive loop sees it next
        finally:
            if answer is not None:
                dispatcher.follow_up(answer)  # even if cancelled: it cleans up after itself

    async def finish(deferred: Deferred, envelope: Envelope, token: object) -> None:
        try:
            await reply(envelope, await dispatcher.finish(deferred, envelope.source,
                                                          trio.current_time))
        finally:
            limiter.release_on_behalf_of(token)

    async def take(envelope: Envelope, datagram: bytes, nursery: trio.Nursery) -> None:
        now = trio.current_time()
        match dispatcher.begin(datagram, envelope.source, now):
            case Handle(cookie, body):
                outcome = dispatcher.answer(cookie, body, envelope.source, now)
            case Resend(datagram=again):
                await reply(envelope, Answer(again, 1))
                return
            case Ignored():
                await reply(envelope, None)  # the front forgets the request's tag
                return
        if isinstance(outcome, Deferred):
            token = object()
            try:
                await limiter.acquire_on_behalf_of(token)
            except BaseException:
                outcome.abandon()
                raise
            nursery.start_soon(finish, outcome, envelope, token)
            return
        await reply(envelope, outcome)

    async def report() -> None:
        with suppress(ChannelClosed):
            while True:
                await sender.send(pack(Envelope(Kind.STATUS, calls=calls())))
                await trio.sleep(STATUS_INTERVAL)

    async with trio.open_nursery() as nursery:
        await sender.send(pack(Envelope(Kind.READY, calls=calls())))
        task_status.started(sock.getsockname() or ("channel", 0))
        nursery.start_soon(report)
        while True:
            await trio.lowlevel.wait_readable(sock)
            while True:
                try:
                    message = sock.recv(HEADER.size + 65536)
                except BlockingIOError:
                    break
                if not message:
                    # The front is gone (killed: it would have stopped us itself otherwise),
                    # and with it the proxies' way to us. Treated as SIGTERM: the calls get
                    # [ng] shutdown_grace, then are hung up through the proxy; a new front's
                    # workers skip the ports still held meanwhile.
                    log.error("the front closed the channel: draining, then stopping")
                    os.kill(os.getpid(), signal.SIGTERM)
                    nursery.cancel_scope.cancel()
                    return
                envelope, datagram = unpack(message)
                await take(envelope, datagram, nursery)

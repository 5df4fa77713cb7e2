"""The front's channel to one worker: a SOCK_SEQPACKET socketpair, one ng datagram a message.

Why a socketpair of sequenced packets: it keeps the ng datagram's boundaries (no framing to
parse), costs one ``send`` and one ``recv`` per hop with no pickling, and the kernel bounds it
(its buffer) and tells each end when the other has gone (``recv`` returns b"" once the peer's
end is closed, which a SOCK_DGRAM pair never says: a worker whose front was killed stops,
rather than serve calls no proxy can reach).

Every message is a fixed :data:`HEADER` and the datagram. The header carries the proxy's
address (and, on a wildcard ng address, the destination its request reached, IP_PKTINFO's
bytes) so that the worker's dispatcher sees the request exactly as a single-process rtpai
would (the ``[ng] allow`` check, the retransmit cache keyed by the proxy and cookie).

The worker answers the proxy itself, with ``sendto`` on the ng socket it inherited from the
front (the same socket, so the same source address and port the proxy sent to): the front is
woken once per request, not twice, and the reply does not wait for it. For the requests the
front tags (offers and deletes) the worker then tells the front the outcome (ANSWERED: ok or
not), off the reply's path: the front learns which calls each worker holds (to end them
through the proxy if the worker dies) and the host's call count (for ``load limit``). Only a
host-wide command's part (GATHER) comes back to the front as a REPLY, to be merged.
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
from ctl.ng import decode_reply
from ctl.ng_server import IP_PKTINFO

log = logging.getLogger("rtpai.worker")


class Kind:
    REQUEST = 1  # front -> worker: a proxy's datagram, answered to the proxy by the worker
    REPLY = 2  # worker -> front: the answer to a GATHER (or to a REQUEST, without ng socket)
    GATHER = 3  # front -> worker: its part of a host-wide command (list, statistics)
    STATUS = 4  # worker -> front: alive, with its call count (every STATUS_INTERVAL)
    READY = 5  # worker -> front: its engine runs; requests may come
    ANSWERED = 6  # worker -> front: a tagged REQUEST was answered; ``ok``: result ok


# kind, copies, ok, family (4/6), pktinfo length, port, tag, calls, address, pktinfo bytes
HEADER = struct.Struct("!BBBBBHII16s20s")
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
    ok: bool = False


def pack(envelope: Envelope, datagram: bytes = b"") -> bytes:
    host, port = envelope.source[:2]
    if ":" in host:
        family, address = 6, socket.inet_pton(socket.AF_INET6, host)
    elif host:
        family, address = 4, socket.inet_pton(socket.AF_INET, host)
    else:
        family, address = 0, b""
    return HEADER.pack(envelope.kind, min(envelope.copies, 255), envelope.ok, family,
                       len(envelope.pktinfo), port, envelope.tag, envelope.calls, address,
                       envelope.pktinfo) + datagram


def unpack(message: bytes) -> tuple[Envelope, bytes]:
    kind, copies, ok, family, info_length, port, tag, calls, address, info = (
        HEADER.unpack_from(message))
    if family == 6:
        host = socket.inet_ntop(socket.AF_INET6, address)
    elif family == 4:
        host = socket.inet_ntop(socket.AF_INET, address[:4])
    else:
        host = ""
    return (Envelope(kind, (host, port), tag, copies, calls, info[:info_length], bool(ok)),
            message[HEADER.size:])


_OK = b"6:result2:ok"  # a bencoded reply's "result": "ok" (keys and values are bytes)


def reply_ok(datagram: bytes) -> bool:
    """Whether an ng reply says ``result: ok`` (bencoded, or JSON as the request was)."""
    if _OK in datagram:
        return True
    if b"{" not in datagram[:300]:
        return False
    try:
        return decode_reply(datagram)[1].get("result") == "ok"
    except Exception:
        return False


def pktinfo_ancillary(pktinfo: bytes) -> list[tuple[int, int, bytes]]:
    """The ``sendmsg`` ancillary data that sends a reply from the address in ``pktinfo``."""
    if not pktinfo:
        return []
    if len(pktinfo) == 12:
        return [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)]
    return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo)]


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
    ng: socket.socket | None = None,
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A worker's ng server: requests from the front's channel, replies to the proxy.

    The same steps as ctl/ng_server.py's socket loop (the dispatcher's begin, answer, finish
    and follow-up), with the proxy's address from the envelope. Replies leave from ``ng``,
    the front's ng socket (inherited; never read here), or, without one, go back to the front
    on the channel. ``calls()`` is the worker's live call count, sent with every message to
    the front. Returns when the front is gone.
    """
    sender = Sender(sock)
    limiter = trio.CapacityLimiter(MAX_CONCURRENT_REQUESTS)
    ng_writable = trio.Lock()

    async def to_proxy(datagram: bytes, envelope: Envelope, copies: int) -> None:
        assert ng is not None
        via = pktinfo_ancillary(envelope.pktinfo)
        for _ in range(copies):
            while True:
                try:
                    if via:
                        ng.sendmsg([datagram], via, 0, envelope.source)
                    else:
                        ng.sendto(datagram, envelope.source)
                    break
                except BlockingIOError:  # control-path back-pressure, as ng_server's
                    async with ng_writable:
                        await trio.lowlevel.wait_writable(ng)
                except OSError as exc:
                    log.warning("ng: cannot reply to %s: %s", envelope.source, exc)
                    return

    async def reply(envelope: Envelope, answer: Answer | None) -> None:
        try:
            if ng is not None and envelope.kind == Kind.REQUEST:
                if answer is not None:
                    await to_proxy(answer.datagram, envelope, answer.copies)
                if envelope.tag:  # the front waits for the outcome of offers and deletes
                    ok = answer is not None and reply_ok(answer.datagram)
                    await sender.send(pack(Envelope(Kind.ANSWERED, envelope.source,
                                                    envelope.tag, calls=calls(), ok=ok)))
            else:
                echoed = Envelope(Kind.REPLY, envelope.source, envelope.tag,
                                  answer.copies if answer else 0, calls(), envelope.pktinfo)
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
                except OSError:  # ECONNRESET: the front closed with messages unread
                    message = b""
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

"""The ng control socket: one UDP socket in front of the dispatcher (ctl/dispatcher.py).

It moves bytes and nothing else: each datagram goes to :meth:`Dispatcher.begin`, which says
what it is (new, a retransmit, nothing to answer), and a new request's reply is sent as soon as
the dispatcher has made it -- inline for plain handlers, from a task of its own for ``async``
ones, bounded by ``MAX_CONCURRENT_REQUESTS``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from typing import Any

import trio

from ctl.dispatcher import Deferred, Dispatcher, Handle, Ignored, Resend

log = logging.getLogger("rtpai.ng")

# Kamailio reads replies of up to 256 KiB; a UDP datagram carries at most 65507 bytes over IPv4.
MAX_DATAGRAM = 65535
# Requests handled by async handlers at once. Past this the receive loop waits: control-path
# back-pressure.
MAX_CONCURRENT_REQUESTS = 64
# Datagrams taken per wake-up of the receive loop. Inline handlers run back to back without
# yielding; an offer costs ~0.1 ms, so a burst of proxies' requests holds the media clock and
# the calls' tasks up for at most a couple of milliseconds before they get a turn.
RECEIVE_BATCH = 16


# Linux's IP_PKTINFO (<linux/in.h>); Python's socket module names it only from 3.13 on.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
# Room for the one control message a wildcard socket asks for: in_pktinfo (12 bytes) or
# in6_pktinfo (20 bytes).
_PKTINFO_SPACE = socket.CMSG_SPACE(20)
_IN_PKTINFO = struct.Struct("=i4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
_IN6_PKTINFO = struct.Struct("=16sI")  # ipi6_addr, ipi6_ifindex

Ancillary = list[tuple[int, int, bytes]]


def reply_from(ancillary: Ancillary) -> Ancillary:
    """The control message that makes a reply leave from the address the request reached.

    A wildcard socket otherwise answers from whatever address the route to the proxy
    prefers, and the proxy's *connected* socket (Kamailio's and OpenSIPS's) discards it.
    IPv4: ``ipi_spec_dst`` is the source to use (RFC 3542's IPv6 analogue: ``ipi6_addr``, and
    the interface, which a link-local address needs). An IPv4 request to a dual-stack ``::``
    socket reports its address IPv4-mapped, and the kernel takes it back in that form.
    """
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            _, _, destination = _IN_PKTINFO.unpack_from(data)
            return [(level, kind, _IN_PKTINFO.pack(0, destination, bytes(4)))]
        if (
            level == socket.IPPROTO_IPV6
            and kind == socket.IPV6_PKTINFO
            and len(data) >= _IN6_PKTINFO.size
        ):
            return [(level, kind, data[: _IN6_PKTINFO.size])]
    return []


async def serve_ng(
    address: tuple[str, int],
    dispatcher: Dispatcher,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ng on UDP ``address``; ``task_status.started`` gets the bound address.

    The socket is a plain non-blocking one: a datagram costs one wake-up of this task however
    many arrive together, and a reply is a ``sendto`` that checkpoints only if the socket's
    buffer is full (``trio.socket`` would pay a scheduler pass per receive and per send).

    On a wildcard address (``0.0.0.0``, ``::``) requests are read with ``recvmsg`` and their
    destination address (IP_PKTINFO / IPV6_PKTINFO), and each reply is sent from it with
    ``sendmsg``; a concrete address keeps the cheaper ``recvfrom``/``sendto``.
    """
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    wildcard = ipaddress.ip_address(address[0]).is_unspecified
    sock = socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        sock.setblocking(False)
        if wildcard:
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            else:  # (IPv4 requests to a dual-stack socket come with IPV6_PKTINFO too)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        sock.bind(address)
        bound = sock.getsockname()[:2]
        if wildcard:
            log.info("ng: listening on %s:%s (wildcard: each reply leaves from the address its "
                     "request reached, by IP_PKTINFO)", bound[0], bound[1])
        else:
            log.info("ng: listening on %s:%s", bound[0], bound[1])
        if not dispatcher.acl and not ipaddress.ip_address(bound[0]).is_loopback:
            log.warning(
                "ng: [ng] allow / NG_ALLOW is empty and ng listens on %s: anyone who can "
                "reach it can create and delete calls (list your proxies' addresses)", bound[0]
            )
        limiter = trio.CapacityLimiter(MAX_CONCURRENT_REQUESTS)
        # Held while waiting for the socket to take a reply: trio allows one waiter per socket.
        writable = trio.Lock()

        async def send(datagram: bytes, source: Any, copies: int, via: Ancillary) -> None:
            """Send ``copies`` times; it checkpoints only when the socket's buffer is full."""
            for _ in range(copies):
                while True:
                    try:
                        if via:
                            sock.sendmsg([datagram], via, 0, source)
                        else:
                            sock.sendto(datagram, source)
                        break
                    except BlockingIOError:
                        # Control-path back-pressure: the reply waits, and so does the loop.
                        async with writable:
                            await trio.lowlevel.wait_writable(sock)
                    except OSError as exc:
                        log.warning("ng: cannot reply to %s: %s", source, exc)
                        return

        async def finish(deferred: Deferred, source: Any, via: Ancillary, token: object) -> None:
            try:
                answer = await dispatcher.finish(deferred, source, trio.current_time)
                try:
                    await send(answer.datagram, source, answer.copies, via)
                finally:
                    dispatcher.follow_up(answer)  # even if cancelled: it cleans up after itself
            finally:
                limiter.release_on_behalf_of(token)

        async def take(datagram: bytes, source: Any, via: Ancillary, nursery: trio.Nursery):
            """One datagram: answered here, or by a task of its own if its handler is async."""
            now = trio.current_time()
            match dispatcher.begin(datagram, source, now):
                case Handle(cookie, body):
                    outcome = dispatcher.answer(cookie, body, source, now)
                case Resend(reply):
                    await send(reply, source, 1, via)
                    return
                case Ignored.NO_COOKIE:
                    log.debug("ng: dropping a datagram without cookie from %s", source)
                    return
                case Ignored():
                    return  # in progress: the first copy's reply goes out once more for it
            if isinstance(outcome, Deferred):
                token = object()
                try:
                    limiter.acquire_on_behalf_of_nowait(token)
                except trio.WouldBlock:
                    try:
                        await limiter.acquire_on_behalf_of(token)
                    except BaseException:
                        outcome.abandon()
                        raise
                nursery.start_soon(finish, outcome, source, via, token)
                return
            try:
                await send(outcome.datagram, source, outcome.copies, via)
            finally:
                dispatcher.follow_up(outcome)  # even if cancelled: it cleans up after itself

        no_ancillary: Ancillary = []
        async with trio.open_nursery() as nursery:
            task_status.started(bound)
            try:
                while True:
                    await trio.lowlevel.wait_readable(sock)
                    for _ in range(RECEIVE_BATCH):
                        try:
                            if wildcard:
                                datagram, ancillary, _, source = sock.recvmsg(
                                    MAX_DATAGRAM, _PKTINFO_SPACE
                                )
                                via = reply_from(ancillary)
                            else:
                                datagram, source = sock.recvfrom(MAX_DATAGRAM)
                                via = no_ancillary
                        except BlockingIOError:
                            break
                        except OSError as exc:  # e.g. an ICMP error queued on the socket
                            log.debug("ng: receive failed: %s", exc)
                            continue
                        await take(datagram, source, via, nursery)
            finally:
                trio.lowlevel.notify_closing(sock)

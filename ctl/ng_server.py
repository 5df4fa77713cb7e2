"""The ng control socket: one dispatch table, one reply cache, one UDP socket.

Handlers are ``async def handler(request) -> dict``; they raise :class:`NgError` to refuse.
Only :class:`Dispatcher` writes ``result`` and ``error-reason`` and owns the retransmit cache
(the shape of rtpengine's ``control_ng.c``).
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from ctl.ng import (
    REASON_UNKNOWN_COMMAND,
    NgError,
    NgFramingError,
    NgLoadLimit,
    NgRequest,
    ReplyCache,
    decode_request,
    encode_reply,
    split_cookie,
)

log = logging.getLogger("rtpai.ng")

Handler = Callable[[NgRequest], Awaitable[dict[str, Any]]]

# Keys the proxy modules send that rtpai reads or knowingly ignores (a relay's options: ICE,
# DTLS, replace, ...). Anything else is logged at debug and ignored, as rtpengine does.
KNOWN_KEYS = frozenset({
    "command", "call-id", "from-tag", "to-tag", "via-branch", "sdp", "flags", "supports",
    "received-from", "delete-delay", "profile", "limit", "codec", "replace", "direction",
    "transport-protocol", "ICE", "DTLS", "SDES", "rtcp-mux", "label", "set-label", "address-family",
    "media-address", "record-call", "metadata", "xmlrpc-callback", "interface",
})

# Kamailio reads replies of up to 256 KiB; a UDP datagram carries at most 65507 bytes over IPv4.
MAX_DATAGRAM = 65535
# Requests handled at once. Past this the receive loop waits: control-path back-pressure.
MAX_CONCURRENT_REQUESTS = 64


class Dispatcher:
    """Routes ng commands to handlers and turns their outcome into reply datagrams."""

    def __init__(self, handlers: Mapping[str, Handler], *, cache: ReplyCache | None = None):
        self.handlers = dict(handlers)
        self.cache = cache or ReplyCache()
        self.commands: Counter[str] = Counter()  # per command, for `statistics`
        self.errors: Counter[str] = Counter()

    def begin(self, datagram: bytes, source: Any, now: float) -> tuple[str, Any]:
        """Classify an incoming datagram.

        Returns ``("drop", None)`` (no cookie: nothing can be answered), ``("resend", bytes)``
        (a retransmit of an answered request), ``("wait", None)`` (a retransmit of one still
        being handled) or ``("handle", (cookie, body))``.
        """
        try:
            cookie, body = split_cookie(datagram)
        except NgFramingError:
            return "drop", None
        state = self.cache.begin((source, cookie), now)
        if state is True:
            return "handle", (cookie, body)
        if state is None:
            return "wait", None
        return "resend", state

    async def handle(self, cookie: bytes, body: bytes, source: Any, now: Callable[[], float]):
        """Run the command; returns the reply and how many times to send it."""
        as_json = body.lstrip().startswith(b"{")
        request: NgRequest | None = None
        try:
            request = decode_request(body)
            as_json = request.is_json
            self.commands[request.command] += 1
            if log.isEnabledFor(logging.DEBUG):
                unknown = sorted(set(request.params) - KNOWN_KEYS)
                if unknown:
                    log.debug("ng: %s: ignoring keys %s", request.command, unknown)
            handler = self.handlers.get(request.command)
            if handler is None:
                raise NgError(REASON_UNKNOWN_COMMAND)
            result = await handler(request)
            reply = {"result": "ok", **result}
        except NgLoadLimit:
            # Kamailio sends supports=["load limit"] and then tries the next engine of its set.
            if request is not None and request.supports("load limit"):
                reply = {"result": "load limit", "message": NgLoadLimit().reason}
            else:
                reply = {"result": "error", "error-reason": NgLoadLimit().reason}
        except NgError as exc:
            self.errors[exc.reason] += 1
            reply = {"result": "error", "error-reason": exc.reason}
        except Exception:
            # A bug must not cost the proxy a reply: it would retransmit and then mark us dead.
            log.exception("ng: handler failed")
            reply = {"result": "error", "error-reason": "Internal error"}
        datagram = encode_reply(cookie, reply, as_json=as_json)
        duplicates = self.cache.complete((source, cookie), datagram, now())
        return datagram, 1 + duplicates


async def serve_ng(
    address: tuple[str, int],
    dispatcher: Dispatcher,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ng on UDP ``address``; ``task_status.started`` gets the bound address."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(address)
        bound = sock.getsockname()[:2]
        log.info("ng: listening on %s:%s", bound[0], bound[1])
        limiter = trio.CapacityLimiter(MAX_CONCURRENT_REQUESTS)

        async def handle(cookie: bytes, body: bytes, source: Any, token: object) -> None:
            try:
                datagram, copies = await dispatcher.handle(cookie, body, source, trio.current_time)
                for _ in range(copies):
                    await sock.sendto(datagram, source)
            except OSError as exc:
                log.warning("ng: cannot reply to %s: %s", source, exc)
            finally:
                limiter.release_on_behalf_of(token)

        async with trio.open_nursery() as nursery:
            task_status.started(bound)
            while True:
                datagram, source = await sock.recvfrom(MAX_DATAGRAM)
                action, value = dispatcher.begin(datagram, source, trio.current_time())
                if action == "handle":
                    cookie, body = value
                    token = object()
                    await limiter.acquire_on_behalf_of(token)
                    nursery.start_soon(handle, cookie, body, source, token)
                elif action == "resend":
                    try:
                        await sock.sendto(value, source)
                    except OSError as exc:
                        log.warning("ng: cannot reply to %s: %s", source, exc)
                elif action == "drop":
                    log.debug("ng: dropping a datagram without cookie from %s", source)

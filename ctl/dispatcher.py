"""The ng dispatcher: one dispatch table and one reply cache, without the socket.

Each row of the table is a :class:`Command`: a parser that reads the :class:`NgRequest` once into
the handler's typed request, and the handler, which returns a dict (or a :class:`ReplyFirst`: a
dict and what to do once it has been sent); both raise :class:`NgError` to refuse. Only
:class:`Dispatcher` writes ``result`` and ``error-reason`` and owns the retransmit cache (the
shape of rtpengine's ``control_ng.c``).

A handler is either a plain function, answered inline by the receive loop, or an ``async def``
one, answered from a task of its own. Commands that only read or set up state (``offer``,
``answer``, ``query``, ...) are plain: the reply then leaves in the same scheduler pass as the
datagram arrived, before anything they started (a call's tasks, its WebSocket connect) runs.
Only a command that must wait for something (``delete`` waits for the call's tasks to end) is
``async``, and costs a task and the scheduler passes that come with it.

The UDP socket is ctl/ng_server.py's: it asks :meth:`Dispatcher.begin` what an incoming
datagram is (an :data:`Arrival`), and sends what :meth:`Dispatcher.answer` makes of it.
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ctl.acl import Network, SourceFilter
from ctl.ng import (
    REASON_SESSION_LIMIT,
    REASON_UNKNOWN_COMMAND,
    NgError,
    NgFramingError,
    NgLoadLimit,
    NgRequest,
    decode_request,
    encode_reply,
    split_cookie,
)
from ctl.reply_cache import ReplyCache

log = logging.getLogger("rtpai.ng")

# Keys the proxy modules send that rtpai reads or knowingly ignores (a relay's options: ICE,
# DTLS, replace, ...). Anything else is logged at debug and ignored, as rtpengine does.
KNOWN_KEYS = frozenset({
    "command", "call-id", "from-tag", "to-tag", "via-branch", "sdp", "flags", "supports",
    "received-from", "delete-delay", "profile", "limit", "codec", "replace", "direction",
    "transport-protocol", "ICE", "DTLS", "SDES", "rtcp-mux", "label", "set-label", "address-family",
    "media-address", "record-call", "metadata", "xmlrpc-callback", "interface",
})

# The largest reply we send: what one UDP datagram carries over IPv4 (65535 minus the IP and UDP
# headers). A bigger one would fail in sendto and leave the proxy retransmitting into silence;
# it is answered with REASON_REPLY_TOO_LARGE instead.
MAX_REPLY = 65507
REASON_REPLY_TOO_LARGE = f"Reply too large for one datagram ({MAX_REPLY} bytes)"
# A handler that raised something else than NgError (a bug) or a reply that cannot be encoded:
# the proxy still gets an answer, the traceback goes to our log.
REASON_INTERNAL = "Internal error"
# Error reasons are cut to this many characters, in the reply and in the counts: some quote the
# request (an unknown profile, an SDP's transport). rtpengine's own reasons are < 60 characters.
MAX_REASON_LENGTH = 200
# Commands are counted by name in `statistics` only if a handler has that name; every other name
# is counted as this one, so that no peer can grow the table.
UNKNOWN_COMMAND_BUCKET = "unknown"
# Datagrams refused by ``[ng] allow`` are logged at debug at most once per this many seconds
# (with how many since the last line): a flood must not become a flood of log lines.
DENIED_LOG_INTERVAL = 10.0
# Error reasons counted by name in `statistics`. Some reasons quote the request (an unknown
# profile, an SDP's transport), so a peer could otherwise grow the table without end; past this
# many distinct ones, further new reasons are counted as "other".
MAX_ERROR_REASONS = 64


@dataclass(frozen=True, slots=True)
class ReplyFirst:
    """A handler's reply, and work to do as soon as it has been sent.

    For work the reply does not depend on (an offer's call: its objects, its tasks): the proxy
    is answered without waiting for it. ``then`` runs before the server reads another
    datagram, so the next command already sees its effects. If it raises, the failure is
    logged: the reply has gone, and ``then`` cleans up after itself.
    """

    reply: dict[str, Any]
    then: Callable[[], None]


Result = dict[str, Any] | ReplyFirst
Handler = Callable[[Any], Result | Awaitable[Result]]


@dataclass(frozen=True, slots=True)
class Command:
    """One row of the dispatch table: how the request is read, and the handler that acts on it.

    ``parse`` turns the :class:`NgRequest` into the handler's typed request once
    (ctl/ng_requests.py, as rtpengine's ``call_ng_process_flags``), raising :class:`NgError`
    with the reason the proxy gets; without one the handler takes the :class:`NgRequest`.
    """

    handle: Handler
    parse: Callable[[NgRequest], Any] | None = None


class Answer(NamedTuple):
    """A reply datagram ready to go, how many times, and what to do once it has."""

    datagram: bytes
    copies: int  # 1 + the retransmits that arrived while it was being made
    then: Callable[[], None] | None = None


class Deferred:
    """A request whose handler is ``async``: the dispatcher finishes it in a task."""

    __slots__ = ("cookie", "request", "pending")

    def __init__(self, cookie: bytes, request: NgRequest, pending: Coroutine) -> None:
        self.cookie = cookie
        self.request = request
        self.pending = pending  # the handler's coroutine, not started yet

    def abandon(self) -> None:
        """Never to be run (the server is stopping): close the coroutine quietly."""
        self.pending.close()



class Ignored(enum.Enum):
    """A datagram that gets no reply of its own."""

    DENIED = "denied"  # from a source ``[ng] allow`` does not list
    NO_COOKIE = "no cookie"  # nothing to answer it with (rtpengine answers nothing either)
    # A retransmit of a request still being handled: the first copy's reply goes out once
    # more for it (ReplyCache.complete counts it).
    IN_PROGRESS = "in progress"


@dataclass(frozen=True, slots=True)
class Resend:
    """A retransmit of a request answered already: send its reply again, run nothing."""

    datagram: bytes


@dataclass(frozen=True, slots=True)
class Handle:
    """A new request: :meth:`Dispatcher.answer` runs it."""

    cookie: bytes
    body: bytes


# What :meth:`Dispatcher.begin` makes of a datagram.
Arrival = Ignored | Resend | Handle


class Dispatcher:
    """Routes ng commands to handlers and turns their outcome into reply datagrams."""

    def __init__(
        self,
        handlers: Mapping[str, Command | Handler],
        *,
        cache: ReplyCache | None = None,
        allow: tuple[Network, ...] = (),
    ):
        # The table: command name -> Command (a bare handler takes the NgRequest as it is).
        self.handlers: dict[str, Command] = {
            name: entry if isinstance(entry, Command) else Command(entry)
            for name, entry in handlers.items()
        }
        self.cache = cache or ReplyCache()
        self.commands: Counter[str] = Counter()  # per command, for `statistics`
        self.errors: Counter[str] = Counter()
        self.acl = SourceFilter(allow)
        self.denied = 0  # datagrams from sources ``[ng] allow`` does not list
        self._denied_logged = (-DENIED_LOG_INTERVAL, 0)  # (when, self.denied then)

    def allow_sources(self, allow: tuple[Network, ...]) -> None:
        """Replace the ``[ng] allow`` list (SIGHUP); the next datagram is judged by it."""
        self.acl = SourceFilter(allow)

    def begin(self, datagram: bytes, source: Any, now: float) -> Arrival:
        """What an incoming datagram is: :class:`Ignored` (no reply), :class:`Resend` (a
        retransmit of an answered request) or :class:`Handle` (a new request)."""
        if self.acl and not self.acl.allows(source[0]):
            self._deny(source, now)
            return Ignored.DENIED
        try:
            cookie, body = split_cookie(datagram)
        except NgFramingError:
            return Ignored.NO_COOKIE
        state = self.cache.begin((source, cookie), now)
        if state is True:
            return Handle(cookie, body)
        if state is None:
            return Ignored.IN_PROGRESS
        return Resend(state)

    def _deny(self, source: Any, now: float) -> None:
        self.denied += 1
        when, count = self._denied_logged
        if now - when >= DENIED_LOG_INTERVAL and log.isEnabledFor(logging.DEBUG):
            log.debug("ng: dropped a datagram from %s, not in [ng] allow (%d dropped since "
                      "the last such line)", source[0], self.denied - count)
            self._denied_logged = (now, self.denied)

    def answer(self, cookie: bytes, body: bytes, source: Any, now: float) -> Answer | Deferred:
        """Decode and run the command: its :class:`Answer`, or, when the handler is
        ``async``, a :class:`Deferred` for :meth:`finish`."""
        request: NgRequest | None = None
        try:
            request = decode_request(body)
            command = request.command
            self.commands[command if command in self.handlers else UNKNOWN_COMMAND_BUCKET] += 1
            if log.isEnabledFor(logging.DEBUG):
                unknown = sorted(set(request.params) - KNOWN_KEYS)
                if unknown:
                    log.debug("ng: %s: ignoring keys %s", request.command, unknown)
            route = self.handlers.get(request.command)
            if route is None:
                raise NgError(REASON_UNKNOWN_COMMAND)
            parse = route.parse
            result = route.handle(request if parse is None else parse(request))
            # An async handler's call only made its coroutine: nothing of it has run yet.
            # (inspect's test is an exact type check; isinstance against the ABC costs more.)
            if inspect.iscoroutine(result):
                return Deferred(cookie, request, result)
            reply, then = _succeeded(result)
        except Exception as exc:
            reply, then = self._refusal(request, exc), None
        as_json = request.is_json if request is not None else body.lstrip().startswith(b"{")
        return self._complete(cookie, reply, then, as_json, source, now)

    async def finish(self, deferred: Deferred, source: Any, now: Callable[[], float]) -> Answer:
        """Run an async handler to its :class:`Answer`."""
        try:
            reply, then = _succeeded(await deferred.pending)
        except Exception as exc:
            reply, then = self._refusal(deferred.request, exc), None
        return self._complete(
            deferred.cookie, reply, then, deferred.request.is_json, source, now()
        )

    def follow_up(self, answer: Answer) -> None:
        """Run what the handler left for after its reply (call once the reply is sent)."""
        if answer.then is None:
            return
        try:
            answer.then()
        except Exception:
            log.exception("ng: work after the reply failed")

    def _refusal(self, request: NgRequest | None, exc: Exception) -> dict[str, Any]:
        """The reply to a handler (or a decode) that raised."""
        if isinstance(exc, NgError):
            reason = _bounded_reason(exc.reason)
            if not isinstance(exc, NgLoadLimit) or reason != REASON_SESSION_LIMIT:
                # Counted by reason: a full engine is load management, not an error; an
                # instance refusing for its own state (disabled, no key) is worth seeing.
                counted = reason
                if counted not in self.errors and len(self.errors) >= MAX_ERROR_REASONS:
                    counted = "other"
                self.errors[counted] += 1
            # Kamailio sends supports=["load limit"] and then tries the next engine of its set.
            if (isinstance(exc, NgLoadLimit) and request is not None
                    and request.supports("load limit")):
                return {"result": "load limit", "message": reason}
            return {"result": "error", "error-reason": reason}
        # A bug must not cost the proxy a reply: it would retransmit and then mark us dead.
        log.error("ng: handler failed", exc_info=exc)
        self.errors[REASON_INTERNAL] += 1
        return {"result": "error", "error-reason": REASON_INTERNAL}

    def _complete(
        self,
        cookie: bytes,
        reply: dict[str, Any],
        then: Callable[[], None] | None,
        as_json: bool,
        source: Any,
        now: float,
    ) -> Answer:
        try:
            datagram = encode_reply(cookie, reply, as_json=as_json)
        except Exception:
            # What a handler returned cannot be encoded (a bug: requests are checked so that
            # everything they carry can be): the proxy still gets its answer.
            log.exception("ng: cannot encode the reply")
            self.errors[REASON_INTERNAL] += 1
            reply = {"result": "error", "error-reason": REASON_INTERNAL}
            datagram = encode_reply(cookie, reply, as_json=as_json)
        if len(datagram) > MAX_REPLY:
            log.warning("ng: a %d-byte reply does not fit in a datagram; answering an error",
                        len(datagram))
            self.errors[REASON_REPLY_TOO_LARGE] += 1
            reply = {"result": "error", "error-reason": REASON_REPLY_TOO_LARGE}
            datagram = encode_reply(cookie, reply, as_json=as_json)
            # ``then`` still runs: it owns what the handler set up (an offer's ports) and
            # hands it to a call that a delete or the media timeout ends.
        duplicates = self.cache.complete((source, cookie), datagram, now)
        return Answer(datagram, 1 + duplicates, then)


def _bounded_reason(reason: str) -> str:
    if len(reason) <= MAX_REASON_LENGTH:
        return reason
    return reason[: MAX_REASON_LENGTH - 3] + "..."


def _succeeded(result: Result) -> tuple[dict[str, Any], Callable[[], None] | None]:
    """A handler's return value as the reply and the work left for after it."""
    if isinstance(result, ReplyFirst):
        return {"result": "ok", **result.reply}, result.then
    return {"result": "ok", **result}, None

"""The engine: the call registry and the ng command handlers, over one nursery of calls.

Its pieces have modules of their own: the dispatch table's machinery (ctl/dispatcher.py) and
socket (ctl/ng_server.py), the typed requests (ctl/ng_requests.py), SDP negotiation
(ctl/offers.py), port binding (ctl/rtp_ports.py), what the proxy is asked to do for a call
(ctl/call_control.py), the read-only commands (ctl/queries.py), the drain (ctl/shutdown.py).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from functools import partial
from typing import Any

import trio

from ctl import offers, queries, shutdown
from ctl.call import Call, CallState
from ctl.call_control import CallControl
from ctl.config import FLAVOR, Config
from ctl.dispatcher import Command, Dispatcher, ReplyFirst
from ctl.metrics import EngineMetrics
from ctl.ng import (
    REASON_NOT_FOUND,
    REASON_UNKNOWN_CALL,
    NgError,
    NgLoadLimit,
    NgRequest,
    canonical_name,
)
from ctl.ng_requests import (
    AnswerRequest,
    CallSelector,
    DeleteRequest,
    ListRequest,
    OfferRequest,
)
from ctl.ng_server import serve_ng
from ctl.proxy import ProxyNotifier
from ctl.recordings import CallArchive
from ctl.registry import CallRegistry
from ctl.rtp_ports import PortBinder
from media import flavor as flavors
from media import sdp
from media.bridge import EndReason
from media.clock import MediaClock
from media.flavor import AiSettings
from media.options import MediaOptions
from media.poller import SocketPoller
from media.ports import PortPairAllocator

log = logging.getLogger("rtpai.engine")

# A call that ended by itself (media timeout, AI failure) stays queryable for the proxy's
# delete this long, then it is forgotten so an absent delete cannot leak memory.
ENDED_CALL_LINGER = 300.0
HOUSEKEEPING_INTERVAL = 30.0

# The ng totals that count calls by why they ended (the kind, never the text of the reason).
TOTALS_BY_END = {EndReason.MEDIA_TIMEOUT: "timeouts", EndReason.AI_FAILED: "ai failures"}

# Commands the proxy modules can send that an AI endpoint does not implement: each gets a
# clear error (never silence, which would make the module retransmit and then disable us).
UNSUPPORTED_COMMANDS = (
    "play media", "stop media", "play DTMF", "block DTMF", "unblock DTMF", "block media",
    "unblock media", "silence media", "unsilence media", "start forwarding", "stop forwarding",
)


class Engine:
    """Owns the calls. ``run`` opens the engine nursery and serves ng until cancelled."""

    def __init__(self, config: Config) -> None:
        self.config = config
        rtp = config["rtp"]
        # The range's pairs, up to [rtp] port_pool of them bound ahead (ctl/rtp_ports.py).
        self.ports = PortBinder(PortPairAllocator(rtp["min_port"], rtp["max_port"]),
                                rtp["bind_ip"], pool=rtp["port_pool"])
        self.media_options = MediaOptions.from_config(rtp)  # every call's [rtp] behaviour
        # The AI flavor, through the registry (media/flavor.py): ctl/ names none of its classes.
        self.flavor = flavors.get(FLAVOR)
        self.settings, self.profiles = self._configure_ai(config)
        self.calls: CallRegistry[Call] = CallRegistry()
        # Recordings ([recording], one writer thread) and call records ([cdr]): docs/recording.md.
        self.archive = CallArchive(config)
        self.started = time.time()
        self.totals = {"calls": 0, "ended": 0, "timeouts": 0, "ai failures": 0,
                       "hangup failures": 0, "hangup timeouts": 0, "hangup retries": 0}
        # Ended calls by every EndReason (statistics: totalstatistics.endreasons), as the
        # metrics count them, so a new reason is in the ng totals the day it is added.
        self.ended_by: Counter[EndReason] = Counter()
        self.dispatcher = Dispatcher(
            {
                "ping": self.ping,
                "offer": Command(self.offer, OfferRequest.parse),
                "answer": Command(self.answer, AnswerRequest.parse),
                "delete": Command(self.delete, DeleteRequest.parse),
                "query": Command(self.query, CallSelector.parse),
                "list": Command(self.list_calls, ListRequest.parse),
                "statistics": self.statistics,
                # rtpengine's recording commands (ctl/recordings.py).
                **self.archive.commands(lambda request: queries.select(self.calls, request)),
                **{canonical_name(c).lower(): self.unsupported for c in UNSUPPORTED_COMMANDS},
            },
            allow=config["ng"]["allow"],
        )
        proxy = config["proxy"]
        # Hang-ups and transfers through the proxy, as tasks of the calls they are about.
        self.control = CallControl(
            ProxyNotifier(proxy["type"], proxy["url"], timeout=proxy["timeout"],
                          retries=proxy["retries"]),
            hangup_timeout=proxy["hangup_timeout"], totals=self.totals,
        )
        # The model is offered only the tools this proxy can carry out (issue 19: a tool that
        # cannot work must not be promised to the caller).
        self.withheld_tools: dict[str, str] = {}
        self.settings = self._tools_for_proxy(self.settings)
        self.profiles = {name: self._tools_for_proxy(s) for name, s in self.profiles.items()}
        self.draining = False
        self._calls_nursery: trio.Nursery | None = None
        # Counters read at scrape time, figures recorded at events (ctl/metrics.py).
        self.metrics = EngineMetrics()
        # One clock paces every call's RTP (media/clock.py); it lives in the engine nursery.
        self.clock = MediaClock(self.metrics.figures, media_thread=rtp["media_thread"])
        # One epoll set receives every call's RTP and RTCP (media/poller.py), likewise.
        self.poller = SocketPoller(self.metrics.figures)
        self.metrics.bind(self)

    async def run(self, *, control=None, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started`` gets the ng address. ``control``
        replaces ``serve_ng``: a worker serves its front's channel (ctl/workers.py)."""
        refusal = self.settings.refusal_reason()
        if refusal:
            log.error("offers will be refused: %s", refusal)
        for note in self.settings.startup_notes():
            log.warning("%s", note)
        for tool, why in self.withheld_tools.items():
            log.warning("the model is not offered %s: %s", tool, why)
        async with self.archive.open(), trio.open_nursery() as nursery:
            self._calls_nursery = nursery
            await nursery.start(self.clock.run)
            await nursery.start(self.poller.run)
            await nursery.start(self.archive.run)
            await nursery.start(self.ports.run)  # the pool, filled before the first offer
            nursery.start_soon(self._housekeeping)
            if self.config["metrics"]["listen"] is not None:  # ([metrics] listen; not a thread)
                await nursery.start(self.metrics.serve, self.config["metrics"]["listen"])
            if control is None:
                control = partial(serve_ng, self.config["ng"]["listen"], self.dispatcher)
            address = await nursery.start(control)
            task_status.started(address)

    @property
    def proxy(self) -> ProxyNotifier:
        """The client that carries requests to the proxy (``control``'s)."""
        return self.control.proxy

    def _configure_ai(self, config: Config) -> tuple[AiSettings, dict[str, AiSettings]]:
        """The flavor's settings from its section, and one per profile ``[openai:NAME]``."""
        explicit = frozenset(key for section, key in config.explicit if section == FLAVOR)
        configure = self.flavor.configure
        sections = config.values  # the flavor's rows outside its section ([pricing])
        return configure(config[FLAVOR], explicit, sections), {
            name: configure(values, explicit, sections)
            for name, values in config.profiles.items()
        }

    def _tools_for_proxy(self, settings: AiSettings) -> AiSettings:
        """``settings`` without the built-in tools the configured proxy cannot carry out."""
        settings, withheld = settings.withhold(self.proxy.cannot)
        self.withheld_tools.update(withheld)
        return settings

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(HOUSEKEEPING_INTERVAL)
            now = time.time()
            for call in list(self.calls):
                if call.state is CallState.ENDED and now - call.last_signal > ENDED_CALL_LINGER:
                    self.calls.remove(call)

    # --- ng handlers --------------------------------------------------------------------------

    def ping(self, request: NgRequest) -> dict[str, Any]:
        return {"result": "pong"}

    def offer(self, request: OfferRequest) -> dict[str, Any] | ReplyFirst:
        """A new call's reply is the answer SDP; the call itself is built and started once that
        reply has gone (:class:`ReplyFirst`): the proxy waits only for what the answer needs,
        the ports and the SDP. A re-offer updates its call before replying."""
        call_id, from_tag, branch, to_tag = (
            request.call_id, request.from_tag, request.branch, request.to_tag
        )
        existing = self.calls.for_offer(call_id, branch=branch, from_tag=from_tag, to_tag=to_tag)
        if existing is not None and existing.state is CallState.ENDED:
            self.calls.remove(existing)  # timed out or failed: a new offer starts afresh
            existing = None
        if existing is not None:
            return self._reoffer(existing, request)

        settings = self._settings_for(request)
        refusal = settings.refusal_reason()
        if refusal:
            # An instance that cannot serve calls (disabled, no key) is as good as full: to a
            # proxy that understands "load limit" (Kamailio always says so) that is the answer
            # that moves the call to the next engine of its set; Kamailio 5.6 fails over on
            # no other reason of ours. Others get the reason as an error (OpenSIPS matches it
            # with extra_failover_error).
            raise NgLoadLimit(refusal)
        max_sessions = self.config["ng"]["max_sessions"]
        if self.draining or (max_sessions and self.active_calls() >= max_sessions):
            # Kamailio then tries the next engine of its set.
            raise NgLoadLimit()
        offer, negotiated = offers.negotiate(request, self.config["rtp"]["codecs"])

        rtp_port, sockets = self.ports.bind()
        rtp_config = self.config["rtp"]
        advertised = rtp_config["ip"]
        # RFC 4566 s5.2 asks only that o= be unique; it is no secret (the answer carries it),
        # so no getrandom(2) syscall on the offer's path for it.
        session_id = random.getrandbits(31)
        try:
            answer_sdp = sdp.build_answer(
                offer, negotiated, local_address=advertised, local_port=rtp_port,
                session_id=session_id, session_version=1,
            )
        except BaseException:
            self.ports.unbind(rtp_port, sockets)
            raise

        def start_call() -> None:
            # Runs as soon as the reply is sent, before the server reads another datagram, so
            # a retransmit, an answer or a delete of this call always finds it.
            try:
                call = Call(
                    call_id=call_id,
                    branch=branch,
                    from_tag=from_tag,
                    to_tag=to_tag,
                    profile=request.profile,
                    media=offers.call_media(negotiated, advertised, rtp_port,
                                            bind_ip=rtp_config["bind_ip"]),
                    answer_sdp=answer_sdp,
                    sockets=sockets,
                    clock=self.clock,
                    poller=self.poller,
                    settings=settings,
                    flavor=self.flavor,
                    release_ports=lambda: self.ports.release(rtp_port),
                    sdp_origin=(session_id, 1),
                    on_end=self._call_ending,
                    on_transfer=self.control.transfer,
                    on_hang_up=self.control.hang_up if self.proxy.enabled else None,
                    on_ended=self.archive.call_ended,
                    media_options=self.media_options,
                    metrics=self.metrics,
                )
                assert self._calls_nursery is not None
                # Not `start`: waiting for the call's tasks to be under way would cost
                # scheduler passes for nothing the proxy needs.
                self._calls_nursery.start_soon(call.run)
            except BaseException:
                self.ports.unbind(rtp_port, sockets)
                raise
            # From here the call's own task closes its sockets and releases its ports, also
            # when it is deleted (or the engine stops) before that task has run at all.
            self.calls.add(call)
            self.totals["calls"] += 1
            self.archive.recordings.on_new_call(call, request.record)
            media = call.media
            log.info(
                "call %s: offer from-tag %s, %s/%d ms, local port %d, remote %s",
                call_id, from_tag, media.codec, media.ptime_ms, rtp_port, media.remote,
            )

        reply = self.archive.offer_reply({"sdp": answer_sdp}, request.record)
        return ReplyFirst(reply, then=start_call)

    def _settings_for(self, request: OfferRequest) -> AiSettings:
        """``profile=NAME`` (a custom key from the proxy script) picks ``[openai:NAME]``."""
        profile = request.profile
        if not profile:
            return self.settings
        try:
            return self.profiles[profile]
        except KeyError:
            raise NgError(f"Unknown profile '{profile}'") from None

    def _reoffer(self, call: Call, request: OfferRequest) -> dict[str, Any]:
        """A re-INVITE (hold, resume, new address): same ports, codec and ptime (ctl/offers.py)."""
        call.last_signal = time.time()
        rtp = self.config["rtp"]
        media, answer_sdp, call.sdp_origin = offers.reoffer(
            request, call.media, call.answer_sdp, call.sdp_origin,
            codecs=rtp["codecs"], bind_ip=rtp["bind_ip"],
        )
        call.update_media(media, answer_sdp)
        self.archive.recordings.on_signal(call, request.record)
        log.info("call %s: re-offer, remote %s, %s", call.call_id, media.remote,
                 "sending" if media.sending else "on hold")
        return {"sdp": answer_sdp}

    def answer(self, request: AnswerRequest) -> dict[str, Any]:
        """The callee's answer: we are the callee, so the current answer SDP is the reply."""
        calls = queries.select(self.calls, request.select)
        if not calls:
            raise NgError(REASON_UNKNOWN_CALL)
        call = calls[0]
        call.last_signal = time.time()
        if call.to_tag is None:
            call.to_tag = request.to_tag  # learn our side's tag from the 2xx
        self.archive.recordings.on_signal(call, request.record)
        return {"sdp": call.answer_sdp}

    def delete(self, request: DeleteRequest) -> dict[str, Any]:
        """Answered at once, as rtpengine does: the reply is the statistics the call has now.

        The call is forgotten here (a ``query`` or another ``delete`` no longer finds it) and
        its closing goes on as its own bounded work, in its own task: the AI session's close
        (``CLOSE_ON_END``), then its sockets, then its ports, which a new offer gets only once
        they are closed. Waiting for that close held a proxy worker up to 50 ms per BYE, and
        250 ms under load (issue 18).
        """
        calls = queries.select(self.calls, request.select)
        if not calls:
            if request.fatal:
                raise NgError(REASON_NOT_FOUND)
            return {"warning": REASON_NOT_FOUND}
        delay, warning = request.delay, request.warning
        now = time.time()
        for call in calls:
            call.last_signal = now
        if delay > 0:
            # rtpengine keeps a deleted call for the delay (late retransmits, queries);
            # the statistics are those of now. The call ends itself when the delay is up.
            for call in calls:
                call.end_after(delay, f"deleted by the proxy (after {delay:g} s delay)")
            reply = queries.call_statistics(calls[0])
            if warning:
                reply["warning"] = warning
            return reply
        for call in calls:
            call.end(EndReason.DELETED, "deleted by the proxy", tell_proxy=False)
            self._forget(call)  # also a call that had ended by itself (timeout, AI failure)
        return queries.call_statistics(calls[0])

    def _call_ending(self, call: Call, reason: str, tell_proxy: bool) -> None:
        """A call ends. Deleted by the proxy (``tell_proxy`` False): forget it now, as
        rtpengine does. Otherwise it stays for the proxy's delete, and the proxy is asked to
        hang the caller up (by the call's own last task)."""
        if not tell_proxy:
            self._forget(call)
            return
        self.control.tell_ended(call, reason)

    async def drain(self, grace: float) -> None:
        """Graceful shutdown: refuse new calls, let calls finish for ``grace`` seconds, then
        hang up the rest through the proxy (and wait, bounded, for those requests)."""
        self.draining = True
        log.info("draining: %d calls, up to %g s", self.active_calls(), grace)
        await shutdown.drain(self.calls, grace, self.control)

    def _forget(self, call: Call) -> None:
        if call in self.calls:
            self.calls.remove(call)
            self._count_end(call)

    def _count_end(self, call: Call) -> None:
        self.totals["ended"] += 1
        kind = call.end_kind or EndReason.SHUTDOWN  # (as ctl/metrics.py counts it)
        self.ended_by[kind] += 1
        total = TOTALS_BY_END.get(kind)
        if total is not None:
            self.totals[total] += 1

    def query(self, request: CallSelector) -> dict[str, Any]:
        return queries.query(self.calls, request)

    def list_calls(self, request: ListRequest) -> dict[str, Any]:
        return queries.list_calls(self.calls, request)

    def unsupported(self, request: NgRequest) -> dict[str, Any]:
        raise NgError(f"Command not supported by rtpai (an AI endpoint): {request.command}")

    def reload_ai_settings(self, config: Config) -> None:
        """SIGHUP: ``[openai]`` and its profiles from ``config`` apply to calls offered from
        now on; running calls keep the settings (key, voice, prompt) they started with."""
        settings, profiles = self._configure_ai(config)
        # As at start-up: a tool the proxy cannot carry out is not promised to the caller.
        self.settings = self._tools_for_proxy(settings)
        self.profiles = {name: self._tools_for_proxy(s) for name, s in profiles.items()}
        refusal = self.settings.refusal_reason()
        if refusal:
            log.error("offers will be refused: %s", refusal)
        for note in self.settings.startup_notes():
            log.warning("%s", note)

    def summary(self) -> str:
        """One line of state for an operator (SIGUSR1): calls, ports, AI sessions."""
        return queries.state_line(self.calls, self.ports, len(self.control.under_way),
                                  self.draining)

    def active_calls(self) -> int:
        return queries.active_calls(self.calls)

    def statistics(self, request: NgRequest | None) -> dict[str, Any]:
        return queries.statistics(
            self.calls, started=self.started, ports=self.ports, rtp=self.config["rtp"],
            totals=self.totals, ended_by=self.ended_by, dispatcher=self.dispatcher,
            **self.archive.statistics(),
        )

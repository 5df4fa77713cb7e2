"""The engine: the call registry and the ng command handlers, over one nursery of calls."""

from __future__ import annotations

import errno
import logging
import random
import time
from typing import Any

import trio

from ctl import gcstats, offers, replies
from ctl.call import Call, CallState
from ctl.config import FLAVOR, Config
from ctl.dispatcher import Command, Dispatcher, ReplyFirst
from ctl.ng import (
    REASON_NO_PORTS,
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
from ctl.proxy import ProxyEvent, ProxyNotifier
from ctl.registry import CallRegistry
from media import flavor as flavors
from media import sdp
from media.bridge import EndReason
from media.clock import MediaClock
from media.flavor import AiSettings
from media.options import MediaOptions
from media.poller import MediaPoller
from media.ports import PortPairAllocator, PortsExhausted
from media.stream import bind_pair

log = logging.getLogger("rtpai.engine")

# A call that ended by itself (media timeout, AI failure) stays queryable for the proxy's
# delete this long, then it is forgotten so an absent delete cannot leak memory.
ENDED_CALL_LINGER = 300.0
HOUSEKEEPING_INTERVAL = 30.0
# Binding retries when another process holds a port of our range.
BIND_ATTEMPTS = 16

# The ng totals that count calls by why they ended (the kind, never the text of the reason).
TOTALS_BY_END = {EndReason.MEDIA_TIMEOUT: "timeouts", EndReason.AI_FAILED: "ai failures"}

# How long a transfer waits for the words the AI said before it to finish playing.
TRANSFER_PLAYOUT_WAIT = 15.0

# Commands the proxy modules can send that an AI endpoint does not implement: each gets a
# clear error (never silence, which would make the module retransmit and then disable us).
UNSUPPORTED_COMMANDS = (
    "play media", "stop media", "play DTMF", "block DTMF", "unblock DTMF", "block media",
    "unblock media", "silence media", "unsilence media", "start recording", "stop recording",
    "pause recording", "start forwarding", "stop forwarding",
)


class Engine:
    """Owns the calls. ``run`` opens the engine nursery and serves ng until cancelled."""

    def __init__(self, config: Config) -> None:
        self.config = config
        rtp = config["rtp"]
        self.ports = PortPairAllocator(rtp["min_port"], rtp["max_port"])
        self.media_options = MediaOptions.from_config(rtp)  # every call's [rtp] behaviour
        # The AI flavor, through the registry (media/flavor.py): ctl/ names none of its classes.
        self.flavor = flavors.get(FLAVOR)
        self.settings, self.profiles = self._configure_ai(config)
        self.calls: CallRegistry[Call] = CallRegistry()
        self.started = time.time()
        self.totals = {"calls": 0, "ended": 0, "timeouts": 0, "ai failures": 0,
                       "hangup failures": 0, "hangup timeouts": 0}
        self.dispatcher = Dispatcher(
            {
                "ping": self.ping,
                "offer": Command(self.offer, OfferRequest.parse),
                "answer": Command(self.answer, AnswerRequest.parse),
                "delete": Command(self.delete, DeleteRequest.parse),
                "query": Command(self.query, CallSelector.parse),
                "list": Command(self.list_calls, ListRequest.parse),
                "statistics": self.statistics,
                **{canonical_name(c).lower(): self.unsupported for c in UNSUPPORTED_COMMANDS},
            },
            allow=config["ng"]["allow"],
        )
        proxy = config["proxy"]
        self.proxy = ProxyNotifier(proxy["type"], proxy["url"], timeout=proxy["timeout"],
                                   retries=proxy["retries"])
        self.hangup_timeout = proxy["hangup_timeout"]
        # The model is offered only the tools this proxy can carry out (issue 19: a tool that
        # cannot work must not be promised to the caller).
        self.withheld_tools: dict[str, str] = {}
        self.settings = self._tools_for_proxy(self.settings)
        self.profiles = {name: self._tools_for_proxy(s) for name, s in self.profiles.items()}
        self.draining = False
        self._notifications: set[trio.Event] = set()  # proxy requests under way
        self._calls_nursery: trio.Nursery | None = None
        # One clock paces every call's RTP (media/clock.py); it lives in the engine nursery.
        self.clock = MediaClock()
        # One epoll set receives every call's RTP and RTCP (media/poller.py), likewise.
        self.poller = MediaPoller()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started`` gets the ng address."""
        refusal = self.settings.refusal_reason()
        if refusal:
            log.error("offers will be refused: %s", refusal)
        for note in self.settings.startup_notes():
            log.warning("%s", note)
        for tool, why in self.withheld_tools.items():
            log.warning("the model is not offered %s: %s", tool, why)
        async with trio.open_nursery() as nursery:
            self._calls_nursery = nursery
            await nursery.start(self.clock.run)
            await nursery.start(self.poller.run)
            nursery.start_soon(self._housekeeping)
            address = await nursery.start(serve_ng, self.config["ng"]["listen"], self.dispatcher)
            task_status.started(address)

    def _configure_ai(self, config: Config) -> tuple[AiSettings, dict[str, AiSettings]]:
        """The flavor's settings from its section, and one per profile ``[openai:NAME]``."""
        explicit = frozenset(key for section, key in config.explicit if section == FLAVOR)
        configure = self.flavor.configure
        return configure(config[FLAVOR], explicit), {
            name: configure(values, explicit) for name, values in config.profiles.items()
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

        rtp_port, sockets = self._bind_port_pair()
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
            self._unbind(rtp_port, sockets)
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
                    on_transfer=self._call_transfer,
                    on_hang_up=self._hang_up_through_proxy if self.proxy.enabled else None,
                    media_options=self.media_options,
                )
                assert self._calls_nursery is not None
                # Not `start`: waiting for the call's tasks to be under way would cost
                # scheduler passes for nothing the proxy needs.
                self._calls_nursery.start_soon(call.run)
            except BaseException:
                self._unbind(rtp_port, sockets)
                raise
            # From here the call's own task closes its sockets and releases its ports, also
            # when it is deleted (or the engine stops) before that task has run at all.
            self.calls.add(call)
            self.totals["calls"] += 1
            media = call.media
            log.info(
                "call %s: offer from-tag %s, %s/%d ms, local port %d, remote %s",
                call_id, from_tag, media.codec, media.ptime_ms, rtp_port, media.remote,
            )

        return ReplyFirst({"sdp": answer_sdp}, then=start_call)

    def _unbind(self, rtp_port: int, sockets) -> None:
        """Give back a pair that no call took over."""
        for sock in sockets:
            sock.close()
        self.ports.release(rtp_port)

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
        log.info("call %s: re-offer, remote %s, %s", call.call_id, media.remote,
                 "sending" if media.sending else "on hold")
        return {"sdp": answer_sdp}

    def _bind_port_pair(self):
        """Reserve a pair and bind it; a port taken by another process is skipped."""
        bind_ip = self.config["rtp"]["bind_ip"]
        for _ in range(BIND_ATTEMPTS):
            try:
                port = self.ports.allocate()
            except PortsExhausted:
                raise NgError(REASON_NO_PORTS) from None
            try:
                return port, bind_pair(bind_ip, port)
            except OSError as exc:
                self.ports.release(port)
                if exc.errno != errno.EADDRINUSE:
                    raise NgError(f"Cannot bind RTP port: {exc.strerror}") from None
        raise NgError(REASON_NO_PORTS)

    def _select(self, select: CallSelector) -> list[Call]:
        return self.calls.select(
            select.call_id, branch=select.branch, from_tag=select.from_tag, to_tag=select.to_tag
        )

    def answer(self, request: AnswerRequest) -> dict[str, Any]:
        """The callee's answer: we are the callee, so the current answer SDP is the reply."""
        calls = self._select(request.select)
        if not calls:
            raise NgError(REASON_UNKNOWN_CALL)
        call = calls[0]
        call.last_signal = time.time()
        if call.to_tag is None:
            call.to_tag = request.to_tag  # learn our side's tag from the 2xx
        return {"sdp": call.answer_sdp}

    def delete(self, request: DeleteRequest) -> dict[str, Any]:
        """Answered at once, as rtpengine does: the reply is the statistics the call has now.

        The call is forgotten here (a ``query`` or another ``delete`` no longer finds it) and
        its closing goes on as its own bounded work, in its own task: the AI session's close
        (``CLOSE_ON_END``), then its sockets, then its ports, which a new offer gets only once
        they are closed. Waiting for that close held a proxy worker up to 50 ms per BYE, and
        250 ms under load (issue 18).
        """
        calls = self._select(request.select)
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
            reply = self._call_statistics(calls[0])
            if warning:
                reply["warning"] = warning
            return reply
        for call in calls:
            call.end(EndReason.DELETED, "deleted by the proxy", tell_proxy=False)
            self._forget(call)  # also a call that had ended by itself (timeout, AI failure)
        return self._call_statistics(calls[0])

    def _call_ending(self, call: Call, reason: str, tell_proxy: bool) -> None:
        """A call ends. Deleted by the proxy (``tell_proxy`` False): forget it now, as
        rtpengine does. Otherwise it stays for the proxy's delete, and the proxy is asked to
        hang the caller up."""
        if not tell_proxy:
            self._forget(call)
            return
        if self._calls_nursery is not None:
            event = ProxyEvent("hangup", call.call_id, call.from_tag, call.to_tag, reason)
            done = trio.Event()
            self._notifications.add(done)
            self._calls_nursery.start_soon(self._notify_proxy, event, done)

    async def _notify_proxy(self, event: ProxyEvent, done: trio.Event) -> None:
        try:
            await self.proxy.notify(event)
        finally:
            self._notifications.discard(done)
            done.set()

    async def _hang_up_through_proxy(self, call: Call, kind: EndReason, reason: str,
                                     by_ai: bool) -> None:
        """A task of ``call``: ask the proxy to end it, then wait (bounded) for the delete,
        which cancels this task with the call."""
        record = call.hangup
        assert record is not None
        event = ProxyEvent("hangup", call.call_id, call.from_tag, call.to_tag, reason)
        try:
            outcome = await self.proxy.carry_out(event)
        finally:
            if call.state is CallState.ENDING and record["status"] == "requested":
                # The proxy's BYE came back as a delete before its answer did (OpenSIPS and
                # Kamailio send it while handling the request): done, whatever it answers.
                record["status"] = "sent"
        if not outcome.ok:
            record.update(status="failed", error=outcome.detail)
            self.totals["hangup failures"] += 1
            if by_ai:
                # The caller is still there: the model says so instead of going silent.
                call.bridge.action_failed("hang-up", outcome.detail)
                return
            # No delete will come: end here; ending without the proxy forgets the call too.
            call.end(kind, reason, tell_proxy=False)
            return
        record["status"] = "sent"
        call.pending_reason = (kind, reason)
        await self._await_delete(call, reason)

    async def _await_delete(self, call: Call, reason: str) -> None:
        """The proxy accepted: its delete ends the call (and this wait, a task of the call).
        Past ``[proxy] hangup_timeout`` the call ends here."""
        await trio.sleep(self.hangup_timeout)
        if call.hangup is not None:
            call.hangup["status"] = "no delete"
        self.totals["hangup timeouts"] += 1
        log.warning("call %s: no delete within %g s of the proxy's accepting (%s): ending the "
                    "call here", call.call_id, self.hangup_timeout, reason)
        call.end_unanswered(f"proxy did not hang up ({reason})")  # and forgets it

    def _call_transfer(self, call: Call, record: dict[str, Any]) -> None:
        """The AI asked for a transfer: once what it said so far has played, REFER.

        A task of the call: if the call ends first, there is nobody left to transfer."""
        if not call.follow_up(self._transfer_after_playout, call, record):
            record.update(status="failed", error="the call has ended")

    async def _transfer_after_playout(self, call: Call, record: dict[str, Any]) -> None:
        # "I'm transferring you now" must reach the caller before the REFER moves them; a
        # bound keeps a stuck queue from holding the transfer back for ever.
        with trio.move_on_after(TRANSFER_PLAYOUT_WAIT):
            await call.bridge.wait_playout_idle()
        target = record["target"]
        event = ProxyEvent("transfer", call.call_id, call.from_tag, call.to_tag,
                           "requested by the AI", target=target)
        try:
            outcome = await self.proxy.carry_out(event)
        finally:
            if call.state is CallState.ENDING and record["status"] == "requested":
                record["status"] = "sent"  # the proxy's delete came before its answer
        if not outcome.ok:
            record.update(status="failed", error=outcome.detail)
            call.bridge.action_failed("transfer", outcome.detail)
            return
        record["status"] = "sent"
        reason = f"transferred to {target}"
        if self.proxy.transfer_ends_dialog:
            # The proxy releases the old dialog itself (Kamailio's dlg_refer BYEs it).
            call.pending_reason = (EndReason.TRANSFERRED, reason)
            await self._await_delete(call, reason)
        else:
            # OpenSIPS's in-dialog REFER leaves the dialog up: end it now that the caller
            # has accepted, as Kamailio's dlg_refer does.
            call.hang_up(EndReason.TRANSFERRED, reason)

    async def drain(self, grace: float) -> None:
        """Graceful shutdown: refuse new calls, let calls finish for ``grace`` seconds, then
        hang up the rest through the proxy (and wait, bounded, for those requests)."""
        self.draining = True
        log.info("draining: %d calls, up to %g s", self.active_calls(), grace)
        with trio.move_on_after(grace):
            for call in list(self.calls):
                await call.ended.wait()
        for call in list(self.calls):
            call.end(EndReason.SHUTDOWN, "engine shutdown")
        with trio.move_on_after(self.proxy.timeout * (1 + self.proxy.retries) + 1):
            for call in list(self.calls):
                await call.ended.wait()
            for done in list(self._notifications):  # the hang-up requests, sent or given up
                await done.wait()

    def _forget(self, call: Call) -> None:
        if call in self.calls:
            self.calls.remove(call)
            self._count_end(call)

    def _count_end(self, call: Call) -> None:
        self.totals["ended"] += 1
        total = TOTALS_BY_END.get(call.end_kind) if call.end_kind else None
        if total is not None:
            self.totals[total] += 1

    def query(self, request: CallSelector) -> dict[str, Any]:
        calls = self._select(request)
        if calls:
            return self._call_statistics(calls[0])
        # As rtpengine: a known call-id with tags naming nobody lists no party.
        others = self.calls.select(request.call_id)
        if not others:
            raise NgError(REASON_UNKNOWN_CALL)
        return self._call_statistics(others[0], parties=False)

    def list_calls(self, request: ListRequest) -> dict[str, Any]:
        return {"calls": self.calls.call_ids()[: request.limit]}

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
        states: dict[str, int] = {}
        ai: dict[str, int] = {}
        for call in self.calls:
            states[call.state.value] = states.get(call.state.value, 0) + 1
            if call.state is not CallState.ENDED:
                ai[call.ai.state] = ai.get(call.ai.state, 0) + 1

        def counts(table: dict[str, int]) -> str:
            return ", ".join(f"{n} {name}" for name, n in sorted(table.items())) or "none"

        return (
            f"calls: {counts(states)}; ports in use: {self.ports.in_use}/{self.ports.capacity} "
            f"pairs; AI sessions: {counts(ai)}; proxy requests under way: "
            f"{len(self._notifications)}{'; draining' if self.draining else ''}"
        )

    def active_calls(self) -> int:
        return sum(1 for call in self.calls if call.state is not CallState.ENDED)

    def statistics(self, request: NgRequest) -> dict[str, Any]:
        gc_figures = gcstats.monitor.snapshot() if gcstats.monitor is not None else {}
        return replies.engine_statistics(self, wall=time.time(), gc=gc_figures)

    @staticmethod
    def _call_statistics(call: Call, *, parties: bool = True) -> dict[str, Any]:
        """The query/delete reply for ``call``, as of now."""
        return replies.call_statistics(call, wall=time.time(), now=trio.current_time(),
                                       parties=parties)

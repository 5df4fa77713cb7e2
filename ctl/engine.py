"""The engine: the call registry and the ng command handlers, over one nursery of calls."""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import secrets
import time
from typing import Any

import trio

from ctl.call import Call, CallMedia, CallState
from ctl.config import Config
from ctl.ng import (
    REASON_NO_CALL_ID,
    REASON_NO_FROM_TAG,
    REASON_NO_PORTS,
    REASON_NO_SDP,
    REASON_UNKNOWN_CALL,
    NgError,
    NgLoadLimit,
    NgRequest,
)
from ctl.ng_server import Dispatcher, serve_ng
from media import sdp
from media.ports import PortPairAllocator, PortsExhausted
from media.stream import bind_pair
from openai_flavor.settings import RealtimeSettings

log = logging.getLogger("rtpai.engine")

# A call that ended by itself (media timeout, AI failure) stays queryable for the proxy's
# delete this long, then it is forgotten so an absent delete cannot leak memory.
ENDED_CALL_LINGER = 300.0
HOUSEKEEPING_INTERVAL = 30.0
# Binding retries when another process holds a port of our range.
BIND_ATTEMPTS = 16


class Engine:
    """Owns the calls. ``run`` opens the engine nursery and serves ng until cancelled."""

    def __init__(self, config: Config) -> None:
        self.config = config
        rtp = config["rtp"]
        self.ports = PortPairAllocator(rtp["min_port"], rtp["max_port"])
        self.settings = RealtimeSettings.from_config(
            config["openai"], temperature_set=config.is_set("openai", "temperature")
        )
        self.calls: dict[str, Call] = {}
        self.started = time.time()
        self.totals = {"calls": 0, "ended": 0, "timeouts": 0, "ai failures": 0}
        self.dispatcher = Dispatcher(
            {
                "ping": self.ping,
                "offer": self.offer,
                "answer": self.answer,
                "delete": self.delete,
                "query": self.query,
                "list": self.list_calls,
                "statistics": self.statistics,
            }
        )
        self._calls_nursery: trio.Nursery | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started`` gets the ng address."""
        refusal = self.settings.refusal_reason()
        if refusal:
            log.error("offers will be refused: %s", refusal)
        if self.settings.dialect == "ga" and self.settings.temperature_set:
            log.warning(
                "[openai] temperature is set but the GA Realtime API has no temperature; "
                "it is not sent (it applies to dialect = beta only)"
            )
        async with trio.open_nursery() as nursery:
            self._calls_nursery = nursery
            nursery.start_soon(self._housekeeping)
            address = await nursery.start(serve_ng, self.config["ng"]["listen"], self.dispatcher)
            task_status.started(address)

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(HOUSEKEEPING_INTERVAL)
            now = time.time()
            for call_id, call in list(self.calls.items()):
                if call.state is CallState.ENDED and now - call.last_signal > ENDED_CALL_LINGER:
                    del self.calls[call_id]

    # --- ng handlers --------------------------------------------------------------------------

    async def ping(self, request: NgRequest) -> dict[str, Any]:
        return {"result": "pong"}

    async def offer(self, request: NgRequest) -> dict[str, Any]:
        call_id = request.require("call-id", REASON_NO_CALL_ID)
        from_tag = request.require("from-tag", REASON_NO_FROM_TAG)
        offer_sdp = request.require("sdp", REASON_NO_SDP)
        existing = self.calls.get(call_id)
        if existing is not None and existing.state is not CallState.ENDED:
            # A re-INVITE or a retransmit with a new cookie: the call keeps its ports.
            existing.last_signal = time.time()
            return {"sdp": self._reoffer(existing, offer_sdp)}
        refusal = self.settings.refusal_reason()
        if refusal:
            raise NgError(refusal)
        max_sessions = self.config["ng"]["max_sessions"]
        if max_sessions and self.active_calls() >= max_sessions:
            raise NgLoadLimit()
        try:
            offer = sdp.parse_sdp(offer_sdp)
            negotiated = sdp.negotiate(offer)
        except sdp.SdpError as exc:
            raise NgError(exc.reason) from None

        rtp_port, sockets = self._bind_port_pair()
        rtp_config = self.config["rtp"]
        advertised = rtp_config["ip"]
        session_id = secrets.randbelow(2**31)
        try:
            answer_sdp = sdp.build_answer(
                offer,
                negotiated,
                local_address=advertised,
                local_port=rtp_port,
                session_id=session_id,
                session_version=1,
            )
            media = self._call_media(offer, negotiated, advertised, rtp_port)
            remote = media.remote
            call = Call(
                call_id=call_id,
                from_tag=from_tag,
                to_tag=request.text("to-tag"),
                media=media,
                answer_sdp=answer_sdp,
                sockets=sockets,
                settings=self.settings,
                release_ports=lambda: self.ports.release(rtp_port),
                media_timeout=rtp_config["timeout"],
                send_silence=rtp_config["send_silence"],
                reorder_packets=rtp_config["reorder_packets"],
                strict_source=rtp_config["strict_source"],
                relatch=rtp_config["relatch"],
            )
        except BaseException:
            for sock in sockets:
                sock.close()
            self.ports.release(rtp_port)
            raise
        assert self._calls_nursery is not None
        # From here the call's own task closes its sockets and releases its ports.
        await self._calls_nursery.start(call.run)
        self.calls[call_id] = call
        call.offer_sdp = offer_sdp
        call.session_id = session_id
        self.totals["calls"] += 1
        log.info(
            "call %s: offer from-tag %s, %s/%d ms, local port %d, remote %s",
            call_id, from_tag, media.codec, media.ptime_ms, rtp_port, remote,
        )
        return {"sdp": answer_sdp}

    def _call_media(
        self, offer: sdp.SessionDescription, negotiated: sdp.Negotiated, advertised: str,
        rtp_port: int,
    ) -> CallMedia:
        """What the call's media stream needs from an offer/answer exchange."""
        remote = rtcp_remote = None
        if negotiated.remote_address:  # None for c=0.0.0.0 (negotiate drops it)
            address = self._sendable(negotiated.remote_address)
            remote = (address, negotiated.remote_port)
            rtcp_remote = (address, negotiated.remote_rtcp_port)
        event = negotiated.telephone_event
        # We receive unless our answer says sendonly/inactive (the caller's recvonly/inactive);
        # c=0.0.0.0 is RFC 2543 hold, which stops the caller's RTP as well as ours.
        caller_sends = negotiated.answer_direction in ("sendrecv", "recvonly") and not (
            negotiated.remote_address is None and negotiated.on_hold
        )
        return CallMedia(
            codec=negotiated.codec.encoding,
            payload_type=negotiated.codec.payload_type,
            ptime_ms=negotiated.ptime,
            protocol=offer.media[negotiated.media_index].protocol,
            local_address=advertised,
            local_port=rtp_port,
            remote=remote,
            sending=not negotiated.on_hold,
            telephone_event=event.payload_type if event is not None else None,
            rtcp_remote=rtcp_remote,
            rtcp_mux=negotiated.rtcp_mux,
            caller_sends=caller_sends,
        )

    def _sendable(self, address: str) -> str:
        """An IPv4 peer seen through a dual-stack ``::`` socket is ``::ffff:a.b.c.d``."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address  # an FQDN: left to the resolver, and latching fixes it anyway
        if ip.version == 4 and ":" in self.config["rtp"]["bind_ip"]:
            return f"::ffff:{ip}"
        return str(ip)

    def _reoffer(self, call: Call, offer_sdp: str) -> str:
        """Answer a repeated offer: the cached answer, or a new one if the SDP changed."""
        if offer_sdp == call.offer_sdp:
            return call.answer_sdp  # a retransmission with a new cookie
        try:
            offer = sdp.parse_sdp(offer_sdp)
            # The call keeps its codec and ptime: the pacer and the AI session are set up.
            negotiated = sdp.negotiate(offer, preference=(call.media.codec,))
        except sdp.SdpError as exc:
            raise NgError(exc.reason) from None
        negotiated = dataclasses.replace(negotiated, ptime=call.media.ptime_ms)
        media = self._call_media(offer, negotiated, call.media.local_address,
                                 call.media.local_port)
        call.session_version += 1
        answer_sdp = sdp.build_answer(
            offer,
            negotiated,
            local_address=call.media.local_address,
            local_port=call.media.local_port,
            session_id=call.session_id,
            session_version=call.session_version,
        )
        call.offer_sdp = offer_sdp
        call.update_media(media, answer_sdp)
        log.info(
            "call %s: re-offer, remote %s, %s", call.call_id, media.remote,
            negotiated.answer_direction,
        )
        return answer_sdp

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

    def _known_call(self, request: NgRequest) -> Call:
        call_id = request.require("call-id", REASON_NO_CALL_ID)
        call = self.calls.get(call_id)
        if call is None:
            raise NgError(REASON_UNKNOWN_CALL)
        return call

    async def answer(self, request: NgRequest) -> dict[str, Any]:
        call = self._known_call(request)
        call.last_signal = time.time()
        return {"sdp": call.answer_sdp}

    async def delete(self, request: NgRequest) -> dict[str, Any]:
        call_id = request.require("call-id", REASON_NO_CALL_ID)
        call = self.calls.get(call_id)
        if call is None:
            if "fatal" in request.flags:
                raise NgError(REASON_UNKNOWN_CALL)
            return {"warning": "Call-ID not found or tags didn't match"}
        call.last_signal = time.time()
        call.end("deleted by the proxy")
        await call.ended.wait()
        del self.calls[call_id]
        self._count_end(call)
        return call.statistics()

    def _count_end(self, call: Call) -> None:
        self.totals["ended"] += 1
        reason = call.end_reason or ""
        if reason.startswith("media timeout"):
            self.totals["timeouts"] += 1
        elif reason.startswith("AI session failed"):
            self.totals["ai failures"] += 1

    async def query(self, request: NgRequest) -> dict[str, Any]:
        return self._known_call(request).statistics()

    async def list_calls(self, request: NgRequest) -> dict[str, Any]:
        limit = request.integer("limit", 32)
        return {"calls": list(self.calls)[: max(limit or 0, 0)]}

    def active_calls(self) -> int:
        return sum(1 for call in self.calls.values() if call.state is not CallState.ENDED)

    async def statistics(self, request: NgRequest) -> dict[str, Any]:
        return {
            "statistics": {
                "currentstatistics": {
                    "sessionsown": self.active_calls(),
                    "sessionstotal": len(self.calls),
                    "portsinuse": self.ports.in_use,
                    "portscapacity": self.ports.capacity,
                },
                "totalstatistics": {
                    "uptime": int(time.time() - self.started),
                    "managedsessions": self.totals["calls"],
                    "endedsessions": self.totals["ended"],
                    "timeoutsessions": self.totals["timeouts"],
                    "aifailures": self.totals["ai failures"],
                },
                "controlstatistics": {
                    "proxies": [],
                    "commands": dict(self.dispatcher.commands),
                    "errors": dict(self.dispatcher.errors),
                },
            }
        }

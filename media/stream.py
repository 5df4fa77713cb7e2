"""One call's media: the RTP/RTCP sockets, the receiver, the paced sender and RTCP reports.

Sockets are plain non-blocking stdlib sockets. The engine's poller (media/poller.py) calls
``_rtp_readable``/``_rtcp_readable`` for each datagram waiting, instead of paying a trio
checkpoint (a scheduler pass) per packet as ``trio.socket`` would (python-trio/trio#1595); the
engine's clock (media/clock.py) calls ``tick`` when a frame is due. Neither costs a task per
call and packet.

The protocol work is done by sans-IO cores that take time as an argument: ``rtp`` (parsing,
packetizing), ``latch`` (which source may send: symmetric RTP, RTP Bleed), ``reorder`` (reorder
buffer, RFC 3550 statistics), ``rfc4733`` (key presses), ``rtcp_session`` over ``rtcp``
(reports, MOS) and ``playout`` (pacing). The ``[rtp]`` settings come as one ``MediaOptions``.
This module only moves bytes and time, and counts.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from media.bridge import CallBridge, CallerEvent, EndReason
from media.clock import ClockEntry, MediaClock, align
from media.latch import Endpoint, LatchPolicy, Verdict
from media.options import MediaOptions
from media.playout import Pacer
from media.poller import MediaPoller
from media.reorder import JitterEstimator, ReorderBuffer
from media.rfc4733 import DtmfDecoder
from media.rtcp import RtcpError
from media.rtcp_session import RtcpSession
from media.rtp import PT_COMFORT_NOISE, RtpError, RtpPacket, RtpPacketizer, is_rtcp, parse_rtp

log = logging.getLogger("rtpai.media")

MAX_DATAGRAM = 2048  # G.711 at 40 ms is 332 bytes; anything near this is not ours to take
# RFC 3550 section 6.2: 5 s is the minimum report interval, randomised over [0.5, 1.5] of it
# (section 6.3.1) so that calls started together do not report in lockstep.
RTCP_INTERVAL = 5.0
DEFAULT_OPTIONS = MediaOptions()


@dataclass
class DirectionStats:
    packets: int = 0
    bytes: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"packets": self.packets, "bytes": self.bytes, "errors": self.errors}


@dataclass
class MediaStats:
    rtp_in: DirectionStats = field(default_factory=DirectionStats)
    rtp_out: DirectionStats = field(default_factory=DirectionStats)
    rtcp_in: DirectionStats = field(default_factory=DirectionStats)
    rtcp_out: DirectionStats = field(default_factory=DirectionStats)
    malformed: int = 0  # not RTP at all, or lengths that do not add up
    rtcp_malformed: int = 0  # RTCP failing the RFC 3550 A.2 checks
    foreign_source: int = 0  # RTP from an address other than the latched one
    relatches: int = 0  # the latched address moved (policy or SDP allowed it)
    other_payload: int = 0  # payload types we did not negotiate (counted, not forwarded)
    comfort_noise: int = 0  # RFC 3389 packets, accepted and not forwarded
    dtmf_events: int = 0  # key presses decoded (RFC 4733)
    events_dropped: int = 0  # key presses the AI session did not take in time
    ai_queue_full: int = 0  # caller frames dropped because the AI session fell behind
    send_errors: int = 0
    pacer_reanchors: int = 0
    last_packet: float | None = None  # trio clock
    last_ssrc: int | None = None


def bind_pair(bind_ip: str, rtp_port: int) -> tuple[socket.socket, socket.socket]:
    """Bind the RTP socket on ``rtp_port`` and RTCP on ``rtp_port + 1``; OSError if taken."""
    family = socket.AF_INET6 if ":" in bind_ip else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for port in (rtp_port, rtp_port + 1):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setblocking(False)
            if family == socket.AF_INET6 and ipaddress.ip_address(bind_ip).is_unspecified:
                # `::` takes IPv4 callers too (as ::ffff:a.b.c.d): one engine, both families.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((bind_ip, port))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets[0], sockets[1]


def close_socket(sock: socket.socket) -> None:
    trio.lowlevel.notify_closing(sock)
    sock.close()


class MediaStream:
    """The caller's RTP in, our paced RTP out, and RTCP both ways, for one call.

    ``remote`` is where the SDP says the caller receives RTP (None while it holds with
    c=0.0.0.0); ``rtcp_remote`` the same for RTCP (ignored with ``rtcp_mux``). Symmetric RTP
    (RFC 4961): until the first valid packet we send to the SDP's address, then to the source
    of that packet, which is what gets through the caller's NAT.
    """

    def __init__(
        self,
        bridge: CallBridge,
        rtp_socket: socket.socket,
        rtcp_socket: socket.socket,
        *,
        payload_type: int,
        remote: Endpoint | None,
        options: MediaOptions = DEFAULT_OPTIONS,
        caller_events: trio.MemorySendChannel[CallerEvent] | None = None,
        telephone_event: int | None = None,
        rtcp_remote: Endpoint | None = None,
        rtcp_mux: bool = False,
        sending: bool = True,
        caller_sends: bool = True,
        wall_clock=time.time,
        on_media_started: Callable[[], None] | None = None,
    ) -> None:
        self.bridge = bridge
        self.rtp_socket = rtp_socket
        self.rtcp_socket = rtcp_socket
        self.payload_type = payload_type
        self.telephone_event = telephone_event
        self.options = options
        # Which source may send (and so where we send once latched): media/latch.py.
        self.latch = LatchPolicy(
            remote, relatch=options.relatch, strict_source=options.strict_source
        )
        # Where we send: the SDP's address until the first valid packet, then its source.
        self.remote = remote
        self.caller_events = caller_events
        self.sending = sending  # False while the caller holds the call (sendonly/inactive)
        self.caller_sends = caller_sends  # False when the caller says it will not (inactive)
        self.stats = MediaStats()
        self.packetizer = RtpPacketizer(payload_type)
        ptime = bridge.ptime_ms / 1000
        reorder_packets = options.reorder_packets
        self.reorder = ReorderBuffer(
            self._deliver,
            depth=reorder_packets,
            max_wait=max(reorder_packets, 1) * ptime,
            on_restart=self._on_stream_restart,
        )
        self.jitter = JitterEstimator()
        self.dtmf = DtmfDecoder()
        self.rtcp = RtcpSession(
            self.packetizer.ssrc, self.reorder, self.jitter, sdp_remote=rtcp_remote, mux=rtcp_mux
        )
        self._sent_since_report = False  # set per RTP packet sent: the next report is an SR
        self._wall = wall_clock
        self._on_media_started = on_media_started  # told once, at the first latch
        self._now = 0.0  # trio time of the datagram being handled
        self._timer_scope: trio.CancelScope | None = None  # media timeout, reorder gap
        self._timeout_from = 0.0  # trio time the media timeout counts from, besides packets
        self._timed_out = False
        # Paced sending (see ``tick``): the clock registration, the grid once started.
        self._clock: MediaClock | None = None
        self._pacing: ClockEntry | None = None
        self._pacer: Pacer | None = None
        self._talking = False
        # Idle silence only once the caller's media has flowed (``bridge.media_started``), as
        # rtpengine: while the phone rings nobody listens, the SDP address is often a NATed
        # private one, and a thousand ringing calls would otherwise cost as much as a thousand
        # answered ones. A plain attribute, set at the first latch, rather than a property over
        # the event: ``tick`` reads it for every silence frame.
        self._idle_sends_silence = options.send_silence and bridge.media_started.is_set()
        self._samples = bridge.ptime_ms * 8  # 8000 Hz
        self._silence = bytes((bridge.silence_byte,)) * self._samples
        # Caller audio to the AI in batches of this many frames ([rtp] ai_batch_ms): fewer
        # WebSocket messages (each a send syscall) for up to a batch's worth of latency.
        self._ai_batch_frames = max(1, round(options.ai_batch_ms / bridge.ptime_ms))
        self._ai_batch: list[bytes] = []
        self._ai_batch_since = 0.0
        self._ai_batch_max_age = self._ai_batch_frames * ptime

    # --- re-offer -----------------------------------------------------------------------------

    def update(
        self,
        *,
        remote: Endpoint | None,
        rtcp_remote: Endpoint | None,
        sending: bool,
        caller_sends: bool,
    ) -> None:
        """A re-offer (hold, resume, a moved endpoint) changed what the SDP says."""
        moved = self.latch.sdp_changed(remote)
        self.rtcp.sdp_changed(rtcp_remote, moved=moved)
        self.sending = sending
        self.caller_sends = caller_sends
        if moved:
            self.remote = remote  # send there now; latched afresh on the first packet
        self._restart_timeout()

    # --- receive ------------------------------------------------------------------------------

    async def run(self, poller: MediaPoller) -> None:
        """The stream's task: its sockets are registered with ``poller`` while it runs, and it
        keeps the stream's two timers; returns if the media timeout expires, else runs until
        cancelled.

        Datagrams are handled as they arrive by the engine's ``poller`` (one wake-up for all
        calls' sockets, media/poller.py), synchronously, not by this task: it only wakes for
        the media timeout and the reorder buffer's open gap.
        """
        try:
            poller.register(self.rtp_socket, self._rtp_readable, self._receive_failed)
            poller.register(self.rtcp_socket, self._rtcp_readable, self._receive_failed)
            await self._keep_timers()
        finally:
            poller.unregister(self.rtp_socket)
            poller.unregister(self.rtcp_socket)

    async def _keep_timers(self) -> None:
        self._timeout_from = trio.current_time()
        reorder = self.reorder
        while True:
            # The timeout's deadline is set once and moved only when it fires: a packet just
            # records its time (``stats.last_packet``), which costs nothing, instead of
            # re-registering a trio deadline per packet. When the deadline comes, a packet
            # that arrived meanwhile pushes it on; otherwise the call has timed out. So it
            # fires exactly ``timeout`` after the last packet, for one wake-up per period.
            # A reorder gap opened by a packet brings the wake-up forward (_rtp_readable).
            with trio.CancelScope(deadline=self._next_timer()) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            now = trio.current_time()
            if reorder.deadline is not None:
                reorder.expire(now)  # give up on a gap even if nothing else arrives
            if self._timeout_deadline() <= now:
                self._timed_out = True
                return

    def _next_timer(self) -> float:
        timeout = self._timeout_deadline()
        gap = self.reorder.deadline
        return timeout if gap is None or gap > timeout else gap

    def _rtp_readable(self, now: float) -> None:
        """The poller's call: take one datagram off the RTP socket (the poller calls again
        while more are waiting, media/poller.py)."""
        try:
            data, source = self.rtp_socket.recvfrom(MAX_DATAGRAM)
        except BlockingIOError:
            return
        except OSError:
            # ICMP port unreachable from an earlier send surfaces here on Linux.
            self.stats.send_errors += 1
            return
        reorder = self.reorder
        self._now = now
        if reorder.deadline is not None:
            reorder.expire(now)
        self.on_datagram(data, source)
        gap = reorder.deadline
        scope = self._timer_scope
        if gap is not None and scope is not None and gap < scope.deadline:
            scope.deadline = gap  # a gap opened: wake up to give up on it

    def _rtcp_readable(self, now: float) -> None:
        """The poller's call: one datagram off the RTCP port (with rtcp-mux RTCP comes with
        the RTP)."""
        try:
            data, source = self.rtcp_socket.recvfrom(MAX_DATAGRAM)
        except OSError:
            return
        self._now = now
        self._on_rtcp(data, source[:2])

    def _receive_failed(self) -> None:
        """The poller dropped a socket after its handler raised (a bug): end the call."""
        self.bridge.end_call(EndReason.MEDIA_FAILURE, "media failure: internal error")

    @property
    def timed_out(self) -> bool:
        return self._timed_out

    def _timeout_deadline(self) -> float:
        timeout = self.options.timeout
        if not (timeout and self.caller_sends):
            # A caller on hold with a=inactive (or c=0.0.0.0) legitimately sends nothing.
            return math.inf
        last = self.stats.last_packet
        start = self._timeout_from if last is None else max(last, self._timeout_from)
        return start + timeout

    def _restart_timeout(self) -> None:
        """A re-offer: the timeout counts afresh from now (or stops, on hold)."""
        self._timeout_from = trio.current_time()
        if self._timer_scope is not None:
            self._timer_scope.deadline = self._next_timer()

    def on_datagram(self, data: bytes, source: tuple) -> None:
        """One datagram on the RTP port (``self._now`` is its arrival time)."""
        stats = self.stats
        if is_rtcp(data):  # RFC 5761 muxed RTCP
            self._on_rtcp(data, source[:2])
            return
        try:
            packet = parse_rtp(data)
        except RtpError:
            stats.malformed += 1
            stats.rtp_in.errors += 1
            return
        source = source[:2]
        now = self._now
        latch = self.latch
        if source != latch.latched:  # the policy is asked only about a stranger
            verdict = latch.accept(source, now, stats.last_packet)
            if verdict is Verdict.FOREIGN:
                stats.foreign_source += 1
                stats.rtp_in.errors += 1
                return
            self._latched(verdict, source)
        stats.rtp_in.packets += 1
        stats.rtp_in.bytes += len(data)
        stats.last_packet = now
        stats.last_ssrc = packet.ssrc
        self.reorder.push(packet, now)
        if packet.payload_type == self.payload_type:
            self.jitter.update(packet.timestamp, now)  # RFC 3550: at arrival, audio only

    def _on_stream_restart(self) -> None:
        """A new SSRC or a sequence restart: timestamps start afresh (RFC 3550 A.1)."""
        self.jitter.reset()
        self._emit(self.dtmf.restart())

    def _latched(self, verdict: Verdict, source: Endpoint) -> None:
        """The latch policy took ``source``: from now on our RTP goes there."""
        self.remote = source
        if verdict is Verdict.MOVED:
            self.stats.relatches += 1
        if verdict is not Verdict.FIRST:
            return
        self.bridge.mark("first_caller_rtp")
        if not self.bridge.media_started.is_set():
            self.bridge.media_started.set()
            if self._on_media_started is not None:
                self._on_media_started()
        self._idle_sends_silence = self.options.send_silence
        self._wake_pacer()  # from now on we send silence between answers

    def _deliver(self, packet: RtpPacket) -> None:
        """The reorder buffer's output, in sequence order."""
        pt = packet.payload_type
        if pt == self.payload_type:
            if self.dtmf.pending:  # an event is open: audio may show it has ended
                self._emit(self.dtmf.audio(packet.timestamp))
            self._to_ai(packet.payload)
        elif pt == self.telephone_event:
            self._emit(self.dtmf.packet(packet.timestamp, packet.payload))
        elif pt == PT_COMFORT_NOISE:
            self.stats.comfort_noise += 1  # RFC 3389: the caller is silent; nothing to forward
        else:
            self.stats.other_payload += 1

    def _to_ai(self, frame: bytes) -> None:
        """Hand a caller frame to the AI session, alone or (``ai_batch_ms``) in a batch.

        Batches are only formed while the clock ticks this stream (pacing, not parked): a
        tick flushes a batch the caller left unfinished (end of a talkspurt, DTX), so no
        audio waits longer than a batch plus one frame. A parked stream hands frames over
        one by one.
        """
        batch = self._ai_batch
        if self._ai_batch_frames > 1 and self._pacing is not None and self._pacing.due is not None:
            if not batch:
                self._ai_batch_since = self._now
            batch.append(frame)
            if len(batch) >= self._ai_batch_frames:
                self._flush_ai_batch()
            return
        if batch:
            self._flush_ai_batch()
        if not self.bridge.caller_audio(frame):
            self.stats.ai_queue_full += 1  # the media path never waits for the AI

    def _flush_ai_batch(self) -> None:
        batch = self._ai_batch
        if not self.bridge.caller_audio(b"".join(batch) if len(batch) > 1 else batch[0]):
            self.stats.ai_queue_full += len(batch)
        batch.clear()

    def _emit(self, event: CallerEvent | None) -> None:
        if event is None:
            return
        self.stats.dtmf_events += 1
        if self.caller_events is None:
            return
        try:
            self.caller_events.send_nowait(event)
        except trio.WouldBlock:
            self.stats.events_dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.stats.events_dropped += 1

    # --- RTCP ---------------------------------------------------------------------------------

    def _on_rtcp(self, data: bytes, source: Endpoint) -> None:
        stats = self.stats
        if not self.latch.rtcp_source_ok(source):
            stats.foreign_source += 1
            stats.rtcp_in.errors += 1
            return
        try:
            self.rtcp.receive(data, source, self._now, self._wall())
        except RtcpError:
            stats.rtcp_malformed += 1
            stats.rtcp_in.errors += 1
            return
        stats.rtcp_in.packets += 1
        stats.rtcp_in.bytes += len(data)

    async def send_rtcp(self) -> None:
        """An SR (while we send) or RR, with SDES CNAME, every ~5 s (RFC 3550 section 6.2)."""
        while True:
            await trio.sleep(RTCP_INTERVAL * random.uniform(0.5, 1.5))
            if self.latch.latched is None and self._pacer is None:
                continue  # no media either way yet (ringing): nothing to report, as rtpengine
            self._now = trio.current_time()
            self.send_report()

    def send_report(self) -> None:
        """Build and send one compound RTCP report now; also samples the caller's quality."""
        sender = None
        if self._sent_since_report:
            out = self.stats.rtp_out
            sender = (self.packetizer.timestamp, out.packets, out.bytes)
            self._sent_since_report = False
        rtcp = self.rtcp
        packet = rtcp.report(self._now, self._wall(), sender)
        # Unlike RTP, RTCP goes on while the caller holds (RFC 3264 section 5.1): only a
        # missing address (c=0.0.0.0) stops it.
        destination = rtcp.destination(self.remote, self.latch)
        if destination is None:
            return
        sock = self.rtp_socket if rtcp.mux else self.rtcp_socket
        try:
            sock.sendto(packet, destination)
        except OSError:
            self.stats.send_errors += 1
            return
        self.stats.rtcp_out.packets += 1
        self.stats.rtcp_out.bytes += len(packet)

    # --- send ---------------------------------------------------------------------------------

    # Pacing is driven by the engine's media clock (media/clock.py), which calls ``tick`` when
    # this call's next frame is due: no timer and no task per call and packet.

    def start_pacing(self, clock: MediaClock) -> None:
        """Register with the media clock; parked until there is something to send."""
        self._clock = clock
        self._pacing = clock.register(self)
        self.bridge.playout.on_audio = self._wake_pacer
        self._wake_pacer()

    def stop_pacing(self) -> None:
        """Unregister from the media clock (the call's ``finally``)."""
        if self._pacing is not None and self._clock is not None:
            self._clock.unregister(self._pacing)
        self._pacing = None
        self._clock = None
        self.bridge.playout.on_audio = None

    def close(self) -> None:
        """The call's end (its ``finally``, before the sockets close): stop pacing, and drop
        every callback that points back at this stream or its call, so that the call's objects
        are freed by reference counting when it is forgotten, not by the cycle collector."""
        self.stop_pacing()
        self.reorder.detach()
        self._on_media_started = None

    def _wake_pacer(self) -> None:
        """Audio was queued or the caller's media started: unpark the sender if it can send."""
        entry = self._pacing
        if entry is None or entry.due is not None:
            return
        if not self._idle_sends_silence and self.bridge.playout.queued_frames == 0:
            return
        now = trio.current_time()
        pacer = self._pacer
        if pacer is None:
            # The stream's first packet: it goes at once (on the clock's next 1 ms lattice
            # point, which the grid is anchored on so that calls share wake-ups).
            pacer = self._pacer = Pacer(self.bridge.ptime_ms / 1000, align(now))
        else:
            # Back on the grid; the slots we were parked through still advance the timestamp,
            # so the caller's jitter buffer sees the true timing (the marker says it resumed).
            skipped = pacer.skip_to(now)
            if skipped:
                self.packetizer.silence_gap(skipped * self._samples)
        assert self._clock is not None
        self._clock.schedule(entry, pacer.next_deadline)

    def tick(self, now: float) -> float | None:
        """Send the frame due now: AI audio, else silence (or nothing).

        Returns the next deadline, or None to park: nothing to play and no silence to send.
        """
        bridge = self.bridge
        packetizer = self.packetizer
        samples = self._samples
        park = False
        frame = bridge.playout.pop_frame()
        if frame is not None:
            if not self._talking:
                packetizer.start_talkspurt()  # RFC 3551 4.1: marker on a talkspurt's start
                self._talking = True
                bridge.mark("first_rtp_to_caller")
            self._send(packetizer.packet(frame, samples))
        else:
            if self._talking:
                self._talking = False
                bridge.playout_ran_dry()  # e.g. a hang-up waiting for the goodbye goes now
            if self._idle_sends_silence:
                self._send(packetizer.packet(self._silence, samples))
            else:
                packetizer.silence_gap(samples)  # the timestamp still advances
                park = True
        if self._ai_batch and (park or now - self._ai_batch_since >= self._ai_batch_max_age):
            self._flush_ai_batch()  # the caller stopped mid-batch, or no tick will follow
        pacer = self._pacer
        assert pacer is not None
        if pacer.advance(now):
            self.stats.pacer_reanchors += 1
        return None if park else pacer.next_deadline

    def pacing_failed(self) -> None:
        """The media clock dropped this stream after ``tick`` raised (a bug): end the call."""
        self.bridge.end_call(EndReason.MEDIA_FAILURE, "media failure: internal error")

    def _send(self, packet: bytes) -> None:
        # Not connect()ed to the latched address and sent with send(), although that costs
        # ~950 instructions and ~0.5 us less per packet here (Python parses no address, the
        # kernel keeps the route; bench/micro_media): a connected UDP socket only receives from
        # its peer, so the kernel would drop anyone else's RTP (answering with an ICMP error)
        # where we count it as foreign_source, and the relatch policies would never see the
        # packet that should move the call (from the SDP's address after a NAT latch, or from a
        # new source after RELATCH_SILENCE). docs/performance.md, recommendation 6.
        if self.remote is None or not self.sending:
            return
        try:
            self.rtp_socket.sendto(packet, self.remote)
        except BlockingIOError:
            self.stats.send_errors += 1  # the kernel's buffer is full: drop, never block
            return
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                log.debug("call %s: RTP send failed: %s", self.bridge.call_id, exc)
            self.stats.send_errors += 1
            return
        self._sent_since_report = True
        self.stats.rtp_out.packets += 1
        self.stats.rtp_out.bytes += len(packet)

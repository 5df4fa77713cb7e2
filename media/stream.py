"""One call's media: the RTP/RTCP sockets, the receiver, the paced sender and RTCP reports.

Sockets are plain non-blocking stdlib sockets. The engine's poller (media/poller.py) calls
``_rtp_readable``/``_rtcp_readable`` for each datagram waiting, instead of paying a trio
checkpoint (a scheduler pass) per packet as ``trio.socket`` would (python-trio/trio#1595); the
engine's clock (media/clock.py) calls ``tick`` when a frame is due. Neither costs a task per
call and packet.

The protocol work is done by sans-IO cores that take time as an argument: ``rtp`` (parsing,
packetizing), ``latch`` (which source may send: symmetric RTP, RTP Bleed), ``reorder`` (reorder
buffer, RFC 3550 statistics), ``rfc4733`` (key presses), ``rtcp_session`` over ``rtcp``
(reports, MOS), ``playout`` (pacing), ``caller_feed`` (audio batches and key presses to the
AI session) and ``media_timeout``. The ``[rtp]`` settings come as one ``MediaOptions``, the
counters are ``stats.MediaStats``, the sockets ``sockets.bind_pair``'s. This module only moves
bytes and time between them, and counts.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import time
from collections.abc import Callable

import trio

from media.bridge import CallBridge, CallerEvent, EndReason
from media.caller_feed import CallerAudioBatcher, CallerEventOutbox
from media.clock import MediaClock
from media.latch import Endpoint, LatchPolicy, Verdict
from media.media_timeout import MediaTimeout
from media.options import MediaOptions
from media.poller import SocketPoller
from media.recording import CallRecording
from media.reorder import JitterEstimator, ReorderBuffer
from media.rfc4733 import DtmfDecoder
from media.rtcp import RtcpError
from media.rtcp_session import RtcpSession
from media.rtp import PT_COMFORT_NOISE, RtpError, RtpPacket, RtpPacketizer, is_rtcp, parse_rtp
from media.sender import PacedSender

# bind_pair and close_socket live in media/sockets.py; re-exported here because ctl/ (being
# restructured by others right now) and bench/ import them from this module.
from media.sockets import MAX_DATAGRAM, bind_pair, close_socket  # noqa: F401
from media.stats import MediaStats

log = logging.getLogger("rtpai.media")

# RFC 3550 section 6.2: 5 s is the minimum report interval, randomised over [0.5, 1.5] of it
# (section 6.3.1) so that calls started together do not report in lockstep.
RTCP_INTERVAL = 5.0
DEFAULT_OPTIONS = MediaOptions()


def report_interval() -> float:
    return RTCP_INTERVAL * random.uniform(0.5, 1.5)


class MediaStream:
    """The caller's RTP in, our paced RTP out, and RTCP both ways, for one call.

    ``remote`` is where the SDP says the caller receives RTP (None while it holds with
    c=0.0.0.0); ``rtcp_remote`` the same for RTCP (ignored with ``rtcp_mux``). Symmetric RTP
    (RFC 4961): until the first valid packet we send to the SDP's address, then to the source
    of that packet, which is what gets through the caller's NAT.
    """

    # Slots (issue 16's per-call cost): one per call, nothing assigns others.
    __slots__ = (
        "bridge", "rtp_socket", "rtcp_socket", "payload_type", "telephone_event", "options",
        "latch", "stats", "events", "ai_audio", "sender", "reorder", "jitter", "dtmf", "rtcp",
        "_wall", "_on_media_started", "_now", "_timer_scope", "_next_report", "timeout",
        "_timed_out", "_recorder",
    )

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
        self.stats = stats = MediaStats()
        self.events = CallerEventOutbox(caller_events, stats)  # key presses to the AI
        ptime = bridge.ptime_ms / 1000
        self.ai_audio = CallerAudioBatcher(
            bridge, stats, frames=round(options.ai_batch_ms / bridge.ptime_ms),
            frame_seconds=ptime,
        )
        # Our RTP, paced by the engine's clock. Where it goes: the SDP's address until the
        # first valid packet, then its source.
        self.sender = PacedSender(
            bridge, rtp_socket, stats, self.ai_audio, payload_type=payload_type, remote=remote,
            sending=sending, send_silence=options.send_silence,
        )
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
            self.sender.packetizer.ssrc, self.reorder, self.jitter,
            sdp_remote=rtcp_remote, mux=rtcp_mux,
        )
        self._wall = wall_clock
        self._on_media_started = on_media_started  # told once, at the first latch
        self._now = 0.0  # trio time of the datagram being handled
        self._timer_scope: trio.CancelScope | None = None  # media timeout, gap, RTCP
        self._next_report = math.inf  # trio time of the next RTCP report (set by run)
        self.timeout = MediaTimeout(options.timeout, caller_sends=caller_sends)
        self._timed_out = False
        self._recorder: CallRecording | None = None

    @property
    def recorder(self) -> CallRecording | None:
        """The call's recording being made (ctl/recordings.py sets it), or None: both
        directions' frames are handed to it as they are received and sent."""
        return self._recorder

    @recorder.setter
    def recorder(self, recording: CallRecording | None) -> None:
        self._recorder = self.sender.recorder = recording

    @property
    def caller_sends(self) -> bool:
        """False when the SDP says the caller will not send (inactive): no media timeout."""
        return self.timeout.caller_sends

    @property
    def remote(self) -> Endpoint | None:
        """Where our RTP goes (None: nowhere yet)."""
        return self.sender.remote

    @property
    def sending(self) -> bool:
        """False while the caller holds the call (sendonly/inactive)."""
        return self.sender.sending

    @property
    def packetizer(self) -> RtpPacketizer:
        return self.sender.packetizer

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
        self.sender.sending = sending
        if moved:
            self.sender.remote = remote  # send there now; latched afresh on the first packet
        # The timeout counts afresh from now (or stops, on hold).
        self.timeout.restart(trio.current_time(), caller_sends=caller_sends)
        if self._timer_scope is not None:
            self._timer_scope.deadline = self._next_timer()

    # --- receive ------------------------------------------------------------------------------

    async def run(self, poller: SocketPoller) -> None:
        """The stream's task: its sockets are registered with ``poller`` while it runs, and it
        keeps the stream's timers; returns if the media timeout expires, else runs until
        cancelled.

        Datagrams are handled as they arrive by the engine's ``poller`` (one wake-up for all
        calls' sockets, media/poller.py), synchronously, not by this task: it only wakes for
        the media timeout, the reorder buffer's open gap and the RTCP reports.
        """
        try:
            poller.register(self.rtp_socket, self._rtp_readable, self._receive_failed)
            poller.register(self.rtcp_socket, self._rtcp_readable, self._receive_failed)
            await self.keep_timers()
        finally:
            poller.unregister(self.rtp_socket)
            poller.unregister(self.rtcp_socket)

    async def keep_timers(self) -> None:
        """The media timeout, the reorder gap and the RTCP reports: one sleep for the three
        (the reports had a task of their own per call before issue 16's per-call cut).
        Returns when the media timeout expires."""
        timeout = self.timeout
        timeout.since = now = trio.current_time()
        self._next_report = now + report_interval()
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
            if now >= self._next_report:
                self._report_due(now)
            if timeout.deadline(self.stats.last_packet) <= now:
                self._timed_out = True
                return

    def _next_timer(self) -> float:
        due = min(self.timeout.deadline(self.stats.last_packet), self._next_report)
        gap = self.reorder.deadline
        return due if gap is None or gap > due else gap

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
        self.events.put(self.dtmf.restart())

    def _latched(self, verdict: Verdict, source: Endpoint) -> None:
        """The latch policy took ``source``: from now on our RTP goes there."""
        self.sender.remote = source
        if verdict is Verdict.MOVED:
            self.stats.relatches += 1
        if verdict is not Verdict.FIRST:
            return
        self.bridge.mark("first_caller_rtp")
        if not self.bridge.media_started.is_set():
            self.bridge.media_started.set()
            if self._on_media_started is not None:
                self._on_media_started()
        self.sender.caller_media_started()  # from now on we send silence between answers

    def _deliver(self, packet: RtpPacket) -> None:
        """The reorder buffer's output, in sequence order."""
        pt = packet.payload_type
        if pt == self.payload_type:
            if self.dtmf.pending:  # an event is open: audio may show it has ended
                self.events.put(self.dtmf.audio(packet.timestamp))
            self.ai_audio.push(packet.payload, self._now)
            recorder = self._recorder  # the attribute, not the property: a call per packet
            if recorder is not None:  # placed on the recording's timeline (media/recording.py)
                recorder.caller(packet.payload, packet.timestamp, self._now)
        elif pt == self.telephone_event:
            self.events.put(self.dtmf.packet(packet.timestamp, packet.payload))
        elif pt == PT_COMFORT_NOISE:
            self.stats.comfort_noise += 1  # RFC 3389: the caller is silent; nothing to forward
        else:
            self.stats.other_payload += 1

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

    def _report_due(self, now: float) -> None:
        """An SR (while we send) or RR, with SDES CNAME, every ~5 s (RFC 3550 section 6.2)."""
        self._next_report = now + report_interval()
        if self.latch.latched is None and self.sender.pacer is None:
            return  # no media either way yet (ringing): nothing to report, as rtpengine
        self._now = now
        try:
            self.send_report()
        except Exception:
            # A bug in a report must end this call, never escape into the engine's nursery
            # and take every call with it (an RTCP port of 65536 once did); no more reports.
            log.exception("call %s: RTCP failed", self.bridge.call_id)
            self._next_report = math.inf
            self.bridge.end_call(EndReason.MEDIA_FAILURE, "media failure: internal error")

    def send_report(self) -> None:
        """Build and send one compound RTCP report now; also samples the caller's quality."""
        sent = None
        rtp = self.sender
        rtp.sync_stats(report=True)  # the send thread's counters, when it sends for us
        if rtp.sent_since_report:
            out = self.stats.rtp_out
            sent = (rtp.packetizer.timestamp, out.packets, out.bytes)
            rtp.sent_since_report = False
        rtcp = self.rtcp
        packet = rtcp.report(self._now, self._wall(), sent)
        # Unlike RTP, RTCP goes on while the caller holds (RFC 3264 section 5.1): only a
        # missing address (c=0.0.0.0) stops it.
        destination = rtcp.destination(rtp.remote, self.latch)
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

    # --- send: media/sender.py --------------------------------------------------------------

    def start_pacing(self, clock: MediaClock) -> None:
        """Register our sender with the media clock; parked until there is something to send."""
        self.sender.start(clock)

    def stop_pacing(self) -> None:
        """Unregister from the media clock (the call's ``finally``)."""
        self.sender.stop()

    def close(self) -> None:
        """The call's end (its ``finally``, before the sockets close): stop pacing, and drop
        every callback that points back at this stream or its call, so that the call's objects
        are freed by reference counting when it is forgotten, not by the cycle collector."""
        self.stop_pacing()
        self.reorder.detach()
        self._on_media_started = None

"""One call's paced RTP to the caller: a frame per ptime on the engine's media clock.

The engine's clock (media/clock.py) calls :meth:`PacedSender.tick` when this call's next frame
is due: no timer and no task per call and packet. Each tick sends the AI's next frame
(media/playout.py's queue), else a frame of silence once the caller's media has flowed, else
nothing, and then the sender *parks* (the clock forgets it) until :meth:`PacedSender.wake`.
The grid is a ``Pacer`` (media/playout.py), the packets an ``RtpPacketizer`` (media/rtp.py).

With the media send thread (media/send_thread.py) the same work runs in C, off trio: the
sender registers there instead (``_native``), its playout queue feeds the thread's ring, and
it keeps what happens per talkspurt (``talkspurt_started``, ``ran_dry``), where the stream goes
(``remote``, ``sending``) and the counters (``sync_stats``). This class is the reference.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import TYPE_CHECKING, Any

import trio

from media import native
from media.bridge import CallBridge, EndReason
from media.caller_feed import CallerAudioBatcher
from media.clock import COALESCE, ClockEntry, MediaClock, align
from media.latch import Endpoint
from media.playout import Pacer
from media.rtp import RtpPacketizer
from media.stats import MediaStats

if TYPE_CHECKING:
    from media.recording import CallRecording

# The compiled twin of packet() + sendto() in one call (media/_fast_packetizer.c), when built.
_fast = native.load("media._fast")

log = logging.getLogger("rtpai.media")


class PacedSender:
    """Our RTP for one call, on the clock's grid; ``remote`` is where it goes (None: nowhere
    yet), ``sending`` False while the caller holds the call (sendonly/inactive)."""

    def __init__(
        self,
        bridge: CallBridge,
        rtp_socket: socket.socket,
        stats: MediaStats,
        ai_audio: CallerAudioBatcher,
        *,
        payload_type: int,
        remote: Endpoint | None,
        sending: bool,
        send_silence: bool,
    ) -> None:
        self.bridge = bridge
        self.rtp_socket = rtp_socket
        self.stats = stats
        self.packetizer = RtpPacketizer(payload_type)
        self._remote = remote
        self._sending = sending
        self.sent_since_report = False  # set per RTP packet sent: the next report is an SR
        self.pacer: Pacer | None = None  # the grid, once the first frame is due
        self._ai_audio = ai_audio  # its unfinished batch is flushed by our ticks
        self._clock: MediaClock | None = None
        self._pacing: ClockEntry | None = None
        self._talking = False
        self._send_silence = send_silence
        # Idle silence only once the caller's media has flowed (``bridge.media_started``), as
        # rtpengine: while the phone rings nobody listens, the SDP address is often a NATed
        # private one, and a thousand ringing calls would otherwise cost as much as a thousand
        # answered ones. A plain attribute, set at the first latch, rather than a property over
        # the event: ``tick`` reads it for every silence frame.
        self._idle_sends_silence = send_silence and bridge.media_started.is_set()
        self._samples = bridge.ptime_ms * 8  # 8000 Hz
        self._silence = bytes((bridge.silence_byte,)) * self._samples
        # The call's recording (media/recording.py), given each frame of the AI's audio as it
        # is sent; silence is not handed over (a recording's gaps are silence anyway).
        self._recorder: CallRecording | None = None
        # The compiled send writes to the socket's descriptor itself: real sockets only (the
        # tests' recorders stand in for sendto). ``remote`` as it takes it (a packed
        # sockaddr), and the tuple that was packed: re-packed when the latch moves ``remote``.
        self._compiled = _fast is not None and isinstance(rtp_socket, socket.socket)
        self._packed_for: Endpoint | None = None
        self._packed: bytes | None = None
        # Our stream on the media send thread (a media._fast.SendStream), while it paces us;
        # the thread's counters as last added to ``stats`` (packets, bytes, errors, re-anchors).
        self._native: Any = None
        self._thread: Any = None
        self._synced = (0, 0, 0, 0)

    # --- where our RTP goes: attributes the stream sets, told to the thread too ------------

    @property
    def remote(self) -> Endpoint | None:
        return self._remote

    @remote.setter
    def remote(self, remote: Endpoint | None) -> None:
        self._remote = remote
        if self._native is not None:
            packed = self._pack(remote)
            if remote is not None and packed is None:
                self._leave_thread()  # only sendto reaches it (a scoped IPv6 address)
            else:
                self._native.set_remote(packed)

    @property
    def sending(self) -> bool:
        return self._sending

    @sending.setter
    def sending(self, sending: bool) -> None:
        self._sending = sending
        if self._native is not None:
            self._native.set_sending(sending)

    @property
    def recorder(self) -> CallRecording | None:
        return self._recorder

    @recorder.setter
    def recorder(self, recording: CallRecording | None) -> None:
        # The recorder is handed each frame as it is sent, with its send time: the Python
        # sender does that, so a call being recorded leaves the thread (for good: a call
        # recorded once is likely to be again, and moving is not free).
        if recording is not None and self._native is not None:
            self._leave_thread()
        self._recorder = recording

    def start(self, clock: MediaClock) -> None:
        """Register with the media clock (or its send thread); parked until there is
        something to send."""
        self._clock = clock
        self._pacing = self._ai_audio.pacing = clock.register(self)
        self.bridge.playout.on_audio = self.wake
        thread = clock.send_thread
        if thread is not None and self._thread_can_pace():
            self._join_thread(thread)
            if self._native is not None:
                return
        self.wake()

    def stop(self) -> None:
        """Unregister from the media clock (the call's ``finally``); on the send thread,
        nothing is sent on the call's socket once this returns, and the counters are final."""
        if self._native is not None:
            self._leave_thread(final=True)
        if self._pacing is not None and self._clock is not None:
            self._clock.unregister(self._pacing)
        self._pacing = self._ai_audio.pacing = None
        self._clock = None
        self.bridge.playout.on_audio = None

    def caller_media_started(self) -> None:
        """The caller's first packet latched: from now on we send silence between answers."""
        self._idle_sends_silence = self._send_silence
        if self._native is not None:
            self._native.media_started()
            return
        self.wake()

    def wake(self) -> None:
        """Audio was queued or the caller's media started: unpark if there is a frame to send."""
        entry = self._pacing
        if entry is None or entry.due is not None:
            return
        if not self._idle_sends_silence and self.bridge.playout.queued_frames == 0:
            return
        now = trio.current_time()
        pacer = self.pacer
        if pacer is None:
            # The stream's first packet: it goes at once (on the clock's next 1 ms lattice
            # point, which the grid is anchored on so that calls share wake-ups).
            pacer = self.pacer = Pacer(self.bridge.ptime_ms / 1000, align(now))
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
        frame = bridge.playout.pop_frame()
        if frame is not None:
            if not self._talking:
                packetizer.start_talkspurt()  # RFC 3551 4.1: marker on a talkspurt's start
                self._talking = True
                bridge.mark("first_rtp_to_caller")
                if bridge.turn_ended_at is not None:
                    # The answer to the caller's last turn starts to play: the response
                    # latency, once per turn (a talkspurt's start, never per frame).
                    latency = max(now - bridge.turn_ended_at, 0.0)
                    bridge.figures.response_latency.observe(latency)
                    bridge.last_response_latency = latency
                    bridge.turn_ended_at = None
            payload: bytes | None = frame
        else:
            if self._talking:
                self._talking = False
                bridge.playout_ran_dry()  # e.g. a hang-up waiting for the goodbye goes now
            payload = self._silence if self._idle_sends_silence else None
        park = payload is None  # nothing to play and no silence to send
        if park:
            packetizer.silence_gap(samples)  # the timestamp still advances
        elif self._compiled:
            self._send_frame(payload, samples)
        else:  # the reference path: a38b145's calls per frame, no more (issue 16)
            self._send(packetizer.packet(payload, samples))
        if frame is not None and self._recorder is not None:
            self._recorder.played(frame, now)
        ai_audio = self._ai_audio
        if ai_audio.batch and (park or now - ai_audio.since >= ai_audio.max_age):
            ai_audio.flush()  # the caller stopped mid-batch, or no tick will follow
        pacer = self.pacer
        assert pacer is not None
        if pacer.advance(now):
            self.stats.pacer_reanchors += 1
        return None if park else pacer.next_deadline

    def pacing_failed(self) -> None:
        """The media clock dropped this call after ``tick`` raised (a bug): end the call."""
        self.bridge.end_call(EndReason.MEDIA_FAILURE, "media failure: internal error")

    def _send_frame(self, payload: bytes, samples: int) -> None:
        """The next RTP packet of ``payload``, sent if there is somewhere to send it; the
        stream's sequence and timestamp move on either way."""
        remote = self._remote
        if self._compiled and remote is not None and self._sending:
            assert _fast is not None
            if remote is not self._packed_for:
                self._packed_for = remote
                # None for what only sendto resolves (an IPv4 address on an IPv6 socket from
                # the SDP, a scoped address): those go the Python way below.
                self._packed = _fast.pack_address(self.rtp_socket.family, remote[0], remote[1])
            if self._packed is not None:
                # fileno() per frame, never kept: a closed socket's -1 fails like sendto, where
                # a kept number could by then be another call's socket.
                try:
                    size = self.packetizer.send(self.rtp_socket.fileno(), payload, samples,
                                                self._packed)
                except OSError as exc:
                    self._send_failed(exc)
                    return
                self.sent_since_report = True
                out = self.stats.rtp_out
                out.packets += 1
                out.bytes += size
                return
        self._send(self.packetizer.packet(payload, samples))

    def _send(self, packet: bytes) -> None:
        # Not connect()ed + send() (~950 instructions and ~0.5 us less per packet): a connected
        # UDP socket drops anyone else's RTP, so foreign_source and the relatch policies would
        # never see the packet that should move the call. docs/performance.md, recommendation
        # 6. The compiled path (_send_frame) gets the same saving from a sockaddr packed once.
        remote = self._remote
        if remote is None or not self._sending:
            return
        try:
            self.rtp_socket.sendto(packet, remote)
        except OSError as exc:
            self._send_failed(exc)
            return
        self.sent_since_report = True  # counted inline, as in _send_frame: a call fewer
        out = self.stats.rtp_out
        out.packets += 1
        out.bytes += len(packet)

    def _send_failed(self, exc: OSError) -> None:
        # A full buffer (BlockingIOError): drop, never block; an ICMP error the caller's side
        # sent back: expected while it moves or hangs up. Either way not worth a line.
        # Once per call: every failure is counted (send_errors), never logged per packet, or a
        # broken route would write 50 lines a second per call.
        if not self.stats.send_errors and exc.errno not in _QUIET:
            log.debug("call %s: RTP send failed: %s", self.bridge.call_id, exc)
        self.stats.send_errors += 1

    # --- on the media send thread (media/send_thread.py) -----------------------------------

    def _pack(self, remote: Endpoint | None) -> bytes | None:
        """``remote`` as the compiled send takes it (None: nowhere, or not packable)."""
        if remote is None:
            return None
        if remote is not self._packed_for:  # (only called with the extension loaded)
            self._packed_for = remote
            self._packed = _fast.pack_address(self.rtp_socket.family, remote[0], remote[1])
        return self._packed

    def _thread_can_pace(self) -> bool:
        """The send thread can do all we do, unless: a socket stand-in (tests), a recording
        (handed frames as sent), ``ai_batch_ms`` (batches flushed by our ticks), an address
        only ``sendto`` resolves."""
        return (self._compiled and self._recorder is None and self._ai_audio.frames == 1
                and (self._remote is None or self._pack(self._remote) is not None))

    def _join_thread(self, thread: Any) -> None:
        ptime_ms, packetizer = self.bridge.ptime_ms, self.packetizer
        playout = self.bridge.playout
        handle = thread.register(
            self, self.rtp_socket.fileno(), packetizer.payload_type, packetizer.ssrc,
            packetizer.sequence, packetizer.timestamp, packetizer.marker_pending, ptime_ms,
            self.bridge.silence_byte, playout.max_bytes // playout.frame_bytes + 1,
            self._send_silence, self._idle_sends_silence, self._sending,
            self._pack(self._remote))
        if handle is None:
            return
        self._native, self._thread, self._synced = handle, thread, (0, 0, 0, 0)
        self._talking = False
        playout.attach_ring(handle)

    def _leave_thread(self, *, final: bool = False) -> None:
        """Off the thread: its stream is unregistered (nothing is sent on it afterwards) and,
        unless the call is ending (``final``), this sender carries on from the thread's last
        state, on the media clock: the same sequence, timestamp, marker, grid and audio."""
        handle, self._native = self._native, None
        (sequence, timestamp, marker, talking, anchored, deadline, scheduled, consumed,
         unplayed, *counters) = self._thread.forget(handle)
        self._thread = None
        self._add_counters(counters)
        self.bridge.playout.detach_ring(consumed, unplayed)
        packetizer = self.packetizer
        packetizer.sequence, packetizer.timestamp = sequence, timestamp
        packetizer.marker_pending = marker
        if final:
            return
        # An event posted but not yet drained is gone with the stream's id: done here (a
        # hang-up waiting for playout to run dry must not wait for ever).
        if self._talking and not talking:
            self.ran_dry()
        elif talking and not self._talking:
            self.talkspurt_started(trio.current_time())
        self.pacer = Pacer(self.bridge.ptime_ms / 1000, deadline) if anchored else None
        self.bridge.playout.on_audio = self.wake
        if scheduled and self._clock is not None and self._pacing is not None:
            self._clock.schedule(self._pacing, deadline)

    def sync_stats(self, *, report: bool = False) -> None:
        """The send thread's counters into ``stats`` (and our packetizer's sequence and
        timestamp), where they are read: an RTCP report (``report``: which also takes
        ``sent_since_report``), the ng query and list replies, a metrics scrape; the call's
        end takes the final ones (``stop``). A no-op on the Python path, which counts as it
        sends."""
        native = self._native
        if native is None:
            return
        *counters, sequence, timestamp, _anchored, first_errno = native.counters(report)
        if counters[2] and not self.stats.send_errors and first_errno not in _QUIET:
            log.debug("call %s: RTP send failed: %s", self.bridge.call_id,
                      errno.errorcode.get(first_errno, first_errno))
        self._add_counters(counters)
        self.packetizer.sequence, self.packetizer.timestamp = sequence, timestamp

    def _add_counters(self, counters: Any) -> None:
        """The thread's counters (totals since it took the stream) into ``stats``, as deltas:
        the Python side counts into the same fields (RTCP send errors, a later Python sender)."""
        packets, size, errors, reanchors, sent = counters
        old, stats = self._synced, self.stats
        stats.rtp_out.packets += packets - old[0]
        stats.rtp_out.bytes += size - old[1]
        stats.send_errors += errors - old[2]
        stats.pacer_reanchors += reanchors - old[3]
        self._synced = (packets, size, errors, reanchors)
        self.sent_since_report = self.sent_since_report or bool(sent)

    def talkspurt_started(self, at: float) -> None:
        """The thread sent a talkspurt's first frame at ``at`` (trio time): ``tick``'s."""
        self._talking = True
        bridge = self.bridge
        if self.pacer is None:  # the grid exists (in C): RTCP reports may start
            self.pacer = Pacer(bridge.ptime_ms / 1000, at)
        bridge.timeline.setdefault("first_rtp_to_caller", at)
        ended = bridge.turn_ended_at
        # A turn that ended after this frame went out is the next talkspurt's to measure (a
        # frame goes up to COALESCE before its slot: a turn ending then is still its own).
        if ended is not None and ended <= at + COALESCE:
            latency = max(at - ended, 0.0)
            bridge.figures.response_latency.observe(latency)
            bridge.last_response_latency = latency
            bridge.turn_ended_at = None

    def ran_dry(self) -> None:
        """The send thread found nothing more to play: a talkspurt ended."""
        self._talking = False
        self.bridge.playout_ran_dry()


# Send errors expected while the caller's side moves or hangs up: not worth a line.
_QUIET = (errno.EAGAIN, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)

"""One call's media: the RTP/RTCP sockets, the receiver and the paced sender.

Sockets are plain non-blocking stdlib sockets driven by ``trio.lowlevel.wait_readable``:
one wake-up drains every datagram that is waiting, instead of paying a trio checkpoint (a
scheduler pass) per packet as ``trio.socket`` would (python-trio/trio#1595).
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass, field

import trio

from media.bridge import CallBridge
from media.playout import Pacer
from media.rtp import PT_COMFORT_NOISE, RtpError, RtpPacketizer, is_rtcp, parse_rtp

log = logging.getLogger("rtpai.media")

MAX_DATAGRAM = 2048  # G.711 at 40 ms is 332 bytes; anything near this is not ours to take
BATCH_LIMIT = 64  # datagrams per wake-up, so one flooded call cannot starve the others


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
    malformed: int = 0  # not RTP at all, or lengths that do not add up
    foreign_source: int = 0  # RTP from an address other than the latched one
    other_payload: int = 0  # payload types we did not negotiate (counted, not forwarded)
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
    """The caller's RTP in, our paced RTP out, for one call."""

    def __init__(
        self,
        bridge: CallBridge,
        rtp_socket: socket.socket,
        rtcp_socket: socket.socket,
        *,
        payload_type: int,
        remote: tuple[str, int] | None,
        caller_audio: trio.MemorySendChannel[bytes],
        send_silence: bool = True,
        sending: bool = True,
        timeout: float = 0,
    ) -> None:
        self.bridge = bridge
        self.rtp_socket = rtp_socket
        self.rtcp_socket = rtcp_socket
        self.payload_type = payload_type
        # Where we send: the SDP's address until the first valid packet, then that packet's
        # source (symmetric RTP: it gets through the caller's NAT).
        self.remote = remote
        self.latched: tuple[str, int] | None = None
        self.caller_audio = caller_audio
        self.send_silence = send_silence
        self.sending = sending  # False while the caller holds the call (sendonly/inactive)
        self.timeout = timeout
        self.stats = MediaStats()
        self.packetizer = RtpPacketizer(payload_type)
        self._timeout_scope: trio.CancelScope | None = None

    def retarget(self, remote: tuple[str, int] | None, *, sending: bool) -> None:
        """Apply a new SDP: a changed remote address allows one new latch, to anyone.

        Only signalling (the proxy's re-INVITE) may move the stream; stray packets never do.
        """
        self.sending = sending
        if remote is not None and remote != self.remote:
            self.remote = remote
            self.latched = None

    # --- receive ------------------------------------------------------------------------------

    async def receive_rtp(self) -> None:
        """Read caller RTP until cancelled; returns if the media timeout expires."""
        sock = self.rtp_socket
        with trio.CancelScope() as scope:
            self._timeout_scope = scope
            self._extend_timeout()
            while True:
                await trio.lowlevel.wait_readable(sock)
                for _ in range(BATCH_LIMIT):
                    try:
                        data, source = sock.recvfrom(MAX_DATAGRAM)
                    except BlockingIOError:
                        break
                    except OSError:
                        # ICMP port unreachable from an earlier send surfaces here on Linux.
                        self.stats.send_errors += 1
                        continue
                    self._on_rtp(data, source)
        # Only the media timeout cancels this scope from inside; the caller checks the clock.

    @property
    def timed_out(self) -> bool:
        scope = self._timeout_scope
        return scope is not None and scope.cancelled_caught

    def _extend_timeout(self) -> None:
        if self.timeout and self._timeout_scope is not None:
            self._timeout_scope.deadline = trio.current_time() + self.timeout

    def _on_rtp(self, data: bytes, source: tuple) -> None:
        stats = self.stats
        if is_rtcp(data):  # RFC 5761 muxed RTCP
            stats.rtcp_in.packets += 1
            stats.rtcp_in.bytes += len(data)
            return
        try:
            packet = parse_rtp(data)
        except RtpError:
            stats.malformed += 1
            stats.rtp_in.errors += 1
            return
        source = source[:2]
        if self.latched is None:
            self.latched = source
            self.remote = source
            self.bridge.mark("first_caller_rtp")
            self.bridge.media_started.set()
        elif source != self.latched:
            # Never re-latch to a stranger: that is how "RTP Bleed" hijacks calls.
            stats.foreign_source += 1
            stats.rtp_in.errors += 1
            return
        stats.rtp_in.packets += 1
        stats.rtp_in.bytes += len(data)
        stats.last_packet = trio.current_time()
        stats.last_ssrc = packet.ssrc
        self._extend_timeout()
        if packet.payload_type != self.payload_type:
            if packet.payload_type != PT_COMFORT_NOISE:
                stats.other_payload += 1
            return
        try:
            self.caller_audio.send_nowait(packet.payload)
        except trio.WouldBlock:
            stats.ai_queue_full += 1  # the media path never waits for the AI
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the AI session has ended; media keeps flowing until the call ends

    async def receive_rtcp(self) -> None:
        """Count the caller's RTCP (reports are parsed in a later version)."""
        sock = self.rtcp_socket
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(BATCH_LIMIT):
                try:
                    data, _source = sock.recvfrom(MAX_DATAGRAM)
                except BlockingIOError:
                    break
                except OSError:
                    continue
                self.stats.rtcp_in.packets += 1
                self.stats.rtcp_in.bytes += len(data)

    # --- send ---------------------------------------------------------------------------------

    async def send_paced(self) -> None:
        """One frame every ptime on absolute deadlines: AI audio, else silence (or nothing)."""
        bridge = self.bridge
        ptime = bridge.ptime_ms / 1000
        samples = bridge.ptime_ms * 8  # 8000 Hz
        silence = bytes((bridge.silence_byte,)) * (samples)
        playout = bridge.playout
        packetizer = self.packetizer
        pacer = Pacer(ptime, trio.current_time())
        talking = False
        while True:
            await trio.sleep_until(pacer.next_deadline)
            now = trio.current_time()
            frame = playout.pop_frame()
            if frame is not None:
                if not talking:
                    packetizer.start_talkspurt()  # RFC 3551 4.1: marker on a talkspurt's start
                    talking = True
                    bridge.mark("first_rtp_to_caller")
                self._send(packetizer.packet(frame, samples))
            else:
                if talking:
                    talking = False
                    bridge.playout_ran_dry()  # e.g. a hang-up waiting for the goodbye goes now
                if self.send_silence:
                    self._send(packetizer.packet(silence, samples))
                else:
                    packetizer.silence_gap(samples)
            before = pacer.reanchors
            pacer.advance(now)
            if pacer.reanchors != before:
                self.stats.pacer_reanchors += 1

    def _send(self, packet: bytes) -> None:
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
        self.stats.rtp_out.packets += 1
        self.stats.rtp_out.bytes += len(packet)

"""One call's RTCP session (RFC 3550 section 6), sans-IO, over media/rtcp.py's codec.

What it keeps: the caller's last SR (for our next report's LSR/DLSR), the round-trip time and
the caller's latest report block about our stream, MOS samples per SSRC in rtpengine's query
shape, and where our reports go. What it does not: sockets, timers and the clock, which are
the stream's; every method takes the time (trio's ``now``, the wall clock's ``wall``) as an
argument.
"""

from __future__ import annotations

from media.latch import Endpoint, LatchPolicy, same_endpoint
from media.reorder import JitterEstimator, ReorderBuffer
from media.rtcp import (
    Bye,
    ReportBlock,
    SenderReport,
    StreamQuality,
    build_report,
    ntp_middle,
    ntp_timestamp,
    parse_compound,
    round_trip_us,
)


class RtcpSession:
    """Our reports about the caller's stream, and what the caller's reports say about ours.

    ``reception`` and ``jitter`` are the stream's receive statistics (RFC 3550 A.3 and A.8),
    which our report blocks carry; ``sdp_remote`` is where the SDP says the caller takes RTCP
    (``a=rtcp``, or RTP + 1); with ``mux`` (RFC 5761) RTCP shares the RTP port both ways.
    """

    def __init__(
        self,
        ssrc: int,
        reception: ReorderBuffer,
        jitter: JitterEstimator,
        *,
        sdp_remote: Endpoint | None,
        mux: bool = False,
    ) -> None:
        self.ssrc = ssrc
        self.cname = f"rtpai-{ssrc:08x}".encode()
        self.reception = reception
        self.jitter = jitter
        self.sdp_remote = sdp_remote
        self.mux = mux
        self.latched: Endpoint | None = None  # the source of the caller's RTCP (not with mux)
        self.rtt_us: int | None = None  # the latest round-trip time (section 6.4.1)
        self.caller_report: ReportBlock | None = None  # the caller's latest block about us
        self.quality: dict[int, StreamQuality] = {}  # MOS samples per SSRC
        self._caller_sr: tuple[int, float] | None = None  # (its LSR, when it arrived)

    def sdp_changed(self, sdp_remote: Endpoint | None, *, moved: bool) -> None:
        """A re-offer: the SDP's RTCP address, and whether the media moved (learn afresh)."""
        self.sdp_remote = sdp_remote
        if moved:
            self.latched = None

    def receive(self, data: bytes, source: Endpoint, now: float, wall: float) -> None:
        """A compound packet from the caller, arrived at ``now`` (trio) / ``wall`` (Unix).

        Raises :class:`~media.rtcp.RtcpError` if it fails the RFC 3550 A.2 checks (and then
        changes nothing). Whether ``source`` may send us RTCP is the latch policy's question.
        """
        reports = parse_compound(data)
        if not self.mux:
            self.latched = source
        arrival = ntp_timestamp(wall)
        ours = self.ssrc
        for report in reports:
            if isinstance(report, Bye):
                continue
            if isinstance(report, SenderReport):
                self._caller_sr = (ntp_middle(report.ntp), now)
            for block in report.blocks:
                if block.ssrc != ours:
                    continue
                self.caller_report = block
                rtt = round_trip_us(block, arrival)
                if rtt is not None:
                    self.rtt_us = rtt
                # The caller's view of our stream: its jitter and loss, our RTT.
                self.quality.setdefault(ours, StreamQuality()).add(
                    self.rtt_us or 0, block.jitter * 1000 / 8000,
                    block.fraction_lost * 100 / 256, wall,
                )

    def report(self, now: float, wall: float, sender: tuple[int, int, int] | None) -> bytes:
        """Our compound report: an SR if ``sender`` (RTP timestamp, packets, octets: we sent
        since the last report), else an RR; a block about the caller's stream once there is
        one, and the SDES CNAME. Also samples our view of the caller's quality."""
        blocks = []
        reception = self.reception
        if reception.ssrc is not None:
            fraction, cumulative = reception.report_interval()
            lsr = dlsr = 0
            if self._caller_sr is not None:
                lsr, received_at = self._caller_sr
                dlsr = int((now - received_at) * 65536)
            blocks.append(
                ReportBlock(reception.ssrc, fraction, cumulative, reception.extended_max,
                            int(self.jitter.jitter), lsr, dlsr)
            )
            # Our view of the caller's stream, rtpengine-style: one sample per report.
            self.quality.setdefault(reception.ssrc, StreamQuality()).add(
                self.rtt_us or 0, self.jitter.milliseconds, fraction * 100 / 256, wall
            )
        info = None if sender is None else (ntp_timestamp(wall), *sender)
        return build_report(self.ssrc, self.cname, blocks, sender=info)

    def destination(self, rtp_remote: Endpoint | None, latch: LatchPolicy) -> Endpoint | None:
        """Where our report goes: None while there is nowhere (c=0.0.0.0, or no next port).

        ``rtp_remote`` is where our RTP goes (the destination with rtcp-mux).
        """
        if self.mux:
            return rtp_remote
        if self.latched is not None:
            return self.latched
        rtp = latch.latched
        if rtp is None or same_endpoint(rtp, latch.sdp_remote):
            return self.sdp_remote
        if rtp[1] >= 65535:
            return None  # no next port (sendto would raise OverflowError): no RTCP for it
        return (rtp[0], rtp[1] + 1)  # behind a NAT: RFC 3550 section 11's next port

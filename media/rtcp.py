"""RTCP (RFC 3550 section 6), sans-IO: read the caller's reports, write ours, estimate MOS.

What we read: sender and receiver reports (SR 200, RR 201) and their report blocks, BYE (203).
SDES, APP and feedback packets (RFC 4585) are validated as part of the compound packet and
skipped. What we write: every ~5 s a compound packet of an SR (while we send RTP) or an RR,
plus the SDES CNAME that section 6.1 makes mandatory.

Round-trip time follows section 6.4.1: the caller's report block echoes the middle 32 bits of
our last SR's NTP timestamp (LSR) and how long it held it (DLSR); ``A - LSR - DLSR`` is the RTT.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
SDES_CNAME = 1

_HEADER = struct.Struct("!BBH")  # V/P/count, packet type, length in 32-bit words minus one
_SSRC = struct.Struct("!I")
_SENDER_INFO = struct.Struct("!IIIII")  # NTP msw, NTP lsw, RTP timestamp, packets, octets
_BLOCK = struct.Struct("!IIIIII")  # SSRC, fraction+cumulative, ext. highest seq, jitter, LSR, DLSR

NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)


class RtcpError(ValueError):
    """A datagram that fails the RFC 3550 appendix A.2 validity checks."""


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report (section 6.4.1) about the stream ``ssrc``."""

    ssrc: int
    fraction_lost: int  # of 256, since the previous report
    cumulative_lost: int  # signed 24-bit
    highest_sequence: int  # extended
    jitter: int  # timestamp units
    lsr: int  # middle 32 bits of the NTP timestamp of the last SR about which this reports
    dlsr: int  # 1/65536 s between receiving that SR and sending this block


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp: int  # 64-bit NTP timestamp
    rtp_timestamp: int
    packets: int
    octets: int
    blocks: tuple[ReportBlock, ...]


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    blocks: tuple[ReportBlock, ...]


@dataclass(frozen=True, slots=True)
class Bye:
    ssrcs: tuple[int, ...]


def ntp_timestamp(wall: float) -> int:
    """Unix seconds as a 64-bit NTP timestamp (32.32 fixed point since 1900)."""
    return int((wall + NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: the LSR/DLSR unit, 1/65536 s."""
    return (ntp >> 16) & 0xFFFFFFFF


def _block(data: bytes, offset: int) -> ReportBlock:
    ssrc, lost, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, offset)
    cumulative = lost & 0xFFFFFF
    if cumulative & 0x800000:
        cumulative -= 0x1000000  # signed: duplicates make it negative
    return ReportBlock(ssrc, lost >> 24, cumulative, highest, jitter, lsr, dlsr)


def parse_compound(data: bytes) -> list[SenderReport | ReceiverReport | Bye]:
    """Parse a compound RTCP packet (RFC 3550 section 6.1) into its reports and BYEs.

    Raises :class:`RtcpError` unless every packet is version 2, the first is an SR or RR,
    only the last is padded, and the lengths add up to the datagram exactly (appendix A.2).
    """
    size = len(data)
    if size < 8:
        raise RtcpError("shorter than an RTCP header")
    if data[1] not in (RTCP_SR, RTCP_RR):
        raise RtcpError("a compound packet starts with an SR or RR")
    reports: list[SenderReport | ReceiverReport | Bye] = []
    offset = 0
    while offset < size:
        if size - offset < 4:
            raise RtcpError("trailing bytes after the last packet")
        first, kind, words = _HEADER.unpack_from(data, offset)
        if first >> 6 != 2:
            raise RtcpError("not RTCP version 2")
        end = offset + 4 * (words + 1)
        if end > size:
            raise RtcpError("packet length runs past the datagram")
        if first & 0x20 and end != size:
            raise RtcpError("padding on a packet that is not the last")
        count = first & 0x1F
        body = offset + 4
        if kind in (RTCP_SR, RTCP_RR):
            fixed = 4 + (_SENDER_INFO.size if kind == RTCP_SR else 0)
            if body + fixed + count * _BLOCK.size > end:
                raise RtcpError("report blocks run past the packet")
            (ssrc,) = _SSRC.unpack_from(data, body)
            blocks_at = body + fixed
            blocks = tuple(_block(data, blocks_at + i * _BLOCK.size) for i in range(count))
            if kind == RTCP_SR:
                msw, lsw, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(data, body + 4)
                reports.append(
                    SenderReport(ssrc, msw << 32 | lsw, rtp_ts, packets, octets, blocks)
                )
            else:
                reports.append(ReceiverReport(ssrc, blocks))
        elif kind == RTCP_BYE:
            if body + 4 * count > end:
                raise RtcpError("BYE sources run past the packet")
            sources = tuple(_SSRC.unpack_from(data, body + 4 * i)[0] for i in range(count))
            reports.append(Bye(sources))
        offset = end
    return reports


def build_report(
    ssrc: int,
    cname: bytes,
    blocks: list[ReportBlock],
    *,
    sender: tuple[int, int, int, int] | None = None,
) -> bytes:
    """A compound packet: SR (``sender`` = ntp, rtp timestamp, packets, octets) or RR, + SDES.

    Report blocks are capped at 31 (the 5-bit count); we never have more than one.
    """
    blocks = blocks[:31]
    body = bytearray()
    if sender is not None:
        ntp, rtp_ts, packets, octets = sender
        kind = RTCP_SR
        body += _SENDER_INFO.pack(
            ntp >> 32, ntp & 0xFFFFFFFF, rtp_ts & 0xFFFFFFFF, packets & 0xFFFFFFFF,
            octets & 0xFFFFFFFF,
        )
    else:
        kind = RTCP_RR
    for b in blocks:
        lost = max(-0x800000, min(b.cumulative_lost, 0x7FFFFF)) & 0xFFFFFF
        body += _BLOCK.pack(
            b.ssrc, (b.fraction_lost & 0xFF) << 24 | lost, b.highest_sequence & 0xFFFFFFFF,
            b.jitter & 0xFFFFFFFF, b.lsr & 0xFFFFFFFF, b.dlsr & 0xFFFFFFFF,
        )
    report = _HEADER.pack(0x80 | len(blocks), kind, len(body) // 4 + 1) + _SSRC.pack(ssrc) + body
    # SDES (section 6.5): one chunk, CNAME item, then a null octet and padding to 32 bits.
    cname = cname[:255]
    chunk = _SSRC.pack(ssrc) + bytes((SDES_CNAME, len(cname))) + cname + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    sdes = _HEADER.pack(0x81, RTCP_SDES, len(chunk) // 4) + chunk
    return bytes(report) + sdes


def mos_estimate(rtt_ms: float, jitter_ms: float, loss_percent: float) -> float:
    """A MOS (1.0-4.5) from RTT, jitter and loss: the common simplified ITU-T G.107 E-model.

    Effective latency is the one-way delay (``rtt / 2``) plus twice the jitter (what a jitter
    buffer adds) plus 10 ms of codec delay; R starts at 93.2 (G.711), loses 1 per 40 ms of
    latency up to 160 ms and 1 per 10 ms beyond, and 2.5 per percent of loss; R maps to MOS
    per G.107 annex B. A clean G.711 path scores about 4.4.
    """
    effective = rtt_ms / 2 + jitter_ms * 2 + 10
    r = 93.2 - effective / 40 if effective < 160 else 93.2 - (effective - 120) / 10
    r -= loss_percent * 2.5
    r = max(0.0, min(r, 100.0))
    return 1 + 0.035 * r + 0.000007 * r * (r - 60) * (100 - r)


@dataclass(frozen=True, slots=True)
class QualitySample:
    """One report's worth of quality, in the units of rtpengine's query reply."""

    mos: int  # MOS x 10
    rtt_us: int
    jitter_ms: int
    loss_percent: int
    reported_at: int  # Unix seconds

    def as_dict(self) -> dict[str, int]:
        return {
            "MOS": self.mos,
            "round-trip time": self.rtt_us,
            "jitter": self.jitter_ms,
            "packet loss": self.loss_percent,
            "reported at": self.reported_at,
        }


@dataclass
class StreamQuality:
    """Quality samples of one SSRC, summarised as rtpengine's ``SSRC`` entry of a query."""

    samples: list[QualitySample] = field(default_factory=list)
    MAX_SAMPLES = 720  # an hour at one report per 5 s; older samples fall out of the average

    def add(self, rtt_us: int, jitter_ms: float, loss_percent: float, reported_at: float) -> None:
        mos = mos_estimate(rtt_us / 1000, jitter_ms, loss_percent)
        self.samples.append(
            QualitySample(int(mos * 10), rtt_us, round(jitter_ms), round(loss_percent),
                          int(reported_at))
        )
        if len(self.samples) > self.MAX_SAMPLES:
            del self.samples[0]

    def as_dict(self) -> dict:
        """``average MOS`` (with ``samples``), ``lowest MOS``, ``highest MOS``; {} if none yet."""
        samples = self.samples
        if not samples:
            return {}
        n = len(samples)
        average = {
            "MOS": sum(s.mos for s in samples) // n,
            "round-trip time": sum(s.rtt_us for s in samples) // n,
            "jitter": sum(s.jitter_ms for s in samples) // n,
            "packet loss": sum(s.loss_percent for s in samples) // n,
            "samples": n,
        }
        lowest = min(samples, key=lambda s: s.mos)
        highest = max(samples, key=lambda s: s.mos)
        return {
            "average MOS": average,
            "lowest MOS": lowest.as_dict(),
            "highest MOS": highest.as_dict(),
        }


def round_trip_us(block: ReportBlock, arrival_ntp: int) -> int | None:
    """Section 6.4.1: ``A - LSR - DLSR`` in microseconds, or None without an SR to refer to."""
    if block.lsr == 0:
        return None
    rtt = (ntp_middle(arrival_ntp) - block.lsr - block.dlsr) & 0xFFFFFFFF
    if rtt >= 0x80000000:
        return 0  # clocks disagree by more than the RTT: report zero rather than nonsense
    return rtt * 1_000_000 >> 16

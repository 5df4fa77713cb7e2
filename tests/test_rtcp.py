"""RTCP (RFC 3550 s6): golden compound packets in and out, RTT and the MOS estimate."""

import pytest

from media.rtcp import (
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpError,
    SenderReport,
    StreamQuality,
    build_report,
    mos_estimate,
    ntp_middle,
    ntp_timestamp,
    parse_compound,
    round_trip_us,
)

# A phone's compound packet: SR (SSRC 0x11111111, one report block about 0x22222222),
# SDES CNAME "ph", BYE -- hand-assembled per RFC 3550 s6.4.1, 6.5, 6.6.
SR = bytes.fromhex(
    "81c8000c" "11111111"
    "e8e0d080" "80000000" "00013880" "00000064" "00003e80"  # NTP, RTP ts, 100 pkts, 16000 B
    "22222222" "05000007" "0001000a" "00000020" "d0808000" "00018000"  # block
)
SDES = bytes.fromhex("81ca0003" "11111111" "01027068" "00000000")  # CNAME "ph", null, pad
BYE = bytes.fromhex("81cb0001" "11111111")


def test_parse_golden_sr_sdes_bye():
    sr, bye = parse_compound(SR + SDES + BYE)
    assert isinstance(sr, SenderReport) and isinstance(bye, Bye)
    assert (sr.ssrc, sr.ntp, sr.rtp_timestamp, sr.packets, sr.octets) == (
        0x11111111, 0xE8E0D080_80000000, 80000, 100, 16000
    )
    (block,) = sr.blocks
    assert block == ReportBlock(0x22222222, 5, 7, 65546, 32, 0xD0808000, 0x18000)
    assert bye.ssrcs == (0x11111111,)


def test_negative_cumulative_loss_is_signed():
    rr = bytes.fromhex("81c90007" "33333333" "22222222" "00fffffe" "00000000" "00000000" "00000000" "00000000")
    (report,) = parse_compound(rr)
    assert isinstance(report, ReceiverReport) and report.blocks[0].cumulative_lost == -2


@pytest.mark.parametrize(
    "data",
    [
        b"",
        SDES,  # a compound packet must start with SR or RR
        SR[:-4],  # length runs past the datagram
        SR + b"\x81",  # trailing bytes
        b"\x41" + SR[1:],  # version 1
        bytes([SR[0] | 0x20]) + SR[1:] + SDES,  # padding on a packet that is not the last
        bytes.fromhex("83c90001" "33333333"),  # three report blocks claimed, none present
    ],
)
def test_invalid_compound_packets_rfc_3550_a2(data):
    with pytest.raises(RtcpError):
        parse_compound(data)


def test_build_sr_with_block_and_cname_golden():
    block = ReportBlock(0x22222222, 12, 3, 70000, 40, 0x12345678, 0x10000)
    packet = build_report(0xAABBCCDD, b"rtpai", [block], sender=(0xE8E0D080_80000000, 1600, 10, 1720))
    assert packet == bytes.fromhex(
        "81c8000c" "aabbccdd" "e8e0d080" "80000000" "00000640" "0000000a" "000006b8"
        "22222222" "0c000003" "00011170" "00000028" "12345678" "00010000"
        "81ca0003" "aabbccdd" "0105" "727470616900"  # CNAME "rtpai", null: 12 bytes
    )
    sr, = parse_compound(packet)
    assert sr.blocks == (block,)


def test_build_rr_without_blocks_is_valid():
    packet = build_report(7, b"x", [])
    assert packet[:8] == bytes.fromhex("80c90001" "00000007")
    (rr,) = parse_compound(packet)
    assert rr == ReceiverReport(7, ())


def test_ntp_and_round_trip_time_rfc_3550_6_4_1():
    sent = 1_700_000_000.0
    lsr = ntp_middle(ntp_timestamp(sent))
    assert ntp_timestamp(0) >> 32 == 2_208_988_800
    block = ReportBlock(1, 0, 0, 0, 0, lsr, dlsr=65536)  # the caller held our SR 1 s
    rtt = round_trip_us(block, ntp_timestamp(sent + 1.25))
    assert rtt == pytest.approx(250_000, abs=50)
    assert round_trip_us(ReportBlock(1, 0, 0, 0, 0, 0, 0), ntp_timestamp(sent)) is None


def test_mos_estimate_orders_quality_sensibly():
    clean = mos_estimate(rtt_ms=20, jitter_ms=1, loss_percent=0)
    assert 4.3 < clean < 4.5
    assert mos_estimate(300, 1, 0) < clean
    assert mos_estimate(20, 40, 0) < clean
    assert mos_estimate(20, 1, 10) < 3.9
    assert mos_estimate(2000, 500, 100) == 1.0


def test_stream_quality_in_rtpengine_query_shape():
    quality = StreamQuality()
    assert quality.as_dict() == {}
    quality.add(20_000, 1.0, 0.0, 1000)
    quality.add(40_000, 3.0, 10.0, 1005)
    summary = quality.as_dict()
    average = summary["average MOS"]
    assert set(average) == {"MOS", "round-trip time", "jitter", "packet loss", "samples"}
    assert average["samples"] == 2 and average["round-trip time"] == 30_000
    assert average["packet loss"] == 5 and average["jitter"] == 2
    assert summary["lowest MOS"]["reported at"] == 1005
    assert summary["highest MOS"]["MOS"] > summary["lowest MOS"]["MOS"] >= 10
    assert isinstance(average["MOS"], int) and 10 <= average["MOS"] <= 45

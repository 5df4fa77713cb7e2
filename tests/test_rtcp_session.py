"""One call's RTCP session (media/rtcp_session.py), sans-IO: reports both ways, RTT, MOS, and
where our reports go. Times are arguments; addresses are RFC 5737's."""

from __future__ import annotations

import pytest

from media.latch import LatchPolicy
from media.reorder import JitterEstimator, ReorderBuffer
from media.rtcp import ReportBlock, RtcpError, build_report, ntp_middle, parse_compound
from media.rtcp_session import RtcpSession
from media.rtp import RtpPacketizer, parse_rtp

# Every test here runs on both per-packet paths: the Python reference and the compiled twins
# (media/native.py; tests/native_paths.py).
pytestmark = pytest.mark.usefixtures("native_path")

CALLER = ("192.0.2.10", 40000)
CALLER_RTCP = ("192.0.2.10", 40001)
NAT = ("198.51.100.7", 61000)
OURS = 0x0A1B2C3D
WALL = 1_700_000_000.0


def session(**options) -> tuple[RtcpSession, ReorderBuffer]:
    reception = ReorderBuffer(lambda packet: None, depth=0, max_wait=0.02)
    options.setdefault("sdp_remote", CALLER_RTCP)
    return RtcpSession(OURS, reception, JitterEstimator(), **options), reception


def test_an_rr_before_we_send_and_an_sr_with_a_block_once_the_caller_sends():
    rtcp, reception = session()
    (rr,) = parse_compound(rtcp.report(1.0, WALL, None))
    assert rr.ssrc == OURS and rr.blocks == ()
    caller = RtpPacketizer(0)
    for _ in range(5):
        reception.push(parse_rtp(caller.packet(b"\xff" * 160, 160)), 1.0)
    (sr,) = parse_compound(rtcp.report(2.0, WALL, (1234, 50, 8600)))
    assert (sr.ssrc, sr.rtp_timestamp, sr.packets, sr.octets) == (OURS, 1234, 50, 8600)
    (block,) = sr.blocks
    assert block.ssrc == caller.ssrc and block.cumulative_lost == 0
    assert rtcp.quality[caller.ssrc].as_dict()["average MOS"]["samples"] == 1


def test_the_callers_block_about_us_gives_rtt_and_a_mos_sample():
    rtcp, _ = session()
    sr = parse_compound(rtcp.report(1.0, WALL, (0, 1, 172)))[0]
    # Answered 250 ms later, having held our SR 50 ms: RTT 200 ms.
    block = ReportBlock(OURS, 26, 1, 10, 80, ntp_middle(sr.ntp), 65536 // 20)
    rtcp.receive(build_report(0xCA11E7, b"phone", [block]), CALLER_RTCP, 1.25, WALL + 0.25)
    assert rtcp.rtt_us == pytest.approx(200_000, abs=100)
    assert rtcp.caller_report == block and rtcp.latched == CALLER_RTCP
    assert rtcp.quality[OURS].as_dict()["average MOS"]["samples"] == 1


def test_a_malformed_report_raises_and_changes_nothing():
    rtcp, _ = session()
    with pytest.raises(RtcpError):
        rtcp.receive(b"\x80\xc9\x00\x09junk", CALLER_RTCP, 1.0, WALL)
    assert rtcp.latched is None and rtcp.caller_report is None


def test_destination_the_sdp_then_the_learnt_source_then_the_nat_next_port():
    rtcp, _ = session()
    latch = LatchPolicy(CALLER)
    assert rtcp.destination(CALLER, latch) == CALLER_RTCP  # before latching: the SDP's
    latch.accept(CALLER, 1.0)
    assert rtcp.destination(CALLER, latch) == CALLER_RTCP  # latched where the SDP said
    natted = LatchPolicy(CALLER)
    natted.accept(NAT, 1.0)  # behind a NAT: RFC 3550 section 11's next port
    assert rtcp.destination(NAT, natted) == (NAT[0], NAT[1] + 1)
    top = LatchPolicy(CALLER)
    top.accept((NAT[0], 65535), 1.0)  # no next port: no RTCP, and no OverflowError
    assert rtcp.destination((NAT[0], 65535), top) is None
    rtcp.receive(build_report(1, b"p", []), (NAT[0], 9), 2.0, WALL)
    assert rtcp.destination(NAT, natted) == (NAT[0], 9)  # where its own RTCP comes from
    rtcp.sdp_changed(("192.0.2.20", 42001), moved=True)
    assert rtcp.latched is None


def test_with_rtcp_mux_reports_follow_the_rtp():
    rtcp, _ = session(mux=True, sdp_remote=None)
    latch = LatchPolicy(CALLER)
    assert rtcp.destination(NAT, latch) == NAT
    rtcp.receive(build_report(1, b"p", []), NAT, 1.0, WALL)
    assert rtcp.latched is None  # with mux there is nothing to learn: RTCP follows RTP

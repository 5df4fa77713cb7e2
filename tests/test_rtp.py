"""RTP packets (RFC 3550): golden bytes in, golden bytes out."""

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.rtp import RtpError, RtpPacketizer, is_rtcp, parse_rtp, seq_gt

# Every test here runs on both per-packet paths: the Python reference and the compiled twins
# (media/native.py; tests/native_paths.py).
pytestmark = pytest.mark.usefixtures("native_path")

PCMU_20MS = bytes(range(160))


def header(*, v=2, p=0, x=0, cc=0, m=0, pt=0, seq=1, ts=160, ssrc=0x11223344):
    return struct.pack("!BBHII", v << 6 | p << 5 | x << 4 | cc, m << 7 | pt, seq, ts, ssrc)


def test_plain_packet():
    packet = parse_rtp(header(m=1, pt=8, seq=7, ts=320) + PCMU_20MS)
    assert (packet.payload_type, packet.marker, packet.sequence, packet.timestamp) == (8, True, 7, 320)
    assert packet.ssrc == 0x11223344 and packet.payload == PCMU_20MS


def test_csrc_extension_and_padding_are_skipped():
    csrcs = struct.pack("!II", 1, 2)
    extension = struct.pack("!HH", 0xBEDE, 1) + b"\x10\xaa\x00\x00"
    padding = b"\x00\x00\x03"
    data = header(cc=2, x=1, p=1) + csrcs + extension + PCMU_20MS + padding
    assert parse_rtp(data).payload == PCMU_20MS


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x00\x00",  # shorter than a header
        header(v=1) + PCMU_20MS,  # wrong version
        header(cc=15) + b"\x00" * 8,  # CSRC list runs past the end
        header(x=1) + b"\x00\x01",  # extension header cut short
        header(x=1) + struct.pack("!HH", 0, 200),  # extension longer than the packet
        header(p=1) + b"\x00\x00\xff",  # padding longer than the packet
        header(p=1) + b"\x00",  # padding count of zero
    ],
)
def test_malformed_packets_raise(data):
    with pytest.raises(RtpError):
        parse_rtp(data)


@given(st.binary(max_size=64))
def test_parse_never_raises_anything_but_rtp_error(data):
    with contextlib.suppress(RtpError):
        parse_rtp(data)


def test_rtcp_mux_demultiplexing_rfc_5761():
    assert is_rtcp(b"\x80\xc8" + b"\x00" * 26)  # SR
    assert is_rtcp(b"\x81\xc9" + b"\x00" * 30)  # RR
    assert not is_rtcp(header(pt=0))
    assert not is_rtcp(header(pt=101, m=1))


def test_serial_number_arithmetic_across_the_wrap():
    assert seq_gt(1, 0) and seq_gt(0, 65535) and seq_gt(5, 65530)
    assert not seq_gt(65535, 0) and not seq_gt(7, 7)


def test_packetizer_golden_first_packet_has_marker():
    packetizer = RtpPacketizer(0, ssrc=0xDEADBEEF, sequence=100, timestamp=1000)
    first = packetizer.packet(b"\xff" * 160, 160)
    assert first[:12] == bytes.fromhex("80 80 0064 000003e8 deadbeef".replace(" ", ""))
    second = parse_rtp(packetizer.packet(b"\xff" * 160, 160))
    assert (second.marker, second.sequence, second.timestamp) == (False, 101, 1160)


def test_packetizer_wraps_sequence_and_timestamp():
    packetizer = RtpPacketizer(8, ssrc=1, sequence=65535, timestamp=2**32 - 80)
    a = parse_rtp(packetizer.packet(b"\xd5" * 160, 160))
    b = parse_rtp(packetizer.packet(b"\xd5" * 160, 160))
    assert (a.sequence, b.sequence) == (65535, 0)
    assert (a.timestamp, b.timestamp) == (2**32 - 80, 80)


def test_silence_gap_advances_timestamp_and_marks_next_talkspurt():
    packetizer = RtpPacketizer(0, ssrc=1, sequence=0, timestamp=0)
    packetizer.packet(b"\xff" * 160, 160)
    packetizer.silence_gap(160 * 3)
    after = parse_rtp(packetizer.packet(b"\x00" * 160, 160))
    assert (after.sequence, after.timestamp, after.marker) == (1, 160 * 4, True)


def test_random_initial_values_differ_per_call():
    a, b = RtpPacketizer(0), RtpPacketizer(0)
    assert (a.ssrc, a.sequence, a.timestamp) != (b.ssrc, b.sequence, b.timestamp)

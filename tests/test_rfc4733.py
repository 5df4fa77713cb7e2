"""RFC 4733 telephone-events: golden payloads from sipp's captures in, one digit per press out."""

import struct

import pytest

from media.rfc4733 import Dtmf, DtmfDecoder, EventError, build_event, parse_event

# The payloads of /usr/share/sip-tester/dtmf_2833_1.pcap, in order (timestamp 13280): start
# (marker), six updates 20 ms apart, then the end packet three times (RFC 4733 s2.5.1.4).
DIGIT_1 = [bytes.fromhex(h) for h in (
    "010a0000", "010a0140", "010a0280", "010a03c0", "010a0500", "010a0640", "010a0780",
    "018a08c0", "018a08c0", "018a08c0",
)]


def test_parse_golden_event_payload():
    assert parse_event(bytes.fromhex("018a08c0")) == (1, True, 10, 2240)
    assert parse_event(bytes.fromhex("0b0a0140")) == (11, False, 10, 320)
    assert build_event(11, end=True, duration=2240) == bytes.fromhex("0b8a08c0")
    with pytest.raises(EventError):
        parse_event(b"\x01\x0a\x00")


def test_one_digit_per_press_despite_end_retransmissions():
    decoder = DtmfDecoder()
    out = [decoder.packet(13280, payload) for payload in DIGIT_1]
    assert [d for d in out if d] == [Dtmf("1", 280)]  # 2240 samples at 8 kHz
    assert out.index(Dtmf("1", 280)) == 7  # reported on the first end packet, not later


@pytest.mark.parametrize("event, digit", [(0, "0"), (9, "9"), (10, "*"), (11, "#"), (12, "A"), (15, "D"), (16, "flash")])
def test_event_codes_rfc_4733_table_3(event, digit):
    decoder = DtmfDecoder()
    assert decoder.packet(0, build_event(event, end=True, duration=800)) == Dtmf(digit, 100)


def test_lost_end_packets_reported_when_the_next_press_starts():
    decoder = DtmfDecoder()
    decoder.packet(1000, build_event(5, end=False, duration=0))
    decoder.packet(1000, build_event(5, end=False, duration=480))
    # All three end packets lost; the next press has a new timestamp.
    assert decoder.packet(5000, build_event(7, end=False, duration=0)) == Dtmf("5", 60)
    assert decoder.packet(5000, build_event(7, end=True, duration=800)) == Dtmf("7", 100)


def test_lost_end_packets_reported_when_audio_resumes_past_the_event():
    decoder = DtmfDecoder()
    decoder.packet(1000, build_event(3, end=False, duration=640))
    assert decoder.audio(1000 + 640) is None  # audio alongside the event: still pressed
    assert decoder.audio(1000 + 640 + 801) == Dtmf("3", 80)
    assert decoder.audio(1000 + 640 + 2000) is None  # reported once


def test_straggler_of_a_finished_event_is_ignored():
    decoder = DtmfDecoder()
    decoder.packet(2000, build_event(1, end=True, duration=800))
    decoder.packet(4000, build_event(2, end=True, duration=800))
    assert decoder.packet(2000, build_event(1, end=True, duration=800)) is None


def test_long_event_continues_in_a_new_segment_rfc_4733_2_5_1_3():
    decoder = DtmfDecoder()
    assert decoder.packet(100, build_event(0, end=False, duration=0xFFFF)) is None
    # The next segment starts where the first ended, same event: still one press.
    assert decoder.packet(100 + 0xFFFF, build_event(0, end=False, duration=1000)) is None
    assert decoder.packet(100 + 0xFFFF, build_event(0, end=True, duration=1600)) == Dtmf(
        "0", (0xFFFF + 1600) // 8
    )


def test_timestamp_wrap_is_a_new_event_not_a_straggler():
    decoder = DtmfDecoder()
    decoder.packet(2**32 - 160, build_event(4, end=True, duration=160))
    assert decoder.packet(480, build_event(6, end=True, duration=160)) == Dtmf("6", 20)


def test_unknown_events_and_short_payloads_are_counted_not_reported():
    decoder = DtmfDecoder()
    assert decoder.packet(0, struct.pack("!BBH", 70, 0x80, 800)) is None  # RFC 4734 tone
    assert decoder.packet(0, b"\x01") is None
    assert decoder.ignored == 2


def test_restart_reports_the_open_press_and_forgets_timestamps():
    decoder = DtmfDecoder()
    decoder.packet(90000, build_event(8, end=False, duration=320))
    assert decoder.restart() == Dtmf("8", 40)
    assert decoder.packet(100, build_event(9, end=True, duration=160)) == Dtmf("9", 20)

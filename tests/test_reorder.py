"""The reorder buffer and RFC 3550 receiver statistics: sequence numbers in, order out."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.reorder import JitterEstimator, ReorderBuffer
from media.rtp import RtpPacket

# Every test here runs on both per-packet paths: the Python reference and the compiled twins
# (media/native.py; tests/native_paths.py).
pytestmark = pytest.mark.usefixtures("native_path")


def pkt(seq, *, ssrc=0xCAFE, ts=None):
    return RtpPacket(0, False, seq & 0xFFFF, (seq * 160 if ts is None else ts) & 0xFFFFFFFF, ssrc, b"")


def run(sequence, *, depth=2, ssrc=0xCAFE):
    out = []
    buffer = ReorderBuffer(lambda p: out.append(p.sequence), depth=depth, max_wait=0.04)
    for seq in sequence:
        buffer.push(pkt(seq, ssrc=ssrc), 0.0)
    return buffer, out


def test_in_order_is_delivered_at_once():
    buffer, out = run([10, 11, 12])
    assert out == [10, 11, 12] and buffer.deadline is None
    assert (buffer.lost, buffer.late, buffer.duplicates) == (0, 0, 0)


# Arrivals as (sequence offset, SSRC switch?, time step): reordering, loss, duplicates, jumps
# past MAX_DROPOUT, SSRC changes, and pauses long enough for gaps to expire.
ARRIVALS = st.lists(
    st.tuples(
        st.one_of(st.integers(-3, 3), st.integers(-120, 3100)),  # mostly near in order
        st.booleans(),
        st.sampled_from([0.0, 0.01, 0.02, 0.05]),
    ),
    max_size=60,
)


@given(ARRIVALS)
def test_deadline_always_says_when_the_open_gap_expires(arrivals):
    """``deadline`` is kept as an attribute where the held packets change; it must always be
    what it would be computed from them: the gap's start plus max_wait, or None."""
    buffer = ReorderBuffer(lambda p: None, depth=2, max_wait=0.04)
    now, seq, ssrc = 0.0, 100, 1
    for offset, switch, step in arrivals:
        now += step
        if buffer.deadline is not None and now >= buffer.deadline:
            buffer.expire(now)  # as the receiver does before each packet
        if switch and offset % 7 == 0:
            ssrc += 1
        buffer.push(pkt(seq + offset, ssrc=ssrc), now)
        seq += 1
        if buffer._held:
            assert buffer.deadline == buffer._gap_since + buffer.max_wait > now
        else:
            assert buffer.deadline is None


def test_swapped_pair_is_put_back_in_order():
    buffer, out = run([10, 12, 11, 13])
    assert out == [10, 11, 12, 13]
    assert (buffer.lost, buffer.late) == (0, 0)


def test_reordering_across_the_16_bit_wrap():
    buffer, out = run([65534, 0, 65535, 1, 2])
    assert out == [65534, 65535, 0, 1, 2]
    assert buffer.extended_max == 65536 + 2 and buffer.cumulative_lost == 0


def test_gap_longer_than_the_buffer_is_counted_lost_then_late_arrival_dropped():
    buffer, out = run([10, 12, 13, 14, 11])
    assert out == [10, 12, 13, 14]  # 11 given up after depth (2) packets were held
    assert (buffer.lost, buffer.late) == (1, 1)


def test_duplicates_dropped_whether_delivered_or_held():
    buffer, out = run([10, 11, 11, 13, 13, 12])
    assert out == [10, 11, 12, 13]
    assert buffer.duplicates == 2 and buffer.late == 0


def test_depth_zero_delivers_at_once_and_counts_the_gap():
    buffer, out = run([1, 3, 2, 4], depth=0)
    assert out == [1, 3, 4] and (buffer.lost, buffer.late) == (1, 1)


def test_open_gap_expires_after_max_wait():
    out = []
    buffer = ReorderBuffer(lambda p: out.append(p.sequence), depth=2, max_wait=0.04)
    buffer.push(pkt(1), 1.00)
    buffer.push(pkt(3), 1.02)
    assert out == [1] and buffer.deadline == pytest.approx(1.06)
    buffer.expire(1.05)
    assert out == [1]
    buffer.expire(1.06)
    assert out == [1, 3] and buffer.lost == 1 and buffer.deadline is None


def test_ssrc_change_flushes_and_restarts_numbering():
    out = []
    buffer = ReorderBuffer(lambda p: out.append((p.ssrc, p.sequence)), depth=2)
    for p in [pkt(100, ssrc=1), pkt(102, ssrc=1), pkt(7000, ssrc=2), pkt(7001, ssrc=2),
              pkt(101, ssrc=1)]:
        buffer.push(p, 0.0)
    # The held 102 goes out before the new stream; 101 of the old stream is late.
    assert out == [(1, 100), (1, 102), (2, 7000), (2, 7001)]
    assert buffer.ssrc_changes == 1 and buffer.late == 1 and buffer.lost == 1
    # The old stream genuinely coming back (newer numbers) is a switch, not a straggler.
    buffer.push(pkt(103, ssrc=1), 0.0)
    assert out[-1] == (1, 103) and buffer.ssrc_changes == 2


def test_sequence_restart_believed_on_the_second_packet_rfc_3550_a1():
    buffer, out = run([10, 11, 12, 30000, 30001, 30002])
    assert out == [10, 11, 12, 30001, 30002]
    assert buffer.restarts == 1 and buffer.lost == 0


def test_single_wild_sequence_number_is_noise():
    buffer, out = run([10, 11, 40000, 12, 13])
    assert out == [10, 11, 12, 13] and buffer.restarts == 0 and buffer.late == 1


def test_report_interval_fraction_and_cumulative_loss_rfc_3550_a3():
    buffer, _ = run([0, 1, 2, 3, 5, 6, 7, 8, 9, 10], depth=0)  # 4 lost of 11
    assert buffer.report_interval() == (256 * 1 // 11, 1)
    for seq in range(11, 21):
        buffer.push(pkt(seq), 0.0)
    assert buffer.report_interval() == (0, 1)  # no new loss in this interval


def test_jitter_estimator_rfc_3550_a8():
    jitter = JitterEstimator()
    for n in range(50):  # perfectly paced: no jitter
        jitter.update(n * 160, 10 + n * 0.02)
    assert jitter.jitter == pytest.approx(0, abs=1)
    jitter.update(50 * 160, 10 + 50 * 0.02 + 0.016)  # 16 ms late: D = 128 samples
    assert jitter.jitter == pytest.approx(128 / 16, abs=1)
    assert jitter.milliseconds == pytest.approx(1.0, abs=0.15)

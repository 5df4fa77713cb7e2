"""The caller's RTP stream in order, sans-IO: a small reorder buffer and RFC 3550 statistics.

A G.711 stream needs no real jitter buffer here: the model takes audio faster than real time,
so arrival jitter costs nothing. What it must not get is audio out of order or twice. The
:class:`ReorderBuffer` holds a packet that arrived ahead of a gap for at most ``depth`` packets
(or ``max_wait`` seconds), delivers in sequence order, drops late and duplicate packets and
counts loss, all with serial-number arithmetic so the 16-bit wrap is a non-event.

It also keeps the receiver-side numbers of RFC 3550 appendix A (extended highest sequence,
expected vs received, interarrival jitter) that our RTCP reports and the MOS estimate need.
"""

from __future__ import annotations

from collections.abc import Callable

from media.rtp import RtpPacket

# RFC 3550 appendix A.1: a jump of more than MAX_DROPOUT ahead or MAX_MISORDER behind is not
# loss or reordering but a sender that restarted its numbering; the restart is believed once a
# second packet continues from the jump.
MAX_DROPOUT = 3000
MAX_MISORDER = 100
HISTORY_BITS = 64  # sequence numbers remembered behind `expected`, to tell duplicates from late
_HISTORY_MASK = (1 << HISTORY_BITS) - 1


def _discard(packet: RtpPacket) -> None:
    """Where a detached buffer delivers: nowhere."""


class ReorderBuffer:
    """Delivers one SSRC's packets in sequence order to ``deliver``; time passed in.

    ``push(packet, now)`` for each arriving packet; ``expire(now)`` once ``deadline`` has
    passed (the receive loop wakes for it only while a gap is open). A new SSRC (a phone or
    SBC switching streams) flushes what was held and starts afresh; stragglers of the stream
    it replaced are dropped as late.
    """

    # Slots (issue 16's per-call cost): one per call; nothing assigns others.
    __slots__ = (
        "_bad_seq", "_deliver", "_expected_prior", "_gap_since", "_held", "_history",
        "_on_restart", "_previous", "_received_prior", "base_seq", "cycles", "deadline",
        "delivered", "depth", "duplicates", "expected", "late", "lost", "max_seq", "max_wait",
        "received", "restarts", "ssrc", "ssrc_changes",
    )

    def __init__(
        self,
        deliver: Callable[[RtpPacket], None],
        *,
        depth: int = 2,
        max_wait: float = 0.04,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self._deliver = deliver
        # Called when a new SSRC or a sequence restart begins a new stream, after what was
        # held of the old one has been delivered and before the new one's first packet.
        self._on_restart = on_restart
        self.depth = depth
        self.max_wait = max_wait
        self.ssrc: int | None = None
        self.expected = 0  # next sequence number to deliver
        self._history = 0  # bit i: sequence expected-1-i was delivered
        self._held: dict[int, RtpPacket] = {}
        self._gap_since = 0.0
        # When :meth:`expire` must run to give up on the open gap; None while nothing is held.
        # An attribute kept up to date where ``_held`` or ``_gap_since`` change (``_track_gap``)
        # rather than a property: the receiver reads it twice per packet.
        self.deadline: float | None = None
        self._bad_seq: int | None = None  # RFC 3550 A.1 restart candidate
        self._previous: tuple[int, int] | None = None  # (ssrc, last delivered) before a switch
        # Receiver statistics of the current SSRC (RFC 3550 A.3).
        self.base_seq = 0
        self.cycles = 0
        self.max_seq = 0
        self.received = 0
        self._expected_prior = 0
        self._received_prior = 0
        # Counters over the whole call.
        self.delivered = 0
        self.lost = 0  # sequence numbers skipped: never delivered
        self.late = 0  # arrived after their gap was given up (or from a replaced SSRC)
        self.duplicates = 0
        self.ssrc_changes = 0
        self.restarts = 0  # sequence restarts believed (RFC 3550 A.1)

    def push(self, packet: RtpPacket, now: float) -> None:
        """One arriving packet: deliver it (and whatever it unblocks), hold it, or drop it."""
        seq = packet.sequence
        if packet.ssrc != self.ssrc:
            previous = self._previous
            if (
                previous is not None
                and packet.ssrc == previous[0]
                and ((seq - previous[1] - 1) & 0xFFFF) >= 0x7FFF  # not after its last
            ):
                self.late += 1  # reordered across the switch: the old stream is over
                return
            if self.ssrc is not None:
                self.ssrc_changes += 1
                self._flush()
                self._previous = (self.ssrc, (self.expected - 1) & 0xFFFF)
            self.ssrc = packet.ssrc
            self._restart(seq)
            self._deliver_next(packet)
            return
        if seq == self.expected:
            self._count_arrival(seq)
            self._deliver_next(packet)
            if self._held:
                self._drain()
            return
        ahead = (seq - self.expected) & 0xFFFF
        if ahead < 0x8000:
            if ahead > MAX_DROPOUT:
                self._jump(packet)
                return
            if seq in self._held:
                self.duplicates += 1
                return
            self._count_arrival(seq)
            if not self._held:
                self._gap_since = now
            self._held[seq] = packet
            if len(self._held) > self.depth:
                self._skip_gap()
            self._track_gap()
            return
        behind = (self.expected - seq) & 0xFFFF
        if behind > MAX_MISORDER:
            self._jump(packet)
        elif behind <= HISTORY_BITS and self._history >> (behind - 1) & 1:
            self.duplicates += 1
        else:
            self.late += 1
            self.received += 1  # RFC 3550 A.3 counts late packets as received

    def expire(self, now: float) -> None:
        """Give up on gaps that have been open for ``max_wait``."""
        while self._held and now >= self._gap_since + self.max_wait:
            self._skip_gap()
            self._gap_since = now
        self._track_gap()

    # --- internals ----------------------------------------------------------------------------

    def detach(self) -> None:
        """Forget the callbacks: the owner is done with the stream (they point back at it,
        a reference cycle that only the cycle collector would otherwise free)."""
        self._deliver = _discard
        self._on_restart = None

    def _deliver_next(self, packet: RtpPacket) -> None:
        self._history = ((self._history << 1) | 1) & _HISTORY_MASK
        self.expected = (self.expected + 1) & 0xFFFF
        self.delivered += 1
        self._deliver(packet)

    def _drain(self) -> None:
        held = self._held
        while (packet := held.pop(self.expected, None)) is not None:
            self._deliver_next(packet)
        self._track_gap()

    def _track_gap(self) -> None:
        """``deadline`` after ``_held`` or ``_gap_since`` changed."""
        self.deadline = self._gap_since + self.max_wait if self._held else None

    def _skip_gap(self) -> None:
        """Declare the sequence numbers before the earliest held packet lost."""
        expected = self.expected
        gap = min((seq - expected) & 0xFFFF for seq in self._held)
        self.lost += gap
        self._history = (self._history << gap) & _HISTORY_MASK
        self.expected = (expected + gap) & 0xFFFF
        self._drain()

    def _flush(self) -> None:
        """Deliver everything held, in order, accepting the gaps as loss."""
        while self._held:
            self._skip_gap()

    def _jump(self, packet: RtpPacket) -> None:
        seq = packet.sequence
        if seq != self._bad_seq:
            self._bad_seq = (seq + 1) & 0xFFFF
            self.late += 1  # until a second packet confirms it, a wild number is noise
            return
        self.restarts += 1
        self._flush()
        self._restart(seq)
        self._deliver_next(packet)

    def _restart(self, seq: int) -> None:
        if self._on_restart is not None:
            self._on_restart()
        self.expected = seq
        self._history = 0
        self._bad_seq = None
        self.base_seq = seq
        self.max_seq = seq
        self.cycles = 0
        self.received = 1
        self._expected_prior = 0
        self._received_prior = 0

    def _count_arrival(self, seq: int) -> None:
        self.received += 1
        if seq != self.max_seq and ((seq - self.max_seq) & 0xFFFF) < 0x8000:
            if seq < self.max_seq:
                self.cycles += 0x10000  # RFC 3550 A.1: the 16-bit sequence wrapped
            self.max_seq = seq

    # --- RFC 3550 section 6.4.1 report block values ---------------------------------------------

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def cumulative_lost(self) -> int:
        """Expected minus received (RFC 3550 A.3); duplicates can make it negative."""
        return self.extended_max - self.base_seq + 1 - self.received

    def report_interval(self) -> tuple[int, int]:
        """``(fraction lost x256, cumulative lost)`` since the previous call (A.3)."""
        expected = self.extended_max - self.base_seq + 1
        expected_interval = expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min((lost_interval << 8) // expected_interval, 255)
        return fraction, self.cumulative_lost


class JitterEstimator:
    """RFC 3550 section 6.4.1 / A.8 interarrival jitter, in timestamp units (8 kHz here)."""

    __slots__ = ("clock_rate", "jitter", "_transit")

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self.jitter = 0.0
        self._transit: int | None = None

    def reset(self) -> None:
        self.jitter = 0.0
        self._transit = None

    def update(self, rtp_timestamp: int, arrival: float) -> None:
        """One audio packet with ``rtp_timestamp`` arrived at ``arrival`` seconds."""
        transit = int(arrival * self.clock_rate) - rtp_timestamp
        previous = self._transit
        self._transit = transit
        if previous is not None:
            d = (transit - previous) & 0xFFFFFFFF
            if d >= 0x80000000:
                d = 0x100000000 - d  # |D(i-1, i)| across the 32-bit timestamp wrap
            self.jitter += (d - self.jitter) / 16

    @property
    def milliseconds(self) -> float:
        return self.jitter * 1000 / self.clock_rate

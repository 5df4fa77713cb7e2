"""One call's MediaStream: pacing, silence, latching, payload types, DTMF, RTCP, timeout.

Timing runs on ``trio.testing.MockClock(autojump_threshold=0)``: virtual time jumps as soon as
every task waits, so a minute of media takes milliseconds and deadlines are exact. Sockets are
injected (a recorder standing in for ``sendto``), or real loopback sockets where the receive
loop is under test. Addresses are RFC 5737 documentation addresses unless a packet must cross
a real socket.
"""

from __future__ import annotations

import socket
import struct
from itertools import pairwise

import pytest
import trio
import trio.testing

from media.bridge import CallBridge
from media.clock import MediaClock
from media.latch import Relatch
from media.options import MediaOptions
from media.playout import PlayoutQueue
from media.poller import SocketPoller
from media.rfc4733 import Dtmf, build_event
from media.rtcp import ReportBlock, build_report, ntp_middle, ntp_timestamp, parse_compound
from media.rtp import RtpPacketizer, parse_rtp
from media.stream import MediaStream

# Every test here runs on both per-packet paths: the Python reference and the compiled twins
# (media/native.py; tests/native_paths.py).
pytestmark = pytest.mark.usefixtures("native_path")

CALLER = ("192.0.2.10", 40000)  # what the SDP says
NAT = ("198.51.100.7", 61000)  # where the caller's packets really come from
ATTACKER = ("203.0.113.66", 5060)
WALL = 1_700_000_000.0


class Recorder:
    """Stands in for a socket's ``sendto``: remembers (trio time, datagram, destination)."""

    def __init__(self, on_send=None):
        self.sent: list[tuple[float, bytes, tuple]] = []
        self._on_send = on_send

    def sendto(self, data, destination):
        self.sent.append((trio.current_time(), bytes(data), destination))
        if self._on_send is not None:
            self._on_send(len(self.sent))
        return len(data)

    def packets(self):
        return [(at, parse_rtp(data)) for at, data, _ in self.sent]


def make_stream(*, codec="PCMU", ptime=20, rtp=None, rtcp=None, **options):
    """A stream on recorders; ``options`` are MediaStream's arguments or MediaOptions' fields."""
    events_send, events_receive = trio.open_memory_channel(4)
    bridge = CallBridge(
        call_id="c",
        codec=codec,
        ptime_ms=ptime,
        playout=PlayoutQueue(ptime * 8, max_bytes=80_000),
        end_call=lambda kind, reason: None,
        transfer=lambda target: None,
        caller_events=events_receive,
    )
    options.setdefault("remote", CALLER)
    options.setdefault("rtcp_remote", (CALLER[0], CALLER[1] + 1))
    options.setdefault("telephone_event", 101)
    media_options = {
        name: options.pop(name) for name in MediaOptions.__dataclass_fields__ if name in options
    }
    stream = MediaStream(
        bridge,
        rtp or Recorder(),
        rtcp or Recorder(),
        payload_type=0 if codec == "PCMU" else 8,
        caller_events=events_send,
        wall_clock=lambda: WALL,
        options=MediaOptions(**media_options),
        **options,
    )
    audio: list[bytes] = []  # what the AI session would have been handed
    bridge.attach_caller_audio(lambda frame: audio.append(frame) is None)
    return stream, audio, events_receive


def drain(received):
    """Events waiting on a channel, or frames handed to the AI; taken away either way."""
    if isinstance(received, list):
        out = list(received)
        received.clear()
        return out
    out = []
    while True:
        try:
            out.append(received.receive_nowait())
        except trio.WouldBlock:
            return out


def rtp(seq, payload=b"\x11" * 160, *, pt=0, ssrc=0xCA11E7, ts=None, marker=False):
    ts = seq * 160 if ts is None else ts
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


async def run_for(seconds, *tasks):
    async with trio.open_nursery() as nursery:
        for task in tasks:
            nursery.start_soon(task)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()


async def run_paced(seconds, stream, *tasks):
    """Pace ``stream`` on a media clock of its own (the engine's, in production)."""
    clock = MediaClock()
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        stream.start_pacing(clock)
        for task in tasks:
            nursery.start_soon(task)
        await trio.sleep(seconds)
        stream.stop_pacing()
        nursery.cancel_scope.cancel()
    return clock


def caller_speaks(stream, source=CALLER):
    """The caller's first packet: it latches the stream, and idle silence starts."""
    stream.on_datagram(rtp(1), source)


# --- outbound: pacing, ptime, silence, marker, wrap -------------------------------------------


@pytest.mark.parametrize("ptime", [10, 20, 30, 40])
async def test_paced_on_exact_deadlines_repacketized_to_the_offers_ptime(ptime, autojump_clock):
    stream, _, _ = make_stream(ptime=ptime)
    caller_speaks(stream)
    start = trio.current_time()
    # The model's audio arrives in odd-sized deltas; the caller gets exact ptime frames.
    speech = bytes(range(256)) * 10  # 2560 bytes = 320 ms
    for offset in range(0, len(speech), 999):
        stream.bridge.playout.push(speech[offset:offset + 999], "item")
    stream.bridge.playout.finish_item(0xFF)
    await run_paced(1.0 - 1e-6, stream)
    packets = stream.rtp_socket.packets()
    assert len(packets) == -(-1000 // ptime)
    for n, (at, packet) in enumerate(packets):
        assert at == pytest.approx(start + n * ptime / 1000, abs=1e-9)  # no drift
        assert len(packet.payload) == ptime * 8
    frames = b"".join(p.payload for _, p in packets)
    assert frames[: len(speech)] == speech
    timestamps = [p.timestamp for _, p in packets]
    assert all((b - a) & 0xFFFFFFFF == ptime * 8 for a, b in pairwise(timestamps))
    assert {p.ssrc for _, p in packets} == {stream.packetizer.ssrc}


@pytest.mark.parametrize("codec, silence", [("PCMU", 0xFF), ("PCMA", 0xD5)])
async def test_silence_frames_between_talkspurts_and_marker_on_each(codec, silence, autojump_clock):
    stream, _, _ = make_stream(codec=codec)
    caller_speaks(stream)
    playout = stream.bridge.playout

    async def speak():
        await trio.sleep(0.09)  # between two frame slots: no tie with the sender
        playout.push(b"\x01" * 320, "a")  # two frames
        await trio.sleep(0.2)
        playout.push(b"\x02" * 160, "b")

    await run_paced(0.49, stream, speak)
    packets = [p for _, p in stream.rtp_socket.packets()]
    kinds = ["s" if p.payload == bytes([silence]) * 160 else "v" for p in packets]
    assert "".join(kinds) == "sssss" "vv" "ssssssss" "v" "sssssssss"
    markers = [n for n, p in enumerate(packets) if p.marker]
    assert markers == [0, 5, 15]  # the stream's first packet, then each talkspurt's first
    seqs = [p.sequence for p in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in pairwise(seqs))


async def test_send_silence_off_sends_nothing_but_time_advances(autojump_clock):
    stream, _, _ = make_stream(send_silence=False)
    playout = stream.bridge.playout

    playout.push(b"\x01" * 160, "a")  # plays at t=0

    async def speak():
        await trio.sleep(0.09)  # four frame slots of silence, not sent
        playout.push(b"\x02" * 160, "b")  # plays at t=0.1

    await run_paced(0.3, stream, speak)
    first, second = [p for _, p in stream.rtp_socket.packets()]
    assert (second.sequence - first.sequence) & 0xFFFF == 1  # nothing was sent between
    assert (second.timestamp - first.timestamp) & 0xFFFFFFFF == 160 * 5  # but time passed
    assert first.marker and second.marker


async def test_sequence_and_timestamp_wrap_on_the_wire(autojump_clock):
    stream, _, _ = make_stream()
    stream.sender.packetizer = RtpPacketizer(0, ssrc=7, sequence=65534, timestamp=2**32 - 320)
    caller_speaks(stream)
    await run_paced(0.1 - 1e-6, stream)
    packets = [p for _, p in stream.rtp_socket.packets()]
    assert [p.sequence for p in packets] == [65534, 65535, 0, 1, 2]
    assert [p.timestamp for p in packets] == [2**32 - 320, 2**32 - 160, 0, 160, 320]


async def test_pacer_reanchors_after_a_stall_instead_of_bursting(autojump_clock):
    def stall(count):
        if count == 10:
            autojump_clock.jump(0.5)  # the process was descheduled for half a second

    stream, _, _ = make_stream(rtp=Recorder(on_send=stall))
    caller_speaks(stream)
    start = trio.current_time()
    await run_paced(0.99, stream)  # not 1.0: a tie with the frame due then
    times = [at - start for at, _ in stream.rtp_socket.packets()]
    assert stream.stats.pacer_reanchors == 1
    gaps = [b - a for a, b in pairwise(times)]
    # The overdue frame goes at once, then the 20 ms grid resumes from there: not the 25
    # frames the stall "owed" in a burst that would overrun the caller's jitter buffer.
    assert gaps[9] == pytest.approx(0.5)
    assert all(g == pytest.approx(0.02) for n, g in enumerate(gaps) if n != 9)
    assert len(times) == 1 + 9 + 1 + 15


async def test_no_rtp_while_the_caller_holds_but_rtcp_goes_on(autojump_clock):
    stream, _, _ = make_stream(sending=False)
    caller_speaks(stream)
    await run_paced(0.2, stream)
    assert stream.rtp_socket.sent == []
    stream.send_report()  # RFC 3264 s5.1: RTCP is sent whatever the direction
    assert len(stream.rtcp_socket.sent) == 1


async def test_nothing_is_sent_before_the_callers_first_packet_then_silence(autojump_clock):
    """As rtpengine: no idle silence (and no RTCP) while the phone rings, none to an SDP
    address that may be a NATed private one; the steady stream starts with the caller's."""
    stream, _, _ = make_stream()

    async def answer():
        await trio.sleep(0.5)
        caller_speaks(stream, NAT)

    start = trio.current_time()
    await run_paced(1.0 - 1e-6, stream, answer, stream.keep_timers)
    sent = stream.rtp_socket.sent
    assert stream.rtcp_socket.sent == []
    assert [at - start for at, _, _ in sent] == pytest.approx([0.5 + n * 0.02 for n in range(25)])
    assert {destination for _, _, destination in sent} == {NAT}
    assert [p.marker for _, p in stream.rtp_socket.packets()] == [True] + [False] * 24


async def test_ai_audio_before_the_callers_first_packet_plays_to_the_sdp_address(autojump_clock):
    """Real audio is worth sending to the SDP's address (an early greeting, a model that
    speaks first): it plays at once and on the grid; only the idle silence waits."""
    stream, _, _ = make_stream()
    playout = stream.bridge.playout

    async def model_speaks():
        await trio.sleep(0.105)
        playout.push(b"\x01" * 480, "hello")  # three frames, before any caller RTP
        await trio.sleep(0.2)
        playout.push(b"\x02" * 160, "again")

    start = trio.current_time()
    await run_paced(0.5, stream, model_speaks)
    packets = stream.rtp_socket.packets()
    times = [round(at - start, 6) for at, _ in packets]
    assert times == [0.105, 0.125, 0.145, 0.305]  # the grid anchored on the first frame
    assert [p.marker for _, p in packets] == [True, False, False, True]
    assert {destination for _, _, destination in stream.rtp_socket.sent} == {CALLER}
    first, second = packets[2][1], packets[3][1]
    assert (second.timestamp - first.timestamp) & 0xFFFFFFFF == 160 * 8  # time still passed


async def test_one_clock_paces_many_calls_each_on_its_own_grid(autojump_clock):
    clock = MediaClock()
    streams = [make_stream(ptime=ptime)[0] for ptime in (10, 20, 30, 40, 20)]
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        starts = {}
        for n, stream in enumerate(streams):
            await trio.sleep(0.0101 * n)  # calls start at odd times, some 0.1-0.4 ms apart
            caller_speaks(stream)
            starts[n] = trio.current_time()
            stream.start_pacing(clock)
        await trio.sleep(0.6)
        streams[4].stop_pacing()  # the call ended: not one more packet
        ended_with = len(streams[4].rtp_socket.sent)
        await trio.sleep(0.4)
        end = trio.current_time()
        nursery.cancel_scope.cancel()
    for n, stream in enumerate(streams[:4]):
        ptime = stream.bridge.ptime_ms / 1000
        times = [at - starts[n] for at, _, _ in stream.rtp_socket.sent]
        # Each call's own grid of exact deadlines, anchored on the clock's 1 ms lattice (so
        # the first frame may wait up to 1 ms) so that calls share wake-ups.
        first = times[0]
        assert 0 <= first < 0.001
        assert all(abs(at - first - k * ptime) < 1e-9 for k, at in enumerate(times))
        assert len(times) == pytest.approx((end - starts[n]) / ptime, abs=1)
    assert len(streams[4].rtp_socket.sent) == ended_with
    assert clock.wakeups < clock.ticks
    assert clock.wakeups <= 1000 + 1  # at most one per millisecond


async def test_a_stream_whose_tick_fails_ends_its_call_and_not_the_others(autojump_clock):
    ended = []

    def broken(data, destination):
        raise RuntimeError("a bug")

    good, _, _ = make_stream()
    bad, _, _ = make_stream()
    bad.rtp_socket.sendto = broken
    bad.bridge.end_call = lambda kind, reason: ended.append(reason)
    for stream in (good, bad):
        caller_speaks(stream)
    clock = MediaClock()
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        good.start_pacing(clock)
        bad.start_pacing(clock)
        await trio.sleep(0.1 - 1e-6)
        nursery.cancel_scope.cancel()
    assert ended == ["media failure: internal error"]
    assert len(good.rtp_socket.sent) == 5


# --- inbound: latching and RTP Bleed ----------------------------------------------------------


async def test_latches_on_the_first_valid_packet_and_sends_there():
    stream, audio, _ = make_stream()
    stream.on_datagram(b"\x80\x00junk", NAT)  # malformed: does not latch
    assert stream.latch.latched is None and stream.stats.malformed == 1
    stream.on_datagram(rtp(1), NAT)
    assert stream.latch.latched == NAT and stream.remote == NAT
    assert stream.bridge.media_started.is_set()
    stream.on_datagram(rtp(2), ATTACKER)  # RTP Bleed: a stranger's packet is not audio
    assert stream.latch.latched == NAT and stream.stats.foreign_source == 1
    assert len(drain(audio)) == 1


@pytest.mark.parametrize("policy", [Relatch.SDP, Relatch.SILENCE])
async def test_relatch_to_the_sdp_address_is_allowed(policy):
    stream, audio, _ = make_stream(relatch=policy)
    stream.on_datagram(rtp(1), NAT)
    stream.on_datagram(rtp(2), CALLER)
    assert stream.latch.latched == CALLER and stream.stats.relatches == 1


async def test_relatch_never_holds_the_first_source():
    stream, _, _ = make_stream(relatch=Relatch.NEVER)
    stream.on_datagram(rtp(1), NAT)
    stream.on_datagram(rtp(2), CALLER)
    assert stream.latch.latched == NAT and stream.stats.foreign_source == 1


async def test_relatch_silence_only_after_the_latched_source_went_quiet():
    stream, _, _ = make_stream(relatch=Relatch.SILENCE)
    stream._now = 10.0
    stream.on_datagram(rtp(1), NAT)
    stream._now = 11.0
    stream.on_datagram(rtp(2), ATTACKER)  # racing a live stream: refused
    assert stream.latch.latched == NAT
    stream._now = 12.5
    stream.on_datagram(rtp(3), ATTACKER)  # 2.5 s of silence: a NAT rebinding, accepted
    assert stream.latch.latched == ATTACKER and stream.stats.relatches == 1


async def test_strict_source_accepts_only_the_sdp_endpoint():
    stream, audio, _ = make_stream(strict_source=True)
    stream.on_datagram(rtp(1), NAT)
    assert stream.latch.latched is None and stream.stats.foreign_source == 1
    stream.on_datagram(rtp(2), CALLER)
    assert stream.latch.latched == CALLER and len(drain(audio)) == 1


async def test_reoffer_moving_the_media_relatches_there():
    stream, _, _ = make_stream()
    stream.on_datagram(rtp(1), NAT)
    moved = ("192.0.2.20", 42000)
    stream.update(remote=moved, rtcp_remote=(moved[0], 42001), sending=True, caller_sends=True)
    assert stream.remote == moved and stream.latch.latched is None
    stream.on_datagram(rtp(2), ("192.0.2.20", 42000))
    assert stream.latch.latched == moved


async def test_ipv6_sources_compare_by_address_not_spelling():
    stream, _, _ = make_stream(remote=("2001:DB8::10", 40000), strict_source=True)
    stream.on_datagram(rtp(1), ("2001:db8::10", 40000, 0, 0))
    assert stream.latch.latched == ("2001:db8::10", 40000)


# --- inbound: payload types, reordering, DTMF --------------------------------------------------


async def test_only_the_negotiated_g711_type_reaches_the_model():
    stream, audio, events = make_stream()
    stream.on_datagram(rtp(1, b"\x01" * 160), CALLER)
    stream.on_datagram(rtp(2, b"\x40", pt=13), CALLER)  # RFC 3389 comfort noise
    stream.on_datagram(rtp(3, b"\x02" * 160, pt=8), CALLER)  # PCMA, not negotiated
    stream.on_datagram(rtp(4, b"\x03" * 20, pt=18), CALLER)  # G.729
    stream.on_datagram(rtp(5, b"\x04" * 160), CALLER)
    assert drain(audio) == [b"\x01" * 160, b"\x04" * 160]
    assert stream.stats.comfort_noise == 1 and stream.stats.other_payload == 2
    assert drain(events) == []


async def test_reordered_audio_reaches_the_model_in_order_late_and_duplicates_dropped():
    stream, audio, _ = make_stream()
    for seq in [65534, 0, 65535, 0, 1, 3, 4, 5, 2]:
        stream.on_datagram(rtp(seq, bytes([seq & 0xFF]) * 160), CALLER)
    got = [frame[0] for frame in drain(audio)]
    assert got == [0xFE, 0xFF, 0, 1, 3, 4, 5]
    reorder = stream.reorder
    assert (reorder.duplicates, reorder.lost, reorder.late) == (1, 1, 1)


async def test_ssrc_change_is_followed():
    stream, audio, _ = make_stream()
    stream.on_datagram(rtp(100, ssrc=1), CALLER)
    stream.on_datagram(rtp(9, ssrc=2), CALLER)  # an SBC switched streams
    stream.on_datagram(rtp(10, ssrc=2), CALLER)
    assert len(drain(audio)) == 3 and stream.reorder.ssrc_changes == 1
    assert stream.stats.last_ssrc == 2


async def test_dtmf_press_becomes_one_caller_event():
    stream, audio, events = make_stream(telephone_event=96)  # a dynamic type, as offered
    golden = ["0b0a0000", "0b0a0140", "0b0a0280", "0b8a03c0", "0b8a03c0", "0b8a03c0"]
    for n, payload in enumerate(golden):
        seq = 8436 + min(n, 3)  # the end packet is retransmitted with one sequence number
        stream.on_datagram(rtp(seq, bytes.fromhex(payload), pt=96, ts=92640, marker=n == 0), CALLER)
    assert drain(events) == [Dtmf("#", 120)]
    assert drain(audio) == [] and stream.stats.dtmf_events == 1


async def test_dtmf_on_an_unnegotiated_type_is_not_decoded():
    stream, _, events = make_stream(telephone_event=None)
    stream.on_datagram(rtp(1, build_event(5, end=True, duration=800), pt=101), CALLER)
    assert drain(events) == [] and stream.stats.other_payload == 1


async def test_dtmf_events_bounded_dropped_and_counted():
    stream, _, events = make_stream()
    for n in range(6):  # the channel holds 4
        stream.on_datagram(rtp(n, build_event(n, end=True, duration=800), pt=101, ts=n * 8000), CALLER)
    assert [e.digit for e in drain(events)] == ["0", "1", "2", "3"]
    assert stream.stats.events_dropped == 2


# --- RTCP --------------------------------------------------------------------------------------


async def test_rtcp_reports_round_trip_and_quality_both_ways():
    stream, _, _ = make_stream()
    for seq in range(10):
        stream.on_datagram(rtp(seq), CALLER)
    stream.sender.sent_since_report = True
    stream.stats.rtp_out.packets = 10
    stream._now = 100.0
    stream.send_report()  # our SR, with a block about the caller's stream
    (_, data, destination), = stream.rtcp_socket.sent
    assert destination == (CALLER[0], CALLER[1] + 1)
    sr, = parse_compound(data)
    assert sr.ssrc == stream.packetizer.ssrc and sr.packets == 10
    assert sr.ntp == ntp_timestamp(WALL)
    (block,) = sr.blocks
    assert (block.ssrc, block.highest_sequence, block.cumulative_lost) == (0xCA11E7, 9, 0)

    # The caller answers 250 ms later: it held our SR for 50 ms, it lost 10 % of our stream.
    stream._wall = lambda: WALL + 0.25
    reply = build_report(
        0xCA11E7, b"phone",
        [ReportBlock(stream.packetizer.ssrc, 26, 1, 10, 80, ntp_middle(sr.ntp), 65536 // 20)],
    )
    stream._on_rtcp(reply, (CALLER[0], CALLER[1] + 1))
    assert stream.rtcp.rtt_us == pytest.approx(200_000, abs=100)
    ours = stream.rtcp.quality[stream.packetizer.ssrc].as_dict()["average MOS"]
    assert ours["round-trip time"] == stream.rtcp.rtt_us and ours["jitter"] == 10
    assert ours["packet loss"] == 10 and ours["samples"] == 1
    assert stream.rtcp.caller_report.fraction_lost == 26


async def test_rtcp_from_a_stranger_is_ignored():
    stream, _, _ = make_stream()
    stream.on_datagram(rtp(1), NAT)
    forged = build_report(1, b"x", [ReportBlock(stream.packetizer.ssrc, 255, 99, 1, 1, 0, 0)])
    stream._on_rtcp(forged, ATTACKER)
    assert stream.rtcp.caller_report is None and stream.stats.foreign_source == 1
    stream._on_rtcp(b"\x80\xc9\x00\x09junk", NAT)
    assert stream.stats.rtcp_malformed == 1


async def test_rtcp_mux_sends_on_the_rtp_port_and_reads_it_there():
    stream, _, _ = make_stream(rtcp_mux=True)
    stream.on_datagram(rtp(1), NAT)
    stream.send_report()
    assert stream.rtcp_socket.sent == []
    (_, data, destination), = stream.rtp_socket.sent
    assert destination == NAT and data[1] == 201  # an RR: we have sent no RTP yet
    report = build_report(5, b"p", [ReportBlock(stream.packetizer.ssrc, 0, 0, 1, 8, 0, 0)])
    stream.on_datagram(report, NAT)  # RFC 5761: told apart from RTP by its packet type
    assert stream.stats.rtcp_in.packets == 1 and stream.rtcp.caller_report is not None


async def test_rtcp_sent_about_every_five_seconds(autojump_clock):
    stream, _, _ = make_stream()
    caller_speaks(stream)
    await run_for(60, stream.keep_timers)
    times = [at for at, _, _ in stream.rtcp_socket.sent]
    gaps = [b - a for a, b in pairwise(times)]
    assert 8 <= len(times) <= 24  # RFC 3550 6.3.1: randomised over 2.5-7.5 s
    assert all(2.5 <= g <= 7.5 for g in gaps)


# --- media timeout (real sockets, virtual time) ------------------------------------------------


async def receive(stream, poller=None):
    """Receive on a poller of the stream's own (the engine's, in production)."""
    poller = poller or SocketPoller()
    async with trio.open_nursery() as nursery:
        await nursery.start(poller.run)
        await stream.run(poller)
        nursery.cancel_scope.cancel()


async def loopback_stream(**options):
    sockets = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    stream, audio, events = make_stream(rtp=sockets[0], rtcp=sockets[1], remote=None, **options)
    return stream, audio, sockets


async def test_media_timeout_fires_after_the_configured_silence(autojump_clock):
    stream, audio, sockets = await loopback_stream(timeout=60)
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sockets.append(caller)
    start = trio.current_time()

    async def phone():
        await trio.sleep(30)
        caller.sendto(rtp(1), sockets[0].getsockname())

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(phone)
            await receive(stream)
        assert stream.timed_out
        assert trio.current_time() - start == pytest.approx(90)  # 60 s after the last packet
        assert len(drain(audio)) == 1
    finally:
        for sock in sockets:
            sock.close()


async def test_media_timeout_suspended_while_the_caller_holds_inactive(autojump_clock):
    stream, _, sockets = await loopback_stream(timeout=60, caller_sends=False)
    try:
        with trio.move_on_after(3600) as scope:
            await receive(stream)
        assert scope.cancelled_caught and not stream.timed_out
    finally:
        for sock in sockets:
            sock.close()


async def test_media_timeout_counts_afresh_when_a_reoffer_resumes_from_hold(autojump_clock):
    stream, _, sockets = await loopback_stream(timeout=60, caller_sends=False)
    start = trio.current_time()

    async def resume():
        await trio.sleep(100)
        stream.update(remote=None, rtcp_remote=None, sending=True, caller_sends=True)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(resume)
            await receive(stream)
        assert stream.timed_out
        assert trio.current_time() - start == pytest.approx(160)
    finally:
        for sock in sockets:
            sock.close()


async def test_open_reorder_gap_is_given_up_without_further_packets(autojump_clock):
    stream, audio, sockets = await loopback_stream()
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sockets.append(caller)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, stream)
            caller.sendto(rtp(1), sockets[0].getsockname())
            caller.sendto(rtp(3), sockets[0].getsockname())  # 2 never comes
            await trio.sleep(0.039)
            assert len(drain(audio)) == 1
            await trio.sleep(0.002)  # max_wait: 2 packets x 20 ms
            assert len(drain(audio)) == 1 and stream.reorder.lost == 1
            nursery.cancel_scope.cancel()
    finally:
        for sock in sockets:
            sock.close()


async def test_one_poller_receives_for_every_call_and_forgets_ended_ones():
    poller = SocketPoller()
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    calls = [await loopback_stream() for _ in range(3)]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(poller.run)
            scopes = []
            for stream, _, _ in calls:
                scope = trio.CancelScope()
                scopes.append(scope)

                async def run(stream=stream, scope=scope):
                    with scope:
                        await stream.run(poller)

                nursery.start_soon(run)
            await trio.sleep(0.01)
            assert len(poller) == 6  # RTP and RTCP of each call
            for n in range(1, 4):
                for _, _, sockets in calls:
                    caller.sendto(rtp(n), sockets[0].getsockname())
            with trio.fail_after(5):
                while any(stream.stats.rtp_in.packets < 3 for stream, _, _ in calls):
                    await trio.sleep(0.001)
            assert all(len(drain(audio)) == 3 for _, audio, _ in calls)
            scopes[0].cancel()  # that call ended: its sockets leave the poller
            await trio.sleep(0.01)
            assert len(poller) == 4
            nursery.cancel_scope.cancel()
    finally:
        caller.close()
        for _, _, sockets in calls:
            for sock in sockets:
                sock.close()


async def test_dtmf_after_a_sequence_restart_with_earlier_timestamps():
    """sipp's dtmf_2833_0.pcap follows the others with sequence 12080 and timestamp 17632:
    a sender that restarted. The restart is believed on its second packet and the press,
    although "older" by timestamp, is a new one."""
    stream, _, events = make_stream()
    for n in range(3):
        stream.on_datagram(rtp(8436 + n, build_event(11, end=n == 2, duration=160 * n), pt=101, ts=92640), CALLER)
    for n in range(4):
        stream.on_datagram(rtp(12080 + n, build_event(0, end=n == 3, duration=160 * n), pt=101, ts=17632), CALLER)
    assert drain(events) == [Dtmf("#", 40), Dtmf("0", 60)]
    assert stream.reorder.restarts == 1


# --- caller audio to the AI in batches ([rtp] ai_batch_ms) -----------------------------------


async def test_batched_caller_audio_goes_out_in_whole_batches_and_a_tail_is_flushed(autojump_clock):
    stream, audio, _ = make_stream(ai_batch_ms=40)
    clock = MediaClock()
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        caller_speaks(stream)  # frame 1, before pacing: handed over alone
        stream.start_pacing(clock)
        assert drain(audio) == [b"\x11" * 160]
        for seq in range(2, 7):  # five more frames, 20 ms apart: two batches and a tail
            await trio.sleep(0.02)
            stream._now = trio.current_time()
            stream.on_datagram(rtp(seq, bytes([seq]) * 160), CALLER)
        assert drain(audio) == [bytes([2]) * 160 + bytes([3]) * 160,
                                bytes([4]) * 160 + bytes([5]) * 160]
        await trio.sleep(0.045)  # the caller fell silent mid-batch: a tick flushes the tail
        assert drain(audio) == [bytes([6]) * 160]
        nursery.cancel_scope.cancel()
    assert stream.stats.ai_queue_full == 0


async def test_a_parked_stream_hands_caller_audio_over_at_once_even_with_batching():
    stream, audio, _ = make_stream(ai_batch_ms=60, send_silence=False)
    stream.start_pacing(MediaClock())  # nothing to send: parked, no tick will come
    caller_speaks(stream)
    stream.on_datagram(rtp(2), CALLER)
    assert len(drain(audio)) == 2


async def test_caller_frames_the_ai_session_refuses_are_counted_not_queued():
    stream, _, _ = make_stream()
    stream.bridge.attach_caller_audio(lambda frame: False)  # the WebSocket is backed up
    caller_speaks(stream)
    stream.on_datagram(rtp(2), CALLER)
    assert stream.stats.ai_queue_full == 2

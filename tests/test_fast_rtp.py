"""The compiled RTP twins (media/_fast*.c) against the Python reference (media/rtp.py).

Byte for byte and error for error: the parser on random and mutated bytes (the C parser
reads untrusted datagrams: this is its fuzz test, bounded for CI by RTPAI_FUZZ_EXAMPLES), the
packetizer on random operation sequences across the sequence and timestamp wraps, and a whole
MediaStream's receive side on random caller streams (loss, reorder, duplicates, SSRC changes,
DTMF, wraps, malformed datagrams), where what reaches the AI, the key presses and every
counter must be the same on both paths.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import struct

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import media.rtp
from media import native
from media.clock import MediaClock
from media.rfc4733 import build_event
from tests.native_paths import require_compiled, select, without_builds
from tests.test_fuzz_media import mutations, rtp_packets
from tests.test_stream import CALLER, drain, make_stream

FUZZ_EXAMPLES = int(os.environ.get("RTPAI_FUZZ_EXAMPLES", "150"))
bounded = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def fast():
    require_compiled()
    return native.load("media._fast")


def outcome(parse, data):
    """What a parser makes of ``data``: its fields, or its error's class and message."""
    try:
        p = parse(data)
    except Exception as exc:  # noqa: BLE001 - the class is part of what is compared
        return ("error", type(exc), str(exc))
    return (p.payload_type, p.marker, p.sequence, p.timestamp, p.ssrc, p.payload)


# --- the parser: fuzzed against the reference ---------------------------------------------


@bounded
@given(mutations(rtp_packets()))
@example(b"\xb0" + bytes(11) + b"\x00\x00")  # extension flag, header cut inside it
@example(b"\xa0" + bytes(11))  # padding flag, padding count 0
@example(b"\xbf" + bytes(11) + b"\x00\x00\xff\xff")  # extension of 65535 words
@example(b"\xa0" + bytes(10) + b"\xff")  # padding longer than the packet
@example(b"\x90" + bytes(11) + b"\x00\x00\x00\x00")  # empty extension, empty payload
def test_parser_matches_the_reference_on_hostile_bytes(fast, data):
    assert outcome(fast.parse_rtp, data) == outcome(media.rtp.py_parse_rtp, data)


def test_parser_raises_the_reference_error_class(fast):
    with pytest.raises(media.rtp.RtpError, match="shorter than an RTP header"):
        fast.parse_rtp(b"\x80")
    assert issubclass(media.rtp.RtpError, ValueError)


def test_random_bytes_of_every_length(fast):
    """Plain random bytes, many more than hypothesis draws: the cheap part of the fuzz."""
    rng = __import__("random").Random(14)
    for _ in range(20 * FUZZ_EXAMPLES):
        data = rng.randbytes(rng.randrange(0, 64))
        if data and rng.random() < 0.7:
            data = bytes((0x80 | (data[0] & 0x3F),)) + data[1:]  # mostly version 2
        assert outcome(fast.parse_rtp, data) == outcome(media.rtp.py_parse_rtp, data)


def test_packet_type_behaves_as_the_dataclass(fast):
    data = struct.pack("!BBHII", 0x80, 0x88, 7, 320, 0x11223344) + b"\x01\x02"
    c, p = fast.parse_rtp(data), media.rtp.py_parse_rtp(data)
    assert repr(c) == repr(p)
    assert c == fast.RtpPacket(8, True, 7, 320, 0x11223344, b"\x01\x02")
    assert c == fast.RtpPacket(payload_type=8, marker=True, sequence=7, timestamp=320,
                               ssrc=0x11223344, payload=b"\x01\x02")
    assert c != fast.RtpPacket(8, True, 8, 320, 0x11223344, b"\x01\x02")
    with pytest.raises(TypeError):
        hash(c)
    assert fast.RtpPacket.__match_args__ == p.__match_args__
    bare = fast.RtpPacket.__new__(fast.RtpPacket)  # never initialised: no crash
    assert repr(bare) == "RtpPacket(<uninitialized>)" and bare != c
    with pytest.raises(AttributeError):
        bare.payload  # noqa: B018


# --- the packetizer: operation sequences across the wraps ---------------------------------

operations = st.lists(st.one_of(
    st.tuples(st.just("packet"), st.binary(max_size=320), st.integers(0, 2000)),
    st.tuples(st.just("gap"), st.integers(0, 1 << 33)),
    st.tuples(st.just("talkspurt")),
), max_size=40)


@bounded
@given(st.integers(0, 127), st.integers(0, 0xFFFFFFFF), st.sampled_from([0, 1, 0xFFFE, 0xFFFF]),
       st.sampled_from([0, 0xFFFFFF00, 0xFFFFFFFF]) | st.integers(0, 0xFFFFFFFF), operations)
def test_packetizer_matches_the_reference(fast, pt, ssrc, sequence, timestamp, ops):
    twins = [kind(pt, ssrc=ssrc, sequence=sequence, timestamp=timestamp)
             for kind in (fast.RtpPacketizer, media.rtp.PyRtpPacketizer)]
    for op in ops:
        results = []
        for p in twins:
            if op[0] == "packet":
                results.append(p.packet(op[1], op[2]))
            elif op[0] == "gap":
                results.append(p.silence_gap(op[1]))
            else:
                results.append(p.start_talkspurt())
            results.append((p.payload_type, p.ssrc, p.sequence, p.timestamp))
        assert results[:2] == results[2:]


def test_packetizer_random_start_and_bad_fields(fast):
    a, b = fast.RtpPacketizer(0), fast.RtpPacketizer(0)
    assert (a.ssrc, a.sequence, a.timestamp) != (b.ssrc, b.sequence, b.timestamp)
    for bad in ({"ssrc": 1 << 32}, {"sequence": -1}, {"timestamp": 1 << 40}):
        with pytest.raises(ValueError):
            fast.RtpPacketizer(0, **bad)
    with pytest.raises(ValueError):
        fast.RtpPacketizer(128)
    p = fast.RtpPacketizer(0, ssrc=1, sequence=2, timestamp=3)
    p.sequence = 0xFFFF
    assert p.packet(b"", 160)[2:4] == b"\xff\xff" and p.sequence == 0


# --- a MediaStream's receive side on random caller streams --------------------------------


@st.composite
def caller_streams(draw):
    """(arrival time, datagram) as a caller and a network make them: 20 ms audio frames with
    talkspurts, DTMF events, SSRC changes and sequence restarts near the wraps, then loss,
    duplicates, reordering and malformed datagrams."""
    ssrc = draw(st.integers(0, 0xFFFFFFFF))
    seq = draw(st.sampled_from([0, 0xFFF0, 0xFFFE]) | st.integers(0, 0xFFFF))
    ts = draw(st.sampled_from([0, 0xFFFFF000]) | st.integers(0, 0xFFFFFFFF))
    packets = []
    for _ in range(draw(st.integers(1, 60))):
        kind = draw(st.sampled_from(["audio"] * 6 + ["dtmf", "ssrc", "cn", "other", "bad"]))
        header = struct.Struct("!BBHII")
        if kind == "ssrc":
            ssrc = draw(st.integers(0, 0xFFFFFFFF))
            seq = draw(st.integers(0, 0xFFFF))
            continue
        if kind == "bad":
            packets.append(draw(mutations(rtp_packets())))
            continue
        if kind == "dtmf":
            end = draw(st.booleans())
            payload = build_event(draw(st.integers(0, 15)), end=end, volume=10,
                                  duration=draw(st.integers(0, 4000)))
            data = header.pack(0x80, 101, seq, ts, ssrc) + payload
        else:
            pt = {"audio": 0, "cn": 13, "other": 8}[kind]
            data = header.pack(0x80, pt | (0x80 if draw(st.booleans()) else 0), seq, ts,
                               ssrc) + bytes([len(packets) & 0xFF]) * 160
            ts = (ts + 160) & 0xFFFFFFFF
        seq = (seq + 1) & 0xFFFF
        packets.append(data)
    # The network: loss, duplicates, reordering by a few places.
    out = []
    for data in packets:
        fate = draw(st.sampled_from(["ok"] * 8 + ["lost", "dup"]))
        if fate != "lost":
            out.append(data)
        if fate == "dup":
            out.append(data)
    for _ in range(draw(st.integers(0, 4))):
        if len(out) > 1:
            i = draw(st.integers(0, len(out) - 2))
            j = min(len(out) - 1, i + draw(st.integers(1, 3)))
            out[i], out[j] = out[j], out[i]
    times, t = [], 10.0
    for _ in out:
        t += draw(st.sampled_from([0.0, 0.005, 0.02, 0.02, 0.02, 0.06, 0.3]))
        times.append(t)
    return list(zip(times, out, strict=True))


async def synchronously(function, *args):
    return function(*args)


def receive_all(arrivals):
    stream, audio, events = make_stream(reorder_packets=3)
    for now, data in arrivals:
        stream._now = now
        if stream.reorder.deadline is not None:
            stream.reorder.expire(now)
        stream.on_datagram(data, CALLER)
    stream.reorder.expire(arrivals[-1][0] + 10) if arrivals else None
    stats = stream.stats  # slotted: its fields, not vars()
    counters = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
    counters = {k: (v.as_dict() if hasattr(v, "as_dict") else v) for k, v in counters.items()}
    return drain(audio), [repr(e) for e in drain(events)], counters, stream.jitter.jitter


@bounded
@given(caller_streams())
def test_stream_receive_matches_on_random_caller_streams(arrivals):
    require_compiled()
    results = {}
    for path in ("python", "compiled"):
        with pytest.MonkeyPatch.context() as monkeypatch:
            select(path, monkeypatch)
            # In trio: the first latch reads trio's clock (to start pacing).
            results[path] = trio.run(synchronously, receive_all, arrivals,
                                     clock=trio.testing.MockClock())
    assert results["compiled"] == results["python"]


# --- the media clock's timer (media/clock.py uses it; tests/test_clock.py runs the clock) ---


async def test_timer_fires_once_when_due_and_not_when_disarmed(fast):
    timer = fast.timer_open()
    try:
        assert fast.timer_clear(timer) == 0  # never armed: nothing to read, no error
        fast.timer_arm(timer, 0.0)  # not positive: at once, not "disarmed"
        with trio.fail_after(5):
            await trio.lowlevel.wait_readable(timer)
        assert fast.timer_clear(timer) == 1
        assert fast.timer_clear(timer) == 0  # one-shot
        fast.timer_arm(timer, 0.001)
        fast.timer_arm(timer, float("inf"))  # disarmed before it fired
        with trio.move_on_after(0.05):
            await trio.lowlevel.wait_readable(timer)
            raise AssertionError("a disarmed timer fired")
        with pytest.raises(ValueError):
            fast.timer_arm(timer, float("nan"))
        with pytest.raises(ValueError):
            fast.timer_arm(-1, 1.0)
    finally:
        trio.lowlevel.notify_closing(timer)
        os.close(timer)


def test_a_missing_build_falls_back_to_python_and_says_why():
    """As on a machine without a compiler: the extensions do not import."""
    out = without_builds(
        "name.endswith('._fast')",
        "import media.rtp, media.clock\n"
        "from media import native\n"
        "assert media.rtp.parse_rtp is media.rtp.py_parse_rtp\n"
        "assert media.clock._fast is None\n"
        "print(native.describe()[1])\n",
    )
    assert out.startswith("per-packet work in pure Python for media._fast, openai_flavor._fast")
    assert "not built (no compiled module here)" in out


# --- packet() and sendto() in one call ------------------------------------------------------


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_send_puts_on_the_wire_what_packet_and_sendto_would(fast, family, host):
    with socket.socket(family, socket.SOCK_DGRAM) as phone, \
            socket.socket(family, socket.SOCK_DGRAM) as ours:
        phone.bind((host, 0))
        ours.bind((host, 0))
        phone.settimeout(5)
        address = fast.pack_address(family, host, phone.getsockname()[1])
        compiled = fast.RtpPacketizer(8, ssrc=7, sequence=0xFFFF, timestamp=0xFFFFFF00)
        reference = media.rtp.PyRtpPacketizer(8, ssrc=7, sequence=0xFFFF, timestamp=0xFFFFFF00)
        for payload, samples in ((b"\xd5" * 160, 160), (b"", 160), (bytes(range(80)), 80)):
            sent = compiled.send(ours.fileno(), payload, samples, address)
            expected = reference.packet(payload, samples)
            assert sent == len(expected)
            assert phone.recvfrom(2048) == (expected, ours.getsockname())
            reference.silence_gap(320)
            compiled.silence_gap(320)


def test_send_errors_are_the_ones_sendto_raises(fast):
    p = fast.RtpPacketizer(0, ssrc=1, sequence=1, timestamp=1)
    address = fast.pack_address(socket.AF_INET, "127.0.0.1", 9)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ours:
        fd = ours.fileno()
    with pytest.raises(OSError) as closed:  # a closed descriptor, as sendto on a closed fd
        p.send(fd, b"x", 160, address)
    assert closed.value.errno == errno.EBADF
    assert p.sequence == 2  # the stream moved on, as packet() then a failed sendto
    with pytest.raises(TypeError):
        p.send(0, b"x", 160, b"not a sockaddr")


def test_pack_address_leaves_names_and_scoped_addresses_to_sendto(fast):
    assert fast.pack_address(socket.AF_INET, "localhost", 5) is None
    assert fast.pack_address(socket.AF_INET, "::1", 5) is None
    assert fast.pack_address(socket.AF_INET6, "fe80::1%lo", 5) is None
    assert fast.pack_address(socket.AF_UNIX, "x", 5) is None
    with pytest.raises(OverflowError):
        fast.pack_address(socket.AF_INET, "127.0.0.1", 65536)


# --- a paced stream on real sockets: what the caller receives, on both paths --------------


async def paced_on_loopback(ssrc, sequence, timestamp):
    """A stream on real loopback sockets, latched to a phone socket, playing AI audio with
    silence around it (talkspurts, marker bits) across the sequence and timestamp wraps, then
    holding and resuming; returns every datagram the phone received (the ports differ from
    run to run) and the counters."""
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind(("127.0.0.1", 0))
    phone.setblocking(False)
    rtp_sock, rtcp_sock = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    for sock in (rtp_sock, rtcp_sock):
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
    try:
        stream, _, _ = make_stream(rtp=rtp_sock, rtcp=rtcp_sock, remote=phone.getsockname())
        stream.sender.packetizer = media.rtp.RtpPacketizer(
            0, ssrc=ssrc, sequence=sequence, timestamp=timestamp)
        stream.on_datagram(rtp_packet(1), phone.getsockname())  # latches: silence starts
        clock = MediaClock()
        async with trio.open_nursery() as nursery:
            await nursery.start(clock.run)
            stream.start_pacing(clock)
            # Every step between two frames' deadlines: trio runs tasks due at the same time
            # in random order, and a step on a deadline would race the clock's tick.
            await trio.sleep(0.105)
            stream.bridge.play(bytes(range(256)) * 5, "item-1")  # 8 frames and a tail
            stream.bridge.end_item()
            await trio.sleep(0.3)
            stream.update(remote=phone.getsockname(), rtcp_remote=None, sending=False,
                          caller_sends=True)  # hold: nothing goes out, time runs on
            await trio.sleep(0.1)
            stream.update(remote=phone.getsockname(), rtcp_remote=None, sending=True,
                          caller_sends=True)
            await trio.sleep(0.1)
            stream.stop_pacing()
            nursery.cancel_scope.cancel()
        received = []
        while True:
            try:
                data, source = phone.recvfrom(2048)
            except BlockingIOError:
                break
            assert source == rtp_sock.getsockname()  # from the call's RTP port
            received.append(data)
        return received, stream.stats.rtp_out.as_dict(), stream.stats.send_errors
    finally:
        for sock in (phone, rtp_sock, rtcp_sock):
            sock.close()


def rtp_packet(seq):
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0xCA11E7) + b"\xff" * 160


@pytest.mark.parametrize("sequence, timestamp", [(0xFFF0, 0xFFFFF000), (5, 5)])
def test_a_paced_stream_sends_the_same_datagrams_on_both_paths(sequence, timestamp):
    require_compiled()
    results = {}
    for path in ("python", "compiled"):
        with pytest.MonkeyPatch.context() as monkeypatch:
            select(path, monkeypatch)
            results[path] = trio.run(paced_on_loopback, 0x5EED, sequence, timestamp,
                                     clock=trio.testing.MockClock(autojump_threshold=0))
    received, counters, errors = results["python"]
    assert len(received) > 20 and errors == 0  # silence, the AI's frames, silence again
    assert any(data[1] & 0x80 for data in received[1:])  # a talkspurt's marker
    assert results["compiled"] == results["python"]

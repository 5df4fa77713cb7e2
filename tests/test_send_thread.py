"""The media send thread (media/_fast_sendthread.c, media/send_thread.py) against the Python
sender it replaces (media/sender.py on media/clock.py), and its life cycle.

Differential: the same operation sequences (the AI's audio in random lengths for several
items, finished items, barge-in's clear and take mid-play, parked gaps, hold and resume, a
moved caller, send_silence on and off, late and stalled wake-ups, the sequence and timestamp
wraps) through both, on real loopback sockets, the thread stepped by hand at the same trio
times as the Python clock: the same datagrams must reach the phones, the playout queue must
answer the same (frames sent per item, what it holds, what clear and take return), and the
same events must reach the call (first RTP, response latency, ran dry).
"""

from __future__ import annotations

import os
import socket
import struct
from functools import partial

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import media.rtp
from media import send_thread
from media.clock import MediaClock
from media.figures import EngineFigures
from media.playout import PlayoutQueue
from tests.native_paths import require_compiled
from tests.test_stream import make_stream

FUZZ_EXAMPLES = int(os.environ.get("RTPAI_FUZZ_EXAMPLES", "150"))
bounded = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ITEMS = ("item-a", "item-b", "item-c")
# How late each wake-up comes, cycled: on time, inside COALESCE, at its edge, late, a stall
# past the pacer's max_lag (3 ptimes: a re-anchor), and early by up to COALESCE (the clock's
# timer, armed half a millisecond late for two slots, serves the second one early).
LATENESS = (0.0, 0.0003, 0.0005, 0.0013, -0.0004, 0.071, -0.0005)


def udp(address="127.0.0.1"):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.setblocking(False)
    return sock


def caller_packet(seq):
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0xCA11E7) + b"\xff" * 160


def received(phones):
    out = []
    for index, phone in enumerate(phones):
        while True:
            try:
                out.append((index, phone.recv(2048)))
            except BlockingIOError:
                break
    return out


async def drive(path, ops, *, sequence, timestamp, send_silence, max_bytes, lateness):
    """``ops`` on one path; returns everything observable, in order."""
    phones = [udp(), udp()]
    rtp_sock, rtcp_sock = udp(), udp()
    log = []
    try:
        stream, _, _ = make_stream(rtp=rtp_sock, rtcp=rtcp_sock, remote=phones[0].getsockname(),
                                   send_silence=send_silence)
        bridge = stream.bridge
        bridge.playout = PlayoutQueue(160, max_bytes=max_bytes)
        sender = stream.sender
        sender.packetizer = media.rtp.RtpPacketizer(0, ssrc=0x5EED, sequence=sequence,
                                                     timestamp=timestamp)
        class SpyBridge(type(bridge)):
            # The bridge is slotted (no instance attribute can shadow a method): a subclass
            # with the same layout records each "ran dry" before doing it.
            __slots__ = ()

            def playout_ran_dry(self):
                log.append(("ran dry", trio.current_time()))
                super().playout_ran_dry()

        bridge.__class__ = SpyBridge
        clock = MediaClock()
        thread = None
        if path == "thread":
            thread = clock.send_thread = send_thread.SendThread(manual=True)
        stream.start_pacing(clock)
        if thread is not None:
            assert sender._native is not None  # paced by the thread, not the clock
        else:
            assert sender._native is None
        mock = trio.lowlevel.current_clock()
        wakes = 0
        remote_index = 0

        def wake_at():
            return thread.engine.wake_at if thread else clock.wake_at

        def run_until(target):
            nonlocal wakes
            while wake_at() <= target:
                due = wake_at()
                now = max(due + lateness[wakes % len(lateness)], trio.current_time())
                wakes += 1
                if now < due and due - now > 0.0005:
                    now = due  # never earlier than COALESCE: the clock's timer is not
                mock.jump(now - trio.current_time())
                if thread:
                    thread.engine.set_now(now)
                    thread.engine.run_due()
                    thread.drain()
                else:
                    clock.tick_due(now)
                log.append(("wire", round(now, 6), received(phones)))
            mock.jump(max(target - trio.current_time(), 0))
            if thread:
                thread.engine.set_now(trio.current_time())

        caller_seq = 1
        for op, *args in ops:
            if op == "wait":
                run_until(trio.current_time() + args[0])
                continue
            if op == "push":
                item, size = args
                bridge.play(bytes((i * 7 + size) % 256 for i in range(size)), ITEMS[item])
            elif op == "finish":
                bridge.end_item()
            elif op == "clear":
                log.append(("cleared", bridge.clear_playout()))
            elif op == "take":
                held = bridge.hold_playout()
                log.append(("taken", held))
                if args[0]:  # put back, as a barge-in judged false does
                    for item, audio in held:
                        bridge.play(audio, item)
            elif op == "latch":
                stream.on_datagram(caller_packet(caller_seq), phones[remote_index].getsockname())
                caller_seq += 1
            elif op in ("hold", "resume", "move"):
                if op == "move":
                    remote_index = 1 - remote_index
                stream.update(remote=phones[remote_index].getsockname(), rtcp_remote=None,
                              sending=op != "hold", caller_sends=True)
            elif op == "turn_end":
                bridge.turn_ended_at = trio.current_time()
            playout = bridge.playout
            log.append((op, [playout.frames_sent_of(i) for i in ITEMS],
                        [playout.holds(i) for i in ITEMS], playout.queued_frames,
                        playout.queued_bytes, playout.bytes_dropped, bridge.playout_idle))
        run_until(trio.current_time() + 0.2)
        stream.stop_pacing()
        stats = stream.stats
        log.append(("end", stats.rtp_out.as_dict(), stats.send_errors, stats.pacer_reanchors,
                    sender.packetizer.sequence, sender.packetizer.timestamp,
                    bridge.timeline.get("first_rtp_to_caller"), bridge.last_response_latency,
                    [bridge.playout.frames_sent_of(i) for i in ITEMS]))
        if thread is not None:
            assert len(thread) == 0 and thread.engine.streams == 0
        return log
    finally:
        for sock in (*phones, rtp_sock, rtcp_sock):
            sock.close()


def both_paths(ops, **kwargs):
    require_compiled()
    results = {}
    for path in ("python", "thread"):
        results[path] = trio.run(
            partial(drive, path, ops, **kwargs),
            clock=trio.testing.MockClock(autojump_threshold=float("inf")))
    return results


operations = st.lists(st.one_of(
    st.tuples(st.just("push"), st.integers(0, 2), st.integers(1, 900)),
    st.tuples(st.just("wait"), st.sampled_from([0.0004, 0.003, 0.019, 0.02, 0.05, 0.13, 0.5])),
    st.tuples(st.just("finish")),
    st.tuples(st.just("clear")),
    st.tuples(st.just("take"), st.booleans()),
    st.tuples(st.just("latch")),
    st.tuples(st.just("hold")),
    st.tuples(st.just("resume")),
    st.tuples(st.just("move")),
    st.tuples(st.just("turn_end")),
), max_size=40)


@bounded
@given(operations,
       st.sampled_from([0xFFF0, 0xFFFF, 0]) | st.integers(0, 0xFFFF),
       st.sampled_from([0xFFFFF000, 0xFFFFFFFF]) | st.integers(0, 0xFFFFFFFF),
       st.booleans(), st.sampled_from([80_000, 2_000, 500]),
       st.permutations(LATENESS))
def test_the_thread_sends_what_the_python_sender_sends(ops, sequence, timestamp, send_silence,
                                                       max_bytes, lateness):
    results = both_paths(ops, sequence=sequence, timestamp=timestamp,
                         send_silence=send_silence, max_bytes=max_bytes, lateness=lateness)
    assert results["thread"] == results["python"]


def test_a_conversation_goes_out_the_same_on_both_paths():
    """A fixed script that exercises everything at once (the property's examples are random):
    talkspurts across both wraps, a late and a stalled wake-up, barge-in, hold, a move."""
    ops = [("wait", 0.0004), ("latch",), ("wait", 0.05), ("turn_end",), ("push", 0, 700), ("push", 1, 500),
           ("wait", 0.02), ("finish",), ("wait", 0.13), ("take", True), ("wait", 0.05),
           ("clear",), ("push", 2, 900), ("finish",), ("hold",), ("wait", 0.05), ("resume",),
           ("move",), ("wait", 0.5), ("push", 0, 160), ("wait", 0.5)]
    for send_silence in (True, False):
        results = both_paths(ops, sequence=0xFFF0, timestamp=0xFFFFF000,
                             send_silence=send_silence, max_bytes=80_000, lateness=LATENESS)
        log = results["python"]
        wire = [data for entry in log if entry[0] == "wire" for _, data in entry[2]]
        assert len(wire) > 10 and any(data[1] & 0x80 for data in wire[1:])
        assert any(entry[0] == "ran dry" for entry in log)
        assert log[-1][3] > 0  # a stalled wake-up re-anchored the grid
        assert results["thread"] == log


# --- the real thread: its life cycle ------------------------------------------------------


def threads():
    return len(os.listdir("/proc/self/task"))


def open_descriptors():
    return len(os.listdir("/proc/self/fd"))


def sequences(datagrams):
    return [struct.unpack_from("!H", data, 2)[0] for data in datagrams]


class PlayedFrames:
    """Stands in for a call's recording: the frames it is handed as they are sent."""

    def __init__(self):
        self.frames = []

    def played(self, frame, now):
        self.frames.append(frame)


async def test_the_engine_clock_runs_the_thread_and_joins_it_when_it_stops():
    require_compiled()
    before = threads()
    for setting, expected in (("auto", 1), ("off", 0)):
        clock = MediaClock(media_thread=setting)
        async with trio.open_nursery() as nursery:
            await nursery.start(clock.run)
            assert (clock.send_thread is not None) == bool(expected)
            assert threads() == before + expected
            nursery.cancel_scope.cancel()
        assert clock.send_thread is None
        assert threads() == before  # joined


async def test_a_call_ending_mid_burst_counts_exactly_what_went_and_sends_nothing_after():
    require_compiled()
    phone, rtp_sock, rtcp_sock = udp(), udp(), udp()
    try:
        stream, _, _ = make_stream(rtp=rtp_sock, rtcp=rtcp_sock, remote=phone.getsockname(),
                                   send_silence=False)
        figures = stream.bridge.figures = EngineFigures()
        clock = MediaClock(figures)
        async with trio.open_nursery() as nursery:
            await nursery.start(clock.run)
            stream.start_pacing(clock)
            assert stream.sender._native is not None
            stream.bridge.turn_ended_at = trio.current_time()
            stream.bridge.play(b"\x11" * 160 * 100, "item")  # 2 s of audio
            await trio.sleep(0.2)  # real time: the thread sends on the real clock
            playout = stream.bridge.playout
            stream.stop_pacing()  # mid-burst
            sent = playout.frames_sent_of("item")
            wire = [data for _, data in received([phone])]  # loopback: already queued
            assert 3 <= sent < 100
            assert len(wire) == sent == stream.stats.rtp_out.packets
            assert sequences(wire) == [(sequences(wire)[0] + i) & 0xFFFF for i in range(sent)]
            assert playout.queued_frames == 100 - sent  # the rest stays queued, unsent
            assert playout.holds("item")
            await trio.sleep(0.1)
            assert received([phone]) == []  # never sent on again
            nursery.cancel_scope.cancel()
        # The talkspurt's event reached the call, with the wake-ups' lateness beside it.
        assert "first_rtp_to_caller" in stream.bridge.timeline
        assert figures.response_latency.count == 1 and stream.bridge.turn_ended_at is None
        assert figures.pacing_lateness.count > 0
    finally:
        for sock in (phone, rtp_sock, rtcp_sock):
            sock.close()


async def test_a_recording_moves_the_call_to_the_python_sender_without_a_seam():
    require_compiled()
    phone, rtp_sock, rtcp_sock = udp(), udp(), udp()
    try:
        stream, _, _ = make_stream(rtp=rtp_sock, rtcp=rtcp_sock, remote=phone.getsockname(),
                                   send_silence=False)
        clock = MediaClock()
        async with trio.open_nursery() as nursery:
            await nursery.start(clock.run)
            stream.start_pacing(clock)
            assert stream.sender._native is not None
            stream.bridge.play(bytes(range(160)) * 30, "item")  # 0.6 s
            stream.bridge.end_item()
            await trio.sleep(0.2)
            recording = PlayedFrames()
            stream.recorder = recording  # mid-talkspurt
            assert stream.sender._native is None  # the Python sender goes on
            await stream.bridge.wait_playout_idle()
            stream.stop_pacing()
            wire = [data for _, data in received([phone])]
            nursery.cancel_scope.cancel()
        assert len(wire) == 30 == stream.bridge.playout.frames_sent_of("item")
        assert stream.stats.rtp_out.packets == 30
        first = sequences(wire)[0]
        assert sequences(wire) == [(first + i) & 0xFFFF for i in range(30)]  # no seam
        stamps = [struct.unpack_from("!I", data, 4)[0] for data in wire]
        assert all((b - a) & 0xFFFFFFFF == 160 for a, b in zip(stamps, stamps[1:], strict=False))
        assert [bool(data[1] & 0x80) for data in wire] == [True] + [False] * 29
        assert 0 < len(recording.frames) < 30  # the frames sent after the move
    finally:
        for sock in (phone, rtp_sock, rtcp_sock):
            sock.close()


async def test_many_calls_come_and_go_while_the_thread_sends():
    """Streams register and unregister while every other one sends (silence at 50 frames a
    second each): none is sent on once unregistered, every descriptor comes back, and the
    counters match what each phone received."""
    require_compiled()
    descriptors = open_descriptors()
    clock = MediaClock()
    calls = []
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        thread = clock.send_thread
        for round_ in range(6):
            for _ in range(25):
                phone, rtp_sock, rtcp_sock = udp(), udp(), udp()
                stream, _, _ = make_stream(rtp=rtp_sock, rtcp=rtcp_sock,
                                           remote=phone.getsockname())
                stream.start_pacing(clock)
                stream.on_datagram(caller_packet(1), phone.getsockname())  # silence flows
                calls.append((stream, phone, rtp_sock, rtcp_sock))
            await trio.sleep(0.03)
            for stream, _, rtp_sock, _ in calls[round_ * 12::3]:
                if stream.sender._native is not None:
                    stream.stop_pacing()
                    rtp_sock.close()  # its number is free for the next call's socket
        assert len(thread) == thread.engine.streams > 0
        for stream, *_ in calls:
            stream.stop_pacing()
        assert len(thread) == thread.engine.streams == 0
        stopped = {id(stream): received([phone]) for stream, phone, *_ in calls}
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    del thread  # the engine's own descriptors (timer, wake-up, events) go with it
    for stream, phone, rtp_sock, rtcp_sock in calls:
        assert received([phone]) == []  # nothing after its stop
        assert len(stopped[id(stream)]) == stream.stats.rtp_out.packets > 0
        for sock in (phone, rtp_sock, rtcp_sock):
            sock.close()
    assert open_descriptors() == descriptors  # every dup() closed


async def test_calls_the_thread_cannot_serve_stay_on_the_python_sender():
    """Caller audio in batches (flushed by the sender's ticks), a recording (handed each frame
    as it is sent), a socket stand-in: the media clock's wheel paces them, beside the thread."""
    require_compiled()
    clock = MediaClock()
    sockets = [udp() for _ in range(6)]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(clock.run)
            batched, _, _ = make_stream(rtp=sockets[0], rtcp=sockets[1], ai_batch_ms=40)
            recorded, _, _ = make_stream(rtp=sockets[2], rtcp=sockets[3])
            recorded.recorder = PlayedFrames()
            stand_in, _, _ = make_stream()  # tests/test_stream.py's Recorder for a socket
            plain, _, _ = make_stream(rtp=sockets[4], rtcp=sockets[5])
            for stream in (batched, recorded, stand_in, plain):
                stream.start_pacing(clock)
            assert [s.sender._native is not None for s in (batched, recorded, stand_in, plain)] \
                == [False, False, False, True]
            for stream in (batched, recorded, stand_in, plain):
                stream.stop_pacing()
            nursery.cancel_scope.cancel()
    finally:
        for sock in sockets:
            sock.close()


async def test_barge_in_against_the_running_thread_counts_every_frame_once():
    """clear() and take() while the thread sends (the real one, on the real clock): every
    frame pushed is sent (counted for its item, on the wire once), dropped by clear, or still
    queued; never two of those, never none."""
    require_compiled()
    phone, rtp_sock, rtcp_sock = udp(), udp(), udp()
    try:
        stream, _, _ = make_stream(rtp=rtp_sock, rtcp=rtcp_sock, remote=phone.getsockname(),
                                   send_silence=False)
        bridge, clock = stream.bridge, MediaClock()
        pushed = dropped = 0
        async with trio.open_nursery() as nursery:
            await nursery.start(clock.run)
            stream.start_pacing(clock)
            assert stream.sender._native is not None
            for round_ in range(12):
                for item in ITEMS:  # whole frames per item: the wire tells the items apart
                    frames = 3 + round_ % 4
                    bridge.play(bytes((ITEMS.index(item) + 1,)) * 160 * frames, item)
                    pushed += frames
                await trio.sleep(0.01 * (round_ % 5))
                if round_ % 3 == 1:
                    for item, audio in bridge.hold_playout():  # taken, and put back
                        bridge.play(audio, item)
                elif round_ % 3 == 2:
                    dropped += bridge.clear_playout() // 160
            await trio.sleep(0.1)
            stream.stop_pacing()
            nursery.cancel_scope.cancel()
        wire = [data for _, data in received([phone])]
        sent = {item: bridge.playout.frames_sent_of(item) for item in ITEMS}
        on_wire = {item: sum(1 for data in wire if data[12] == ITEMS.index(item) + 1)
                   for item in ITEMS}
        assert sent == on_wire and len(wire) == sum(sent.values()) > 0
        assert sum(sent.values()) + dropped + bridge.playout.queued_frames == pushed
        assert dropped > 0
    finally:
        for sock in (phone, rtp_sock, rtcp_sock):
            sock.close()


async def test_a_thread_that_cannot_start_leaves_every_call_on_the_python_sender(monkeypatch):
    require_compiled()

    async def cannot_start(self, *, task_status=trio.TASK_STATUS_IGNORED):
        raise OSError(11, "Resource temporarily unavailable")  # pthread_create's EAGAIN

    monkeypatch.setattr(send_thread.SendThread, "run", cannot_start)
    clock = MediaClock()
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)  # the engine goes on
        assert clock.send_thread is None
        nursery.cancel_scope.cancel()


async def test_an_address_only_sendto_resolves_moves_the_call_to_the_python_sender():
    require_compiled()
    phone, rtp_sock, rtcp_sock = udp(), udp(), udp()
    try:
        stream, _, _ = make_stream(rtp=rtp_sock, rtcp=rtcp_sock, remote=phone.getsockname())
        clock = MediaClock()
        async with trio.open_nursery() as nursery:
            await nursery.start(clock.run)
            stream.start_pacing(clock)
            stream.on_datagram(caller_packet(1), phone.getsockname())  # silence flows
            assert stream.sender._native is not None
            await trio.sleep(0.1)
            # A re-offer naming the phone by a name (pack_address takes numbers only).
            stream.update(remote=("localhost", phone.getsockname()[1]), rtcp_remote=None,
                          sending=True, caller_sends=True)
            assert stream.sender._native is None
            await trio.sleep(0.1)
            stream.stop_pacing()
            nursery.cancel_scope.cancel()
        wire = [data for _, data in received([phone])]
        assert len(wire) == stream.stats.rtp_out.packets > 6
        first = sequences(wire)[0]
        assert sequences(wire) == [(first + i) & 0xFFFF for i in range(len(wire))]
    finally:
        for sock in (phone, rtp_sock, rtcp_sock):
            sock.close()


def test_the_event_ring_is_bounded_and_counts_what_it_loses():
    """A drain that falls behind costs events, counted, never memory or a blocked thread."""
    require_compiled()
    figures = EngineFigures()
    thread = send_thread.SendThread(figures, manual=True)
    engine = thread.engine
    sock = udp()
    try:
        # register(fd, pt, ssrc, seq, ts, marker, ptime_ms, silence, ring_max, send_silence,
        #          idle_sends_silence, sending, remote): nowhere to send, talkspurts only.
        streams = [engine.register(sock.fileno(), 0, n, 0, 0, True, 20, 0xFF, 10, False, False,
                                   True, None) for n in range(200)]
        now = 0.0

        def overflow():
            nonlocal now
            for _ in range(25):  # each stream: a one-frame talkspurt, then dry: 2 events
                engine.set_now(now)
                for stream in streams:
                    stream.push(b"\x00" * 160)
                for step in (0.0, 0.02):
                    engine.set_now(now + step)
                    engine.run_due()
                now += 0.1

        overflow()
        events, lateness, lost = engine.drain()
        assert len(events) == 8192 and lost == 200 * 2 * 25 - 8192
        assert {kind for kind, _, _ in events} == {send_thread.EVENT_TALKSPURT,
                                                  send_thread.EVENT_RAN_DRY}
        assert len(lateness) == 50
        # The count is cumulative, and the drain hands it to the metrics' figures
        # (rtpai_media_thread_events_lost_total).
        overflow()
        thread.drain()
        assert figures.send_thread_events_lost == 2 * lost
        for stream in streams:
            stream.unregister()
        assert engine.streams == 0
    finally:
        sock.close()

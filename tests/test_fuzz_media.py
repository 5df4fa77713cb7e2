"""Fuzzing the byte parsers a caller or the AI link can reach (issue 11, part 6).

Each parser has one documented error type and nothing else may escape it: no IndexError,
struct.error, UnicodeError or RecursionError from hostile bytes. RTP (media/rtp.py), RTCP
compound packets (media/rtcp.py), RFC 4733 events (media/rfc4733.py), SDP parse + negotiate +
answer (media/sdp.py) and the WebSocket frame decoder (openai_flavor/websocket/framing.py). Then a
live MediaStream: every datagram is counted in exactly one bucket, never raised.

Bounded for CI: each property runs FUZZ_EXAMPLES (150) examples, ~4 s in all; set
``RTPAI_FUZZ_EXAMPLES`` for a longer run. Crashes found on the way are kept as ``@example``s.
"""

from __future__ import annotations

import contextlib
import os
import struct

import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ctl.engine import Engine
from ctl.ng import NgError
from media import sdp
from media.bridge import EndReason
from media.rfc4733 import DtmfDecoder, EventError, build_event, parse_event
from media.rtcp import ReportBlock, RtcpError, build_report, parse_compound
from media.rtp import RtpError, RtpPacketizer, parse_rtp
from openai_flavor.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    FrameDecoder,
    ProtocolError,
    parse_close,
)
from tests.fakes.engine import handle, reply_of
from tests.fakes.realtime import FakeRealtimeServer
from tests.test_media_engine import config, offer, offer_sdp, request
from tests.test_stream import CALLER, make_stream

# The RTP tests run on both per-packet paths: the Python reference and the compiled twins
# (media/native.py; tests/native_paths.py).
both_paths = pytest.mark.usefixtures("native_path")

FUZZ_EXAMPLES = int(os.environ.get("RTPAI_FUZZ_EXAMPLES", "150"))
fuzz = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def mutations(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Valid packets broken the ways networks and attackers break them: truncated, a byte
    overwritten, bytes appended, or plain random bytes."""

    @st.composite
    def mutate(draw):
        data = bytearray(draw(valid))
        for _ in range(draw(st.integers(0, 4))):
            action = draw(st.sampled_from(["truncate", "flip", "append"]))
            if action == "truncate" and data:
                del data[draw(st.integers(0, len(data) - 1)):]
            elif action == "flip" and data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
            else:
                data += draw(st.binary(max_size=16))
        return bytes(data)

    return st.one_of(mutate(), st.binary(max_size=200))


# --- RTP ----------------------------------------------------------------------------------------


@st.composite
def rtp_packets(draw) -> bytes:
    """Headers with every optional part (CSRCs, extension, padding) in any combination."""
    csrcs = draw(st.integers(0, 15))
    extension = draw(st.booleans())
    padding = draw(st.integers(0, 8))
    first = 0x80 | csrcs | (0x10 if extension else 0) | (0x20 if padding else 0)
    data = struct.pack("!BBHII", first, draw(st.integers(0, 255)), draw(st.integers(0, 0xFFFF)),
                       draw(st.integers(0, 0xFFFFFFFF)), draw(st.integers(0, 0xFFFFFFFF)))
    data += draw(st.binary(min_size=4 * csrcs, max_size=4 * csrcs))
    if extension:
        words = draw(st.integers(0, 4))
        data += struct.pack("!HH", 0xBEDE, words) + bytes(4 * words)
    data += draw(st.binary(max_size=160))
    if padding:
        data += bytes(padding - 1) + bytes((padding,))
    return data


@both_paths
@fuzz
@given(mutations(rtp_packets()))
@example(b"\xb0" + bytes(11) + b"\x00\x00")  # extension flag, header cut inside it
@example(b"\xa0" + bytes(11))  # padding flag, padding count 0
@example(b"\x8f" + bytes(11))  # 15 CSRCs claimed, none there
def test_rtp_parser_raises_only_rtp_error(data):
    try:
        packet = parse_rtp(data)
    except RtpError:
        return
    assert 0 <= packet.payload_type < 128
    assert len(packet.payload) <= len(data) - 12
    assert packet.payload in data


@both_paths
@fuzz
@given(st.binary(max_size=400), st.integers(0, 127), st.integers(1, 400))
def test_rtp_round_trip(payload, payload_type, samples):
    packet = parse_rtp(RtpPacketizer(payload_type).packet(payload, samples))
    assert (packet.payload_type, packet.payload) == (payload_type, payload)


# --- RTCP ---------------------------------------------------------------------------------------

blocks = st.builds(
    ReportBlock, st.integers(0, 0xFFFFFFFF), st.integers(0, 255),
    st.integers(-0x800000, 0x7FFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF),
)
senders = st.none() | st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
                                st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
reports = st.builds(
    lambda ssrc, cname, blocks, sender: build_report(ssrc, cname, blocks, sender=sender),
    st.integers(0, 0xFFFFFFFF), st.binary(max_size=40), st.lists(blocks, max_size=3), senders,
)


@st.composite
def compound_packets(draw) -> bytes:
    """A valid report followed by more packets of any type (SDES, BYE, APP, feedback...)."""
    data = draw(reports)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from([200, 201, 202, 203, 204, 205, 206]))
        count = draw(st.integers(0, 31))
        body = draw(st.binary(max_size=64))
        body += bytes(-len(body) % 4)
        data += struct.pack("!BBH", 0x80 | count, kind, len(body) // 4) + body
    return data


@fuzz
@given(mutations(compound_packets()))
@example(b"\x81\xc8\x00\x01" + bytes(4))  # an SR with one block and no room for it
@example(b"\x80\xc9\x00\x01" + bytes(4) + b"\x81\xcb\x00\x00")  # BYE counting a source it lacks
def test_rtcp_parser_raises_only_rtcp_error(data):
    with contextlib.suppress(RtcpError):
        parse_compound(data)


@fuzz
@given(st.integers(0, 0xFFFFFFFF), st.lists(blocks, max_size=31), senders)
def test_rtcp_round_trip(ssrc, report_blocks, sender):
    (first, *_rest) = parse_compound(build_report(ssrc, b"rtpai-x", report_blocks, sender=sender))
    assert first.ssrc == ssrc and list(first.blocks) == report_blocks


# --- RFC 4733 -----------------------------------------------------------------------------------


@fuzz
@given(st.binary(max_size=12))
def test_event_parser_raises_only_event_error(payload):
    try:
        event, end, volume, duration = parse_event(payload)
    except EventError:
        return
    assert 0 <= event < 256 and 0 <= volume < 64 and 0 <= duration < 65536


@fuzz
@given(st.lists(st.one_of(
    st.tuples(st.just("event"), st.integers(0, 2**32 - 1), st.one_of(
        st.binary(max_size=8),
        st.builds(lambda e, end, d: build_event(e, end=end, duration=d),
                  st.integers(0, 255), st.booleans(), st.integers(0, 0xFFFF)))),
    st.tuples(st.just("audio"), st.integers(0, 2**32 - 1), st.none()),
    st.tuples(st.just("restart"), st.none(), st.none()),
), max_size=40))
def test_dtmf_decoder_takes_any_sequence(steps):
    decoder = DtmfDecoder()
    for kind, timestamp, payload in steps:
        if kind == "event":
            decoder.packet(timestamp, payload)
        elif kind == "audio":
            decoder.audio(timestamp)
        else:
            decoder.restart()


# --- SDP ----------------------------------------------------------------------------------------

_tokens = st.sampled_from([
    "IN", "IP4", "IP6", "192.0.2.10", "0.0.0.0", "::", "2001:db8::1", "host.example", "audio",
    "video", "image", "RTP/AVP", "RTP/AVPF", "RTP/SAVP", "UDP/TLS/RTP/SAVPF", "udptl", "0",
    "8", "18", "96", "101", "127", "128", "-1", "40000", "65535", "65536", "40000/2", "/",
    "PCMU/8000", "PCMA/8000", "telephone-event/8000", "opus/48000/2", "0-16", "20", "30.5",
    "999999", "sendrecv", "sendonly", "recvonly", "inactive", "rtcp-mux", "rtcp:40001",
    "ptime:", "\u00e9", "\u0660", "\x00", "\u2028", "\U0001f600", "",
])
_line_values = st.lists(st.one_of(_tokens, st.text(max_size=6)), max_size=6).map(" ".join)
_attributes = st.one_of(
    st.sampled_from(["rtpmap:", "fmtp:", "ptime:", "maxptime:", "rtcp:", "rtcp-mux",
                     "sendrecv", "sendonly", "recvonly", "inactive", "crypto:"]).flatmap(
        lambda name: _line_values.map(lambda v: name + v)),
    st.text(max_size=20),
)
_lines = st.one_of(
    st.tuples(st.sampled_from("ocmstb"), _line_values).map(lambda p: f"{p[0]}={p[1]}"),
    _attributes.map(lambda v: f"a={v}"),
    st.text(max_size=12),
)


@st.composite
def sdp_bodies(draw) -> str:
    """Mostly SDP-shaped: a real offer with lines added, removed and rewritten."""
    base = offer_sdp(address=draw(st.sampled_from(["192.0.2.10", "0.0.0.0", "2001:db8::1"])),
                     direction=draw(st.sampled_from(["sendrecv", "recvonly", "inactive"])))
    lines = base.split("\r\n")[:-1]
    for _ in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        at = draw(st.integers(0, len(lines)))
        if action == "insert" or not lines or at == len(lines):
            lines.insert(at, draw(_lines))
        elif action == "delete" and at > 0:
            del lines[at]
        else:
            lines[at] = draw(_lines)
    return draw(st.sampled_from(["\r\n", "\n", "\r"])).join(lines)


def _answer_checks(offer_text) -> None:
    try:
        parsed = sdp.parse_sdp(offer_text)
    except sdp.SdpError:
        return
    for preference in (None, ("PCMA", "PCMU"), ("PCMU",)):
        try:
            negotiated = sdp.negotiate(parsed, preference)
        except sdp.SdpError:
            continue
        answer = sdp.build_answer(parsed, negotiated, local_address="203.0.113.5",
                                  local_port=30000, session_id=1, session_version=1)
        # The answer is SDP we parse back: one m-line per offered one, ours accepted.
        reparsed = sdp.parse_sdp(answer)
        assert len(reparsed.media) == len(parsed.media)
        ours = reparsed.media[negotiated.media_index]
        assert ours.port == 30000 and ours.codecs[0].encoding == negotiated.codec.encoding
        assert ours.direction == negotiated.answer_direction
        assert all(m.port == 0 for i, m in enumerate(reparsed.media)
                   if i != negotiated.media_index)
        # Nothing the offer said can add a line to the answer.
        assert answer.count("\n") == answer.count("\r\n")


@fuzz
@given(st.one_of(sdp_bodies(), st.text(max_size=200), st.binary(max_size=200)))
@example("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.1\r\nm=audio 1 RTP/AVP 0\r\na=rtcp:\u0660")
@example(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio 1 RTP/AVP 0\r\nc=IN IP4 \xff")
def test_sdp_parse_negotiate_answer_raise_only_sdp_error(offer_text):
    _answer_checks(offer_text)


# --- WebSocket frames (sans-IO) -----------------------------------------------------------------


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A server frame: unmasked (RFC 6455 section 5.1)."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", first, size) + payload
    if size < 65536:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


@st.composite
def frame_streams(draw) -> bytes:
    frames = b""
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["text", "fragmented", "ping", "close", "raw"]))
        if kind == "text":
            frames += server_frame(OP_TEXT, draw(st.binary(max_size=300)))
        elif kind == "fragmented":
            parts = draw(st.lists(st.binary(max_size=50), min_size=2, max_size=4))
            frames += server_frame(OP_BINARY, parts[0], fin=False)
            for part in parts[1:-1]:
                frames += server_frame(OP_CONTINUATION, part, fin=False)
            frames += server_frame(OP_CONTINUATION, parts[-1])
        elif kind == "ping":
            frames += server_frame(OP_PING, draw(st.binary(max_size=125)))
        elif kind == "close":
            frames += server_frame(OP_CLOSE, draw(st.binary(max_size=20)))
        else:
            frames += draw(st.binary(max_size=20))
    return frames


def decode_in_chunks(data: bytes, cuts: list[int]) -> list[tuple[int, bytes]] | str:
    decoder = FrameDecoder(max_message=4096)
    events: list[tuple[int, bytes]] = []
    start = 0
    try:
        for cut in [*sorted(cuts), len(data)]:
            decoder.feed(data[start:cut])
            start = max(start, cut)
            events += decoder.events()
    except ProtocolError as exc:
        return f"error {exc.code}"
    return events


@fuzz
@given(st.one_of(frame_streams(), mutations(frame_streams())),
       st.lists(st.integers(0, 2000), max_size=6))
@example(b"\x81\x7f" + struct.pack("!Q", 2**63) , [])  # a 2^63-byte frame announced
def test_frame_decoder_raises_only_protocol_error_whatever_the_chunking(data, cuts):
    whole = decode_in_chunks(data, [])
    chunked = decode_in_chunks(data, [c for c in cuts if c <= len(data)])
    if isinstance(whole, str) or isinstance(chunked, str):
        # An error may come at another point of the stream, never a different verdict.
        assert isinstance(whole, str) and isinstance(chunked, str)
        return
    assert whole == chunked
    for opcode, payload in whole:
        if opcode == OP_CLOSE:
            with contextlib.suppress(ProtocolError):
                parse_close(payload)


# --- a live MediaStream -------------------------------------------------------------------------


sources = st.sampled_from([CALLER, (CALLER[0], 65535), ("203.0.113.66", 5060)])


@both_paths
@fuzz
@given(st.lists(st.tuples(st.one_of(
    mutations(rtp_packets()),
    rtp_packets(),
    mutations(compound_packets()),
), sources), max_size=30))
# Found by this property: latched from port 65535, RTCP went to 65536 (OverflowError).
@example([(RtpPacketizer(0, ssrc=1, sequence=1, timestamp=0).packet(bytes(160), 160),
           (CALLER[0], 65535))])
async def test_a_stream_counts_every_datagram_once_and_never_raises(datagrams):
    stream, _audio, _events = make_stream()
    stats = stream.stats
    for data, source in datagrams:
        stream.on_datagram(data, source)
    # Whatever came in, our own report about it is a valid compound packet.
    stream.send_report()
    for _at, report, destination in stream.rtcp_socket.sent:
        parse_compound(report)
        assert 0 < destination[1] <= 65535
    reorder = stream.reorder
    rtp_accepted = stats.rtp_in.packets
    # Each datagram lands in exactly one place: RTP taken, RTP dropped (malformed or foreign),
    # RTCP (muxed) taken or dropped.
    assert (rtp_accepted + stats.rtp_in.errors + stats.rtcp_in.packets
            + stats.rtcp_in.errors) == len(datagrams)
    assert stats.rtp_in.errors + stats.rtcp_in.errors == (
        stats.malformed + stats.rtcp_malformed + stats.foreign_source
    )
    assert reorder.late + reorder.duplicates <= rtp_accepted


@both_paths
async def test_broken_rtp_to_a_live_call_is_dropped_and_counted_in_query():
    caller = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    await caller.bind(("127.0.0.1", 0))
    with caller, trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = FakeRealtimeServer(respond_after_ms=None)
            url = await nursery.start(server.serve)
            engine = Engine(config(OPENAI_URL=url))
            await nursery.start(engine.run)
            answer = await offer(engine, "fuzzed", address="127.0.0.1",
                                 port=caller.getsockname()[1])
            port = sdp.parse_sdp(answer).media[0].port
            call = engine.calls["fuzzed"]
            broken = [b"", b"\x80", b"\x40" + bytes(20), b"\x8f" + bytes(11),
                      b"\xb0" + bytes(13), b"\xa0" + bytes(11)]
            for data in broken:
                await caller.sendto(data, ("127.0.0.1", port))
            # A valid packet after them: one socket delivers in order, so once it has
            # latched the call, every broken one before it has been handled.
            await caller.sendto(RtpPacketizer(0).packet(b"\xff" * 160, 160),
                                ("127.0.0.1", port))
            await call.bridge.media_started.wait()
            reply = handle(engine, request("query", **{"call-id": "fuzzed"}))
            assert reply["rtpai"]["dropped"]["malformed"] == len(broken)
            rtp_stream = reply["tags"]["ft"]["medias"][0]["streams"][0]
            assert rtp_stream["stats"] == {"packets": 1, "bytes": 172, "errors": len(broken)}
            assert reply["totals"]["RTP"]["errors"] == len(broken)
            assert call.state.value == "active"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("address", ["host.example", "a" * 300 + ".example", "192.0.2.1\x00"])
async def test_a_connection_address_that_is_no_ip_is_latched_not_resolved(address):
    """c= may name a host (RFC 4566); resolving it would block the event loop per packet, and
    some names make sendto raise (NUL: TypeError). The caller's first packet decides."""
    async with trio.open_nursery() as nursery:
        server = FakeRealtimeServer(respond_after_ms=None)
        url = await nursery.start(server.serve)
        engine = Engine(config(OPENAI_URL=url))
        await nursery.start(engine.run)
        sdp_text = offer_sdp().replace("c=IN IP4 192.0.2.10", f"c=IN IP4 {address}")
        await offer(engine, "named", sdp=sdp_text)
        call = engine.calls["named"]
        assert call.stream.remote is None and call.stream.sending
        nursery.cancel_scope.cancel()


# --- crashes found: RTCP to port 65536 ------------------------------------------------------------
# RFC 3550 s11 puts RTCP on the RTP port + 1. From RTP port 65535 (an SDP's m= port, or the
# source port a NAT gave the caller) that is 65536, and sendto() raised OverflowError out of the
# RTCP task: through the call's nursery into the engine's, ending the daemon and every call.


async def test_rtcp_after_latching_a_source_port_of_65535_does_not_raise():
    with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as rtcp:
        await rtcp.bind(("127.0.0.1", 0))
        stream, _audio, _events = make_stream(rtcp=rtcp._sock)
        stream.on_datagram(RtpPacketizer(0).packet(b"\xff" * 160, 160), (CALLER[0], 65535))
        assert stream.latch.latched == (CALLER[0], 65535)
        stream.send_report()  # no port above 65535: no RTCP for this caller, and no crash
        assert stream.stats.rtcp_out.packets == 0


async def test_an_offer_on_port_65535_without_a_rtcp_gets_no_rtcp_port_65536():
    async with trio.open_nursery() as nursery:
        server = FakeRealtimeServer(respond_after_ms=None)
        url = await nursery.start(server.serve)
        engine = Engine(config(OPENAI_URL=url))
        await nursery.start(engine.run)
        await offer(engine, "top", address="127.0.0.1", port=65535)
        call = engine.calls["top"]
        assert call.media.rtcp_remote is None
        call.stream.send_report()
        assert call.stream.stats.rtcp_out.packets == 0
        nursery.cancel_scope.cancel()


async def test_a_failing_rtcp_report_ends_its_call_only(monkeypatch):
    # Reports every 10 ms rather than every 2.5-7.5 s: the test's time, not the bound's.
    monkeypatch.setattr("media.stream.report_interval", lambda: 0.01)
    async with trio.open_nursery() as nursery:
        server = FakeRealtimeServer(respond_after_ms=None)
        url = await nursery.start(server.serve)
        engine = Engine(config(OPENAI_URL=url))
        await nursery.start(engine.run)
        await offer(engine, "broken")
        await offer(engine, "healthy")
        broken, healthy = engine.calls["broken"], engine.calls["healthy"]
        for call in (broken, healthy):  # caller media latched: reports are due
            call.stream.on_datagram(RtpPacketizer(0).packet(b"\xff" * 160, 160), CALLER)

        def bug(*args) -> bytes:
            raise OverflowError("sendto(): port must be 0-65535.")

        reports = []
        report = healthy.stream.rtcp.report

        def counted(*args) -> bytes:
            reports.append(args)
            return report(*args)

        broken.stream.rtcp.report = bug  # before the call's tasks start
        healthy.stream.rtcp.report = counted
        with trio.fail_after(5):
            await broken.ended.wait()
            await trio.sleep(0.1)  # a few of the healthy call's reports
        assert broken.end_reason == "media failure: internal error"
        assert healthy.state.value == "active"
        assert len(reports) >= 3  # its reports go on
        assert engine.ping(request("ping")) == {"result": "pong"}
        nursery.cancel_scope.cancel()


# --- offers and re-offers through the engine ------------------------------------------------------


async def test_fuzzed_offers_and_reoffers_get_an_answer_or_an_ng_error():
    """Through Engine.offer, call construction and the re-offer path: any SDP is answered or
    refused with a reason (NgError), and the engine goes on serving.

    One engine for every example: the property runs synchronously inside the test's trio run
    (an offer's handler is synchronous), so examples cost no engine start-up each.
    """
    async with trio.open_nursery() as nursery:
        server = FakeRealtimeServer(respond_after_ms=None)
        url = await nursery.start(server.serve)
        # Ports of their own (2000 calls), apart from the other tests' ranges.
        engine = Engine(config(OPENAI_URL=url, RTP_MIN_PORT="45000", RTP_MAX_PORT="47000"))
        await nursery.start(engine.run)
        ids = iter(range(10**9))

        @fuzz
        @given(st.lists(st.one_of(sdp_bodies(), st.text(max_size=80)), min_size=1, max_size=3))
        def offers_of_one_call(bodies):
            call_id = f"fuzz-{next(ids)}"
            for body in bodies:  # the first is the offer, the others re-offers (re-INVITEs)
                try:
                    reply = reply_of(handle(engine, request(
                        "offer", **{"call-id": call_id, "from-tag": "ft", "sdp": body})))
                except NgError:
                    continue
                sdp.parse_sdp(reply["sdp"])
            for call in engine.calls.select(call_id):
                ended.append(call)  # ending forgets it; its task frees the ports
                call.end(EndReason.DELETED, "fuzzed", tell_proxy=False)

        ended = []
        offers_of_one_call()
        for call in ended:
            await call.ended.wait()
        assert engine.ping(request("ping")) == {"result": "pong"}
        assert engine.active_calls() == 0 and engine.ports.in_use == 0
        nursery.cancel_scope.cancel()

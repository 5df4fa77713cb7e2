"""rtpai's WebSocket client: the sans-IO framing against RFC 6455, then the trio shell against
an independent implementation (trio-websocket's server), over plain TCP and TLS."""

from __future__ import annotations

import contextlib
import itertools
import os
import pathlib
import socket
import ssl
import struct
from functools import partial

import pytest
import trio
import wsproto
import wsproto.events
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed as ServerConnectionClosed
from trio_websocket import serve_websocket

from openai_flavor import websocket
from openai_flavor.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ConnectionClosed,
    FrameDecoder,
    HandshakeRejected,
    ProtocolError,
    WebSocket,
    accept_key,
    close_payload,
    encode_frame,
    parse_close,
)
from openai_flavor.websocket.handshake import Upgrade

# Every test here runs on both framing paths: the Python reference and the compiled twin
# (media/native.py; tests/native_paths.py). The fake server unmasks with its own code.
pytestmark = pytest.mark.usefixtures("native_path")

TLS_DIR = pathlib.Path(__file__).parent / "fakes" / "tls"


def buffered(ws: websocket.WebSocket) -> int:
    """Bytes the client holds for the kernel: how far the connection is backed up."""
    return len(ws._transport.pending)


def server_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
                 masked: bool = False) -> bytes:
    """A frame as a server sends it (unmasked unless asked), any length encoding."""
    first = (0x80 if fin else 0) | rsv | opcode
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        header = struct.pack("!BB", first, mask_bit | size)
    elif size < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    if masked:
        return header + b"\0\0\0\0" + payload
    return header + payload


def unmask_client_frame(frame: bytes) -> tuple[int, bytes]:
    """(opcode, payload) of one client frame, checking it is final and masked."""
    assert frame[0] & 0x80, "final"
    assert frame[1] & 0x80, "masked"
    size, at = frame[1] & 0x7F, 2
    if size == 126:
        (size,), at = struct.unpack_from("!H", frame, 2), 4
    elif size == 127:
        (size,), at = struct.unpack_from("!Q", frame, 2), 10
    key = frame[at : at + 4]
    body = frame[at + 4 :]
    assert len(body) == size
    return frame[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(body))


# --- sans-IO ---------------------------------------------------------------------------------


def test_accept_key_matches_rfc_6455_example():
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def answer_101(upgrade: Upgrade) -> bytes:
    """The server's 101 to ``upgrade``'s request (its key read back from the request)."""
    key = next(line.split(b": ", 1)[1] for line in upgrade.request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key"))
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key(key.decode()).encode() + b"\r\n\r\n")


def test_the_upgrade_completes_on_a_101_and_returns_the_frames_after_it_at_any_split():
    frame = server_frame(OP_TEXT, b'{"type":"session.created"}')
    for split in range(1, 60):
        upgrade = Upgrade("api.example", "/v1/realtime?model=m", [("Authorization", "k")])
        assert upgrade.request.startswith(b"GET /v1/realtime?model=m HTTP/1.1\r\n")
        answer = answer_101(upgrade) + frame
        assert upgrade.receive_data(answer[:split]) is None
        assert upgrade.receive_data(answer[split:]) == frame


def test_the_upgrade_refused_or_answered_wrongly_raises():
    upgrade = Upgrade("h", "/", [])
    assert upgrade.receive_data(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n") is None
    with pytest.raises(HandshakeRejected) as refused:
        upgrade.receive_data(b"no")
    assert refused.value.status == 401
    upgrade = Upgrade("h", "/", [])
    wrong = answer_101(upgrade).replace(b"Accept: ", b"Accept: x")
    with pytest.raises(websocket.WebSocketError, match="Sec-WebSocket-Accept"):
        upgrade.receive_data(wrong)
    with pytest.raises(websocket.WebSocketError, match="closed the connection"):
        Upgrade("h", "/", []).receive_data(b"")


@pytest.mark.parametrize("size", [0, 1, 3, 125, 126, 127, 65535, 65536, 70000])
def test_client_frames_are_masked_with_the_right_length_encoding(size):
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    frame = encode_frame(OP_TEXT, payload)
    assert unmask_client_frame(frame) == (OP_TEXT, payload)


def test_mask_keys_differ_between_frames():
    keys = {encode_frame(OP_TEXT, b"x")[2:6] for _ in range(50)}
    assert len(keys) > 45  # 32 random bits each: a repeat in 50 is a broken source


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6), st.data())
def test_decoder_reassembles_messages_whatever_the_read_boundaries(payloads, data):
    # Binary: any bytes (a text message must be UTF-8, its own test).
    stream = b"".join(server_frame(OP_BINARY, p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder()
    seen = []
    last = 0
    for cut in [*cuts, len(stream)]:
        decoder.feed(stream[last:cut])
        last = cut
        seen.extend(decoder.events())
    assert seen == [(OP_BINARY, p) for p in payloads]


def test_fragments_join_and_control_frames_may_come_between_them():
    decoder = FrameDecoder()
    decoder.feed(
        server_frame(OP_TEXT, b'{"a":', fin=False)
        + server_frame(OP_PING, b"p")
        + server_frame(OP_CONTINUATION, b"1", fin=False)
        + server_frame(OP_CONTINUATION, b"}")
        + server_frame(OP_BINARY, b"\x00\x01")
    )
    assert decoder.events() == [(OP_PING, b"p"), (OP_TEXT, b'{"a":1}'), (OP_BINARY, b"\x00\x01")]


@pytest.mark.parametrize("frame, code", [
    (server_frame(OP_TEXT, b"x", masked=True), 1002),
    (server_frame(OP_TEXT, b"x", rsv=0x40), 1002),
    (server_frame(0x3, b"x"), 1002),
    (server_frame(OP_PING, b"x" * 126), 1002),
    (server_frame(OP_PING, b"x", fin=False), 1002),
    (server_frame(OP_CONTINUATION, b"x"), 1002),
    (server_frame(OP_TEXT, b"a", fin=False) + server_frame(OP_TEXT, b"b"), 1002),
    (server_frame(OP_TEXT, b"x" * 200), 1009),
    # RFC 6455 s5.2: lengths in the fewest bytes, the 64-bit one with its top bit clear.
    (struct.pack("!BBH", 0x81, 126, 5) + b"x" * 5, 1002),
    (struct.pack("!BBQ", 0x81, 127, 60) + b"x" * 60, 1002),
    (struct.pack("!BBQ", 0x81, 127, 2**63 + 5), 1002),
    # s8.1: a text message must be UTF-8, whole or across its fragments.
    (server_frame(OP_TEXT, b'{"a":"\xff"}'), 1007),
    (server_frame(OP_TEXT, b"\xc3", fin=False) + server_frame(OP_CONTINUATION, b"A"), 1007),
])
def test_protocol_violations_name_their_close_code(frame, code):
    decoder = FrameDecoder(max_message=100)
    decoder.feed(frame)
    with pytest.raises(ProtocolError) as error:
        decoder.events()
    assert error.value.code == code


def test_utf8_split_across_fragments_and_binary_bytes_are_accepted():
    decoder = FrameDecoder()
    decoder.feed(server_frame(OP_TEXT, b'"\xc3', fin=False) + server_frame(OP_CONTINUATION, b'\xa9"')
                 + server_frame(OP_BINARY, b"\xff\xfe"))
    assert decoder.events() == [(OP_TEXT, '"é"'.encode()), (OP_BINARY, b"\xff\xfe")]


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_close_codes_a_peer_may_not_send_are_a_protocol_error(code):
    with pytest.raises(ProtocolError) as error:
        parse_close(struct.pack("!H", code))
    assert error.value.code == 1002


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4000, 4999])
def test_close_codes_a_peer_may_send(code):
    assert parse_close(struct.pack("!H", code) + b"why") == (code, "why")


def test_a_huge_length_is_refused_before_its_payload_arrives():
    decoder = FrameDecoder(max_message=1000)
    decoder.feed(struct.pack("!BBQ", 0x81, 127, 2**40))
    with pytest.raises(ProtocolError):
        decoder.events()


def test_close_payloads():
    assert parse_close(b"") == (1005, "")
    assert parse_close(struct.pack("!H", 3000) + b"invalid_api_key") == (3000, "invalid_api_key")
    with pytest.raises(ProtocolError):
        parse_close(b"\x03")
    with pytest.raises(ProtocolError):
        parse_close(struct.pack("!H", 1000) + b"\xff")


def test_close_codes_no_peer_may_send_never_reach_the_wire():
    for code in (1005, 1006, 1015, 0, 1004, 5000):
        assert close_payload(code, "x")[:2] == struct.pack("!H", 1000)
    for code in (1000, 1002, 1007, 1008, 1009, 3000, 4999):
        assert close_payload(code)[:2] == struct.pack("!H", code)
    # The reason is cut to fit a control frame, on a character boundary (never broken UTF-8).
    payload = close_payload(1002, "é" * 100)
    assert len(payload) == 124 and payload[2:].decode("utf-8") == "é" * 61


# --- fuzzing the receive path, and round trips against wsproto ------------------------------
#
# Bounded for CI as tests/test_fuzz_media.py: FUZZ_EXAMPLES examples per property (the same
# RTPAI_FUZZ_EXAMPLES variable asks for a longer run).

FUZZ_EXAMPLES = int(os.environ.get("RTPAI_FUZZ_EXAMPLES", "150"))
fuzz = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_MAX_MESSAGE = 1024
# What the protocol errors a server can provoke close with (RFC 6455 s7.4.1): 1002 protocol,
# 1007 not UTF-8, 1008 policy (a flood of frames in one read), 1009 too big.
PROTOCOL_ERROR_CODES = {1002, 1007, 1008, 1009}


@st.composite
def any_frame(draw) -> bytes:
    """One server frame, each header field valid or not: opcode (reserved ones too), FIN,
    RSV bits, the mask bit, and the length in its minimal or a longer encoding."""
    opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY, OP_CONTINUATION, OP_PING, OP_PONG,
                                   OP_CLOSE]) | st.integers(0, 15))
    payload = draw(st.binary(max_size=300)
                   | st.text(max_size=100).map(str.encode)
                   | st.builds(websocket.close_payload, st.integers(0, 65535), st.text(max_size=10))
                   | st.binary(max_size=3))
    first = (0x80 if draw(st.booleans()) else 0) | opcode
    first |= draw(st.sampled_from([0, 0, 0, 0, 0x10, 0x20, 0x40]))
    mask = 0x80 if draw(st.integers(0, 9)) == 0 else 0
    size = len(payload)
    form = draw(st.sampled_from(["minimal"] * 4 + ["16", "64"]))
    if form == "16" or (form == "minimal" and 126 <= size < 65536):
        header = struct.pack("!BBH", first, mask | 126, size)
    elif form == "64":
        header = struct.pack("!BBQ", first, mask | 127, size)
    else:
        header = struct.pack("!BB", first, mask | size)
    return header + (b"\0\0\0\0" if mask else b"") + payload


@st.composite
def mutated_streams(draw) -> bytes:
    """Frames, valid or not, then broken as networks and attackers break bytes."""
    data = bytearray(b"".join(draw(st.lists(any_frame(), max_size=8))))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["truncate", "flip", "append"]))
        if action == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)):]
        elif action == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        else:
            data += draw(st.binary(max_size=16))
    return bytes(data)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def held(ws: WebSocket) -> int:
    """Bytes the client's decoder holds: the unparsed input and the message so far."""
    return len(ws._decoder._buffer) + ws._decoder._fragment_size


def client_frames(wire: bytes) -> list[tuple[int, bytes]]:
    """The client's output, frame by frame: each must be final and masked."""
    frames = []
    while wire:
        size, at = wire[1] & 0x7F, 2
        if size == 126:
            (size,), at = struct.unpack_from("!H", wire, 2), 4
        elif size == 127:
            (size,), at = struct.unpack_from("!Q", wire, 2), 10
        frames.append(unmask_client_frame(wire[: at + 4 + size]))
        wire = wire[at + 4 + size :]
    return frames


@fuzz
@given(mutated_streams() | st.binary(max_size=400), st.lists(st.integers(0, 5000), max_size=8))
@example(server_frame(OP_PING, b"") * (websocket.MAX_FRAMES_PER_READ + 1), [])
@example(struct.pack("!BBQ", 0x81, 127, 2**62), [])
@example(server_frame(OP_CLOSE, b""), [])
@example(server_frame(OP_TEXT, b"{" * 300, fin=False)
         + server_frame(OP_CONTINUATION, b"x" * 300, fin=False) * 4, [700, 1300])
@example(server_frame(OP_CLOSE, struct.pack("!H", 1006)), [1])
def test_the_receive_path_yields_messages_or_a_clean_close_whatever_the_bytes(stream, cuts):
    """Bytes off the socket, split anywhere, through the client's own receive path
    (``read_ready``: the read, the decoder, pongs, the close handshake): only text messages
    (valid UTF-8) or an end with a close code come out, never another exception; what the
    decoder holds stays bounded; and what the client writes back is masked frames whose
    close code (if any) is one a peer may send."""
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        ws = WebSocket(ours, None, None, None, max_message=FUZZ_MAX_MESSAGE)
        messages: list[bytes] = []
        ended = None
        for chunk in split(stream, cuts):
            if chunk:
                theirs.sendall(chunk)
            got, ended = ws.read_ready()
            messages += got
            if ended is not None:
                break
            # While open, the decoder holds at most one frame's header and the message's
            # bytes so far (its private state: the bound is the point of the test).
            assert held(ws) <= FUZZ_MAX_MESSAGE + 10
        for message in messages:
            assert isinstance(message, bytes)
            message.decode("utf-8")
        if ended is not None:
            assert isinstance(ended, ConnectionClosed)
            if ended.local:
                assert ended.code in PROTOCOL_ERROR_CODES
            else:
                assert websocket.valid_close_code(ended.code) or ended.code == 1005
            # Once ended, nothing more is read into the decoder: the end, again, and no more.
            holding = held(ws)
            theirs.sendall(server_frame(OP_TEXT, b"after the end"))
            more, again = ws.read_ready()
            assert more == [] and again is not None and again.code == ended.code
            assert held(ws) == holding
        theirs.setblocking(False)
        wire = b""
        with contextlib.suppress(BlockingIOError):
            while data := theirs.recv(65536):
                wire += data
        written = client_frames(wire)
        assert all(opcode in (OP_PONG, OP_CLOSE) for opcode, _ in written)
        closes = [payload for opcode, payload in written if opcode == OP_CLOSE]
        assert len(closes) <= 1 and (not closes or written[-1][0] == OP_CLOSE)
        if closes:
            (code,) = struct.unpack_from("!H", closes[0])
            assert websocket.valid_close_code(code)  # never 1005, 1006 or 1015
            closes[0][2:].decode("utf-8")
    finally:
        ours.close()
        theirs.close()


# One message as the tests send it: (opcode, payload, its fragments' payload sizes).
data_messages = st.tuples(
    st.sampled_from([OP_TEXT, OP_BINARY]), st.text(max_size=200), st.binary(max_size=200),
    st.lists(st.integers(0, 60), max_size=4))
control_frames = st.tuples(st.sampled_from([OP_PING, OP_PONG]), st.binary(max_size=125))


@fuzz
@given(st.lists(st.one_of(data_messages, control_frames), max_size=8),
       st.lists(st.integers(0, 5000), max_size=8))
def test_what_wsproto_sends_our_decoder_reads_back_at_any_split(items, cuts):
    """Round trip with an independent implementation: messages framed by wsproto's server
    (fragmented anywhere, pings and pongs between the fragments) come out of our decoder
    whole and in order, wherever the stream is cut."""
    server = wsproto.Connection(wsproto.ConnectionType.SERVER)
    wire, expected = b"", []
    for item in items:
        if len(item) == 2:
            opcode, payload = item
            event = wsproto.events.Ping(payload) if opcode == OP_PING else wsproto.events.Pong(
                payload)
            wire += server.send(event)
            expected.append((opcode, payload))
            continue
        opcode, text, binary, sizes = item
        data: str | bytes = text if opcode == OP_TEXT else binary
        fragments, at = [], 0
        for size in sizes:
            fragments.append(data[at : at + size])
            at += size
        fragments.append(data[at:])
        for index, fragment in enumerate(fragments):
            last = index == len(fragments) - 1
            kind = wsproto.events.TextMessage if opcode == OP_TEXT else wsproto.events.BytesMessage
            wire += server.send(kind(data=fragment, message_finished=last))
            if not last and (control := sizes[index] % 3) and index < 2:
                # A control frame may come between a message's fragments (RFC 6455 s5.4).
                wire += server.send(wsproto.events.Ping(b"c" * control))
                expected.append((OP_PING, b"c" * control))
        expected.append((opcode, text.encode() if opcode == OP_TEXT else binary))
    decoder = FrameDecoder()
    seen = []
    for chunk in split(wire, cuts):
        decoder.feed(chunk)
        seen += decoder.events()
    assert seen == expected


@fuzz
@given(st.lists(st.one_of(
    st.tuples(st.just(OP_TEXT), st.text(max_size=300).map(str.encode)),
    st.tuples(st.just(OP_BINARY), st.binary(max_size=70000) | st.binary(max_size=300)),
    control_frames), max_size=6),
    st.one_of(st.none(), st.tuples(st.sampled_from([1000, 1002, 1006, 3000, 4999]),
                                   st.text(max_size=60))),
    st.lists(st.integers(0, 80000), max_size=8))
def test_what_we_send_wsproto_reads_back_at_any_split(items, close, cuts):
    """The other direction: our masked frames (any length encoding), cut anywhere, are
    exactly what wsproto's server reads; the close frame's code is one a peer may send."""
    wire = b"".join(encode_frame(opcode, payload) for opcode, payload in items)
    if close is not None:
        wire += encode_frame(OP_CLOSE, websocket.close_payload(*close))
    server = wsproto.Connection(wsproto.ConnectionType.SERVER)
    seen: list[tuple[int, bytes]] = []
    parts: list[bytes] = []
    for chunk in split(wire, cuts):
        server.receive_data(chunk)
        for event in server.events():
            if isinstance(event, wsproto.events.Message):
                data = event.data
                parts.append(data.encode() if isinstance(data, str) else bytes(data))
                if event.message_finished:
                    kind = OP_TEXT if isinstance(event, wsproto.events.TextMessage) else OP_BINARY
                    seen.append((kind, b"".join(parts)))
                    parts = []
            elif isinstance(event, wsproto.events.Ping | wsproto.events.Pong):
                kind = OP_PING if isinstance(event, wsproto.events.Ping) else OP_PONG
                seen.append((kind, bytes(event.payload)))
            else:
                assert isinstance(event, wsproto.events.CloseConnection)
                seen.append((OP_CLOSE, (event.code, event.reason)))
    expected = list(items)
    if close is not None:
        code, reason = close
        cut = reason.encode()[:123].decode("utf-8", "ignore")
        expected.append((OP_CLOSE, (1000 if code == 1006 else code, cut)))
    assert seen == expected


# --- against trio-websocket's server -----------------------------------------------------------


def server_tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(TLS_DIR / "localhost.crt", TLS_DIR / "localhost.key")
    return context


def client_tls_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(TLS_DIR / "localhost.crt"))


async def start_server(nursery, handler, *, tls: bool = False) -> str:
    context = server_tls_context() if tls else None
    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, context)
    scheme = "wss" if tls else "ws"
    host = "localhost" if tls else "127.0.0.1"
    return f"{scheme}://{host}:{server.port}/v1/realtime?model=m"


async def echo(request):
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ServerConnectionClosed:
        pass


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
async def test_echo_in_order_with_headers_and_large_messages(tls):
    seen_headers = {}

    async def handler(request):
        seen_headers.update({k.decode(): v.decode() for k, v in request.headers})
        assert request.path == "/v1/realtime?model=m"
        await echo(request)

    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, handler, tls=tls)
        ws = await WebSocket.connect(url, [("Authorization", "Bearer k")],
                                     ssl_context=client_tls_context() if tls else None)
        nursery.start_soon(ws.flush)
        messages = [f'{{"n":{i}}}' for i in range(100)] + ["x" * 300_000, "é" * 1000]
        for message in messages:
            assert ws.send_text(message)
        for message in messages:
            assert (await ws.receive()).decode() == message
        await ws.aclose()
        nursery.cancel_scope.cancel()
    assert seen_headers["authorization"] == "Bearer k"
    assert seen_headers["sec-websocket-version"] == "13"
    assert "sec-websocket-extensions" not in seen_headers


async def test_an_http_refusal_is_reported_with_its_status():
    async def handler(request):
        await request.reject(401, body=b"no")

    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, handler)
        with pytest.raises(HandshakeRejected) as refused:
            await WebSocket.connect(url, [])
        assert refused.value.status == 401
        nursery.cancel_scope.cancel()


async def test_the_servers_close_code_and_reason_reach_the_client_which_echoes_it():
    echoed = []
    handled = trio.Event()

    async def handler(request):
        ws = await request.accept()
        await ws.aclose(3000, "invalid_api_key")  # returns when our echo arrived
        echoed.append(ws.closed.code)
        handled.set()

    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, handler)
        ws = await WebSocket.connect(url, [])
        with pytest.raises(ConnectionClosed) as closed:
            await ws.receive()
        assert (closed.value.code, closed.value.reason) == (3000, "invalid_api_key")
        assert not ws.send_text("late")  # nothing is taken after the close
        await ws.aclose()
        await handled.wait()
        nursery.cancel_scope.cancel()
    assert echoed == [3000]


async def test_pings_are_answered_while_receiving():
    ponged = trio.Event()

    async def handler(request):
        ws = await request.accept()
        await ws.ping(b"are you there")  # returns once the matching pong arrived
        ponged.set()
        await ws.send_message("done")
        await ws.get_message()

    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, handler)
        ws = await WebSocket.connect(url, [])
        assert await ws.receive() == b"done"
        assert ponged.is_set()
        await ws.aclose()
        nursery.cancel_scope.cancel()


async def test_a_dropped_connection_is_an_abnormal_close_and_sends_stop_being_taken():
    async def handler(request):
        ws = await request.accept()
        await ws._close_stream()  # no close frame: a network failure

    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, handler)
        ws = await WebSocket.connect(url, [])
        with pytest.raises(ConnectionClosed) as closed:
            await ws.receive()
        assert closed.value.code == 1006
        assert not ws.send_text("after")
        await ws.aclose()
        nursery.cancel_scope.cancel()


async def test_a_stalled_server_backs_output_up_boundedly_and_it_drains_in_order():
    bound = 64 * 1024
    reading = trio.Event()
    received: list[str] = []

    async def handler(request):
        ws = await request.accept()
        await reading.wait()
        try:
            while True:
                received.append(await ws.get_message())
        except ServerConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, handler)
        ws = await WebSocket.connect(url, [], send_buffer=bound)
        # Shrink the kernel's buffers so that back-pressure comes quickly.
        ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        nursery.start_soon(ws.flush)
        taken = 0
        message = "a" * 1000
        while ws.send_text(f"{taken:06d}" + message, droppable=True):
            taken += 1
        assert bound < buffered(ws) < bound + 2000
        assert ws.send_text("control", droppable=False)  # control messages always queue
        reading.set()
        await ws.aclose()  # the close frame goes out behind everything queued
        nursery.cancel_scope.cancel()
    assert [m[:6] for m in received[:taken]] == [f"{i:06d}" for i in range(taken)]
    assert received[taken] == "control"


@pytest.mark.parametrize("frame", [
    server_frame(OP_TEXT, b"x", masked=True),
    # RFC 6455 s7.4.1: 1006 names a connection lost without a close frame; it is never sent,
    # so a peer that sends it broke the protocol, and we must not echo it back.
    server_frame(OP_CLOSE, struct.pack("!H", 1006)),
], ids=["masked frame", "close 1006"])
async def test_a_server_frame_breaking_the_protocol_closes_with_1002(frame):
    handled = trio.Event()

    async def handler(request):
        ws = await request.accept()
        await ws._stream.send_all(frame)
        with pytest.raises(ServerConnectionClosed):
            await ws.get_message()
        assert ws.closed.code == 1002
        handled.set()

    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, handler)
        ws = await WebSocket.connect(url, [])
        with pytest.raises(ConnectionClosed) as closed:
            await ws.receive()
        assert closed.value.code == 1002
        await ws.aclose()
        await handled.wait()
        nursery.cancel_scope.cancel()


async def test_connect_refused_is_an_oserror():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(OSError):
        await WebSocket.connect(f"ws://127.0.0.1:{port}/", [])


async def test_a_certificate_we_do_not_trust_fails_the_handshake():
    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, echo, tls=True)
        with pytest.raises(websocket.WebSocketError, match="TLS"):
            await WebSocket.connect(url, [])  # the system's trust store: not our test CA
        nursery.cancel_scope.cancel()


def test_close_frames_carry_code_and_reason():
    op, payload = unmask_client_frame(encode_frame(OP_CLOSE, websocket.close_payload(1000, "bye")))
    assert op == OP_CLOSE and parse_close(payload) == (1000, "bye")


async def test_an_event_sent_in_the_same_segment_as_the_101_is_received():
    """OpenAI sends session.created at once: it often shares a TCP segment with the 101."""

    async def handler(stream):
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(4096)
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\r\n\r\n"
            + server_frame(OP_TEXT, b'{"type":"session.created"}')
        )
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        ws = await WebSocket.connect(f"ws://127.0.0.1:{port}/", [])
        with trio.fail_after(5):
            assert await ws.receive() == b'{"type":"session.created"}'
        with trio.move_on_after(0.1):  # this server never answers our close
            await ws.aclose()
        assert ws.closed is not None
        nursery.cancel_scope.cancel()


async def test_a_server_that_never_reads_fails_the_connection_past_the_hard_cap():
    """Control messages always queue, but not without end: past STUCK_FACTOR times the
    droppable bound the connection is failed, and its flusher says why."""
    bound = 16 * 1024
    stop = trio.Event()

    async def handler(request):
        await request.accept()
        await stop.wait()  # never reads

    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, handler)
        ws = await WebSocket.connect(url, [], send_buffer=bound)
        ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sent = 0
        while ws.send_text("c" * 1000):
            sent += 1
            assert sent < 10_000, "the queue grew without bound"
        assert buffered(ws) == 0  # what can never be sent is not held
        with pytest.raises(ConnectionClosed) as closed:
            await ws.flush()
        assert "bytes of output waiting: the server is not reading" in closed.value.reason
        stop.set()
        await ws.aclose()
        nursery.cancel_scope.cancel()


async def test_the_flusher_gives_up_when_the_socket_takes_nothing_for_send_timeout(
        autojump_clock):
    stop = trio.Event()

    async def handler(request):
        await request.accept()
        await stop.wait()

    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, handler)
        ws = await WebSocket.connect(url, [], send_timeout=3)
        ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        # The server's reader takes one message and stops (nobody asks for it): the kernel's
        # buffers fill, then ours.
        while buffered(ws) < 32 * 1024:
            ws.send_text("a" * 1000)
            await trio.sleep(0)
        start = trio.current_time()
        with pytest.raises(ConnectionClosed) as closed:
            await ws.flush()
        assert trio.current_time() - start == pytest.approx(3)
        assert closed.value.reason == "connection lost: the server took no output for 3 s"
        stop.set()
        await ws.aclose()
        nursery.cancel_scope.cancel()


async def test_a_ping_flood_gets_one_pong_per_read_and_too_many_frames_close_with_1008():
    decoder = FrameDecoder()
    decoder.feed(server_frame(OP_PING, b"") * (websocket.MAX_FRAMES_PER_READ + 1))
    with pytest.raises(ProtocolError) as flood:
        decoder.events()
    assert flood.value.code == 1008

"""RFC 6455 framing for a client, sans-IO: bytes and close codes in, bytes and messages out.

No sockets, no trio, no clock: :func:`encode_frame` frames (and masks) what the client sends,
:class:`FrameDecoder` turns the server's bytes into whole messages and control frames, and
:func:`parse_close` / :func:`valid_close_code` read close frames. Every breach of the RFC is a
:class:`ProtocolError` carrying the close code to answer with (1002, 1007, 1008, 1009).
No extensions (permessage-deflate) are offered: G.711 in base64 compresses poorly and costs
CPU per frame, so reserved bits are always an error.
"""

from __future__ import annotations

import os
import struct

from media import native

# RFC 6455 opcodes.
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_CONTROL = frozenset({OP_CLOSE, OP_PING, OP_PONG})
_KNOWN = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY, *_CONTROL})

# Close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_NO_STATUS = 1005  # never sent: what a close frame without a code means
CLOSE_ABNORMAL = 1006  # never sent: the connection dropped without a close frame

# A Realtime event is at most a few hundred KB (a long transcript, a session echo); anything
# far beyond is a broken or hostile server, and the decoder must not buffer it without end.
# The session passes its own bound ([openai] max_message_bytes, 1 MiB by default).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Frames one read may bring: a read is at most RECEIVE_BYTES (transport.py), and a real
# Realtime event is 50+ bytes, so a legitimate read holds a few hundred at most. More is a
# flood (of pings, of empty messages) whose parsing would hold up every call's media in the
# engine's poller.
MAX_FRAMES_PER_READ = 512


class WebSocketError(Exception):
    """The connection failed; the message is safe to log (it never holds request headers)."""


class ConnectionClosed(WebSocketError):
    """The connection ended: by a close frame (``code``, ``reason``), or abnormally (1006)."""

    def __init__(self, code: int, reason: str = "", *, local: bool = False) -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason
        self.local = local  # we closed it: the server broke the protocol


class ProtocolError(WebSocketError):
    """The peer broke RFC 6455; ``code`` is the close code to answer with."""

    def __init__(self, message: str, code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _MaskKeys:
    """Masking keys from the OS's strong random source (RFC 6455 section 5.3), drawn 4 KiB at
    a time: one ``getrandom`` per 1024 frames instead of one per frame."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> bytes:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(4096), 0
        self._at = at + 4
        return self._pool[at : at + 4]


_mask_keys = _MaskKeys()


def _masked(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the repeated 4-byte ``key``, as one big-integer XOR (no Python loop)."""
    size = len(payload)
    if not size:
        return b""
    repeated = key * ((size >> 2) + 1)
    value = int.from_bytes(payload, "little") ^ int.from_bytes(repeated[:size], "little")
    return value.to_bytes(size, "little")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final frame from the client: always masked (RFC 6455 section 5.1)."""
    key = _mask_keys.next()
    size = len(payload)
    first = 0x80 | opcode
    if size < 126:
        header = struct.pack("!BB", first, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, size)
    return header + key + _masked(payload, key)


# The Python encode_frame above is the reference. Its compiled twin (openai_flavor/_fast.c,
# issue 14) frames byte for byte the same, ~10x faster (a frame per caller packet), and runs
# when built: media/native.py decides, once. The reference stays reachable for the tests.
py_encode_frame = encode_frame
_fast = native.load("openai_flavor._fast")
if _fast is not None:
    _compiled_frame = _fast.encode_frame

    def fast_encode_frame(opcode: int, payload: bytes) -> bytes:
        """:func:`py_encode_frame`, compiled; the masking key still comes from the pool."""
        return _compiled_frame(opcode, payload, _mask_keys.next())

    encode_frame = fast_encode_frame


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: the code, and the reason cut to fit a control frame (125
    bytes) on a character boundary, so the peer never sees broken UTF-8 (it would fail us
    with 1007). A code no peer may send (1005, 1006 and 1015 name what happened without a
    close frame, RFC 6455 s7.4.1) never reaches the wire: 1000 goes instead."""
    if not valid_close_code(code):
        code = CLOSE_NORMAL
    reason_bytes = reason.encode("utf-8")
    if len(reason_bytes) > 123:
        reason_bytes = reason_bytes[:123].decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!H", code) + reason_bytes


class FrameDecoder:
    """Server frames in, whole messages out: ``feed`` bytes, then ``events()`` yields
    ``(opcode, payload)`` for each text/binary message (fragments joined) and each control
    frame (ping, pong, close), in arrival order. Raises :class:`ProtocolError`."""

    # Slots (issue 16's per-call cost): one per call; nothing assigns others.
    __slots__ = ("_buffer", "_fragment_opcode", "_fragment_size", "_fragments", "_max")

    def __init__(self, *, max_message: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_message
        self._fragments: list[bytes] = []
        self._fragment_opcode: int | None = None
        self._fragment_size = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def events(self) -> list[tuple[int, bytes]]:
        """Every complete message and control frame buffered so far."""
        buffer = self._buffer
        out: list[tuple[int, bytes]] = []
        at = 0
        end = len(buffer)
        while end - at >= 2:
            if len(out) >= MAX_FRAMES_PER_READ:
                raise ProtocolError(
                    f"more than {MAX_FRAMES_PER_READ} frames in one read", CLOSE_POLICY)
            first, second = buffer[at], buffer[at + 1]
            if first & 0x70:
                raise ProtocolError("reserved bits set without an extension")
            if second & 0x80:
                raise ProtocolError("the server masked a frame")
            opcode = first & 0x0F
            fin = first & 0x80
            size = second & 0x7F
            head = 2
            if size == 126:
                if end - at < 4:
                    break
                (size,) = struct.unpack_from("!H", buffer, at + 2)
                head = 4
                if size < 126:  # RFC 6455 s5.2: the minimal number of bytes must be used
                    raise ProtocolError("a 16-bit length for a payload under 126 bytes")
            elif size == 127:
                if end - at < 10:
                    break
                (size,) = struct.unpack_from("!Q", buffer, at + 2)
                head = 10
                if size < 0x10000 or size >> 63:  # minimal, and the most significant bit 0
                    raise ProtocolError("a 64-bit length that is not minimal or not valid")
            if opcode not in _KNOWN:
                raise ProtocolError(f"unknown opcode {opcode:#x}")
            if opcode in _CONTROL and (size > 125 or not fin):
                raise ProtocolError("control frame too long or fragmented")
            if size + self._fragment_size > self._max:
                raise ProtocolError("message too big", CLOSE_TOO_BIG)
            if end - at < head + size:
                break
            payload = bytes(buffer[at + head : at + head + size])
            at += head + size
            if opcode in _CONTROL:
                out.append((opcode, payload))
            elif opcode == OP_CONTINUATION:
                if self._fragment_opcode is None:
                    raise ProtocolError("continuation without a message")
                self._fragments.append(payload)
                self._fragment_size += size
                if fin:
                    out.append(_message(self._fragment_opcode, b"".join(self._fragments)))
                    self._fragments, self._fragment_opcode, self._fragment_size = [], None, 0
            elif self._fragment_opcode is not None:
                raise ProtocolError("a new message inside a fragmented one")
            elif fin:
                out.append(_message(opcode, payload))
            else:
                self._fragment_opcode, self._fragments, self._fragment_size = (
                    opcode, [payload], size)
        # CPython drops a bytearray's prefix in O(1) (it moves the start pointer).
        del buffer[:at]
        return out


def _message(opcode: int, payload: bytes) -> tuple[int, bytes]:
    """A whole data message; a text one must be UTF-8 (RFC 6455 s8.1: else close 1007).

    The Realtime API's messages are JSON, nearly always pure ASCII: ``isascii`` settles those
    in C without a copy; only the others pay for a decode."""
    if opcode == OP_TEXT and not payload.isascii():
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("a text message that is not UTF-8", CLOSE_INVALID_DATA) from None
    return opcode, payload


def valid_close_code(code: int) -> bool:
    """Whether a peer may send ``code`` (RFC 6455 s7.4.1-7.4.2 and IANA's registry): the
    defined 1000-1003 and 1007-1014, and 3000-4999 (libraries', applications': OpenAI's
    3000 invalid_api_key, 4000 beta_api_shape_disabled). 1005, 1006 and 1015 name what
    happened without a close frame and must never be sent."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close(payload: bytes) -> tuple[int, str]:
    """A close frame's ``(code, reason)``; 1005 when it carries no code."""
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) < 2:
        raise ProtocolError("close frame with a 1-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if not valid_close_code(code):
        raise ProtocolError(f"close code {code} is not one a peer may send")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("close reason is not UTF-8", CLOSE_INVALID_DATA) from None
    return code, reason

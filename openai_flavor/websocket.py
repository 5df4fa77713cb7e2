"""rtpai's WebSocket client (RFC 6455) for the Realtime API: a sans-IO core and a thin trio shell.

Why not trio-websocket (which the fake server in tests/ still uses, so the two implementations
check each other): caller audio leaves every 20 ms per call, and through trio-websocket each
frame cost a memory channel, a task switch, a send lock, and a ``send_all`` checkpoint, then
on the way in a reader task and a message queue in front of our own reader: about a fifth of
rtpai's CPU at 200 calls (docs/performance.md). Here :meth:`WebSocket.send_text` is a
synchronous call that frames, encrypts (TLS through ``ssl.MemoryBIO``) and writes to a
non-blocking socket, so the media plane hands caller audio to the network in one syscall,
without a task switch. Only when the kernel's buffer is full does output queue, bounded, for
the connection's flusher task.

Errors never escape ``send_text`` into the caller's task (the media plane's): a failed socket
is recorded and raised from the connection's own tasks (:meth:`receive`, :meth:`flush`).

The core (:func:`encode_frame`, :class:`FrameDecoder`, :func:`handshake_request`,
:func:`accept_key`) takes and returns bytes only and is tested without sockets. No extensions
(permessage-deflate) are offered: G.711 in base64 compresses poorly and costs CPU per frame.
"""

from __future__ import annotations

import base64
import enum
import errno
import hashlib
import math
import os
import socket
import ssl
import struct
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

from media.state import Machine, Transitions

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

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# A Realtime event is at most a few hundred KB (a long transcript, a session echo); anything
# far beyond is a broken or hostile server, and the decoder must not buffer it without end.
# The session passes its own bound ([openai] max_message_bytes, 1 MiB by default).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Frames one read may bring: a read is at most RECEIVE_BYTES, and a real Realtime event is
# 50+ bytes, so a legitimate read holds a few hundred at most. More is a flood (of pings, of
# empty messages) whose parsing would hold up every call's media in the engine's poller.
MAX_FRAMES_PER_READ = 512
# The upgrade response: headers only (and a short body when refused).
MAX_HANDSHAKE_BYTES = 64 * 1024
# Output waiting for the kernel to take it: past this, droppable messages (caller audio) are
# refused (the caller counts them) rather than queued: 256 KiB is ~25 s of G.711 in base64
# appends, far beyond any useful lag; control messages are always queued, they are few.
MAX_BUFFERED_BYTES = 256 * 1024
# Past this many times the droppable bound, even control messages (and pongs) cannot be
# queued: the server is not reading, and the connection is failed rather than grow without end.
STUCK_FACTOR = 4
# One read's worth: the poller calls the session again while more is waiting. 16 KiB keeps
# the work of one read (at most MAX_FRAMES_PER_READ frames) well under a millisecond.
RECEIVE_BYTES = 16 * 1024


class WebSocketError(Exception):
    """The connection failed; the message is safe to log (it never holds request headers)."""


class InvalidRequestHeader(WebSocketError):
    """A request header we were given is not valid HTTP (e.g. a key with a newline in it).

    h11's own error quotes the whole header, i.e. the key: this one names nothing.
    """


class HandshakeRejected(WebSocketError):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class ConnectionClosed(WebSocketError):
    """The connection ended: by a close frame (``code``, ``reason``), or abnormally (1006)."""

    def __init__(self, code: int, reason: str = "", *, local: bool = False) -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason
        self.local = local  # we closed it: the server broke the protocol


class HandshakeTimeout(WebSocketError):
    """A phase of the opening handshake did not finish within its bound."""


class ProtocolError(WebSocketError):
    """The peer broke RFC 6455; ``code`` is the close code to answer with."""

    def __init__(self, message: str, code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


# --- sans-IO core ----------------------------------------------------------------------------


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


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode("utf-8")[:123]


class FrameDecoder:
    """Server frames in, whole messages out: ``feed`` bytes, then ``events()`` yields
    ``(opcode, payload)`` for each text/binary message (fragments joined) and each control
    frame (ping, pong, close), in arrival order. Raises :class:`ProtocolError`."""

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


def accept_key(key: str) -> str:
    """What the server must answer in Sec-WebSocket-Accept for our Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def handshake_request(
    host: str, target: str, headers: list[tuple[str, str]], key: str
) -> tuple[h11.Connection, bytes]:
    """The HTTP/1.1 upgrade request (RFC 6455 section 4.1), and the h11 connection that will
    read the answer."""
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HANDSHAKE_BYTES)
    try:
        request = h11.Request(method="GET", target=target, headers=[
            ("Host", host),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
            ("User-Agent", "rtpai"),
            *headers,
        ])
    except (h11.LocalProtocolError, UnicodeError):
        # Not chained (`from None`): the h11 error's text holds the header's value.
        raise InvalidRequestHeader(
            "a request header is not valid HTTP (its value is not shown; check the "
            "[openai] key for whitespace or control characters)"
        ) from None
    return connection, connection.send(request)


def check_upgrade(response: h11.InformationalResponse, key: str) -> None:
    """Raise :class:`WebSocketError` unless a 101 completes our upgrade."""
    fields = {name.lower(): value for name, value in response.headers}
    if fields.get(b"upgrade", b"").lower() != b"websocket":
        raise WebSocketError("the upgrade response lacks 'Upgrade: websocket'")
    if b"upgrade" not in fields.get(b"connection", b"").lower():
        raise WebSocketError("the upgrade response lacks 'Connection: Upgrade'")
    if fields.get(b"sec-websocket-accept", b"").decode("latin-1") != accept_key(key):
        raise WebSocketError("wrong Sec-WebSocket-Accept")
    if fields.get(b"sec-websocket-extensions"):
        raise WebSocketError("the server chose an extension we did not offer")


# --- the connection's state ---------------------------------------------------------------------


class Link(enum.Enum):
    """Where one connection is in its life (RFC 6455 section 7). What ended it is data beside
    the state: ``WebSocket.closed`` (the close code and reason) and the failure's text."""

    OPEN = "open"  # frames go both ways (the handshakes included: they use the same paths)
    CLOSING = "closing"  # we sent a close frame (ours, or the echo of the server's): no more
    #                      messages or pings out; what comes in is still read
    CLOSED = "closed"  # the end is recorded in ``closed``: the server's close frame, a protocol
    #                    error, the end of the stream, or ``aclose``; nothing more is read
    FAILED = "failed"  # the transport failed: nothing more is written, and the connection's
    #                    tasks raise its end (1006 unless one was recorded before)


WS_TRANSITIONS = Transitions("WebSocket", {
    Link.OPEN: {Link.CLOSING, Link.CLOSED, Link.FAILED},
    Link.CLOSING: {Link.CLOSED, Link.FAILED},
    # Output queued before the end may still fail to go out (the flusher then raises).
    Link.CLOSED: {Link.FAILED},
    Link.FAILED: set(),
})
# For the per-message checks: a module global, not an attribute lookup on the enum class.
_OPEN, _CLOSING, _CLOSED, _FAILED = Link.OPEN, Link.CLOSING, Link.CLOSED, Link.FAILED


# --- trio shell ------------------------------------------------------------------------------


class WebSocket:
    """One client connection: synchronous sends, an async receive, and an async flusher.

    Open with :meth:`connect`. One task calls :meth:`receive`; :meth:`flush` runs as a task of
    its own beside it (it sleeps until output has queued behind a full socket); anything may
    call :meth:`send_text`.
    """

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject | None,
                 incoming: ssl.MemoryBIO | None, outgoing: ssl.MemoryBIO | None, *,
                 max_message: int = MAX_MESSAGE_BYTES, send_buffer: int = MAX_BUFFERED_BYTES,
                 send_timeout: float = math.inf) -> None:
        self._sock = sock
        self._tls = tls
        self._tls_in = incoming
        self._tls_out = outgoing
        self._decoder = FrameDecoder(max_message=max_message)
        # Back-pressure bounds: past send_buffer bytes waiting, droppable messages are
        # refused; past STUCK_FACTOR times it, or when the socket takes nothing for
        # send_timeout seconds, the connection is failed (the server stopped reading).
        self._send_buffer = send_buffer
        self._send_timeout = send_timeout
        self.frames_received = 0  # every frame, control frames too: for a flood policy
        self.pong: bytes | None = None  # the payload of the last pong (keepalive)
        self.binary_dropped = 0  # binary messages, which no Realtime event is
        self._inbox: deque[bytes] = deque()  # messages read but not yet returned by receive
        self._pending = bytearray()  # bytes the kernel has not taken yet (after TLS)
        self._pending_changed = trio.Event()  # set when output queues (wakes the flusher)
        # trio lets one task at a time wait for a socket to be writable: the flusher, or
        # whoever flushes the handshake or the close. Others wait for that one's turn.
        self._awaiting_writable = False
        self._wrote = trio.Event()
        self._link = Machine(WS_TRANSITIONS, _OPEN)
        # What went wrong (its description, once FAILED), for our own tasks to raise. Kept as
        # text, and ``closed`` as an exception that is never raised itself (``_ended`` raises
        # copies): a raised exception keeps its traceback's frames, whose locals hold this
        # connection, so one stored here would make each call's objects a reference cycle
        # that only the cycle collector frees (issue 18).
        self._failure: str | None = None
        self.closed: ConnectionClosed | None = None  # the end, once recorded (see _end)

    @property
    def state(self) -> Link:
        return self._link.state

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    async def connect(cls, url: str, headers: list[tuple[str, str]], *,
                      ssl_context: ssl.SSLContext | None = None,
                      connect_timeout: float = math.inf, upgrade_timeout: float = math.inf,
                      **limits: Any) -> WebSocket:
        """TCP, TLS for ``wss://``, and the upgrade, each phase bounded: TCP and TLS
        together by ``connect_timeout``, the HTTP upgrade (request sent, 101 read) by
        ``upgrade_timeout``. ``limits`` go to the constructor (max_message, send_buffer,
        send_timeout).

        Raises OSError (cannot connect), :class:`HandshakeRejected` (an HTTP status instead
        of 101), :class:`HandshakeTimeout` or :class:`WebSocketError`.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise WebSocketError(f"not a ws:// or wss:// URL: {parts.scheme}://{parts.hostname}")
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        sock = None
        try:
            with trio.move_on_after(connect_timeout) as scope:
                sock = await _open_tcp(parts.hostname, port)
                tls = incoming = outgoing = None
                if parts.scheme == "wss":
                    context = ssl_context or ssl.create_default_context()
                    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                    tls = context.wrap_bio(incoming, outgoing, server_hostname=parts.hostname)
                ws = cls(sock, tls, incoming, outgoing, **limits)
                if tls is not None:
                    await ws._tls_handshake()
            if scope.cancelled_caught:
                raise HandshakeTimeout(
                    f"no {'TLS session' if sock is not None else 'TCP connection'} "
                    f"within {connect_timeout:g} s")
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            with trio.move_on_after(upgrade_timeout) as scope:
                await ws._upgrade(parts.netloc, target, headers)
            if scope.cancelled_caught:
                raise HandshakeTimeout(
                    f"no answer to the WebSocket upgrade within {upgrade_timeout:g} s")
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        return ws

    async def _tls_handshake(self) -> None:
        assert self._tls is not None and self._tls_out is not None
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush_now()
                await self._read_raw()
            except ssl.SSLError as exc:
                raise WebSocketError(f"TLS handshake failed: {exc.reason or exc}") from None
            else:
                await self._flush_now()
                return

    async def _upgrade(self, host: str, target: str, headers: list[tuple[str, str]]) -> None:
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        connection, request = handshake_request(host, target, headers, key)
        self._write(request)
        await self._flush_now()
        status = 0
        while True:
            try:
                event = connection.next_event()
            except h11.RemoteProtocolError as exc:
                raise WebSocketError(f"not an HTTP response to the upgrade: {exc}") from None
            if event is h11.NEED_DATA:
                data = await self._read_plain()
                if not data:
                    if status:
                        raise HandshakeRejected(status)
                    raise WebSocketError("the server closed the connection during the upgrade")
                connection.receive_data(data)
            elif isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                check_upgrade(event, key)
                leftover, _ = connection.trailing_data
                if leftover:
                    self._decoder.feed(bytes(leftover))  # frames sent right after the 101
                return
            elif isinstance(event, h11.Response):
                status = event.status_code  # refused; read the body so the close is clean
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) and status:
                raise HandshakeRejected(status)

    # --- sending ------------------------------------------------------------------------------

    def send_text(self, text: str | bytes, *, droppable: bool = False) -> bool:
        """Frame and send one text message now, without blocking.

        Returns False if it was not taken: the connection is over, or (``droppable``) output
        is already backed up past ``send_buffer`` bytes. Never raises for a broken socket: that
        is raised from :meth:`receive` and :meth:`flush`, in the connection's own tasks.
        """
        if self._link.state is not _OPEN:
            return False
        if droppable and len(self._pending) > self._send_buffer:
            return False
        payload = text.encode("utf-8") if isinstance(text, str) else text
        self._write(encode_frame(OP_TEXT, payload))
        return True

    def _write(self, frame: bytes) -> None:
        """Encrypt (TLS) and send ``frame``."""
        tls = self._tls
        if tls is not None:
            assert self._tls_out is not None
            tls.write(frame)
            frame = self._tls_out.read()
        self._send_raw(frame)

    def _send_raw(self, data: bytes) -> None:
        """Hand the kernel what it takes now; queue the rest, in order, for ``flush``."""
        if self._pending:
            self._pending += data  # behind what is already waiting
            if len(self._pending) > STUCK_FACTOR * self._send_buffer:
                self._fail(WebSocketError(
                    f"{len(self._pending)} bytes of output waiting: the server is not reading"))
            return
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(exc)
            return
        if sent < len(data):
            self._pending += data[sent:]
            self._pending_changed.set()

    def _fail(self, exc: BaseException) -> None:
        if self._link.state is not _FAILED:
            self._failure = _describe(exc)
            self._link.to(_FAILED)
            self._pending.clear()  # never sent now: do not hold it
        self._pending_changed.set()  # wakes the flusher, which raises it

    async def flush(self) -> None:
        """Run beside the reading: write queued output whenever the socket takes it.
        Raises :class:`ConnectionClosed` if sending fails, or if the socket takes nothing
        for ``send_timeout`` seconds (the server stopped reading)."""
        while True:
            if self._link.state is _FAILED:
                raise self._closed_abnormally(self._failure)
            if not self._pending:
                self._pending_changed = trio.Event()
                await self._pending_changed.wait()
                continue
            with trio.move_on_after(self._send_timeout) as scope:
                await self._send_when_writable()
            if scope.cancelled_caught:
                self._fail(WebSocketError(
                    f"the server took no output for {self._send_timeout:g} s"))

    async def _flush_now(self) -> None:
        """Wait until everything queued is written (the handshakes, the close frame)."""
        if self._tls is not None:
            self._flush_tls_output()
        while self._pending and self._link.state is not _FAILED:
            await self._send_when_writable()
        if self._link.state is _FAILED:
            raise self._closed_abnormally(self._failure)

    async def _send_when_writable(self) -> None:
        if self._awaiting_writable:
            await self._wrote.wait()  # another task waits on the socket and sends
            return
        self._awaiting_writable = True
        try:
            await trio.lowlevel.wait_writable(self._sock)
        finally:
            self._awaiting_writable = False
            self._wrote.set()
            self._wrote = trio.Event()
        self._send_pending()

    def _send_pending(self) -> None:
        try:
            sent = self._sock.send(self._pending)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(exc)
            return
        del self._pending[:sent]

    # --- receiving ----------------------------------------------------------------------------

    @property
    def socket(self) -> socket.socket:
        """The TCP socket, for a poller that calls :meth:`read_ready` when it is readable."""
        return self._sock

    def read_ready(self) -> tuple[list[bytes], ConnectionClosed | None]:
        """What one read of the socket brings, without waiting: the complete text messages
        (as UTF-8 bytes: ``json.loads`` takes them as they are; binary ones are counted in
        :attr:`binary_dropped` and dropped), and the
        end of the connection if it came (a close frame, the end of the stream, an error),
        after those messages. Pings are answered here. Frames buffered earlier (those that
        came with the 101) are returned too."""
        link = self._link.state
        if link is _CLOSED:
            return [], self._ended()
        if link is _FAILED:
            return [], self._closed_abnormally(self._failure)
        ended: ConnectionClosed | None = None
        try:
            data = self._recv_plain_nowait()
        except ConnectionClosed as exc:
            data, ended = None, exc
        if data:
            self._decoder.feed(data)
        elif data == b"":
            ended = self._closed_abnormally(None)
        try:
            frames = self._decoder.events()
        except ProtocolError as exc:
            self._send_close(exc.code, str(exc))
            self._end(ConnectionClosed(exc.code, str(exc), local=True))
            return [], self._ended()
        if not frames:
            return [], ended
        self.frames_received += len(frames)
        messages: list[bytes] = []
        ping: bytes | None = None
        for opcode, payload in frames:
            if opcode == OP_TEXT:
                messages.append(payload)
            elif opcode == OP_BINARY:
                self.binary_dropped += 1  # the Realtime API speaks JSON text only
            elif opcode == OP_PING:
                ping = payload
            elif opcode == OP_PONG:
                self.pong = payload
            elif opcode == OP_CLOSE:
                ended = self._on_close_frame(payload)  # nothing counts after it
                break
        if ping is not None and self._link.state in (_OPEN, _CLOSING):
            # One pong for the last ping of a read (RFC 6455 section 5.5.3 allows it): a
            # flood of pings costs one small write, not one per ping.
            self._write(encode_frame(OP_PONG, ping))
        return messages, ended

    async def receive(self) -> bytes:
        """The next message (see :meth:`read_ready`); raises :class:`ConnectionClosed` at
        the end. For a single connection; the session reads through the engine's poller."""
        inbox = self._inbox
        waited = False
        while not inbox:
            messages, ended = self.read_ready()  # after an end, it returns the end again
            if messages:
                inbox.extend(messages)
            elif ended is not None:
                try:
                    raise ended
                finally:
                    del ended  # a local of the frame its traceback holds: no cycle
            else:
                await trio.lowlevel.wait_readable(self._sock)
                waited = True
        if not waited:
            await trio.lowlevel.checkpoint()  # as any trio read: a busy peer starves no one
        return inbox.popleft()

    def _on_close_frame(self, payload: bytes) -> ConnectionClosed:
        try:
            code, reason = parse_close(payload)
        except ProtocolError as exc:
            code, reason = exc.code, str(exc)
        # Echo the close (RFC 6455 section 5.5.1) unless we started the closing handshake.
        self._send_close(CLOSE_NORMAL if code == CLOSE_NO_STATUS else code)
        self._end(ConnectionClosed(code, reason))
        return self._ended()

    def _closed_abnormally(self, failure: BaseException | str | None) -> ConnectionClosed:
        if isinstance(failure, BaseException):
            failure = _describe(failure)
        if self.closed is None:
            reason = "connection lost" if failure is None else f"connection lost: {failure}"
            self._end(ConnectionClosed(CLOSE_ABNORMAL, reason))
        return self._ended()

    def _end(self, closed: ConnectionClosed) -> None:
        """Record how the connection ended; a failed one stays FAILED (its flusher raises)."""
        self.closed = closed
        if self._link.state is not _FAILED and self._link.state is not _CLOSED:
            self._link.to(_CLOSED)

    def _ended(self) -> ConnectionClosed:
        """A fresh exception for the recorded end, to raise: ``closed`` itself never is."""
        assert self.closed is not None
        return ConnectionClosed(self.closed.code, self.closed.reason, local=self.closed.local)

    async def _read_plain(self) -> bytes:
        """Application bytes (during the upgrade): waits; b"" at the end of the stream."""
        while True:
            data = self._recv_plain_nowait()
            if data is not None:
                return data
            await trio.lowlevel.wait_readable(self._sock)

    def _recv_plain_nowait(self) -> bytes | None:
        """One socket read, decrypted: None if nothing is there yet (or only part of a TLS
        record), b"" at the end of the stream. Raises :class:`ConnectionClosed` on errors.

        With TLS, every record that read completed is decrypted now (OpenSSL returns one
        record per call): a record left in the memory BIO would never make the socket
        readable again."""
        tls = self._tls
        if tls is None:
            return self._recv_raw_nowait()
        assert self._tls_in is not None
        chunks: list[bytes] = []
        read_socket = False
        while True:
            try:
                data = tls.read(RECEIVE_BYTES)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                if chunks:
                    break  # the end is reported on the next call, which sees it again
                return b""
            except ssl.SSLError as exc:
                raise self._closed_abnormally(exc) from None
            else:
                if not data:  # a ragged end of stream (no close_notify)
                    if chunks:
                        break
                    return b""
                chunks.append(data)
                continue
            if read_socket or chunks:
                break  # one socket read per call; the poller calls again while readable
            raw = self._recv_raw_nowait()
            if raw is None:
                return None
            read_socket = True
            if raw:
                self._tls_in.write(raw)
            else:
                self._tls_in.write_eof()
        self._flush_tls_output()  # TLS 1.3 may answer (e.g. a KeyUpdate) on a read
        if not chunks:
            return None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _recv_raw_nowait(self) -> bytes | None:
        try:
            return self._sock.recv(RECEIVE_BYTES)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise self._closed_abnormally(exc) from None

    def _flush_tls_output(self) -> None:
        assert self._tls_out is not None
        data = self._tls_out.read()
        if data:
            self._send_raw(data)

    async def _read_raw(self) -> None:
        """One socket read into the TLS engine (during the TLS handshake)."""
        assert self._tls_in is not None
        while (raw := self._recv_raw_nowait()) is None:
            await trio.lowlevel.wait_readable(self._sock)
        if not raw:
            raise WebSocketError("the server closed the connection during the TLS handshake")
        self._tls_in.write(raw)

    # --- closing ------------------------------------------------------------------------------

    def send_ping(self, payload: bytes) -> None:
        """A keepalive ping; its pong shows up in :attr:`pong`."""
        if self._link.state is _OPEN:
            self._write(encode_frame(OP_PING, payload))

    def _send_close(self, code: int, reason: str = "") -> None:
        """The one close frame we send (RFC 6455 section 5.5.1), while the link is open."""
        if self._link.state is not _OPEN:
            return
        self._link.to(_CLOSING)
        self._write(encode_frame(OP_CLOSE, close_payload(code, reason)))

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send a close frame, wait (bounded by the caller's cancel scope) for the server's,
        and close the socket. Safe to call more than once and after a failure."""
        try:
            if self._link.state is _OPEN or self._link.state is _CLOSING:
                self._send_close(code, reason)
                await self._flush_now()
                while True:
                    await self.receive()  # until the server's close frame (or the end)
        except (ConnectionClosed, WebSocketError, OSError):
            pass
        finally:
            if self.closed is None:
                self._end(ConnectionClosed(code, reason))
            if self._sock.fileno() >= 0:
                trio.lowlevel.notify_closing(self._sock)
                self._sock.close()


async def _open_tcp(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket: each resolved address in turn (RFC 6555's racing
    is not worth it for one API host; the connect timeout bounds the whole attempt)."""
    # A numeric host resolves without yielding, and a refused loopback connect fails at
    # once: checkpoint first, as every trio operation does, so that failing costs a turn.
    await trio.lowlevel.checkpoint()
    addresses = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            # Caller audio is many small messages: Nagle would hold each behind the last ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(address)
            if code == errno.EINPROGRESS:
                await trio.lowlevel.wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise last or OSError(errno.EHOSTUNREACH, f"no address for {host}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, WebSocketError):
        return str(exc)
    return getattr(exc, "strerror", None) or type(exc).__name__

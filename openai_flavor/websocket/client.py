"""rtpai's WebSocket client (RFC 6455) for the Realtime API: the trio shell over the sans-IO
framing (framing.py), the upgrade (handshake.py) and the socket with its TLS (transport.py).

Why not trio-websocket (which the fake server in tests/ still uses, so the two implementations
check each other): caller audio leaves every 20 ms per call, and through trio-websocket each
frame cost a memory channel, a task switch, a send lock, and a ``send_all`` checkpoint, then
on the way in a reader task and a message queue in front of our own reader: about a fifth of
rtpai's CPU at 200 calls (docs/performance.md). Here :meth:`WebSocket.send_text` is a
synchronous call that frames, encrypts and writes to a non-blocking socket, so the media plane
hands caller audio to the network in one syscall, without a task switch. Only when the
kernel's buffer is full does output queue, bounded, for the connection's flusher task.

Errors never escape ``send_text`` into the caller's task (the media plane's): a failed socket
is recorded and raised from the connection's own tasks (:meth:`receive`, :meth:`flush`).
"""

from __future__ import annotations

import enum
import math
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import trio

from media.state import Machine, Transitions
from openai_flavor.websocket.framing import (
    CLOSE_ABNORMAL,
    CLOSE_NO_STATUS,
    CLOSE_NORMAL,
    MAX_MESSAGE_BYTES,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ConnectionClosed,
    FrameDecoder,
    ProtocolError,
    WebSocketError,
    close_payload,
    encode_frame,
    parse_close,
)
from openai_flavor.websocket.handshake import HandshakeTimeout, Upgrade
from openai_flavor.websocket.transport import (
    MAX_BUFFERED_BYTES,
    Transport,
    TransportFailed,
    open_tcp,
)

T = TypeVar("T")


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

    # Slots (issue 16's per-call cost): one per call; nothing assigns others.
    __slots__ = (
        "_decoder", "_inbox", "_link", "_transport", "binary_dropped", "closed",
        "frames_received", "pong",
    )

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject | None,
                 incoming: ssl.MemoryBIO | None, outgoing: ssl.MemoryBIO | None, *,
                 max_message: int = MAX_MESSAGE_BYTES, send_buffer: int = MAX_BUFFERED_BYTES,
                 send_timeout: float = math.inf) -> None:
        self._link = Machine(WS_TRANSITIONS, _OPEN)
        # The transport's first failure moves the link to FAILED. Its callback holds the
        # machine, not this object: a transport pointing back at its WebSocket would make every
        # connection a reference cycle that only the cycle collector frees (issue 18).
        self._transport = Transport(sock, tls, incoming, outgoing, send_buffer=send_buffer,
                                    send_timeout=send_timeout,
                                    on_failure=partial(self._link.to, _FAILED))
        self._decoder = FrameDecoder(max_message=max_message)
        self.frames_received = 0  # every frame, control frames too: for a flood policy
        self.pong: bytes | None = None  # the payload of the last pong (keepalive)
        self.binary_dropped = 0  # binary messages, which no Realtime event is
        self._inbox: deque[bytes] = deque()  # messages read but not yet returned by receive
        # ``closed`` is an exception that is never raised itself (``_ended`` raises copies):
        # a raised exception keeps its traceback's frames, whose locals hold this connection,
        # so one stored here would make each call's objects a reference cycle that only the
        # cycle collector frees (issue 18). The transport keeps its failure as text likewise.
        self.closed: ConnectionClosed | None = None  # the end, once recorded (see _end)

    @property
    def state(self) -> Link:
        return self._link.state

    async def _guarded(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run a transport operation; its failure ends the connection abnormally (1006)."""
        failure: str | None = None
        try:
            return await operation()
        except TransportFailed as exc:
            failure = str(exc)
        # Raised outside the except block: no context chained to the transport's traceback.
        raise self._closed_abnormally(failure)

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
                sock = await open_tcp(parts.hostname, port)
                tls = incoming = outgoing = None
                if parts.scheme == "wss":
                    context = ssl_context or ssl.create_default_context()
                    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                    tls = context.wrap_bio(incoming, outgoing, server_hostname=parts.hostname)
                ws = cls(sock, tls, incoming, outgoing, **limits)
                if tls is not None:
                    await ws._guarded(ws._transport.tls_handshake)
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

    async def _upgrade(self, host: str, target: str, headers: list[tuple[str, str]]) -> None:
        upgrade = Upgrade(host, target, headers)
        transport = self._transport
        transport.write(upgrade.request)
        await self._guarded(transport.flush_now)
        while (after := upgrade.receive_data(await self._guarded(transport.read))) is None:
            pass
        if after:
            self._decoder.feed(after)  # frames sent right after the 101

    # --- sending ------------------------------------------------------------------------------

    def send_text(self, text: str | bytes, *, droppable: bool = False) -> bool:
        """Frame and send one text message now, without blocking.

        Returns False if it was not taken: the connection is over, or (``droppable``) output
        is already backed up past ``send_buffer`` bytes. Never raises for a broken socket: that
        is raised from :meth:`receive` and :meth:`flush`, in the connection's own tasks.
        """
        if self._link.state is not _OPEN:
            return False
        transport = self._transport
        if droppable and len(transport.pending) > transport.send_buffer:  # backlog, inlined
            return False
        payload = text.encode("utf-8") if isinstance(text, str) else text
        transport.write(encode_frame(OP_TEXT, payload))
        return True

    async def flush(self) -> None:
        """Run beside the reading: write queued output whenever the socket takes it.
        Raises :class:`ConnectionClosed` if sending fails, or if the socket takes nothing
        for ``send_timeout`` seconds (the server stopped reading)."""
        await self._guarded(self._transport.flush_forever)

    # --- receiving ----------------------------------------------------------------------------

    @property
    def socket(self) -> socket.socket:
        """The TCP socket, for a poller that calls :meth:`read_ready` when it is readable."""
        return self._transport.socket

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
            return [], self._closed_abnormally(self._transport.failure)
        ended: ConnectionClosed | None = None
        try:
            data = self._transport.recv_nowait()
        except TransportFailed as exc:
            data, ended = None, self._closed_abnormally(str(exc))
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
            self._transport.write(encode_frame(OP_PONG, ping))
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
                await trio.lowlevel.wait_readable(self._transport.socket)
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

    def _closed_abnormally(self, failure: str | None) -> ConnectionClosed:
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

    # --- closing ------------------------------------------------------------------------------

    def send_ping(self, payload: bytes) -> None:
        """A keepalive ping; its pong shows up in :attr:`pong`."""
        if self._link.state is _OPEN:
            self._transport.write(encode_frame(OP_PING, payload))

    def _send_close(self, code: int, reason: str = "") -> None:
        """The one close frame we send (RFC 6455 section 5.5.1), while the link is open."""
        if self._link.state is not _OPEN:
            return
        self._link.to(_CLOSING)
        self._transport.write(encode_frame(OP_CLOSE, close_payload(code, reason)))

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send a close frame, wait (bounded by the caller's cancel scope) for the server's,
        and close the socket. Safe to call more than once and after a failure."""
        try:
            if self._link.state is _OPEN or self._link.state is _CLOSING:
                self._send_close(code, reason)
                await self._guarded(self._transport.flush_now)
                while True:
                    await self.receive()  # until the server's close frame (or the end)
        except (ConnectionClosed, WebSocketError, OSError):
            pass
        finally:
            if self.closed is None:
                self._end(ConnectionClosed(code, reason))
            self._transport.close()



"""The bytes under the WebSocket: a non-blocking TCP socket, with TLS through ``ssl.MemoryBIO``.

Why not trio's streams: :meth:`Transport.write` is synchronous. It encrypts and hands the
kernel what it takes now, so the media plane's caller audio leaves in one syscall without a
task switch; only when the kernel's buffer is full does output queue, bounded, for the
connection's flusher (:meth:`Transport.flush_forever`). Reads are non-blocking too
(:meth:`Transport.recv_nowait`), for a poller that calls them when the socket is readable.

A failed write is recorded (:attr:`Transport.failure`, and the ``on_failure`` callback), never
raised into the writer; the connection's own tasks raise :class:`TransportFailed` for it.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import ssl
from collections.abc import Callable

import trio

from openai_flavor.websocket.framing import WebSocketError

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


class TransportFailed(WebSocketError):
    """The socket or TLS failed; the message describes how (never with data in it)."""


class Transport:
    """One TCP connection's bytes, TLS-wrapped when ``tls`` is given (with its two BIOs)."""

    # Slots (issue 16's per-call cost): one per call; nothing assigns others.
    __slots__ = (
        "_awaiting_writable", "_on_failure", "pending", "_pending_changed", "_send_timeout",
        "_sock", "_tls", "_tls_in", "_tls_out", "_wrote", "failure", "send_buffer",
    )

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject | None,
                 incoming: ssl.MemoryBIO | None, outgoing: ssl.MemoryBIO | None, *,
                 send_buffer: int = MAX_BUFFERED_BYTES, send_timeout: float = math.inf,
                 on_failure: Callable[[], None] = lambda: None) -> None:
        self._sock = sock
        self._tls = tls
        self._tls_in = incoming
        self._tls_out = outgoing
        # Back-pressure bounds: past send_buffer bytes waiting, droppable messages are
        # refused (by the WebSocket); past STUCK_FACTOR times it, or when the socket takes
        # nothing for send_timeout seconds, the transport fails (the server stopped reading).
        self.send_buffer = send_buffer
        self._send_timeout = send_timeout
        self._on_failure = on_failure
        # Bytes the kernel has not taken yet (after TLS). Public, read only outside: the
        # client's send_text checks its length per message (a frame per caller packet),
        # where a property would cost a Python call (issue 16).
        self.pending = bytearray()
        self._pending_changed = trio.Event()  # set when output queues (wakes the flusher)
        # trio lets one task at a time wait for a socket to be writable: the flusher, or
        # whoever flushes the handshake or the close. Others wait for that one's turn.
        self._awaiting_writable = False
        self._wrote = trio.Event()
        # How the transport failed (its description), once it has: kept as text, not as the
        # exception, whose traceback's frames would hold this object (a reference cycle).
        self.failure: str | None = None

    @property
    def socket(self) -> socket.socket:
        return self._sock

    # --- writing ------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Encrypt (TLS) and send ``data`` now; what the kernel does not take queues."""
        tls = self._tls
        if tls is not None:
            assert self._tls_out is not None
            tls.write(data)
            data = self._tls_out.read()
        self._send_raw(data)

    def _send_raw(self, data: bytes) -> None:
        """Hand the kernel what it takes now; queue the rest, in order, for the flusher."""
        if self.pending:
            self.pending += data  # behind what is already waiting
            if len(self.pending) > STUCK_FACTOR * self.send_buffer:
                self.fail(WebSocketError(
                    f"{len(self.pending)} bytes of output waiting: the server is not reading"))
            return
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.fail(exc)
            return
        if sent < len(data):
            self.pending += data[sent:]
            self._pending_changed.set()

    def fail(self, exc: BaseException) -> None:
        """Record the first failure; nothing more is written."""
        if self.failure is None:
            self.failure = describe(exc)
            self.pending.clear()  # never sent now: do not hold it
            self._on_failure()
        self._pending_changed.set()  # wakes the flusher, which raises it

    async def flush_forever(self) -> None:
        """Write queued output whenever the socket takes it. Raises :class:`TransportFailed`
        once the transport fails, or if the socket takes nothing for ``send_timeout`` seconds."""
        while True:
            if self.failure is not None:
                raise TransportFailed(self.failure)
            if not self.pending:
                self._pending_changed = trio.Event()
                await self._pending_changed.wait()
                continue
            with trio.move_on_after(self._send_timeout) as scope:
                await self._send_when_writable()
            if scope.cancelled_caught:
                self.fail(WebSocketError(
                    f"the server took no output for {self._send_timeout:g} s"))

    async def flush_now(self) -> None:
        """Wait until everything queued is written (the handshakes, the close frame)."""
        if self._tls is not None:
            self._flush_tls_output()
        while self.pending and self.failure is None:
            await self._send_when_writable()
        if self.failure is not None:
            raise TransportFailed(self.failure)

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
            sent = self._sock.send(self.pending)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(exc)
            return
        del self.pending[:sent]

    def _flush_tls_output(self) -> None:
        assert self._tls_out is not None
        data = self._tls_out.read()
        if data:
            self._send_raw(data)

    # --- reading ------------------------------------------------------------------------------

    async def read(self) -> bytes:
        """Application bytes: waits; b"" at the end of the stream."""
        while True:
            data = self.recv_nowait()
            if data is not None:
                return data
            await trio.lowlevel.wait_readable(self._sock)

    def recv_nowait(self) -> bytes | None:
        """One socket read, decrypted: None if nothing is there yet (or only part of a TLS
        record), b"" at the end of the stream. Raises :class:`TransportFailed` on errors.

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
                raise TransportFailed(describe(exc)) from None
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
            raise TransportFailed(describe(exc)) from None

    # --- opening and closing ------------------------------------------------------------------

    async def tls_handshake(self) -> None:
        """Complete the TLS handshake (the caller's cancel scope bounds it)."""
        assert self._tls is not None and self._tls_out is not None
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self.flush_now()
                await self._read_raw()
            except ssl.SSLError as exc:
                raise WebSocketError(f"TLS handshake failed: {exc.reason or exc}") from None
            else:
                await self.flush_now()
                return

    async def _read_raw(self) -> None:
        """One socket read into the TLS engine (during the TLS handshake)."""
        assert self._tls_in is not None
        while (raw := self._recv_raw_nowait()) is None:
            await trio.lowlevel.wait_readable(self._sock)
        if not raw:
            raise WebSocketError("the server closed the connection during the TLS handshake")
        self._tls_in.write(raw)

    def close(self) -> None:
        """Close the socket (once; later calls do nothing)."""
        if self._sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()


async def open_tcp(host: str, port: int) -> socket.socket:
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


def describe(exc: BaseException) -> str:
    """An error's text that is safe to log: ours as they are, an OS error's strerror."""
    if isinstance(exc, WebSocketError):
        return str(exc)
    return getattr(exc, "strerror", None) or type(exc).__name__

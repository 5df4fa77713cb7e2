"""The WebSocket opening handshake (RFC 6455 section 4), client side and sans-IO, over h11.

:class:`Upgrade` holds one attempt: its ``request`` bytes go out, the server's bytes are fed to
:meth:`Upgrade.receive_data` until it returns what followed the 101 (frames the server may send
in the same segment), or raises: :class:`HandshakeRejected` for an HTTP status, or
:class:`~openai_flavor.websocket.framing.WebSocketError` for anything that is not a valid 101.
"""

from __future__ import annotations

import base64
import hashlib
import os

import h11

from openai_flavor.websocket.framing import WebSocketError

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# The upgrade response: headers only (and a short body when refused).
MAX_HANDSHAKE_BYTES = 64 * 1024


class InvalidRequestHeader(WebSocketError):
    """A request header we were given is not valid HTTP (e.g. a key with a newline in it).

    h11's own error quotes the whole header, i.e. the key: this one names nothing.
    """


class HandshakeRejected(WebSocketError):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class HandshakeTimeout(WebSocketError):
    """A phase of the opening handshake did not finish within its bound."""


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


class Upgrade:
    """One opening handshake: send :attr:`request`, then feed the answer to
    :meth:`receive_data` until it returns (the 101 came) or raises (it did not)."""

    def __init__(self, host: str, target: str, headers: list[tuple[str, str]]) -> None:
        self._key = base64.b64encode(os.urandom(16)).decode("ascii")
        self._connection, self.request = handshake_request(host, target, headers, self._key)
        self._status = 0  # a refusal's status, once its head is read (its body follows)

    def receive_data(self, data: bytes) -> bytes | None:
        """Feed what the server sent (b"" at the end of the stream). None: the answer is not
        complete yet; bytes: the upgrade is done, and these came after the 101 (frames)."""
        if not data:
            if self._status:
                raise HandshakeRejected(self._status)
            raise WebSocketError("the server closed the connection during the upgrade")
        self._connection.receive_data(data)
        while True:
            try:
                event = self._connection.next_event()
            except h11.RemoteProtocolError as exc:
                raise WebSocketError(f"not an HTTP response to the upgrade: {exc}") from None
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                check_upgrade(event, self._key)
                leftover, _ = self._connection.trailing_data
                return bytes(leftover)
            if isinstance(event, h11.Response):
                self._status = event.status_code  # refused; read the body so the close is clean
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) and self._status:
                raise HandshakeRejected(self._status)

"""One small HTTP/1.1 client for rtpai's outbound calls: the proxy's management interface
(ctl/proxy.py) and the tools' webhook (openai_flavor/webhook.py). It lives in media/, the
lowest layer, so that both planes can use it without the AI flavor importing ctl/.

h11 does the wire format (sans-IO: framing, chunked bodies, Content-Length), as for the
WebSocket upgrade (openai_flavor/websocket/handshake.py); this module only moves bytes. Each
request says ``Connection: close``: these calls are rare and small, so there is no connection reuse.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import h11
import trio

# Replies are status words, JSON-RPC results or a tool's output for the model's context:
# anything larger is a misbehaving server.
MAX_RESPONSE_BYTES = 64 * 1024


class HttpError(Exception):
    """The server could not be reached, or did not answer proper HTTP; safe to log."""


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    body: bytes = b""
    content_type: str = "application/json"


async def http_request(request: HttpRequest, *, timeout: float | None = None) -> tuple[int, bytes]:
    """One exchange; returns ``(status, body)``. ``timeout`` (seconds) raises
    trio.TooSlowError; without it the caller bounds the call with its own cancel scope."""
    parts = urlsplit(request.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Not the URL itself: it may carry a password or a webhook's token.
        raise HttpError(f"not an http(s) URL (scheme {parts.scheme[:16]!r})")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # RFC 9110 s7.2: Host is the authority without userinfo; credentials written into the URL
    # (a management interface behind an authenticating front end) go as Basic auth instead.
    host = parts.netloc.rpartition("@")[2]
    headers = [
        ("Host", host),
        ("User-Agent", "rtpai"),
        ("Accept", "application/json, text/plain"),
        ("Connection", "close"),
        ("Content-Length", str(len(request.body))),
    ]
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers.append(("Authorization",
                        "Basic " + base64.b64encode(credentials.encode()).decode("ascii")))
    if request.body:
        headers.append(("Content-Type", request.content_type))
    with trio.fail_after(timeout) if timeout is not None else trio.CancelScope():
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, port)
        except OSError as exc:
            raise HttpError(f"cannot connect: {exc.strerror or type(exc).__name__}") from None
        if parts.scheme == "https":
            stream = trio.SSLStream(stream, ssl.create_default_context(),
                                    server_hostname=parts.hostname)
        async with stream:
            try:
                return await _exchange(stream, request, target, headers)
            except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
                raise HttpError(f"connection failed: {type(exc).__name__}") from None
            except h11.ProtocolError as exc:
                raise HttpError(f"not an HTTP response: {exc}") from None


async def _exchange(stream: trio.abc.Stream, request: HttpRequest, target: str,
                    headers: list[tuple[str, str]]) -> tuple[int, bytes]:
    connection = h11.Connection(h11.CLIENT)
    await stream.send_all(connection.send(h11.Request(
        method=request.method, target=target, headers=headers)))
    if request.body:
        await stream.send_all(connection.send(h11.Data(data=request.body)))
    await stream.send_all(connection.send(h11.EndOfMessage()))
    status, body = 0, bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await stream.receive_some(16384))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_RESPONSE_BYTES:
                raise HttpError("response too large")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            if not status:
                raise HttpError("no complete HTTP response")
            return status, bytes(body)

"""The custom tools' webhook: one HTTP/1.1 POST of JSON per tool call, stdlib and trio only.

The wire format is sans-IO (:func:`encode_request`, :func:`decode_response`); :func:`post_json`
only moves bytes. A tool call is rare and small, so there is no connection reuse: each request
says ``Connection: close`` and the body ends at the server's close, its Content-Length or its
last chunk. The caller bounds the whole exchange with a cancel scope.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import trio

# A tool result goes into the model's context: anything larger is a misbehaving webhook.
MAX_RESPONSE_BYTES = 64 * 1024


class WebhookError(Exception):
    """The webhook could not be reached or answered something that is not HTTP."""


def encode_request(url: str, payload: Any) -> tuple[str, int, bool, bytes]:
    """``(host, port, tls, request bytes)`` for a JSON POST to ``url``."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    body = json.dumps(payload).encode()
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host_header}\r\n"
        "User-Agent: rtpai\r\n"
        "Content-Type: application/json\r\n"
        "Accept: application/json, text/plain\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return host, port, tls, head.encode("latin-1") + body


def _dechunk(data: bytes) -> bytes:
    """RFC 9112 section 7.1 chunked transfer coding (extensions and trailers ignored)."""
    body = bytearray()
    while True:
        line, sep, data = data.partition(b"\r\n")
        if not sep:
            raise WebhookError("truncated chunked body")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise WebhookError("malformed chunk size") from None
        if size == 0:
            return bytes(body)
        if len(data) < size + 2:
            raise WebhookError("truncated chunked body")
        body += data[:size]
        data = data[size + 2 :]


def decode_response(data: bytes) -> tuple[int, bytes]:
    """``(status, body)`` of a complete HTTP/1.x response read until the server closed."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise WebhookError("no complete HTTP response")
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
        raise WebhookError("not an HTTP response")
    try:
        status = int(status_line[1])
    except ValueError:
        raise WebhookError("not an HTTP response") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise WebhookError("malformed Content-Length") from None
        if len(body) < length:
            raise WebhookError("truncated body")
        body = body[:length]
    return status, body


async def post_json(url: str, payload: Any) -> tuple[int, bytes]:
    """POST ``payload`` as JSON; returns ``(status, body)``. Bound it with a cancel scope."""
    host, port, tls, request = encode_request(url, payload)
    try:
        if tls:
            stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(host, port)
        else:
            stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise WebhookError(f"cannot connect: {exc.strerror or type(exc).__name__}") from None
    async with stream:
        try:
            await stream.send_all(request)
            received = bytearray()
            while chunk := await stream.receive_some(16384):
                received += chunk
                if len(received) > MAX_RESPONSE_BYTES:
                    raise WebhookError("response too large")
        except (OSError, trio.BrokenResourceError) as exc:
            raise WebhookError(f"connection failed: {type(exc).__name__}") from None
    return decode_response(bytes(received))

"""How a Realtime (or GPT-Live) connection ends, and when the session gives up: sans-IO.

A connection's end is a :class:`ConnectionLost` whatever ended it (the handshake, the server's
close, a watchdog bound, a fatal error event); :func:`lost_from` turns the WebSocket's
exceptions into one, with a reason safe to log. The session reconnects after a loss unless it
is ``fatal``, and raises :class:`RealtimeSessionError` when it gives up.
"""

from __future__ import annotations

from media.bridge import AiSessionError
from openai_flavor import events
from openai_flavor.websocket import (
    CLOSE_ABNORMAL,
    ConnectionClosed,
    HandshakeRejected,
    HandshakeTimeout,
    InvalidRequestHeader,
    WebSocketError,
)


class RealtimeSessionError(AiSessionError):
    """The AI session cannot go on; the reason is safe to log and to return in statistics."""


class ConnectionLost(Exception):
    """One connection ended; ``fatal`` when retrying cannot help; ``since``: when the link
    stopped working, if before it was noticed (a watchdog expiry)."""

    def __init__(self, reason: str, *, fatal: bool = False, since: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fatal = fatal
        self.since = since


def api_name(shape: str) -> str:
    """The API a session of ``shape`` (settings' ``shape``, stats' ``dialect``) speaks, as its
    log lines and loss reasons name it: an operator reading of a GPT-Live call's reconnects
    must not be sent looking at the Realtime API (xAI's has the Realtime shape)."""
    return "GPT-Live API" if shape == "live" else "Realtime API"


def redact(text: str, secret: str | None) -> str:
    """Servers echo parts of a bad key in error messages; never let a key reach a log."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "<redacted>")
    return text


def lost_from(exc: Exception, api: str = "Realtime API") -> ConnectionLost | None:
    """What a WebSocket (or socket) exception means for the session; None if it is not one.
    ``api`` names the server in the reason (:func:`api_name`)."""
    if isinstance(exc, HandshakeRejected):
        return ConnectionLost(
            f"the {api} rejected the connection (HTTP {exc.status})",
            fatal=exc.status in events.FATAL_HTTP_STATUS,
        )
    if isinstance(exc, HandshakeTimeout):
        return ConnectionLost(str(exc))
    if isinstance(exc, ConnectionClosed):
        detail = f"{exc.code} {exc.reason}".strip()
        if exc.local:
            what = f"rtpai closed the session: the server broke the protocol ({detail})"
        elif exc.code == CLOSE_ABNORMAL:  # no close frame: a network or back-pressure loss
            what = f"the connection to the {api} was lost ({exc.reason})"
        else:
            what = f"the {api} closed the session ({detail})"
        return ConnectionLost(what, fatal=exc.code in events.FATAL_CLOSE_CODES)
    if isinstance(exc, InvalidRequestHeader):
        # Our own request cannot be sent: no retry would send a different one.
        return ConnectionLost(f"WebSocket handshake failed: {exc}", fatal=True)
    if isinstance(exc, WebSocketError):
        return ConnectionLost(f"WebSocket handshake failed: {exc}")
    if isinstance(exc, OSError):
        return ConnectionLost(
            f"cannot reach the {api}: {exc.strerror or type(exc).__name__}")
    return None

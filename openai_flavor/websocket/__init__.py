"""rtpai's WebSocket client (RFC 6455) for the Realtime API, in four parts with their own
interfaces, lowest first:

* framing.py: the RFC 6455 frames and close codes, sans-IO (bytes in, messages out);
* handshake.py: the HTTP/1.1 upgrade, sans-IO over h11;
* transport.py: the non-blocking socket and its TLS over ``ssl.MemoryBIO``, synchronous writes
  with a bounded queue for the flusher;
* client.py: :class:`WebSocket`, the trio shell that joins them (connect, send, read, close).

Everything a user of the client needs is importable from here, as it was when this was one
module.
"""

from openai_flavor.websocket.client import WS_TRANSITIONS, Link, WebSocket
from openai_flavor.websocket.framing import (
    CLOSE_ABNORMAL,
    CLOSE_INVALID_DATA,
    CLOSE_NO_STATUS,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    MAX_FRAMES_PER_READ,
    MAX_MESSAGE_BYTES,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
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
    valid_close_code,
)
from openai_flavor.websocket.handshake import (
    MAX_HANDSHAKE_BYTES,
    HandshakeRejected,
    HandshakeTimeout,
    InvalidRequestHeader,
    accept_key,
    check_upgrade,
    handshake_request,
)
from openai_flavor.websocket.transport import (
    MAX_BUFFERED_BYTES,
    RECEIVE_BYTES,
    STUCK_FACTOR,
    TransportFailed,
)

__all__ = [
    "CLOSE_ABNORMAL", "CLOSE_INVALID_DATA", "CLOSE_NORMAL", "CLOSE_NO_STATUS", "CLOSE_POLICY",
    "CLOSE_PROTOCOL_ERROR", "CLOSE_TOO_BIG", "MAX_BUFFERED_BYTES", "MAX_FRAMES_PER_READ",
    "MAX_HANDSHAKE_BYTES", "MAX_MESSAGE_BYTES", "OP_BINARY", "OP_CLOSE", "OP_CONTINUATION",
    "OP_PING", "OP_PONG", "OP_TEXT", "RECEIVE_BYTES", "STUCK_FACTOR", "WS_TRANSITIONS",
    "ConnectionClosed", "FrameDecoder", "HandshakeRejected", "HandshakeTimeout",
    "InvalidRequestHeader", "Link", "ProtocolError", "TransportFailed", "WebSocket",
    "WebSocketError", "accept_key", "check_upgrade", "close_payload", "encode_frame",
    "handshake_request", "parse_close", "valid_close_code",
]

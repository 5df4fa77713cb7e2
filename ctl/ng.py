"""The rtpengine "ng" control protocol, sans-IO.

One UDP datagram is ``<cookie> <dictionary>``; the reply is ``<same cookie> <dictionary>``.
The dictionary is bencoded (what Kamailio's and OpenSIPS's rtpengine modules send) or, as
rtpengine also accepts, JSON when it starts with ``{`` -- and then the reply is JSON too.

Nothing here does I/O: the server in ``ctl/ng_server.py`` moves bytes, this module turns them
into :class:`NgRequest` objects and replies back into bytes, and :class:`ReplyCache` remembers
replies so that a retransmitted datagram is answered, never executed twice.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import bencode

# rtpengine's own reason strings: the proxies and the people reading their logs know them.
REASON_BAD_BENCODE = "Could not decode bencode dictionary"
REASON_NOT_A_DICTIONARY = "Invalid NG data format"  # valid bencode, but not a dictionary
REASON_NO_COMMAND = 'Dictionary contains no key "command"'
REASON_UNKNOWN_COMMAND = "Unrecognized command"
REASON_NO_CALL_ID = "No call-id in message"
REASON_NO_FROM_TAG = "No from-tag in message"
REASON_NO_TO_TAG = "No to-tag in message"
REASON_NO_SDP = "No SDP body in message"
REASON_BAD_SDP = "Failed to parse SDP"
REASON_NOT_FOUND = "Call-ID not found or tags didn't match"
REASON_UNKNOWN_CALL = "Unknown call-id"
REASON_NO_PORTS = "Ran out of ports"
REASON_SESSION_LIMIT = "Parallel session limit reached"


class NgFramingError(Exception):
    """No ``cookie<space>`` prefix: rtpengine answers nothing, and neither do we."""


class NgError(Exception):
    """A request that gets ``{"result": "error", "error-reason": reason}``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NgLoadLimit(NgError):
    """The engine is full. Answered as ``load limit`` when the proxy says it understands that."""

    def __init__(self) -> None:
        super().__init__(REASON_SESSION_LIMIT)


def canonical_name(name: str) -> str:
    """rtpengine treats space, ``-`` and ``_`` in key and flag names alike: fold them to ``-``."""
    return name.replace(" ", "-").replace("_", "-")


def _text(value: Any, fold_keys: bool = True) -> Any:
    """bencode.py yields ``bytes`` for what is not UTF-8: decode it (latin-1 keeps every byte).

    Request keys are folded with :func:`canonical_name`; reply keys (``"local port"``) are
    kept as the engine wrote them.
    """
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if isinstance(value, Mapping):
        fold = canonical_name if fold_keys else str
        return {fold(str(_text(k))): _text(v, fold_keys) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v, fold_keys) for v in value]
    return value


@dataclass(frozen=True)
class NgRequest:
    """One decoded ng command.

    ``params`` holds every key with its name folded by :func:`canonical_name` (so
    ``"delete delay"`` and ``"delete_delay"`` both read as ``params["delete-delay"]``);
    ``flags`` holds the folded ``flags`` list, lower-cased, for membership tests.
    """

    command: str
    params: Mapping[str, Any]
    flags: frozenset[str] = field(default_factory=frozenset)
    is_json: bool = False

    def get(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    def text(self, key: str) -> str | None:
        """A string parameter; numbers that arrive as integers are turned into text."""
        value = self.params.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, int):
            return str(value)
        raise NgError(f"Invalid value for key {key!r}")

    def require(self, key: str, reason: str) -> str:
        value = self.text(key)
        if not value:
            raise NgError(reason)
        return value

    def integer(self, key: str, default: int | None = None) -> int | None:
        """Integers may arrive as bencode integers or as numeric strings (Kamailio sends both)."""
        value = self.params.get(key)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise NgError(f"Invalid integer for key {key!r}") from None
        raise NgError(f"Invalid integer for key {key!r}")

    def string_list(self, key: str) -> list[str]:
        """A list that may also be sent as one string (``ICE``, ``replace``, ``supports``)."""
        value = self.params.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return [str(v) for v in value]
        return [str(value)]

    def supports(self, feature: str) -> bool:
        return feature in self.string_list("supports")


def split_cookie(datagram: bytes) -> tuple[bytes, bytes]:
    """Split ``cookie<space>body``. Raises :class:`NgFramingError` if there is no cookie."""
    cookie, sep, body = datagram.partition(b" ")
    if not sep or not cookie:
        raise NgFramingError("no cookie")
    return cookie, body


def decode_request(body: bytes) -> NgRequest:
    """Decode the dictionary part of a datagram into an :class:`NgRequest`.

    Raises :class:`NgError` with rtpengine's reasons for a body that is not a dictionary or
    has no command; the caller still knows the cookie and can send that error back.
    """
    is_json = body.lstrip().startswith(b"{")
    try:
        raw = json.loads(body) if is_json else bencode.bdecode(body)
    except Exception:
        raise NgError(REASON_BAD_BENCODE) from None
    if not isinstance(raw, Mapping):
        raise NgError(REASON_NOT_A_DICTIONARY)
    params = _text(raw)
    command = params.get("command")
    if not isinstance(command, str) or not command:
        raise NgError(REASON_NO_COMMAND)
    raw_flags = params.get("flags") or []
    if isinstance(raw_flags, str):
        raw_flags = [raw_flags]
    flags = frozenset(canonical_name(str(f)).lower() for f in raw_flags if isinstance(f, str))
    return NgRequest(
        command=canonical_name(command).lower(), params=params, flags=flags, is_json=is_json
    )


def _bencodable(value: Any) -> Any:
    """bencode has no floats, booleans or None: make replies safe to encode."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return round(value)
    if isinstance(value, Mapping):
        return {str(k): _bencodable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_bencodable(v) for v in value if v is not None]
    return value


def encode_reply(cookie: bytes, reply: Mapping[str, Any], *, as_json: bool = False) -> bytes:
    """``cookie<space>dictionary``, in the encoding the request came in."""
    if as_json:
        body = json.dumps(reply, separators=(",", ":"), default=str).encode()
    else:
        body = bencode.bencode(_bencodable(reply))
    return cookie + b" " + body


def encode_request(cookie: bytes, command: str, params: Mapping[str, Any] | None = None) -> bytes:
    """A request datagram, as a proxy sends it (used by ``rtpai-ctl`` and the tests)."""
    message = {"command": command, **(params or {})}
    return cookie + b" " + bencode.bencode(_bencodable(message))


def decode_reply(datagram: bytes) -> tuple[bytes, dict[str, Any]]:
    """The client side: split and decode a reply (bencode or JSON)."""
    cookie, body = split_cookie(datagram)
    raw = json.loads(body) if body.lstrip().startswith(b"{") else bencode.bdecode(body)
    if not isinstance(raw, Mapping):
        raise NgError(REASON_BAD_BENCODE)
    return cookie, _text(raw, fold_keys=False)


# --- retransmissions ---------------------------------------------------------------------------


class _Pending:
    """Marks a request being handled; counts the duplicates that arrived meanwhile."""

    __slots__ = ("duplicates",)

    def __init__(self) -> None:
        self.duplicates = 0


class ReplyCache:
    """Replies by (source address, cookie), so a retransmit never runs a command twice.

    Both proxy modules resend the same datagram after 1 s, up to 5 times; rtpengine keeps
    replies for 30-60 s. We keep them ``ttl`` seconds (45 by default: past the modules' last
    retry with margin) and at most ``max_entries`` (the oldest go first), so memory is bounded
    whatever a peer sends. Time is passed in, never read here.
    """

    def __init__(self, *, ttl: float = 45.0, max_entries: int = 20_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        # key -> (inserted_at, _Pending | bytes); insertion order is time order.
        self._entries: OrderedDict[tuple[Any, bytes], tuple[float, _Pending | bytes]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float, room: int = 0) -> None:
        """Drop expired entries, and the oldest ones until ``room`` more fit."""
        while self._entries:
            key, (inserted_at, _) = next(iter(self._entries.items()))
            if now - inserted_at < self.ttl and len(self._entries) + room <= self.max_entries:
                break
            del self._entries[key]

    def begin(self, key: tuple[Any, bytes], now: float) -> bytes | None | bool:
        """Start handling ``key``.

        Returns ``True`` when the request is new and must be handled; cached reply bytes when
        it was answered already (send them again); ``None`` when the first copy is still being
        handled (its reply will be sent once more for this duplicate by :meth:`complete`).
        """
        entry = self._entries.get(key)
        if entry is not None and now - entry[0] >= self.ttl:
            entry = None
        if entry is None:
            self._expire(now, room=1)
            self._entries.pop(key, None)
            self._entries[key] = (now, _Pending())
            return True
        state = entry[1]
        if isinstance(state, _Pending):
            state.duplicates += 1
            return None
        return state

    def complete(self, key: tuple[Any, bytes], reply: bytes, now: float) -> int:
        """Store the reply; returns how many duplicates arrived while it was being made."""
        entry = self._entries.pop(key, None)
        duplicates = entry[1].duplicates if entry and isinstance(entry[1], _Pending) else 0
        self._entries[key] = (now, reply)
        self._expire(now)
        return duplicates


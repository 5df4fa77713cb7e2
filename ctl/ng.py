"""The rtpengine "ng" control protocol, sans-IO.

One UDP datagram is ``<cookie> <dictionary>``; the reply is ``<same cookie> <dictionary>``.
The dictionary is bencoded (what Kamailio's and OpenSIPS's rtpengine modules send) or, as
rtpengine also accepts, JSON when it starts with ``{`` -- and then the reply is JSON too.

Nothing here does I/O: the server in ``ctl/ng_server.py`` moves bytes, this module turns them
into :class:`NgRequest` objects and replies back into bytes (the dictionaries themselves are
ctl/bencode.py's), and ``ctl/reply_cache.py`` remembers replies so that a retransmitted
datagram is answered, never executed twice.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ctl.bencode import MAX_BENCODE_DEPTH, MAX_INTEGER, MIN_INTEGER, bdecode, bencode

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
# Ours (rtpengine has no wording for these): a JSON string that no UTF-8 reply could carry.
REASON_BAD_STRING = "Invalid UTF-8 in string"

# --- limits on what a datagram may carry ---------------------------------------------------------
#
# Everything a peer sends is bounded before a handler sees it: strings that end up as keys of
# the call registry or echoed in replies (ids, tags, labels, profile names), the flags list,
# the SDP, and every number. A value past its limit gets an error reply naming the key and the
# limit (rtpengine's style: "Value too long for key 'call-id' (max 256)"); nothing is truncated
# silently, since a truncated call-id would name another call.

# A cookie is the proxy's sequence number (Kamailio ``serverid_pid_seq``, OpenSIPS
# ``pid_rand_seq``: ~30 bytes). Longer is not a proxy's: dropped, never answered, so that
# nobody can make us reflect their bytes or key the reply cache with them.
MAX_COOKIE_LENGTH = 256
# String keys that name a call or a party, or are echoed back; the lengths are characters.
# Call-IDs and tags are 10-100 characters from every SIP stack we know (RFC 3261 puts no limit,
# but a 1 KiB id is an attack, not a phone); the via-branch is "z9hG4bK" plus a few dozen;
# labels name a party; profile names are INI section names. ``sdp`` has its own limit below.
MAX_FIELD_LENGTHS: Mapping[str, int] = {
    "call-id": 256,
    "from-tag": 256,
    "to-tag": 256,
    "via-branch": 256,
    "label": 256,
    "set-label": 256,
    "profile": 128,
    "command": 64,
}
# The SDP of an offer: an audio-only phone sends ~300 bytes, a WebRTC offer with video and
# simulcast ~10 KB. 32 KiB leaves room for any real offer and keeps the parser's work bounded
# (media/sdp.py bounds lines and m-lines too).
MAX_SDP_LENGTH = 32 * 1024
# Entries in the ``flags`` list: Kamailio and OpenSIPS scripts send a dozen or so.
MAX_FLAGS = 128


class NgFramingError(Exception):
    """No ``cookie<space>`` prefix: rtpengine answers nothing, and neither do we."""


class NgError(Exception):
    """A request that gets ``{"result": "error", "error-reason": reason}``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NgLoadLimit(NgError):
    """The engine takes no new call. Answered as ``load limit`` (with ``reason`` as its
    message) when the proxy says it understands that, else as an error with ``reason``."""

    def __init__(self, reason: str = REASON_SESSION_LIMIT) -> None:
        super().__init__(reason)


def canonical_name(name: str) -> str:
    """rtpengine treats space, ``-`` and ``_`` in key and flag names alike: fold them to ``-``."""
    return name.replace(" ", "-").replace("_", "-")



def _text(value: Any, fold_keys: bool = True, depth: int = 0) -> Any:
    """A decoded JSON message's keys folded (requests) or kept (replies).

    JSON can carry what bencode cannot: lone surrogates (``"\\ud800"``), which no UTF-8 reply
    can encode, and integers of any size. Both are refused here, with the nesting bounded as
    bencode's is, so that whatever a request holds can be encoded again in a reply.
    """
    kind = type(value)
    if kind is str:
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise NgError(REASON_BAD_STRING) from None
        return value
    if kind is int:
        if not MIN_INTEGER <= value <= MAX_INTEGER:
            raise NgError(REASON_BAD_BENCODE)
        return value
    if kind is float and not math.isfinite(value):  # 1e400 reads as inf, which encodes nowhere
        raise NgError(REASON_BAD_BENCODE)
    if depth >= MAX_BENCODE_DEPTH and kind in (dict, list):
        raise NgError(REASON_BAD_BENCODE)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if isinstance(value, Mapping):
        fold = canonical_name if fold_keys else str
        return {
            fold(str(_text(k))): _text(v, fold_keys, depth + 1) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_text(v, fold_keys, depth + 1) for v in value]
    return value


def _refuse_json_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259 s6), though Python's reader takes them."""
    raise ValueError(f"not a JSON number: {name}")


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
            number = value
        elif isinstance(value, str) and len(value) <= 32:  # 19 digits, a sign and blanks
            try:
                number = int(value.strip())
            except ValueError:
                raise NgError(f"Invalid integer for key {key!r}") from None
        else:
            raise NgError(f"Invalid integer for key {key!r}")
        if not MIN_INTEGER <= number <= MAX_INTEGER:
            raise NgError(f"Invalid integer for key {key!r}")
        return number

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
    if not sep or not cookie or len(cookie) > MAX_COOKIE_LENGTH:
        raise NgFramingError("no cookie")
    return cookie, body


def decode_request(body: bytes) -> NgRequest:
    """Decode the dictionary part of a datagram into an :class:`NgRequest`.

    Raises :class:`NgError` with rtpengine's reasons for a body that is not a dictionary or
    has no command; the caller still knows the cookie and can send that error back.
    """
    is_json = body.lstrip().startswith(b"{")
    try:
        if is_json:
            # Strict UTF-8 first: json.loads would take surrogates encoded in the raw bytes.
            params = _text(json.loads(body.decode(), parse_constant=_refuse_json_constant))
        else:
            params = bdecode(body, fold_keys=canonical_name)
    except NgError:
        raise
    except UnicodeDecodeError:
        raise NgError(REASON_BAD_STRING) from None
    except Exception:  # anything json or bdecode raise, RecursionError included
        raise NgError(REASON_BAD_BENCODE) from None
    if type(params) is not dict and not isinstance(params, Mapping):
        raise NgError(REASON_NOT_A_DICTIONARY)
    command = params.get("command")
    if not isinstance(command, str) or not command:
        raise NgError(REASON_NO_COMMAND)
    # One pass over what the request holds (a few keys) rather than over every limit; when a
    # string is past its limit, the limits are checked in their order, so that the error names
    # the same key as ever.
    limits = _LENGTH_LIMITS
    for key, value in params.items():
        if type(value) is str and len(value) > limits.get(key, MAX_SDP_LENGTH):
            _check_lengths(params)
            break
    raw_flags = params.get("flags")
    if not raw_flags:
        flags: frozenset[str] = frozenset()
    else:
        if isinstance(raw_flags, str):
            raw_flags = [raw_flags]
        elif not isinstance(raw_flags, list):
            raw_flags = []
        if len(raw_flags) > MAX_FLAGS:
            raise NgError(f"Too many flags (max {MAX_FLAGS})")
        flags = frozenset(canonical_name(str(f)).lower() for f in raw_flags if isinstance(f, str))
    return NgRequest(
        command=canonical_name(command).lower(), params=params, flags=flags, is_json=is_json
    )


_LENGTH_LIMITS = {**MAX_FIELD_LENGTHS, "sdp": MAX_SDP_LENGTH}


def _check_lengths(params: Mapping[str, Any]) -> None:
    for key, limit in MAX_FIELD_LENGTHS.items():
        value = params.get(key)
        if type(value) is str and len(value) > limit:
            raise NgError(f"Value too long for key '{key}' (max {limit})")
    sdp = params.get("sdp")
    if type(sdp) is str and len(sdp) > MAX_SDP_LENGTH:
        raise NgError(f"Value too long for key 'sdp' (max {MAX_SDP_LENGTH})")


def encode_reply(cookie: bytes, reply: Mapping[str, Any], *, as_json: bool = False) -> bytes:
    """``cookie<space>dictionary``, in the encoding the request came in."""
    if as_json:
        body = json.dumps(reply, separators=(",", ":"), default=str).encode()
    else:
        body = bencode(reply)
    return cookie + b" " + body


def encode_request(cookie: bytes, command: str, params: Mapping[str, Any] | None = None) -> bytes:
    """A request datagram, as a proxy sends it (used by ``rtpai-ctl`` and the tests)."""
    message = {"command": command, **(params or {})}
    return cookie + b" " + bencode(message)


def decode_reply(datagram: bytes) -> tuple[bytes, dict[str, Any]]:
    """The client side: split and decode a reply (bencode or JSON)."""
    cookie, body = split_cookie(datagram)
    if body.lstrip().startswith(b"{"):
        reply = _text(json.loads(body), fold_keys=False)
    else:
        reply = bdecode(body)
    if not isinstance(reply, Mapping):
        raise NgError(REASON_BAD_BENCODE)
    return cookie, reply

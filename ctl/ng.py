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
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

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
# Integers: rtpengine reads them into 64-bit integers (strtoll), and so do we. A bencoded
# integer of more digits than that cannot be one, and is refused by the decoder.
MIN_INTEGER = -(2**63)
MAX_INTEGER = 2**63 - 1
_MAX_INTEGER_DIGITS = 19  # of 2**63 - 1


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


# --- bencode -----------------------------------------------------------------------------------
#
# Our own codec rather than a library's: the offer's reply waits for a decode and an encode,
# and a delete's reply (its statistics) is the largest thing the control plane encodes, so both
# are worth doing in one pass each. A decoded dictionary's keys come out as text, folded for
# requests; its strings as text, UTF-8 or else latin-1 (which keeps every byte).

# Nesting deeper than any ng message (a request is at most three dictionaries deep); it bounds
# the recursion whatever a peer sends.
MAX_BENCODE_DEPTH = 32


class BencodeError(ValueError):
    """Bytes that are not one well-formed bencoded value."""


def _bytes_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _bdecode_string(data: bytes, pos: int) -> tuple[bytes, int]:
    """``<length>:<bytes>`` at ``pos``: the bytes and the position after them."""
    colon = data.index(b":", pos)
    length = data[pos:colon]
    if not length.isdigit() or (length[0] == 0x30 and len(length) > 1):  # no leading zeros
        raise BencodeError("bad string length")
    start = colon + 1
    end = start + int(length)
    if end > len(data):
        raise BencodeError("string runs past the end")
    return data[start:end], end


def _bdecode(data: bytes, pos: int, depth: int, fold: Callable[[str], str] | None):
    kind = data[pos]
    if kind == 0x64:  # d
        if depth >= MAX_BENCODE_DEPTH:
            raise BencodeError("nested too deep")
        pos += 1
        items = []
        while data[pos] != 0x65:  # e
            if not 0x30 <= data[pos] <= 0x39:
                raise BencodeError("dictionary key is not a string")
            key, pos = _bdecode_string(data, pos)
            value, pos = _bdecode(data, pos, depth + 1, fold)
            # Keys must be UTF-8 (rtpengine's are ASCII); a value may be any bytes.
            items.append((key.decode("utf-8"), value))
        result = {fold(key) if fold else key: value for key, value in items}
        if len(result) < len(items):
            # Two keys name the same thing ("delete delay", "delete-delay"): as rtpengine, which
            # reads a dictionary in bencode's (sorted) key order, the one sorting last wins.
            items.sort(key=itemgetter(0))
            result = {fold(key) if fold else key: value for key, value in items}
        return result, pos + 1
    if 0x30 <= kind <= 0x39:
        raw, pos = _bdecode_string(data, pos)
        return _bytes_text(raw), pos
    if kind == 0x69:  # i
        end = data.index(b"e", pos)
        digits = data[pos + 1 : end]
        magnitude = digits[1:] if digits[:1] == b"-" else digits
        if not magnitude.isdigit() or (magnitude[0] == 0x30 and (len(digits) > 1)):
            raise BencodeError("bad integer")  # i03e, i-0e, i-e, ie
        value = int(digits) if len(magnitude) <= _MAX_INTEGER_DIGITS else MAX_INTEGER + 1
        if not MIN_INTEGER <= value <= MAX_INTEGER:
            raise BencodeError("integer out of range")
        return value, end + 1
    if kind == 0x6C:  # l
        if depth >= MAX_BENCODE_DEPTH:
            raise BencodeError("nested too deep")
        pos += 1
        values = []
        while data[pos] != 0x65:
            value, pos = _bdecode(data, pos, depth + 1, fold)
            values.append(value)
        return values, pos + 1
    raise BencodeError(f"unexpected byte {kind:#04x}")


def bdecode(data: bytes, *, fold_keys: bool = False) -> Any:
    """One bencoded value; dictionary keys folded by :func:`canonical_name` if ``fold_keys``.

    Raises :class:`BencodeError` unless ``data`` is exactly one well-formed value.
    """
    try:
        value, end = _bdecode(data, 0, 0, canonical_name if fold_keys else None)
    except (IndexError, ValueError) as exc:  # ran off the end; no ':' or 'e'; not UTF-8
        raise BencodeError(str(exc)) from None
    if end != len(data):
        raise BencodeError("data after the value")
    return value


def _bencode(value: Any, out: list[bytes]) -> None:
    kind = type(value)
    if kind is str:
        raw = value.encode()
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif kind is int:
        out.append(b"i%de" % value)
    elif kind is dict or isinstance(value, Mapping):
        out.append(b"d")
        # bencode wants keys in byte order; for text, UTF-8 byte order is code point order.
        for key, item in sorted(
            [(str(k), v) for k, v in value.items() if v is not None], key=itemgetter(0)
        ):
            raw = key.encode()
            out.append(b"%d:" % len(raw))
            out.append(raw)
            _bencode(item, out)
        out.append(b"e")
    elif kind is list or kind is tuple:
        out.append(b"l")
        for item in value:
            if item is not None:
                _bencode(item, out)
        out.append(b"e")
    elif kind is bool:
        out.append(b"i1e" if value else b"i0e")
    elif kind is float:
        out.append(b"i%de" % round(value))
    elif isinstance(value, bytes | bytearray):
        out.append(b"%d:" % len(value))
        out.append(bytes(value))
    elif isinstance(value, int):  # an int subclass (IntEnum): its number
        out.append(b"i%de" % int(value))
    elif isinstance(value, str):
        _bencode(str(value), out)
    else:
        raise TypeError(f"cannot bencode {kind.__name__}")


def bencode(value: Any) -> bytes:
    """Bencode ``value``. bencode has no floats, booleans or None: floats are rounded, booleans
    are 0/1, and None values are left out of dictionaries and lists."""
    out: list[bytes] = []
    _bencode(value, out)
    return b"".join(out)


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
            params = bdecode(body, fold_keys=True)
    except NgError:
        raise
    except UnicodeDecodeError:
        raise NgError(REASON_BAD_STRING) from None
    except Exception:  # anything json or bdecode raise, RecursionError included
        raise NgError(REASON_BAD_BENCODE) from None
    if not isinstance(params, Mapping):
        raise NgError(REASON_NOT_A_DICTIONARY)
    command = params.get("command")
    if not isinstance(command, str) or not command:
        raise NgError(REASON_NO_COMMAND)
    for key, limit in MAX_FIELD_LENGTHS.items():
        value = params.get(key)
        if type(value) is str and len(value) > limit:
            raise NgError(f"Value too long for key '{key}' (max {limit})")
    sdp = params.get("sdp")
    if type(sdp) is str and len(sdp) > MAX_SDP_LENGTH:
        raise NgError(f"Value too long for key 'sdp' (max {MAX_SDP_LENGTH})")
    raw_flags = params.get("flags") or []
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


# --- retransmissions ---------------------------------------------------------------------------


class _Pending:
    """Marks a request being handled; counts the duplicates that arrived meanwhile."""

    __slots__ = ("duplicates",)

    def __init__(self) -> None:
        self.duplicates = 0


# What one cached reply costs besides its bytes: the dictionary entry, the (time, reply) tuple
# and the time (~170 bytes, measured with tracemalloc), and the key it holds on to, the source
# address and the cookie (~200 bytes with a proxy's ~30-byte cookie; cookies are at most
# MAX_COOKIE_LENGTH, so the worst case adds 20,000 x 226 bytes, ~4.5 MB, beyond the budget).
REPLY_CACHE_ENTRY_OVERHEAD = 400
# The cache's bytes, overhead included. A retransmit comes at most ~6 s after the original
# (both proxy modules: 5 retries, 1 s apart), so the cache must hold 6 s of replies: at ~1.5 KB
# per entry on average (an offer's reply is ~0.4 KB, a delete's, with the call's statistics,
# ~1.8 KB, plus the overhead above), 10 MiB hold ~7000 entries, 7 s of 1000 commands a second,
# i.e. 500 calls set up and torn down every second, far beyond what one rtpai handles (see
# docs/performance.md). Without it the 20,000 entries of ``max_entries`` could take ~44 MB.
REPLY_CACHE_MAX_BYTES = 10 << 20


class ReplyCache:
    """Replies by (source address, cookie), so a retransmit never runs a command twice.

    Both proxy modules resend the same datagram after 1 s, up to 5 times; rtpengine keeps
    replies for 30-60 s. We keep them ``ttl`` seconds (45 by default: past the modules' last
    retry with margin), and at most ``max_entries`` of them taking at most ``max_bytes`` (the
    oldest go first; see REPLY_CACHE_MAX_BYTES), so memory is bounded whatever a peer sends.
    Time is passed in, never read here.
    """

    def __init__(
        self,
        *,
        ttl: float = 45.0,
        max_entries: int = 20_000,
        max_bytes: int = REPLY_CACHE_MAX_BYTES,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0  # what the entries take, REPLY_CACHE_ENTRY_OVERHEAD each included
        # key -> (inserted_at, _Pending | bytes); insertion order is time order.
        self._entries: OrderedDict[tuple[Any, bytes], tuple[float, _Pending | bytes]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _size(state: _Pending | bytes) -> int:
        if isinstance(state, _Pending):
            return REPLY_CACHE_ENTRY_OVERHEAD
        return REPLY_CACHE_ENTRY_OVERHEAD + len(state)

    def _put(self, key: tuple[Any, bytes], state: _Pending | bytes, now: float) -> None:
        self._entries[key] = (now, state)
        self.bytes += self._size(state)

    def _pop(self, key: tuple[Any, bytes]) -> tuple[float, _Pending | bytes] | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= self._size(entry[1])
        return entry

    def _expire(self, now: float, room: int = 0) -> None:
        """Drop expired entries, and the oldest ones until ``room`` more (pending) fit."""
        entries = self._entries
        while entries:
            key, (inserted_at, _) = next(iter(entries.items()))
            if (
                now - inserted_at < self.ttl
                and len(entries) + room <= self.max_entries
                and self.bytes + room * REPLY_CACHE_ENTRY_OVERHEAD <= self.max_bytes
            ):
                break
            self._pop(key)

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
            self._pop(key)
            self._put(key, _Pending(), now)
            return True
        state = entry[1]
        if isinstance(state, _Pending):
            state.duplicates += 1
            return None
        return state

    def complete(self, key: tuple[Any, bytes], reply: bytes, now: float) -> int:
        """Store the reply; returns how many duplicates arrived while it was being made.

        A reply larger than ``max_bytes`` on its own is not kept.
        """
        entry = self._pop(key)
        duplicates = entry[1].duplicates if entry and isinstance(entry[1], _Pending) else 0
        self._put(key, reply, now)
        self._expire(now)
        return duplicates

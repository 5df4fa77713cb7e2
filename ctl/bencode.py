"""bencode (BEP 3), sans-IO: the dictionary format of rtpengine's ng protocol.

The ng layer (ctl/ng.py) frames and validates requests; this module only turns one bencoded
value into Python values and back, with the bounds below whatever a peer sends.

``py_bdecode`` and ``py_bencode`` are the reference; ``bdecode`` and ``bencode`` are their
compiled twins (ctl/_fast_bencode.c: the same values, the same errors with the same messages)
when built, else these (media/native.py decides, once; tests/test_fast_bencode.py holds the
two to each other).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

from media import native

# Integers: rtpengine reads them into 64-bit integers (strtoll), and so do we. A bencoded
# integer of more digits than that cannot be one, and is refused by the decoder.
MIN_INTEGER = -(2**63)
MAX_INTEGER = 2**63 - 1
_MAX_INTEGER_DIGITS = 19  # of 2**63 - 1
# A string length of more digits than that runs past the end of any buffer; said so before
# int() reads it (which would refuse 4300 digits and more with a message of its own).

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
    if len(length) > _MAX_INTEGER_DIGITS:
        raise BencodeError("string runs past the end")
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
        index = data.index
        while (lead := data[pos]) != 0x65:  # e
            if not 0x30 <= lead <= 0x39:
                raise BencodeError("dictionary key is not a string")
            # The key and, when it is one (most ng values are), a string value are read here
            # rather than by a call each: a request's decode is on the offer's path.
            colon = index(b":", pos)
            length = data[pos:colon]
            if not length.isdigit() or (lead == 0x30 and colon - pos > 1):  # no leading zeros
                raise BencodeError("bad string length")
            if colon - pos > _MAX_INTEGER_DIGITS:
                raise BencodeError("string runs past the end")
            pos = colon + 1 + int(length)
            if pos > len(data):
                raise BencodeError("string runs past the end")
            # Keys must be UTF-8 (rtpengine's are ASCII); a value may be any bytes.
            key = data[colon + 1 : pos].decode("utf-8")
            lead = data[pos]
            if 0x30 <= lead <= 0x39:
                colon = index(b":", pos)
                length = data[pos:colon]
                if not length.isdigit() or (lead == 0x30 and colon - pos > 1):
                    raise BencodeError("bad string length")
                if colon - pos > _MAX_INTEGER_DIGITS:
                    raise BencodeError("string runs past the end")
                start = colon + 1
                pos = start + int(length)
                if pos > len(data):
                    raise BencodeError("string runs past the end")
                items.append((key, _bytes_text(data[start:pos])))
            else:
                value, pos = _bdecode(data, pos, depth + 1, fold)
                items.append((key, value))
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


def py_bdecode(data: bytes, *, fold_keys: Callable[[str], str] | None = None) -> Any:
    """One bencoded value; dictionary keys passed through ``fold_keys`` if given (the ng
    requests fold them with :func:`ctl.ng.canonical_name`).

    Raises :class:`BencodeError` unless ``data`` is exactly one well-formed value.
    """
    try:
        value, end = _bdecode(data, 0, 0, fold_keys)
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


def py_bencode(value: Any) -> bytes:
    """Bencode ``value``. bencode has no floats, booleans or None: floats are rounded, booleans
    are 0/1, and None values are left out of dictionaries and lists."""
    out: list[bytes] = []
    _bencode(value, out)
    return b"".join(out)


# The compiled twins when built (media/native.py), bound to this module's error class.
_fast = native.load("ctl._fast")
if _fast is not None:
    _fast.bind(BencodeError, Mapping)
    bdecode = _fast.bdecode
    bencode = _fast.bencode
else:
    bdecode = py_bdecode
    bencode = py_bencode

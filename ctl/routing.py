"""Which worker owns an ng request, and how the host-wide answers are put together; sans-IO.

With ``[ng] workers`` above 1 (ctl/front.py) one front process owns the ng socket and hands
each datagram to the worker process that owns its call. The front reads only what routing
needs, here: the command and the call's identifiers, found by walking the top level of the
bencoded dictionary and skipping every other value by its length (the SDP is never copied or
decoded). The worker decodes the whole request again, as a single-process rtpai does: the
front's reading decides nothing but the route, so a datagram it misreads still gets the
worker's exact error reply.

Ownership is a stable hash of the call-id (CRC-32, the same in every process and every run,
unlike Python's salted ``hash``): a call's offer, re-offers, answer, query, delete and their
retransmits all reach the worker that holds it, with no table to consult or lose.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Answered for the whole host by the front, which asks every worker and merges their answers:
# `ping` by the front alone (it answers as long as it serves the socket); `list` and
# `statistics` from every worker's part.
HOST_WIDE = frozenset({"ping", "list", "statistics"})

# rtpengine folds space, '-' and '_' in key names alike (ctl/ng.py canonical_name); the keys
# routing reads, in every spelling a proxy may use.
_ROUTING_KEYS = {
    b"command": "command",
    b"call-id": "call-id", b"call_id": "call-id", b"call id": "call-id",
    b"from-tag": "from-tag", b"from_tag": "from-tag", b"from tag": "from-tag",
    b"to-tag": "to-tag", b"to_tag": "to-tag", b"to tag": "to-tag",
    b"via-branch": "via-branch", b"via_branch": "via-branch", b"via branch": "via-branch",
}


class Unroutable(ValueError):
    """The body is not a dictionary the front can read; the worker will say why exactly."""


@dataclass(frozen=True, slots=True)
class Route:
    """What the front knows of a request: enough to pick its worker and to remember a call."""

    command: str  # folded to rtpengine's spelling ("offer", "delete", "statistics", ...)
    call_id: bytes | None
    from_tag: str | None = None
    to_tag: str | None = None
    via_branch: str | None = None


def owner(call_id: bytes, workers: int) -> int:
    """The worker (0-based) that owns every request of ``call_id``."""
    return zlib.crc32(call_id) % workers


def _skip(data: bytes, pos: int) -> int:
    """The position after the bencoded value at ``pos`` (iterative: no depth to exhaust)."""
    depth = 0
    while True:
        kind = data[pos]
        if kind in (0x64, 0x6C):  # d, l
            depth += 1
            pos += 1
        elif kind == 0x65:  # e: the end of a list or dictionary
            depth -= 1
            pos += 1
        elif kind == 0x69:  # i<digits>e
            pos = data.index(b"e", pos) + 1
        else:  # <length>:<bytes>
            start, length = _length(data, pos)
            pos = start + length
        if depth <= 0:
            return pos


def _length(data: bytes, pos: int) -> tuple[int, int]:
    """A string's ``<length>:`` at ``pos``: where its bytes start, and how many.

    Digits only: ``int`` would also take a sign, spaces or underscores, and a negative length
    moves ``pos`` backwards — one datagram (``d1:xl-3:ee``) then loops the front for ever,
    and with it every call of the host. So every step here moves forwards."""
    colon = data.index(b":", pos)
    digits = data[pos:colon]
    if not digits.isdigit() or len(digits) > 9:  # bytes.isdigit: ASCII 0-9 only
        raise Unroutable("a string length that is not a decimal number under 10**9")
    return colon + 1, int(digits)


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    start, length = _length(data, pos)
    end = start + length
    if end > len(data):
        raise Unroutable("a string runs past the end")
    return data[start:end], end


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return raw.decode("utf-8", "replace")


def peek(body: bytes) -> Route:
    """The :class:`Route` of a request's dictionary (bencode, or JSON as rtpengine takes it).

    Raises :class:`Unroutable` when there is no dictionary with a command to be read.
    """
    if body.lstrip().startswith(b"{"):
        return _peek_json(body)
    found: dict[str, bytes] = {}
    try:
        if body[:1] != b"d":
            raise Unroutable("not a dictionary")
        pos = 1
        while body[pos] != 0x65:  # e
            key, pos = _string(body, pos)
            name = _ROUTING_KEYS.get(key.lower())
            if name is not None and body[pos] not in b"dli":
                found[name], pos = _string(body, pos)
            else:
                pos = _skip(body, pos)
    except (IndexError, ValueError) as exc:
        raise Unroutable(str(exc)) from None
    command = found.get("command")
    if not command:
        raise Unroutable("no command")
    return Route(
        command=command.decode("latin-1").replace(" ", "-").replace("_", "-").lower(),
        call_id=found.get("call-id"),
        from_tag=_text(found.get("from-tag")),
        to_tag=_text(found.get("to-tag")),
        via_branch=_text(found.get("via-branch")),
    )


def _peek_json(body: bytes) -> Route:
    try:
        params = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise Unroutable(str(exc)) from None
    if not isinstance(params, dict):
        raise Unroutable("not a dictionary")
    folded = {str(k).replace(" ", "-").replace("_", "-").lower(): v for k, v in params.items()}
    command = folded.get("command")
    if not isinstance(command, str) or not command:
        raise Unroutable("no command")

    def text(key: str) -> str | None:
        value = folded.get(key)
        return value if isinstance(value, str) else None

    call_id = text("call-id")
    return Route(
        command=command.replace(" ", "-").replace("_", "-").lower(),
        call_id=call_id.encode("utf-8", "surrogatepass") if call_id is not None else None,
        from_tag=text("from-tag"),
        to_tag=text("to-tag"),
        via_branch=text("via-branch"),
    )


def port_slice(min_port: int, max_port: int, workers: int, index: int) -> tuple[int, int]:
    """Worker ``index``'s part of ``[rtp] min_port..max_port``: disjoint, even-aligned slices
    of whole RTP/RTCP pairs, the last taking the remainder. Each worker allocates from its own
    slice, so no two workers ever try the same port and no port lock is shared."""
    first = min_port + (min_port & 1)
    pairs = (max_port - first + 1) // 2
    share = pairs // workers
    if share < 1:
        raise ValueError(f"[rtp] {min_port}..{max_port} has {pairs} port pairs: fewer than "
                         f"[ng] workers = {workers}")
    low = first + 2 * share * index
    high = max_port if index == workers - 1 else low + 2 * share - 1
    return low, high


# --- merging the workers' answers to the host-wide commands ---------------------------------

# Figures that are not counts: the host's is the extreme of the workers', not their sum.
_MERGED_BY = {"uptime": max, "min": min, "max": max}


def _merge_values(values: list[Any], key: str | None = None) -> Any:
    if not values:
        return None
    first = values[0]
    if isinstance(first, bool):
        return first
    if isinstance(first, Mapping):
        keys: dict[str, None] = {}
        for value in values:
            if isinstance(value, Mapping):
                keys.update(dict.fromkeys(value))
        return {
            k: _merge_values([v[k] for v in values if isinstance(v, Mapping) and k in v], k)
            for k in keys
        }
    if isinstance(first, (int, float)):
        numbers = [v for v in values if isinstance(v, (int, float))]
        return _MERGED_BY.get(key or "", sum)(numbers)
    if isinstance(first, list):
        if all(isinstance(v, list) and len(v) == len(first) for v in values) and all(
            isinstance(item, Mapping) for item in first
        ):  # the same table (interfaces) in every worker: merge row by row
            return [_merge_values([v[i] for v in values], key) for i in range(len(first))]
        return [item for value in values if isinstance(value, list) for item in value]
    return first  # text: the same in every worker (an address, a name)


def merge_statistics(replies: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The host's ``statistics``: counts summed, uptime the oldest, port ranges spanned."""
    merged = _merge_values(list(replies)) or {}
    for interface in merged.get("statistics", {}).get("interfaces", []):
        ports = interface.get("ports", {})
        if ports.get("totals"):
            ports["used_pct"] = round(100 * ports["used"] / ports["totals"], 2)
    return merged


def merge_lists(replies: Iterable[Mapping[str, Any]], limit: int | None) -> dict[str, Any]:
    """The host's ``list``: every worker's call-ids, up to the request's ``limit``."""
    calls = [call for reply in replies for call in reply.get("calls", [])]
    return {"result": "ok", "calls": calls if limit is None else calls[:limit]}

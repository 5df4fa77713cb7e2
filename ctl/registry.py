"""The call registry: which Call an ng command means.

A call-id can hold several calls: rtpengine treats offers with different ``via-branch`` values
as forks of one call, and so do we; and an offer with a new ``from-tag`` under a known call-id
is, for rtpengine, a new monologue of that call: for an AI endpoint, another leg with its own
ports and its own AI session. Each leg is kept under (via-branch, from-tag), so no offer can
push another leg out of the registry (which left it running, unreachable by any delete), and a
``delete`` naming only the call-id ends every leg. Tags name the parties: a ``from-tag`` (or
``to-tag``) in a command matches a call whether it names the caller or our side, since a BYE
can come from either party. A call created without a via-branch matches any branch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Tagged(Protocol):
    call_id: str
    branch: str
    from_tag: str
    to_tag: str | None


def _names_a_party(call: Tagged, tag: str | None) -> bool:
    return tag is None or tag in (call.from_tag, call.to_tag)


C = TypeVar("C", bound=Tagged)


def _key(call: Tagged) -> tuple[str, str]:
    return call.branch, call.from_tag


class CallRegistry(Generic[C]):
    """Calls by call-id, then by (via-branch, from-tag); insertion-ordered (``list`` shows
    oldest first)."""

    def __init__(self) -> None:
        self._calls: dict[str, dict[tuple[str, str], C]] = {}

    def __len__(self) -> int:
        return sum(len(branches) for branches in self._calls.values())

    def __iter__(self) -> Iterator[C]:
        for branches in self._calls.values():
            yield from branches.values()

    def __getitem__(self, call_id: str) -> C:
        """The call of ``call_id`` (its first branch): for tools and tests, which name calls
        by call-id; commands resolve branches and tags with :meth:`select`."""
        branches = self._calls.get(call_id)
        if not branches:
            raise KeyError(call_id)
        return next(iter(branches.values()))

    def call_ids(self) -> list[str]:
        return list(self._calls)

    def add(self, call: C) -> None:
        """Register a new leg. Its (via-branch, from-tag) must be free: :meth:`for_offer`
        returns the leg that holds it, which a repeated offer updates instead."""
        legs = self._calls.setdefault(call.call_id, {})
        if _key(call) in legs:
            raise ValueError(f"call {call.call_id}: a leg with this branch and tag exists")
        legs[_key(call)] = call

    def remove(self, call: C) -> None:
        legs = self._calls.get(call.call_id)
        if legs and legs.get(_key(call)) is call:
            del legs[_key(call)]
            if not legs:
                del self._calls[call.call_id]

    def select(
        self,
        call_id: str,
        *,
        branch: str | None = None,
        from_tag: str | None = None,
        to_tag: str | None = None,
    ) -> list[C]:
        """Every call of ``call_id`` that the branch and tags (when given) point at."""
        found = []
        for call in self._calls.get(call_id, {}).values():
            if branch and call.branch and call.branch != branch:
                continue
            # A call whose To-tag we never learnt (no to-tag in the offer) matches any to-tag.
            to_matches = call.to_tag is None or _names_a_party(call, to_tag)
            if _names_a_party(call, from_tag) and to_matches:
                found.append(call)
        return found

    def for_offer(
        self, call_id: str, *, branch: str | None, from_tag: str, to_tag: str | None
    ) -> C | None:
        """The call a repeated offer updates (a re-INVITE), or None for a new call (or fork).

        In-dialog re-INVITEs carry a new Via branch but our To-tag; a fork carries the same
        from-tag under a new via-branch and no To-tag of ours; a new from-tag is a new leg.
        """
        legs = self._calls.get(call_id, {})
        found = legs.get((branch or "", from_tag))
        if found is not None:
            return found
        for call in legs.values():
            if from_tag not in (call.from_tag, call.to_tag):
                continue
            if branch and call.branch == branch:
                return call
            if to_tag and call.to_tag == to_tag:
                return call
            if not branch:
                return call
        return None

"""The call registry (ctl/registry.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ctl.registry import CallRegistry


def test_registry_knows_a_call_by_identity_not_by_name():
    """The delete path asks whether a call is still registered, with thousands live: O(1)."""
    @dataclass(eq=False)
    class Tagged:
        call_id: str
        branch: str
        from_tag: str = "f"
        to_tag: str | None = None

    calls: CallRegistry[Tagged] = CallRegistry()
    first, fork, stranger = Tagged("c", "b1"), Tagged("c", "b2"), Tagged("c", "b1")
    calls.add(first)
    calls.add(fork)
    assert first in calls and fork in calls and stranger not in calls
    second_leg = Tagged("c", "b1", from_tag="g")  # a new from-tag: another leg (issue 11)
    calls.add(second_leg)
    assert second_leg in calls and object() not in calls
    calls.remove(first)
    assert first not in calls and fork in calls and second_leg in calls

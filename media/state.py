"""Explicit state machines (STYLE.md rule 2), sans-IO: a table of the legal transitions per kind
of machine, and a holder that moves along it and raises on anything else.

Shared by the call (ctl/call.py), the AI session (openai_flavor/session.py) and the WebSocket
(openai_flavor/websocket/client.py). The table is built once per kind of machine, a module
constant; ``to`` is one dict lookup and one set test, and reading ``state`` is an attribute
load, so a machine may sit on a hot path (as h11's ``_state.py`` does).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

S = TypeVar("S", bound=enum.Enum)


class IllegalTransition(RuntimeError):
    """A move the machine's table does not list: a bug, or a peer breaking its protocol."""

    def __init__(self, machine: str, current: enum.Enum, new: enum.Enum) -> None:
        super().__init__(f"{machine}: {current.value} -> {new.value}")
        self.machine = machine
        self.current = current
        self.new = new


class Transitions(Generic[S]):
    """The legal moves of one kind of machine: every state of the enum has a row (a final
    state an empty one), so a state added to the enum but forgotten here fails at import."""

    def __init__(self, name: str, table: Mapping[S, Iterable[S]],
                 error: type[IllegalTransition] = IllegalTransition) -> None:
        states = list(table)
        kind = type(states[0])
        missing = [s for s in kind if s not in table]
        if missing:
            raise ValueError(f"{name}: no row for {', '.join(str(s.value) for s in missing)}")
        self.name = name
        self.allowed: dict[S, frozenset[S]] = {s: frozenset(table[s]) for s in kind}
        self.error = error  # a machine's own subclass, for callers that catch only its errors

    def allows(self, current: S, new: S) -> bool:
        return new in self.allowed[current]


class Machine(Generic[S]):
    """One machine's current state; ``to`` moves it, or raises :class:`IllegalTransition`
    naming both states (and ``name``, e.g. which call)."""

    __slots__ = ("state", "_transitions", "_name")

    def __init__(self, transitions: Transitions[S], initial: S, name: str | None = None) -> None:
        self.state = initial
        self._transitions = transitions
        self._name = name

    def to(self, new: S) -> None:
        transitions = self._transitions
        if new not in transitions.allowed[self.state]:
            raise transitions.error(self._name or transitions.name, self.state, new)
        self.state = new

    def can(self, new: S) -> bool:
        """Whether ``to(new)`` would succeed now."""
        return new in self._transitions.allowed[self.state]

    def __repr__(self) -> str:
        return f"<{self._name or self._transitions.name}: {self.state.value}>"

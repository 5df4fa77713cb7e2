"""The AI flavor registry: a flavor's name -> its configuration rows and its session factory.

A flavor (``openai_flavor/`` today) is a package that registers itself when imported: the
control plane imports it once (ctl/config.py) and from then on reaches it only through
:func:`get`, so ``ctl/`` names no class of any flavor, and a second flavor is a sibling package
that registers under its own name. Per call the control plane needs three things of a flavor:
its settings (from its configuration section, one object per ``[NAME:PROFILE]`` too), what
they refuse or withhold, and a session for a call's bridge (:class:`media.bridge.AiSession`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from media.bridge import AiSession, CallBridge
from media.poller import SocketPoller
from media.settings import Setting


class AiSettings(Protocol):
    """A flavor's settings for one profile, as the control plane uses them."""

    def refusal_reason(self) -> str | None:
        """Why offers must be refused (so the proxy fails over), or None."""

    def startup_notes(self) -> list[str]:
        """What to say once at start-up about settings that cannot be honoured."""

    def withhold(self, cannot: Callable[[str], str | None]) -> tuple[AiSettings, dict[str, str]]:
        """These settings without the actions the proxy ``cannot("hangup" | "transfer")``
        carry out, and the tools withheld for that (tool name -> why)."""


@dataclass(frozen=True)
class Flavor:
    name: str  # also its configuration section, [NAME], and its profiles' [NAME:PROFILE]
    settings: tuple[Setting, ...]  # its rows, declared once with their defaults
    # A section's validated values (and the keys the user set) -> its settings object.
    configure: Callable[[Mapping[str, Any], frozenset[str]], AiSettings]
    # Checks across rows, for the section and for each profile: ``label(key)`` names a row
    # where it is written ("[openai:sales] tools"); raises ValueError with the whole message.
    check: Callable[[Mapping[str, Any], Callable[[str], str]], None]
    # The call's AI session: started in the call's nursery, cancelled with it.
    new_session: Callable[[Any, CallBridge, SocketPoller], AiSession]


_FLAVORS: dict[str, Flavor] = {}


def register(flavor: Flavor) -> Flavor:
    """Make ``flavor`` known by its name (its package does this when imported)."""
    _FLAVORS[flavor.name] = flavor
    return flavor


def get(name: str) -> Flavor:
    """The flavor registered as ``name``; KeyError when no imported package registered it."""
    return _FLAVORS[name]

"""Issue 15: the planes meet the AI only through the flavor interface (media/bridge.py,
media/flavor.py); no module outside the flavor packages names a provider's event. A second
protocol (GPT-Live) proves the seam: both must be reachable without ctl/ or media/ knowing."""

from __future__ import annotations

import pathlib
import re

from openai_flavor import events as realtime_events
from openai_flavor import server_events, session_update
from openai_flavor.live import events as live_events

ROOT = pathlib.Path(__file__).resolve().parent.parent
EVENT_NAME = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")


def provider_event_names() -> set[str]:
    """Every event name either protocol module spells, as constants or in its templates."""
    names: set[str] = set()
    for module in (realtime_events, session_update, server_events, live_events):
        for value in vars(module).values():
            values = value if isinstance(value, (set, frozenset, tuple)) else (value,)
            names |= {v for v in values if isinstance(v, str) and EVENT_NAME.match(v)}
        source = pathlib.Path(module.__file__).read_text()
        names |= set(re.findall(r'"type":\s*"([a-z_]+(?:\.[a-z_]+)+)"', source))
    return names


def test_the_protocol_modules_name_their_events():
    names = provider_event_names()
    assert {"session.update", "response.create", "session.start",
            "session.output_audio.delta", "response.event"} <= names


def test_no_module_outside_the_flavor_packages_names_a_providers_event():
    names = provider_event_names()
    offenders = []
    for plane in ("ctl", "media"):
        for path in sorted((ROOT / plane).rglob("*.py")):
            text = path.read_text()
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in sorted(names)
                          if f'"{name}"' in text or f"'{name}'" in text]
    assert offenders == []

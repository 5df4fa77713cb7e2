"""The ``[openai]`` settings as the Realtime session needs them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit


@dataclass(frozen=True)
class RealtimeSettings:
    url: str
    model: str
    api_key: str | None = field(default=None, repr=False)  # never in a repr, so never in logs
    dialect: str = "ga"
    disable: bool = False
    voice: str = "alloy"
    instructions: str | None = None
    welcome_message: str | None = None
    temperature: float = 0.8
    temperature_set: bool = False
    max_tokens: int | float = math.inf
    turn_detection_type: str = "server_vad"
    turn_detection_silence_ms: int = 200
    turn_detection_threshold: float = 0.5
    turn_detection_prefix_ms: int = 300

    @classmethod
    def from_config(cls, section: Mapping[str, Any], *, temperature_set: bool = False):
        return cls(
            url=section["url"],
            model=section["model"],
            api_key=section["key"],
            dialect=section["dialect"],
            disable=section["disable"],
            voice=section["voice"],
            instructions=section["instructions"],
            welcome_message=section["welcome_message"],
            temperature=section["temperature"],
            temperature_set=temperature_set,
            max_tokens=section["max_tokens"],
            turn_detection_type=section["turn_detection_type"],
            turn_detection_silence_ms=section["turn_detection_silence_ms"],
            turn_detection_threshold=section["turn_detection_threshold"],
            turn_detection_prefix_ms=section["turn_detection_prefix_ms"],
        )

    def session_url(self) -> str:
        """The endpoint with ``?model=`` added (kept if the user's URL already names one)."""
        parts = urlsplit(self.url)
        if "model=" in parts.query:
            return self.url
        query = "&".join(q for q in (parts.query, urlencode({"model": self.model})) if q)
        return urlunsplit(parts._replace(query=query))

    def refusal_reason(self) -> str | None:
        """Why offers must be refused (so the proxy fails over), or None."""
        if self.disable:
            return "AI sessions are disabled ([openai] disable)"
        if not self.api_key:
            return "No OpenAI API key configured ([openai] key / OPENAI_API_KEY)"
        return None

"""The GPT-Live rows of ``[openai]`` and :class:`LiveSettings`, what a GPT-Live session reads.

``[openai] api = live`` (or a profile's) picks GPT-Live. Everything the two APIs share (the
key, instructions, voice, welcome message, tools, the watchdog's bounds, reconnects) is read
from the same ``[openai]`` rows as for Realtime, through the :class:`RealtimeSettings` they
parse to; GPT-Live's own rows are declared here, once. Settings that mean nothing to a model
that owns turn-taking are ignored, and said so once at start-up (:meth:`startup_notes`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from media.settings import Setting, text
from openai_flavor.providers import auth_headers
from openai_flavor.settings import RealtimeSettings

LIVE_URL = "wss://api.openai.com/v1/live/sessions"
LIVE_MODEL = "gpt-live-1"
# The backend the live model delegates reasoning and tool calls to (delegation.responses.model).
# Microsoft Learn's GPT-Live reference uses this model in its session example.
DELEGATE_MODEL = "gpt-5.5"

LIVE_SETTINGS: tuple[Setting, ...] = (
    Setting("openai", "delegate_model", "OPENAI_DELEGATE_MODEL", DELEGATE_MODEL, text,
            help="api = live: the Responses model GPT-Live delegates reasoning and tools to"),
)

# [openai] rows a GPT-Live session does not send, and why (the model owns the turns; the
# session.start object is strict: an unknown field is an error, so nothing is sent "just in
# case"). Logged once at start-up when the user set one of them.
IGNORED = {
    "dialect": "GPT-Live has one event shape",
    "temperature": "GPT-Live has no temperature",
    "max_tokens": "the live model's output is not token-capped by the client",
    "turn_detection_type": "the live model owns turn-taking and barge-in",
    "turn_detection_silence_ms": "the live model owns turn-taking and barge-in",
    "turn_detection_threshold": "the live model owns turn-taking and barge-in",
    "turn_detection_prefix_ms": "the live model owns turn-taking and barge-in",
    "turn_detection_eagerness": "the live model owns turn-taking and barge-in",
    "transcription_model": "GPT-Live transcribes the caller itself",
    "welcome_interruptible": "the caller can always interrupt: the live model decides",
    "response_timeout": "no response is ever asked for: the live model speaks when it decides",
    "speed": "GPT-Live's session has no speed (not in its documented session object)",
    "transcription_language": "GPT-Live transcribes the caller itself",
    "noise_reduction": "not in GPT-Live's documented session object",
    "truncation": "GPT-Live manages its own context (compaction)",
    "prompt_id": "stored prompts are not in GPT-Live's documented session object",
    "prompt_version": "stored prompts are not in GPT-Live's documented session object",
    "prompt_variables": "stored prompts are not in GPT-Live's documented session object",
    "mcp": "MCP tools are not offered to the delegated backend by rtpai",
    "tool_choice": "the delegated backend always gets tool_choice auto",
    "barge_in_min_ms": "the live model owns barge-in: rtpai never interrupts it",
}


@dataclass(frozen=True)
class LiveSettings:
    """A GPT-Live profile: its own fields, the shared ones read from ``base``."""

    base: RealtimeSettings
    url: str = LIVE_URL
    model: str = LIVE_MODEL
    delegate_model: str = DELEGATE_MODEL
    explicit: frozenset[str] = field(default=frozenset())
    # Which protocol the session speaks: the statistics' ``dialect`` (RealtimeSession reads
    # ``shape``; ``dialect`` for readers of the settings).
    dialect: str = "live"
    shape: str = "live"

    @classmethod
    def from_config(cls, values: Mapping[str, Any], base: RealtimeSettings,
                    explicit: frozenset[str]) -> LiveSettings:
        # The Realtime defaults of url and model name the other API: a GPT-Live profile gets
        # GPT-Live's unless the user wrote them (a proxy in front, a pinned model).
        return cls(
            base=base,
            url=values["url"] if "url" in explicit else LIVE_URL,
            model=values["model"] if "model" in explicit else LIVE_MODEL,
            delegate_model=values["delegate_model"],
            explicit=explicit,
        )

    def __getattr__(self, name: str) -> Any:
        # Everything not GPT-Live's own is the shared [openai] value (key, voice, tools, the
        # watchdog's bounds): RealtimeSession reads those by the same names.
        if name.startswith("__") or name == "base":  # copy/pickle probe before __init__
            raise AttributeError(name)
        return getattr(self.base, name)

    def session_url(self) -> str:
        """GPT-Live takes no query parameters: the model goes in ``session.start``."""
        return self.url

    def headers(self) -> list[tuple[str, str]]:
        """The provider's credentials (Bearer, or Azure's ``api-key``); never the Realtime
        beta header: GPT-Live has one event shape."""
        base = self.base
        return auth_headers(base.endpoint, base.auth, base.api_key, "ga")

    def refusal_reason(self) -> str | None:
        return self.base.refusal_reason()

    def startup_notes(self) -> list[str]:
        notes = []
        for key, why in IGNORED.items():
            if key in self.explicit:
                notes.append(f"[openai] {key} is set but api = live ignores it: {why}")
        return notes

    def withhold(
        self, cannot: Callable[[str], str | None]
    ) -> tuple[LiveSettings, dict[str, str]]:
        base, withheld = self.base.withhold(cannot)
        return replace(self, base=base), withheld


def check_live(values: Mapping[str, Any], label: Callable[[str], str]) -> None:
    """Across rows: GPT-Live is OpenAI's (and Azure's); xAI speaks only the Realtime shape."""
    if values["api"] == "live" and values["provider"] == "xai":
        raise ValueError(f"{label('api')}: live is OpenAI's GPT-Live, which provider = xai "
                         "does not offer (use api = realtime)")

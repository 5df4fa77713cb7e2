"""The ``[openai]`` settings as the Realtime session needs them."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

# The GA voices (reference: audio.output.voice); the beta interface knows the same names.
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")

# The tools rtpai itself implements; custom tools may not take these names.
END_CALL_TOOL = "end_call"
TRANSFER_TOOL = "transfer_call"
BUILTIN_TOOLS = frozenset({END_CALL_TOOL, TRANSFER_TOOL})
_SERVER_VAD_KNOBS = (
    "turn_detection_silence_ms", "turn_detection_threshold", "turn_detection_prefix_ms"
)
# OpenAI's rule for function names.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ToolSpec:
    """A custom tool from the configuration, answered by the webhook."""

    name: str
    description: str
    parameters: Mapping[str, Any]


def parse_tools(declared: Any) -> tuple[ToolSpec, ...]:
    """Validate the ``tools`` setting's JSON; raises ValueError saying what is wrong."""
    if not isinstance(declared, list):
        raise ValueError("expected a JSON array of tools")
    tools: list[ToolSpec] = []
    for index, tool in enumerate(declared):
        where = f"tool {index}"
        if not isinstance(tool, dict) or set(tool) - {"name", "description", "parameters"}:
            raise ValueError(f"{where}: expected an object with name, description, parameters")
        name = tool.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise ValueError(f"{where}: name must be 1-64 letters, digits, _ or -")
        if name in BUILTIN_TOOLS or any(t.name == name for t in tools):
            raise ValueError(f"{where}: the name {name!r} is taken")
        description = tool.get("description", "")
        parameters = tool.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(description, str):
            raise ValueError(f"{where}: description must be a string")
        if not isinstance(parameters, dict) or parameters.get("type") != "object":
            raise ValueError(f"{where}: parameters must be a JSON schema of type object")
        tools.append(ToolSpec(name, description, parameters))
    return tuple(tools)


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
    welcome_interruptible: bool = True
    temperature: float = 0.8
    max_tokens: int | float = math.inf
    turn_detection_type: str = "server_vad"
    turn_detection_silence_ms: int = 200
    turn_detection_threshold: float = 0.5
    turn_detection_prefix_ms: int = 300
    turn_detection_eagerness: str = "auto"
    transcription_model: str | None = "gpt-4o-mini-transcribe"
    end_call_tool: bool = True
    dtmf_terminator: str | None = "#"  # ends a keypad sequence at once (openai_flavor/keypad)
    transfer_target: str | None = None
    transfer_allow: tuple[str, ...] = ()
    tools: tuple[ToolSpec, ...] = ()
    tool_webhook: str | None = None
    tool_timeout: float = 5.0
    reconnect_timeout: float = 20.0
    # The AI link's watchdog (docs/reliability.md): a bound on every phase of a connection.
    connect_timeout: float = 5.0  # TCP and TLS
    upgrade_timeout: float = 5.0  # the HTTP 101
    session_timeout: float = 5.0  # session.created, and session.updated after session.update
    response_timeout: float = 10.0  # server silence while a response is expected
    ping_interval: float = 5.0  # keepalive; its pong is due before the next (0: none)
    send_timeout: float = 5.0  # the socket taking no output at all
    send_buffer_bytes: int = 256 * 1024  # output waiting: caller audio dropped past it
    max_message_bytes: int = 1024 * 1024  # a bigger server message closes with 1009
    reconnect_tone: bool = False  # a short cue to the caller when the link is lost
    explicit: frozenset[str] = frozenset()  # the keys the user set (file or environment)

    @classmethod
    def from_config(cls, section: Mapping[str, Any], *, explicit: frozenset[str] = frozenset()):
        transcription = section["transcription_model"]
        return cls(
            url=section["url"],
            model=section["model"],
            api_key=section["key"],
            dialect=section["dialect"],
            disable=section["disable"],
            voice=section["voice"],
            instructions=section["instructions"],
            welcome_message=section["welcome_message"],
            welcome_interruptible=section["welcome_interruptible"],
            temperature=section["temperature"],
            max_tokens=section["max_tokens"],
            turn_detection_type=section["turn_detection_type"],
            turn_detection_silence_ms=section["turn_detection_silence_ms"],
            turn_detection_threshold=section["turn_detection_threshold"],
            turn_detection_prefix_ms=section["turn_detection_prefix_ms"],
            turn_detection_eagerness=section["turn_detection_eagerness"],
            transcription_model=None if transcription.lower() == "none" else transcription,
            end_call_tool=section["end_call_tool"],
            dtmf_terminator=None if section["dtmf_terminator"] == "none"
            else section["dtmf_terminator"],
            transfer_target=section["transfer_target"],
            transfer_allow=section["transfer_allow"],
            tools=section["tools"],
            tool_webhook=section["tool_webhook"],
            tool_timeout=section["tool_timeout"],
            reconnect_timeout=section["reconnect_timeout"],
            connect_timeout=section["connect_timeout"],
            upgrade_timeout=section["upgrade_timeout"],
            session_timeout=section["session_timeout"],
            response_timeout=section["response_timeout"],
            ping_interval=section["ping_interval"],
            send_timeout=section["send_timeout"],
            send_buffer_bytes=section["send_buffer_bytes"],
            max_message_bytes=section["max_message_bytes"],
            reconnect_tone=section["reconnect_tone"],
            explicit=explicit,
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

    @property
    def transfer_enabled(self) -> bool:
        return bool(self.transfer_target or self.transfer_allow)

    @property
    def welcome_guarded(self) -> bool:
        """The welcome message must play to its end before the caller can barge in."""
        return bool(self.welcome_message) and not self.welcome_interruptible

    def transfer_allowed(self, target: str) -> bool:
        """The allow-list: the configured targets, and the default target itself."""
        return target in self.transfer_allow or target == self.transfer_target

    def startup_notes(self) -> list[str]:
        """What to say once at start-up about settings this dialect cannot honour."""
        notes = []
        if self.dialect == "ga" and "temperature" in self.explicit:
            notes.append(
                "[openai] temperature is set but the GA Realtime API has no temperature; "
                "it is not sent (it applies to dialect = beta only)"
            )
        vad_knobs = [k for k in _SERVER_VAD_KNOBS if k in self.explicit]
        if self.turn_detection_type != "server_vad" and vad_knobs:
            notes.append(
                f"[openai] {', '.join(vad_knobs)} apply to turn_detection_type = server_vad "
                f"only; with {self.turn_detection_type} they are not sent"
            )
        return notes

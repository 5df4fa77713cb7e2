"""The :class:`RealtimeSettings` one ``[openai]`` section (or profile) configures a session with,
and the checks across its rows. The rows themselves, with their defaults, are declared once in
openai_flavor/rows.py; the providers' differences in openai_flavor/providers.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from openai_flavor.mcp import McpServer
from openai_flavor.providers import PROVIDERS, Provider, auth_headers, session_url, voice_name
from openai_flavor.rows import (  # noqa: F401  (ToolSpec, parse_tools: the settings' types)
    BUILTIN_TOOLS,
    END_CALL_TOOL,
    OPENAI_SETTINGS,
    TRANSFER_TOOL,
    ToolSpec,
    parse_tools,
)

_SERVER_VAD_KNOBS = (
    "turn_detection_silence_ms", "turn_detection_threshold", "turn_detection_prefix_ms"
)


def _unless_none(value: str) -> str | None:
    """``none`` (any case) turns a feature off: no transcription model, no DTMF terminator."""
    return None if value.lower() == "none" else value


# The defaults as parsed: RealtimeSettings takes them from here, so they are written only once.
_DEFAULT = {row.key: None if row.default is None else row.parse(row.default)
            for row in OPENAI_SETTINGS}


@dataclass(frozen=True)
class RealtimeSettings:
    url: str | None
    model: str
    api_key: str | None = field(default=None, repr=False)  # never in a repr, so never in logs
    # The defaults are the [openai] rows' (OPENAI_SETTINGS), parsed.
    provider: str = _DEFAULT["provider"]
    api_version: str | None = _DEFAULT["api_version"]
    auth: str | None = _DEFAULT["auth"]  # None: the provider's
    dialect: str = _DEFAULT["dialect"]
    disable: bool = _DEFAULT["disable"]
    voice: str | None = _DEFAULT["voice"]  # None: the provider's default
    speed: float = _DEFAULT["speed"]
    instructions: str | None = _DEFAULT["instructions"]
    welcome_message: str | None = _DEFAULT["welcome_message"]
    welcome_interruptible: bool = _DEFAULT["welcome_interruptible"]
    temperature: float = _DEFAULT["temperature"]
    max_tokens: int | float = _DEFAULT["max_tokens"]
    turn_detection_type: str = _DEFAULT["turn_detection_type"]
    turn_detection_silence_ms: int = _DEFAULT["turn_detection_silence_ms"]
    turn_detection_threshold: float = _DEFAULT["turn_detection_threshold"]
    turn_detection_prefix_ms: int = _DEFAULT["turn_detection_prefix_ms"]
    turn_detection_eagerness: str = _DEFAULT["turn_detection_eagerness"]
    transcription_model: str | None = _unless_none(_DEFAULT["transcription_model"])
    transcription_language: str | None = _DEFAULT["transcription_language"]
    noise_reduction: str = _DEFAULT["noise_reduction"]
    reasoning_effort: str | None = _DEFAULT["reasoning_effort"]
    truncation: str | float = _DEFAULT["truncation"]
    prompt_id: str | None = _DEFAULT["prompt_id"]
    prompt_version: str | None = _DEFAULT["prompt_version"]
    prompt_variables: Mapping[str, str] = field(default_factory=dict)
    end_call_tool: bool = _DEFAULT["end_call_tool"]
    # Ends a keypad sequence at once (openai_flavor/keypad).
    dtmf_terminator: str | None = _unless_none(_DEFAULT["dtmf_terminator"])
    transfer_target: str | None = _DEFAULT["transfer_target"]
    transfer_allow: tuple[str, ...] = _DEFAULT["transfer_allow"]
    tools: tuple[ToolSpec, ...] = _DEFAULT["tools"]
    tool_choice: str = _DEFAULT["tool_choice"]
    mcp: tuple[McpServer, ...] = ()  # the [mcp:NAME] servers the "mcp" row names
    tool_webhook: str | None = _DEFAULT["tool_webhook"]
    tool_timeout: float = _DEFAULT["tool_timeout"]
    reconnect_timeout: float = _DEFAULT["reconnect_timeout"]
    # The AI link's watchdog (docs/reliability.md): a bound on every phase of a connection:
    # TCP and TLS; the HTTP 101; session.created, and session.updated after session.update;
    # server silence while a response is expected; keepalive (each pong is due before the
    # next ping; 0: none); the socket taking no output at all; output waiting (caller audio
    # dropped past it); a bigger server message closes with 1009.
    connect_timeout: float = _DEFAULT["connect_timeout"]
    upgrade_timeout: float = _DEFAULT["upgrade_timeout"]
    session_timeout: float = _DEFAULT["session_timeout"]
    response_timeout: float = _DEFAULT["response_timeout"]
    ping_interval: float = _DEFAULT["ping_interval"]
    send_timeout: float = _DEFAULT["send_timeout"]
    send_buffer_bytes: int = _DEFAULT["send_buffer_bytes"]
    max_message_bytes: int = _DEFAULT["max_message_bytes"]
    reconnect_tone: bool = _DEFAULT["reconnect_tone"]  # a short cue when the link is lost
    # Silence and length on rtpai's playout clock (openai_flavor/pacing.py); 0: off.
    idle_reprompt_s: float = _DEFAULT["idle_reprompt_s"]
    idle_reprompts: int = _DEFAULT["idle_reprompts"]
    max_call_s: float = _DEFAULT["max_call_s"]
    barge_in_min_ms: int = _DEFAULT["barge_in_min_ms"]  # 0: the server decides barge-in
    explicit: frozenset[str] = frozenset()  # the keys the user set (file or environment)

    @classmethod
    def from_config(cls, section: Mapping[str, Any], *, explicit: frozenset[str] = frozenset()):
        """The settings of one validated section; its rows have the fields' names but for
        ``key`` (``api_key``) and the ``none`` words of two of them."""
        names = {f.name for f in fields(cls)}
        values = {key: value for key, value in section.items() if key in names}
        values["api_key"] = section["key"]
        values["transcription_model"] = _unless_none(section["transcription_model"])
        values["dtmf_terminator"] = _unless_none(section["dtmf_terminator"])
        return cls(**values, explicit=explicit)

    @property
    def endpoint(self) -> Provider:
        """The provider's row (openai_flavor/providers.py)."""
        return PROVIDERS[self.provider]

    @property
    def shape(self) -> str:
        """How session.update looks: ``ga``, ``beta`` or ``xai``."""
        return "xai" if self.endpoint.shape == "xai" else self.dialect

    def session_url(self) -> str:
        """The endpoint with the model (Azure: the deployment) in its query."""
        endpoint = self.endpoint
        url = self.url or endpoint.default_url
        assert url is not None  # the configuration requires it where there is no default
        # xAI's own examples open the endpoint without a model: name one only when set.
        model = None if endpoint.name == "xai" and "model" not in self.explicit else self.model
        return session_url(endpoint, url, model, self.api_version)

    def headers(self) -> list[tuple[str, str]]:
        return auth_headers(self.endpoint, self.auth, self.api_key, self.dialect)

    @property
    def voice_name(self) -> str | None:
        return voice_name(self.endpoint, self.voice)

    @property
    def reasoning_model(self) -> bool:
        """``reasoning.effort`` exists: gpt-realtime-2.x (Azure: its deployment names the
        model, which rtpai cannot see: sent as configured)."""
        return self.provider == "azure" or self.model.startswith("gpt-realtime-2")

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

    def withhold(
        self, cannot: Callable[[str], str | None]
    ) -> tuple[RealtimeSettings, dict[str, str]]:
        """These settings without the built-in tools the proxy ``cannot`` carry out, and the
        tools withheld (name -> why): a tool that cannot work is not promised to the caller."""
        settings, withheld = self, {}
        why = cannot("hangup")
        if why and settings.end_call_tool:
            withheld[END_CALL_TOOL] = why
            settings = replace(settings, end_call_tool=False)
        why = cannot("transfer")
        if why and settings.transfer_enabled:
            withheld[TRANSFER_TOOL] = why
            settings = replace(settings, transfer_target=None, transfer_allow=())
        return settings, withheld

    def startup_notes(self) -> list[str]:
        """What to say once at start-up about settings this dialect cannot honour."""
        notes = []
        if self.shape != "beta" and "temperature" in self.explicit:
            notes.append(
                "[openai] temperature is set but the GA Realtime API has no temperature; "
                "it is not sent (it applies to dialect = beta only)"
            )
        vad_knobs = [k for k in _SERVER_VAD_KNOBS if k in self.explicit]
        if (self.turn_detection_type != "server_vad" or self.shape == "xai") and vad_knobs:
            why = ("provider = xai" if self.shape == "xai"
                   else f"turn_detection_type = {self.turn_detection_type}")
            notes.append(
                f"[openai] {', '.join(vad_knobs)} apply to turn_detection_type = server_vad "
                f"only (not on xAI); with {why} they are not sent"
            )
        if self.reasoning_effort and not self.reasoning_model:
            notes.append(f"[openai] reasoning_effort applies to gpt-realtime-2.x models only; "
                         f"with {self.model} it is not sent")
        unsent = [key for key in _GA_ONLY if key in self.explicit and not self._sends(key)]
        if unsent:
            notes.append(f"[openai] {', '.join(unsent)}: not part of the {self.shape} "
                         f"session this provider speaks; not sent")
        if self.barge_in_min_ms and (self.shape == "xai" or self.turn_detection_type == "none"):
            notes.append("[openai] barge_in_min_ms needs the server's VAD with both of its "
                         "switches (not xAI, not turn_detection_type = none); the server "
                         "decides barge-in")
        if self.shape == "xai" and self.welcome_guarded:
            notes.append("[openai] welcome_interruptible = false: xAI's server cannot be "
                         "told not to cancel the welcome when the caller speaks; rtpai keeps "
                         "playing what it has")
        return notes

    def _sends(self, key: str) -> bool:
        """Whether this provider's session carries ``key`` (docs/openai.md's table)."""
        if self.shape == "xai":
            return False
        if self.shape == "beta":
            return key in _BETA_TOO
        return True


# The session settings only OpenAI's GA session documents (beta: those in _BETA_TOO too; xAI's
# documented session has none of them).
_GA_ONLY = ("speed", "noise_reduction", "transcription_language", "truncation", "prompt_id",
            "prompt_version", "prompt_variables", "tool_choice", "mcp", "max_tokens",
            "transcription_model")
_BETA_TOO = frozenset({"speed", "noise_reduction", "transcription_language", "tool_choice",
                       "max_tokens", "transcription_model"})


def check_tools(values: Mapping[str, Any], label: Callable[[str], str]) -> None:
    """Checks across rows, which no single parser can make; for ``[openai]`` and for every
    profile (``label`` names the row where it is written)."""
    if values["tools"] and not values["tool_webhook"]:
        raise ValueError(
            f"{label('tool_webhook')}: required when {label('tools')} declares tools "
            "(their calls are forwarded to it)"
        )
    provider = PROVIDERS[values["provider"]]
    if values["url"] is None and provider.default_url is None:
        raise ValueError(f"{label('url')}: required with provider = {provider.name} (your "
                         "resource's endpoint, e.g. wss://NAME.openai.azure.com/openai/v1/realtime)")
    if values["api_version"] and provider.name != "azure":
        raise ValueError(f"{label('api_version')}: only Azure's preview endpoint takes one")
    if provider.shape == "xai" and values["dialect"] == "beta":
        raise ValueError(f"{label('dialect')}: xAI speaks its own session shape, not beta")
    voice = values["voice"]
    if voice is not None and voice not in {v.lower() for v in provider.voices}:
        raise ValueError(f"{label('voice')}: expected one of {', '.join(provider.voices)} "
                         f"(the voices of provider = {provider.name}; got {voice!r})")
    if values["prompt_version"] and not values["prompt_id"]:
        raise ValueError(f"{label('prompt_version')}: needs {label('prompt_id')}")
    if values["prompt_variables"] and not values["prompt_id"]:
        raise ValueError(f"{label('prompt_variables')}: needs {label('prompt_id')}")
    _check_tool_choice(values, label)


def _check_tool_choice(values: Mapping[str, Any], label: Callable[[str], str]) -> None:
    choice = values["tool_choice"]
    if choice in {"auto", "none", "required"}:
        return
    server, colon, tool = choice.partition(":")
    if colon and (values["dialect"] == "beta" or PROVIDERS[values["provider"]].shape == "xai"):
        raise ValueError(f"{label('tool_choice')}: MCP tools exist in the GA session only")
    if colon:
        # Named servers are resolved to McpServer objects before the checks run.
        labels = {getattr(s, "label", s) for s in values["mcp"]}
        if server in labels and tool:
            return
        raise ValueError(f"{label('tool_choice')}: {server!r} is not one of the MCP servers "
                         f"in {label('mcp')}, or no tool is named (MCP_SERVER:TOOL)")
    functions = {tool.name for tool in values["tools"]} | {END_CALL_TOOL}
    if values["transfer_target"] or values["transfer_allow"]:
        functions.add(TRANSFER_TOOL)
    if choice not in functions:
        raise ValueError(f"{label('tool_choice')}: expected auto, none, required, one of the "
                         f"functions ({', '.join(sorted(functions))}) or MCP_SERVER:TOOL")


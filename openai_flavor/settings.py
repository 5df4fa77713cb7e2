"""The ``[openai]`` settings: their configuration rows (declared here, once, with their defaults)
and the :class:`RealtimeSettings` the Realtime session reads them as."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from media.settings import (
    Setting,
    float_range,
    int_range,
    one_of,
    optional_http_url,
    optional_text,
    parse_bool,
    text,
    word_list,
)

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


def max_tokens(text: str) -> int | float:
    """1..4096 or ``inf`` (the Realtime API's own range for a response's output tokens)."""
    value = text.strip().lower()
    if value in {"inf", "infinity", "unlimited"}:
        return math.inf
    return int_range(1, 4096)(value)




def api_key(value: str) -> str | None:
    """An API key: surrounding whitespace is dropped (a key pasted with its newline, an
    ``export`` with a trailing space); anything else but printable ASCII is refused.

    A key goes into an HTTP header verbatim: a newline, tab or non-ASCII character left in it
    makes the request invalid, and the HTTP library's error then quotes the whole header (the
    key with it). So it is refused here, at start-up, with a message that never shows it.
    """
    value = value.strip()
    if not value:
        return None
    if not all("!" <= char <= "~" for char in value):
        raise ValueError(
            "the key contains whitespace, a control character or a non-ASCII character "
            "inside it (keys are printable ASCII; the value is not shown)"
        )
    return value




def url(value: str) -> str:
    value = value.strip()
    if not value.startswith(("ws://", "wss://")):
        raise ValueError("expected a ws:// or wss:// URL")
    return value




def tool_declarations(value: str) -> tuple[dict[str, Any], ...]:
    """A JSON array of tools (``name``, ``description``, ``parameters``), or ``@/path/to.json``."""
    value = value.strip()
    if not value:
        return ()
    if value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as handle:
                value = handle.read()
        except OSError as exc:
            raise ValueError(f"cannot read {value[1:]}: {exc.strerror}") from None
    try:
        return parse_tools(json.loads(value))
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected a JSON array of tools: {exc.msg}") from None


# --- the [openai] rows: every setting once, with its environment name, default and range -------

OPENAI_SETTINGS: tuple[Setting, ...] = (
    Setting("openai", "key", "OPENAI_API_KEY", None, api_key, aliases=("openai_key",),
            secret=True, help="API key (required unless disabled)"),
    Setting("openai", "url", "OPENAI_URL", "wss://api.openai.com/v1/realtime", url,
            help="Realtime endpoint; ?model= is added"),
    Setting("openai", "model", "OPENAI_API_MODEL", "gpt-realtime-2.1", text),
    Setting("openai", "dialect", "OPENAI_API_DIALECT", "ga", one_of("ga", "beta")),
    # Which of OpenAI's speech APIs: Realtime (this module) or GPT-Live (openai_flavor/live/).
    Setting("openai", "api", "OPENAI_API", "realtime", one_of("realtime", "live"),
            help="realtime: the Realtime API; live: GPT-Live (the model owns turn-taking)"),
    Setting("openai", "disable", "OPENAI_DISABLE", "false", parse_bool,
            help="refuse offers (OpenSIPS fails over on it with extra_failover_error)"),
    Setting("openai", "voice", "OPENAI_VOICE", "alloy", one_of(*VOICES)),
    Setting("openai", "instructions", "OPENAI_INSTRUCTIONS", None, optional_text),
    Setting("openai", "welcome_message", "OPENAI_WELCOME_MSG", None, optional_text),
    Setting("openai", "welcome_interruptible", "OPENAI_WELCOME_INTERRUPTIBLE", "true", parse_bool,
            help="false: the caller cannot barge in until the welcome message has played"),
    Setting("openai", "temperature", "OPENAI_TEMPERATURE", "0.8", float_range(0.6, 1.2)),
    Setting("openai", "max_tokens", "OPENAI_MAX_TOKENS", "inf", max_tokens),
    Setting("openai", "turn_detection_type", "OPENAI_TURN_DETECT_TYPE", "server_vad",
            one_of("server_vad", "semantic_vad", "none")),
    Setting("openai", "turn_detection_silence_ms", "OPENAI_TURN_DETECT_SILENCE_MS", "200",
            int_range(0, 10_000)),
    Setting("openai", "turn_detection_threshold", "OPENAI_TURN_DETECT_THRESHOLD", "0.5",
            float_range(0.0, 1.0)),
    Setting("openai", "turn_detection_prefix_ms", "OPENAI_TURN_DETECT_PREFIX_MS", "300",
            int_range(0, 10_000)),
    Setting("openai", "turn_detection_eagerness", "OPENAI_TURN_DETECT_EAGERNESS", "auto",
            one_of("low", "medium", "high", "auto")),
    Setting("openai", "transcription_model", "OPENAI_TRANSCRIPTION_MODEL",
            "gpt-4o-mini-transcribe", text,
            help="model transcribing the caller; 'none' turns caller transcripts off"),
    Setting("openai", "end_call_tool", "OPENAI_END_CALL_TOOL", "true", parse_bool),
    Setting("openai", "dtmf_terminator", "OPENAI_DTMF_TERMINATOR", "#", one_of("#", "*", "none"),
            help="the key that ends a keypad sequence at once (else a 1.5 s pause does)"),
    Setting("openai", "transfer_target", "OPENAI_TRANSFER_TARGET", None, optional_text),
    Setting("openai", "transfer_allow", "OPENAI_TRANSFER_ALLOW", "", word_list),
    Setting("openai", "tools", "OPENAI_TOOLS", "", tool_declarations),
    # Secret: webhook URLs often carry a token; the start-up log shows only <set>/<unset>.
    Setting("openai", "tool_webhook", "OPENAI_TOOL_WEBHOOK", "", optional_http_url, secret=True),
    Setting("openai", "tool_timeout", "OPENAI_TOOL_TIMEOUT", "5", float_range(0.1, 60.0)),
    Setting("openai", "reconnect_timeout", "OPENAI_RECONNECT_TIMEOUT", "20",
            float_range(0.0, 600.0)),
    # The AI link's watchdog: a bound on every phase (docs/reliability.md).
    Setting("openai", "connect_timeout", "OPENAI_CONNECT_TIMEOUT", "5", float_range(0.1, 60.0),
            help="seconds for the TCP connection and the TLS handshake"),
    Setting("openai", "upgrade_timeout", "OPENAI_UPGRADE_TIMEOUT", "5", float_range(0.1, 60.0),
            help="seconds for the server's answer to the WebSocket upgrade"),
    Setting("openai", "session_timeout", "OPENAI_SESSION_TIMEOUT", "5", float_range(0.1, 60.0),
            help="seconds for session.created, and for session.updated after session.update"),
    Setting("openai", "response_timeout", "OPENAI_RESPONSE_TIMEOUT", "10",
            float_range(1.0, 300.0),
            help="seconds the server may stay silent while a response is expected"),
    Setting("openai", "ping_interval", "OPENAI_PING_INTERVAL", "5", float_range(0.0, 300.0),
            help="seconds between keepalive pings; each pong is due before the next ping "
                 "(0 = no keepalive)"),
    Setting("openai", "send_timeout", "OPENAI_SEND_TIMEOUT", "5", float_range(0.1, 60.0),
            help="seconds the socket may take no output at all while output waits"),
    Setting("openai", "send_buffer_bytes", "OPENAI_SEND_BUFFER_BYTES", "262144",
            int_range(16 * 1024, 16 * 1024 * 1024),
            help="output waiting for the socket past which caller audio is dropped; past 4 "
                 "times it the connection is given up"),
    Setting("openai", "max_message_bytes", "OPENAI_MAX_MESSAGE_BYTES", "1048576",
            int_range(64 * 1024, 16 * 1024 * 1024),
            help="largest server message; a bigger one closes the connection (1009)"),
    Setting("openai", "reconnect_tone", "OPENAI_RECONNECT_TONE", "false", parse_bool,
            help="play a short two-beep cue to the caller when the AI link is lost mid-call"),
)

def _unless_none(value: str) -> str | None:
    """``none`` (any case) turns a feature off: no transcription model, no DTMF terminator."""
    return None if value.lower() == "none" else value


# The defaults as parsed: RealtimeSettings takes them from here, so they are written only once.
_DEFAULT = {row.key: None if row.default is None else row.parse(row.default)
            for row in OPENAI_SETTINGS}


@dataclass(frozen=True)
class RealtimeSettings:
    url: str
    model: str
    api_key: str | None = field(default=None, repr=False)  # never in a repr, so never in logs
    # The defaults are the [openai] rows' (OPENAI_SETTINGS), parsed.
    dialect: str = _DEFAULT["dialect"]
    disable: bool = _DEFAULT["disable"]
    voice: str = _DEFAULT["voice"]
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
    end_call_tool: bool = _DEFAULT["end_call_tool"]
    # Ends a keypad sequence at once (openai_flavor/keypad).
    dtmf_terminator: str | None = _unless_none(_DEFAULT["dtmf_terminator"])
    transfer_target: str | None = _DEFAULT["transfer_target"]
    transfer_allow: tuple[str, ...] = _DEFAULT["transfer_allow"]
    tools: tuple[ToolSpec, ...] = _DEFAULT["tools"]
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
            transcription_model=_unless_none(transcription),
            end_call_tool=section["end_call_tool"],
            dtmf_terminator=_unless_none(section["dtmf_terminator"]),
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


def check_tools(values: Mapping[str, Any], label: Callable[[str], str]) -> None:
    """Checks across the tool settings, which no single parser can make; for ``[openai]`` and
    for every profile (``label`` names the row where it is written)."""
    if values["tools"] and not values["tool_webhook"]:
        raise ValueError(
            f"{label('tool_webhook')}: required when {label('tools')} declares tools "
            "(their calls are forwarded to it)"
        )

"""The ``[openai]`` configuration rows, declared here once with their defaults and ranges, and
the value parsers only they use. :class:`~openai_flavor.settings.RealtimeSettings` takes its
defaults from these rows; the checks across rows are in openai_flavor/settings.py.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
from openai_flavor.providers import PROVIDERS

# The tools rtpai itself implements; custom tools may not take these names.
END_CALL_TOOL = "end_call"
TRANSFER_TOOL = "transfer_call"
BUILTIN_TOOLS = frozenset({END_CALL_TOOL, TRANSFER_TOOL})
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


def voice(value: str) -> str:
    """A voice name; which names exist depends on the provider (checked across rows)."""
    value = value.strip()
    if not re.fullmatch(r"[A-Za-z_-]{1,32}", value):
        raise ValueError("expected a voice name, e.g. alloy (OpenAI) or Eve (xAI)")
    return value.lower()


def truncation(value: str) -> str | float:
    """``auto``, ``disabled``, or a retention ratio from 0 to 1 (the share of the conversation
    kept when it must be cut: fewer, larger cuts keep the cached prefix longer)."""
    text_value = value.strip().lower()
    if text_value in {"auto", "disabled"}:
        return text_value
    try:
        return float_range(0.0, 1.0)(text_value)
    except ValueError:
        raise ValueError("expected auto, disabled or a retention ratio from 0.0 to 1.0") from None


def language(value: str) -> str | None:
    """An ISO-639-1 code (``en``, ``de``): the language the caller speaks, for transcription."""
    value = value.strip().lower()
    if not value:
        return None
    if not re.fullmatch(r"[a-z]{2}", value):
        raise ValueError("expected a two-letter ISO-639-1 code, e.g. en")
    return value


def prompt_variables(value: str) -> dict[str, str]:
    """A JSON object of the prompt's variables, each a string (``{"city": "Paris"}``)."""
    value = value.strip()
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected a JSON object of strings: {exc.msg}") from None
    if not isinstance(parsed, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()):
        raise ValueError("expected a JSON object whose values are strings")
    return parsed


def printable_word(value: str) -> str | None:
    """An identifier such as a prompt id or version: printable, no spaces."""
    value = value.strip()
    if not value:
        return None
    if not re.fullmatch(r"[!-~]{1,128}", value):
        raise ValueError("expected up to 128 printable characters without spaces")
    return value


def optional(parse):
    """``parse``, or None for an empty value (a row whose default is 'not set')."""
    def parse_optional(value: str):
        return parse(value) if value.strip() else None
    return parse_optional


# --- the [openai] rows: every setting once, with its environment name, default and range -------

OPENAI_SETTINGS: tuple[Setting, ...] = (
    Setting("openai", "key", "OPENAI_API_KEY", None, api_key, aliases=("openai_key",),
            secret=True, help="API key (required unless disabled)"),
    Setting("openai", "provider", "OPENAI_PROVIDER", "openai", one_of(*PROVIDERS),
            help="the server's kind: openai, azure or xai (docs/openai.md: how they differ)"),
    Setting("openai", "url", "OPENAI_URL", None, url,
            help="Realtime endpoint (default: the provider's; Azure: your resource's); the "
                 "model is added to its query"),
    Setting("openai", "api_version", "OPENAI_API_VERSION", None, optional(printable_word),
            help="Azure only: the preview endpoint's api-version (the GA one has none)"),
    Setting("openai", "auth", "OPENAI_AUTH", None, optional(one_of("bearer", "api-key")),
            help="how the key is sent: bearer or api-key (default: the provider's)"),
    Setting("openai", "model", "OPENAI_API_MODEL", "gpt-realtime-2.1", text,
            help="the model (Azure: the deployment's name)"),
    Setting("openai", "dialect", "OPENAI_API_DIALECT", "ga", one_of("ga", "beta")),
    # Which of OpenAI's speech APIs: Realtime (this module) or GPT-Live (openai_flavor/live/).
    Setting("openai", "api", "OPENAI_API", "realtime", one_of("realtime", "live"),
            help="realtime: the Realtime API; live: GPT-Live (the model owns turn-taking)"),
    Setting("openai", "disable", "OPENAI_DISABLE", "false", parse_bool,
            help="refuse offers (OpenSIPS fails over on it with extra_failover_error)"),
    Setting("openai", "voice", "OPENAI_VOICE", None, optional(voice),
            help="the provider's voice (default: alloy; xAI: the server's)"),
    Setting("openai", "speed", "OPENAI_SPEED", "1.0", float_range(0.25, 1.5),
            help="how fast the model speaks (1.0: as it does)"),
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
    Setting("openai", "transcription_language", "OPENAI_TRANSCRIPTION_LANGUAGE", "", language,
            help="the caller's language as an ISO-639-1 code (helps the transcription)"),
    Setting("openai", "noise_reduction", "OPENAI_NOISE_REDUCTION", "off",
            one_of("near_field", "far_field", "off"),
            help="the server's input noise reduction: near_field (a handset), far_field (a "
                 "speakerphone, a car) or off"),
    Setting("openai", "reasoning_effort", "OPENAI_REASONING_EFFORT", None,
            optional(one_of("minimal", "low", "medium", "high", "xhigh")),
            help="gpt-realtime-2.x only: how much the model reasons before it answers"),
    Setting("openai", "truncation", "OPENAI_TRUNCATION", "auto", truncation,
            help="when the conversation outgrows the context: auto, disabled, or a "
                 "retention ratio (0.0-1.0)"),
    Setting("openai", "prompt_id", "OPENAI_PROMPT_ID", None, optional(printable_word),
            help="a stored prompt to use (its id)"),
    Setting("openai", "prompt_version", "OPENAI_PROMPT_VERSION", None, optional(printable_word)),
    Setting("openai", "prompt_variables", "OPENAI_PROMPT_VARIABLES", "", prompt_variables,
            help='JSON object of the prompt\'s variables, e.g. {"city": "Paris"}'),
    Setting("openai", "end_call_tool", "OPENAI_END_CALL_TOOL", "true", parse_bool),
    Setting("openai", "dtmf_terminator", "OPENAI_DTMF_TERMINATOR", "#", one_of("#", "*", "none"),
            help="the key that ends a keypad sequence at once (else a 1.5 s pause does)"),
    Setting("openai", "transfer_target", "OPENAI_TRANSFER_TARGET", None, optional_text),
    Setting("openai", "transfer_allow", "OPENAI_TRANSFER_ALLOW", "", word_list),
    Setting("openai", "tools", "OPENAI_TOOLS", "", tool_declarations),
    Setting("openai", "tool_choice", "OPENAI_TOOL_CHOICE", "auto", text,
            help="auto, none, required, a function's name, or MCP_SERVER:TOOL"),
    Setting("openai", "mcp", "OPENAI_MCP", "", word_list,
            help="the [mcp:NAME] servers whose tools the model may call"),
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
    # Silence and length, on rtpai's own playout clock (openai_flavor/pacing.py).
    Setting("openai", "idle_reprompt_s", "OPENAI_IDLE_REPROMPT_S", "0", float_range(0.0, 600.0),
            help="seconds of caller silence, after the model's words have played, before it "
                 "is asked to prompt the caller again (0: never)"),
    Setting("openai", "idle_reprompts", "OPENAI_IDLE_REPROMPTS", "1", int_range(0, 10),
            help="re-prompts before a silent caller is hung up on"),
    Setting("openai", "max_call_s", "OPENAI_MAX_CALL_S", "0", float_range(0.0, 86400.0),
            help="a hard cap on the call's length: the model says goodbye, then the call "
                 "ends (0: no cap)"),
    Setting("openai", "barge_in_min_ms", "OPENAI_BARGE_IN_MIN_MS", "0", int_range(0, 3000),
            help="caller speech needed before the model is interrupted; above 0 rtpai, not "
                 "the server, decides barge-in, and noise resumes the answer"),
)


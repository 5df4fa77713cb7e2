"""GPT-Live events, sans-IO: what rtpai sends, and what the server's events mean.

Sources (docs/openai.md says which fact was checked against which page, and what is inferred):
OpenAI's voice-websockets and live-delegation guides, and Microsoft Learn's GPT-Live event
reference and its generated SDK types (``LiveServerEventType``, ``LiveSessionStartEvent``,
``LiveSessionAudioFormatPcmuParam``, ``LiveInstructionsAppendParam``, ``LiveSessionUsage``,
``LiveServerEventLiveSessionClosed``, ``LiveServerEventLiveResponseEvent``).

What rtpai never sends: response creation, cancellation or truncation of the live model's
speech. The model owns the turns; rtpai streams the caller and plays what comes back.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from openai_flavor import events as realtime
from openai_flavor.live.settings import LiveSettings
from openai_flavor.session_update import tool_definitions

# Client events.
SESSION_START = "session.start"
AUDIO_APPEND = "session.input_audio.append"
INSTRUCTIONS_APPEND = "session.instructions.append"
# Inferred (docs/openai.md): the generated types name LiveResponseItemCreateParam and
# LiveResponseCreateParam; these event names and fields follow the Responses API's.
TOOL_OUTPUT = "response.item.create"
TOOL_CONTINUE = "response.create"

# Server events (LiveServerEventType).
SESSION_STARTED = "session.started"
OUTPUT_AUDIO = "session.output_audio.delta"
INPUT_TRANSCRIPT = "session.input_transcript.delta"
OUTPUT_TRANSCRIPT = "session.output_transcript.delta"
USAGE = "session.usage.updated"
CLOSED = "session.closed"
DELEGATED = "response.event"  # a nested Responses API streaming event of a delegation
ERROR = "error"
# Events that only acknowledge or describe: no action (the reader still counts them for the
# flood bound). transport.* are SIP/WebRTC transports' only.
INFORMATIONAL = frozenset({
    "session.updated", "session.instructions.appended", "session.thinking.appended",
    "session.commentary.appended", "session.delegation.created", "decision.event",
    "decision.item.created", "decision.item.deleted", "info", "session.input_audio.muted",
    "session.input_audio.unmuted",
})

# session.closed reasons (LiveServerEventLiveSessionClosed.reason).
CLOSED_EXPIRED = "expired"  # the session duration limit: a new session with a recap
CLOSED_CONTENT = "content"  # a safety filter ended it: retrying would not help

# The G.711 formats at 8 kHz: the caller's codec both ways, never transcoded.
FORMAT = {"PCMU": "audio/pcmu", "PCMA": "audio/pcma"}
G711_RATE = 8000


def audio_format(codec: str) -> dict[str, Any]:
    return {"type": FORMAT[codec], "rate": G711_RATE}


def session_start(settings: LiveSettings, codec: str, *,
                  instructions: str | None) -> dict[str, Any]:
    """The first message: model, instructions, the call's G.711 both ways, the voice, and the
    Responses backend that answers the function tools (end_call, transfer_call, webhooks).
    No turn detection: the live model owns turn-taking."""
    session: dict[str, Any] = {
        "model": settings.model,
        "audio": {
            "input": {"format": audio_format(codec)},
            "output": {"format": audio_format(codec)},
        },
    }
    voice = settings.voice_name
    if voice:
        session["audio"]["output"]["voice"] = voice
    if instructions:
        session["instructions"] = instructions
    tools = tool_definitions(settings.base)
    delegate: dict[str, Any] = {"model": settings.delegate_model}
    if settings.reasoning_effort:
        delegate["reasoning"] = {"effort": settings.reasoning_effort}
    if tools:
        delegate["tools"] = tools
        delegate["tool_choice"] = "auto"
    session["delegation"] = {"type": "responses", "responses": delegate}
    return {"type": SESSION_START, "session": session}


def audio_append(audio: bytes) -> bytes:
    """``session.input_audio.append`` as ready-to-send UTF-8 bytes (per 20 ms frame: by hand,
    as the Realtime flavor's append, to keep the hot path cheap)."""
    return b'{"type":"session.input_audio.append","audio":"' + base64.b64encode(audio) + b'"}'


def instructions_append(content: str) -> dict[str, Any]:
    """Developer context for the live model (a welcome to say, keys pressed, an action that
    failed). ``delegation_id`` is required and null: not tied to a client delegation."""
    return {"type": INSTRUCTIONS_APPEND, "content": content, "delegation_id": None}


def tool_output(delegation_id: str | None, call_id: str, output: str) -> dict[str, Any]:
    """A delegated function call's result, back to the Responses backend (inferred shape)."""
    return {"type": TOOL_OUTPUT, "delegation_id": delegation_id,
            "item": {"type": "function_call_output", "call_id": call_id, "output": output}}


def tool_continue(delegation_id: str | None) -> dict[str, Any]:
    """Let the backend go on with the outputs sent (inferred shape)."""
    return {"type": TOOL_CONTINUE, "delegation_id": delegation_id}


def welcome_text(message: str) -> str:
    return f"Greet the caller now by saying exactly this: {message}"


def decode_audio(event: dict[str, Any]) -> bytes:
    """The audio of ``session.output_audio.delta``; MalformedEvent if not base64 text."""
    return realtime.decode_audio_delta(event)


def transcript_delta(event: dict[str, Any]) -> str:
    return realtime.field_str(event, "delta") or ""


def audio_seconds(event: dict[str, Any]) -> float | None:
    """``usage.seconds`` of session.usage.updated / session.closed: cumulative for the
    session (never summed across events); None when absent or not a number."""
    usage = realtime.field_object(event, "usage")
    seconds = usage.get("seconds")
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds >= 0:
        return float(seconds)
    return None


def delegated_call(event: dict[str, Any]) -> tuple[str | None, str, str, dict | None] | None:
    """``(delegation_id, call_id, name, arguments)`` when a ``response.event`` carries a
    finished function call for the client (``response.output_item.done`` with a
    ``function_call`` item); None for every other nested event."""
    nested = realtime.field_object(event, "event")
    if nested.get("type") != "response.output_item.done":
        return None
    item = realtime.field_object(nested, "item")
    if item.get("type") != "function_call":
        return None
    call_id, name, arguments = realtime.parse_function_call(item)
    return realtime.field_str(event, "delegation_id"), call_id, name, arguments


def delegated_usage(event: dict[str, Any]) -> dict[str, Any] | None:
    """The backend's token usage, from a nested ``response.completed`` (the Responses API's
    usage block: input_tokens, output_tokens, total_tokens)."""
    nested = realtime.field_object(event, "event")
    if nested.get("type") != "response.completed":
        return None
    usage = realtime.field_object(realtime.field_object(nested, "response"), "usage")
    return usage or None


def error_of(event: dict[str, Any]) -> tuple[str, str]:
    """``(code, message)`` of an ``error`` event: the nested ``error`` object as the Realtime
    API has it, else the event's own fields (the shape is not documented in what we read)."""
    error = event.get("error")
    source = error if isinstance(error, dict) else event
    code = source.get("code") or source.get("type") or "error"
    return str(code), str(source.get("message") or "")


def encode(event: dict[str, Any]) -> str:
    return json.dumps(event)

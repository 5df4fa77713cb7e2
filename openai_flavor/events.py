"""Realtime API events, sans-IO: what we send for a session, and what the server's events mean.

Server events come in the ``ga`` names (OpenAI since 2025-08-28, Azure's GA endpoint, xAI) or
the ``beta`` ones (kept for compatible servers that still speak them); both are recognised.
The session's configuration is built in openai_flavor/session_update.py. Field names follow
openai-python's generated realtime types.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from openai_flavor.settings import RealtimeSettings

AUDIO_DELTA = frozenset({"response.output_audio.delta", "response.audio.delta"})
AUDIO_DONE = frozenset({"response.output_audio.done", "response.audio.done"})
ASSISTANT_TRANSCRIPT_DONE = frozenset(
    {"response.output_audio_transcript.done", "response.audio_transcript.done"}
)
CALLER_TRANSCRIPT_DONE = "conversation.item.input_audio_transcription.completed"
CALLER_TRANSCRIPT_FAILED = "conversation.item.input_audio_transcription.failed"
SPEECH_STARTED = "input_audio_buffer.speech_started"
SPEECH_STOPPED = "input_audio_buffer.speech_stopped"
COMMITTED = "input_audio_buffer.committed"
# Server events that say nothing about a response coming (nor do input_audio_buffer.*).
NO_PROGRESS = frozenset({"error", "rate_limits.updated"})
# The server's VAD ended the caller's turn; with create_response a response follows.
TURN_ENDED = frozenset({SPEECH_STOPPED, COMMITTED})
RESPONSE_CREATED = "response.created"
# The session exists: OpenAI's and Azure's servers say session.created; xAI's docs name
# conversation.created as the first event.
SESSION_CREATED = frozenset({"session.created", "conversation.created"})
RESPONSE_DONE = "response.done"
FUNCTION_CALL_DONE = "response.function_call_arguments.done"

# Errors after which retrying cannot help: the call ends at once instead of reconnecting.
FATAL_ERROR_CODES = frozenset(
    {"invalid_api_key", "beta_api_shape_disabled", "insufficient_quota", "model_not_found"}
)
# Close codes: 3000 invalid key and 4000 wrong API shape are configuration mistakes (fatal);
# any other (1001 is the 60-minute session cap) is a lost connection: a new one is opened.
FATAL_CLOSE_CODES = frozenset({3000, 4000})
# HTTP answers to the upgrade that no retry will change: bad key, forbidden, no such endpoint.
FATAL_HTTP_STATUS = frozenset({400, 401, 403, 404})


# Recaps are bounded: instructions are re-read on every response, and a long call's whole
# transcript would cost tokens on each of them. The most recent turns matter most.
RECAP_MAX_CHARS = 2000


def recap_instructions(instructions: str | None, transcript: list[dict[str, str]]) -> str | None:
    """The instructions for a session that replaces a lost one, with the conversation so far."""
    if not transcript:
        return instructions
    lines: list[str] = []
    size = 0
    for entry in reversed(transcript):
        line = f"{entry['role']}: {entry['text']}"
        if size + len(line) > RECAP_MAX_CHARS:
            break
        lines.append(line)
        size += len(line) + 1
    recap = (
        "This phone call is already in progress; the connection to you was renewed. "
        "Continue the conversation naturally without greeting the caller again. "
        "The conversation so far (most recent last):\n" + "\n".join(reversed(lines))
    )
    return f"{instructions}\n\n{recap}" if instructions else recap


def response_create(instructions: str | None = None) -> dict[str, Any]:
    if instructions is None:
        return {"type": "response.create"}
    return {"type": "response.create", "response": {"instructions": instructions}}


def function_call_output(call_id: str, output: str) -> dict[str, Any]:
    """The result of a tool call, as the conversation item the model reads."""
    return {"type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": output}}


def caller_text(text: str) -> dict[str, Any]:
    """Something the caller did, told to the model as a user message (e.g. DTMF digits)."""
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": text}]}}


def system_text(text: str) -> dict[str, Any]:
    """Something the model must know that neither it nor the caller said (an action failed)."""
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": "system",
                     "content": [{"type": "input_text", "text": text}]}}


def action_failed_text(action: str, why: str) -> str:
    return (f"The {action} you asked for did not go through ({why}). The caller is still on "
            "the line: tell them so, and offer what else you can do.")


def dtmf_text(digits: str) -> str:
    return f"[The caller pressed these keys on the phone keypad: {digits}]"


def parse_function_call(event: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
    """``(call_id, name, arguments)`` of a finished function call; arguments None if invalid.
    Raises :class:`MalformedEvent` for a call id or name that is not a string."""
    call_id = field_str(event, "call_id") or ""
    name = field_str(event, "name") or ""
    raw = event.get("arguments") or "{}"
    try:
        arguments = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        arguments = None
    return call_id, name, arguments


def instructed_response(settings: RealtimeSettings, text: str) -> list[dict[str, Any]]:
    """Ask the model for a response that follows ``text`` (the welcome, a re-prompt, the
    goodbye at the call's cap). xAI documents no instructions on response.create: there the
    text goes first as a system message."""
    if settings.shape == "xai":
        return [system_text(text), response_create()]
    return [response_create(text)]


def welcome_text(settings: RealtimeSettings) -> str:
    return f"Greet the caller by saying exactly this: {settings.welcome_message}"


def audio_append(audio: bytes) -> bytes:
    """``input_audio_buffer.append`` as a ready-to-send text frame's UTF-8 bytes."""
    # Built by hand, as bytes: json.dumps over a dict, or a str to encode, costs more per
    # 20 ms frame, and base64 needs no escaping.
    return b'{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(audio) + b'"}'


def response_cancel() -> dict[str, Any]:
    return {"type": "response.cancel"}


def delete_item(item_id: str) -> dict[str, Any]:
    """Remove an item from the conversation (a noise turn the model must not answer)."""
    return {"type": "conversation.item.delete", "item_id": item_id}


def field_int(event: dict[str, Any], key: str) -> int | None:
    """An optional integer field; MalformedEvent for another type."""
    value = event.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedEvent(f"{key} is not an integer")
    return value


def truncate_item(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    """Tell the server the caller heard only ``audio_end_ms`` of an assistant item."""
    return {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": audio_end_ms,
    }


class MalformedEvent(ValueError):
    """A server event whose fields have the wrong types: counted and dropped, never raised
    into the poller (the server is broken or hostile; the call goes on)."""


def field_str(event: dict[str, Any], key: str) -> str | None:
    """``event[key]`` if it is a string, None if absent or null; else MalformedEvent."""
    value = event.get(key)
    if value is None or isinstance(value, str):
        return value
    raise MalformedEvent(f"{key} is not a string")


def field_object(event: dict[str, Any], key: str) -> dict[str, Any]:
    """``event[key]`` if it is an object, {} if absent or null; else MalformedEvent."""
    value = event.get(key)
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise MalformedEvent(f"{key} is not an object")


def decode_event(message: str | bytes) -> dict[str, Any]:
    """A server event; raises ValueError for anything that is not a JSON object with a type."""
    event = json.loads(message)
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ValueError("not a Realtime event")
    return event


def decode_audio_delta(event: dict[str, Any]) -> bytes:
    """The audio of a delta event; MalformedEvent if ``delta`` is not base64 text."""
    delta = event.get("delta", "")
    if not isinstance(delta, str):
        raise MalformedEvent("delta is not a string")
    try:
        return base64.b64decode(delta)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise MalformedEvent("delta is not base64") from None


USAGE_FIELDS = ("input_tokens", "output_tokens", "total_tokens")
USAGE_DETAIL_FIELDS = {
    "input_token_details": ("text_tokens", "audio_tokens", "cached_tokens"),
    "output_token_details": ("text_tokens", "audio_tokens"),
}


def add_usage(total: dict[str, Any], usage: dict[str, Any] | None) -> None:
    """Sum a ``response.done`` usage block into ``total`` (same shape, numbers only)."""
    if not isinstance(usage, dict):
        return  # absent, or type-confused: usage is statistics, not worth a failure
    for name in USAGE_FIELDS:
        total[name] = total.get(name, 0) + _count(usage.get(name))
    for detail, names in USAGE_DETAIL_FIELDS.items():
        source = usage.get(detail)
        if not isinstance(source, dict):
            source = {}
        target = total.setdefault(detail, {})
        for name in names:
            target[name] = target.get(name, 0) + _count(source.get(name))


def _count(value: Any) -> int:
    """A token count as the server should send it (a non-negative integer), else 0."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0

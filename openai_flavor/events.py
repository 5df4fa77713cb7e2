"""Realtime API events, sans-IO: what we send for a session, and what the server's events mean.

Two dialects: ``ga`` (the interface since 2025-08-28, the only one OpenAI serves since the beta
was switched off in May 2026) and ``beta`` (kept for compatible servers that still speak it).
Field names follow openai-python's generated realtime types.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from openai_flavor.settings import RealtimeSettings

# The G.711 format names of each dialect.
GA_FORMAT = {"PCMU": {"type": "audio/pcmu"}, "PCMA": {"type": "audio/pcma"}}
BETA_FORMAT = {"PCMU": "g711_ulaw", "PCMA": "g711_alaw"}

# Caller transcripts come from a separate transcription model; the realtime model itself only
# hears audio.
TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"

AUDIO_DELTA = frozenset({"response.output_audio.delta", "response.audio.delta"})
AUDIO_DONE = frozenset({"response.output_audio.done", "response.audio.done"})
ASSISTANT_TRANSCRIPT_DONE = frozenset(
    {"response.output_audio_transcript.done", "response.audio_transcript.done"}
)
CALLER_TRANSCRIPT_DONE = "conversation.item.input_audio_transcription.completed"


def _turn_detection(settings: RealtimeSettings) -> dict[str, Any] | None:
    kind = settings.turn_detection_type
    if kind == "none":
        return None
    if kind == "semantic_vad":
        # semantic_vad rejects threshold/prefix/silence: it decides turns from meaning.
        return {"type": "semantic_vad", "eagerness": "auto", "create_response": True,
                "interrupt_response": True}
    return {
        "type": "server_vad",
        "threshold": settings.turn_detection_threshold,
        "prefix_padding_ms": settings.turn_detection_prefix_ms,
        "silence_duration_ms": settings.turn_detection_silence_ms,
        "create_response": True,
        "interrupt_response": True,
    }


def session_update(settings: RealtimeSettings, codec: str) -> dict[str, Any]:
    """The ``session.update`` that configures a call's session for G.711 ``codec``."""
    max_tokens: int | str = "inf" if math.isinf(settings.max_tokens) else int(settings.max_tokens)
    if settings.dialect == "beta":
        session: dict[str, Any] = {
            "modalities": ["audio", "text"],
            "voice": settings.voice,
            "input_audio_format": BETA_FORMAT[codec],
            "input_audio_transcription": {"model": TRANSCRIPTION_MODEL},
            "output_audio_format": BETA_FORMAT[codec],
            "turn_detection": _turn_detection(settings),
            "temperature": settings.temperature,
            "max_response_output_tokens": max_tokens,
        }
        if settings.instructions:
            session["instructions"] = settings.instructions
        return {"type": "session.update", "session": session}

    # GA. There is no temperature any more: the server rejects it as an unknown parameter.
    session = {
        "type": "realtime",
        "output_modalities": ["audio"],
        "max_output_tokens": max_tokens,
        "audio": {
            "input": {
                "format": GA_FORMAT[codec],
                "transcription": {"model": TRANSCRIPTION_MODEL},
                "turn_detection": _turn_detection(settings),
            },
            "output": {"format": GA_FORMAT[codec], "voice": settings.voice},
        },
    }
    if settings.instructions:
        session["instructions"] = settings.instructions
    return {"type": "session.update", "session": session}


def welcome_response(settings: RealtimeSettings) -> dict[str, Any]:
    """Ask the model to open the call with the configured welcome message."""
    instructions = f"Greet the caller by saying exactly this: {settings.welcome_message}"
    return {"type": "response.create", "response": {"instructions": instructions}}


def audio_append(audio: bytes) -> str:
    """``input_audio_buffer.append`` as a ready-to-send text frame."""
    # Built by hand: json.dumps over a dict costs more per 20 ms frame, and base64 needs no
    # escaping.
    return '{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(audio).decode(
        "ascii"
    ) + '"}'


def truncate_item(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    return {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": audio_end_ms,
    }


def decode_event(message: str | bytes) -> dict[str, Any]:
    """A server event; raises ValueError for anything that is not a JSON object with a type."""
    event = json.loads(message)
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ValueError("not a Realtime event")
    return event


def decode_audio_delta(event: dict[str, Any]) -> bytes:
    return base64.b64decode(event.get("delta", ""))


USAGE_FIELDS = ("input_tokens", "output_tokens", "total_tokens")
USAGE_DETAIL_FIELDS = {
    "input_token_details": ("text_tokens", "audio_tokens", "cached_tokens"),
    "output_token_details": ("text_tokens", "audio_tokens"),
}


def add_usage(total: dict[str, Any], usage: dict[str, Any] | None) -> None:
    """Sum a ``response.done`` usage block into ``total`` (same shape, numbers only)."""
    if not usage:
        return
    for name in USAGE_FIELDS:
        total[name] = total.get(name, 0) + int(usage.get(name) or 0)
    for detail, names in USAGE_DETAIL_FIELDS.items():
        source = usage.get(detail) or {}
        target = total.setdefault(detail, {})
        for name in names:
            target[name] = target.get(name, 0) + int(source.get(name) or 0)

"""A strict fake of the OpenAI Realtime API WebSocket server.

It speaks the GA interface by default (``beta=True`` switches to the retired beta shape that some
OpenAI-compatible servers still speak; ``provider="azure"`` or ``"xai"`` to those providers'
endpoints, credentials and session shapes, openai_flavor/providers.py) and follows
/work/shared/reference/openai-realtime.md:

* the handshake checks ``Authorization: Bearer <key>`` and the ``OpenAI-Beta`` header, answering
  a bad one with an ``error`` event and a close code (3000 bad key, 4000 wrong API shape);
* ``session.update`` is validated against the session schema: an unknown key at any depth is an
  ``unknown_parameter`` error naming its path (``session.temperature``), and the connection stays up;
* caller audio is decoded into :attr:`FakeSession.audio_in`; a deterministic stand-in for server VAD
  "hears speech" once ``respond_after_ms`` of audio has arrived since the last turn or response;
* a response streams ``reply_audio`` in ``chunk_ms`` deltas paced at ``speed`` x real time,
  and can be cancelled (``response.cancel`` or barge-in) and truncated.

It runs in-process (``url = await nursery.start(server.serve)``) or standalone for ``make demo``::

    python -m tests.fakes.realtime --port 0      # first stdout line: url=ws://127.0.0.1:PORT/v1/realtime

Error codes come from the reference where it names them; where it does not (bad base64, unknown
item ids, ``missing_beta_header``, ``cannot_update_voice``) the code is this fake's own choice and
a client must not depend on its exact text.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import copy
import itertools
import json
import logging
import math
import ssl
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)

logger = logging.getLogger(__name__)

REALTIME_PATH = "/v1/realtime"
# Azure OpenAI: the GA endpoint (the model query names a deployment) and the preview one
# (api-version and deployment in the query; it speaks the beta shape here).
AZURE_PATH = "/openai/v1/realtime"
AZURE_PREVIEW_PATH = "/openai/realtime"
AZURE_PREVIEW_API_VERSION = "2025-04-01-preview"
GA_DEFAULT_MODEL = "gpt-realtime"
BETA_DEFAULT_MODEL = "gpt-4o-realtime-preview"

# Close codes the reference documents.
CLOSE_INVALID_API_KEY = 3000
CLOSE_API_SHAPE = 4000
CLOSE_MAXIMUM_DURATION = 1001

VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
# xAI's Voice Agent voices as its docs spell them.
XAI_VOICES = ("Ara", "Eve", "Leo", "Rex", "Sal")
# The reasoning models (reference, 2026-12 update): gpt-realtime-2.x take reasoning.effort.
REASONING_MODEL_PREFIX = "gpt-realtime-2"


# --------------------------------------------------------------------------------------------
# ITU-T G.711 (mu-law and A-law), written out so the fake needs neither audioop (deprecated in
# 3.11, gone in 3.13) nor rtpai's own codec: a bug there must not cancel out in the tests.
# The algorithms are the classic Sun Microsystems g711.c reference ones.

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635
_ALAW_SEGMENT_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def ulaw_from_linear(sample: int) -> int:
    """G.711 mu-law code of one signed 16-bit linear sample."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sign else sample, _ULAW_CLIP) + _ULAW_BIAS
    exponent = max(magnitude.bit_length() - 8, 0)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | exponent << 4 | mantissa) & 0xFF


def linear_from_ulaw(code: int) -> int:
    """Signed 16-bit linear value of one G.711 mu-law code."""
    code = ~code & 0xFF
    magnitude = (((code & 0x0F) << 3) + _ULAW_BIAS) << ((code & 0x70) >> 4)
    return _ULAW_BIAS - magnitude if code & 0x80 else magnitude - _ULAW_BIAS


def alaw_from_linear(sample: int) -> int:
    """G.711 A-law code of one signed 16-bit linear sample (even bits inverted, 0x55)."""
    value = sample >> 3  # A-law works on 13-bit samples
    if value >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        value = -value - 1
    segment = next((i for i, end in enumerate(_ALAW_SEGMENT_ENDS) if value <= end), None)
    if segment is None:  # beyond the last segment: clip
        return 0x7F ^ mask
    shift = 1 if segment < 2 else segment
    return (segment << 4 | (value >> shift) & 0x0F) ^ mask


def linear_from_alaw(code: int) -> int:
    """Signed 16-bit linear value of one G.711 A-law code."""
    code ^= 0x55
    magnitude = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    if segment == 0:
        magnitude += 8
    else:
        magnitude = (magnitude + 0x108) << (segment - 1)
    return magnitude if code & 0x80 else -magnitude


# Audio formats by kind: (sample rate, bytes per sample). The GA "audio/pcm" and beta "pcm16"
# formats are 24 kHz 16-bit little-endian mono; G.711 is 8 kHz, one byte per sample.
AUDIO_FORMATS: dict[str, tuple[int, int]] = {"pcmu": (8000, 1), "pcma": (8000, 1), "pcm": (24000, 2)}


def bytes_per_ms(kind: str) -> int:
    """Bytes of one millisecond of audio in format ``kind`` ('pcmu', 'pcma' or 'pcm')."""
    rate, width = AUDIO_FORMATS[kind]
    return rate // 1000 * width


def tone(kind: str, ms: int, hz: float = 400.0, amplitude: int = 8000) -> bytes:
    """``ms`` of a sine tone encoded in audio format ``kind``: the fake's recognisable reply."""
    rate, _ = AUDIO_FORMATS[kind]
    samples = [
        round(amplitude * math.sin(2 * math.pi * hz * n / rate)) for n in range(rate * ms // 1000)
    ]
    if kind == "pcmu":
        return bytes(ulaw_from_linear(s) for s in samples)
    if kind == "pcma":
        return bytes(alaw_from_linear(s) for s in samples)
    return struct.pack(f"<{len(samples)}h", *samples)


# --------------------------------------------------------------------------------------------
# Schema checks. A check is ``check(value, param)`` and raises _Invalid with the OpenAI-style
# error for the first problem it finds; ``param`` is the dotted path the error names.


class _Invalid(Exception):
    """A client event the real server would answer with an ``error`` event."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


Check = Callable[[Any, str], None]


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _wrong_type(param: str, expected: str, value: Any) -> _Invalid:
    return _Invalid(
        "invalid_type",
        f"Invalid type for '{param}': expected {expected}, but got {_describe(value)} instead.",
        param,
    )


def _join(param: str, key: str) -> str:
    return f"{param}.{key}" if param else key


def _string(value: Any, param: str) -> None:
    if not isinstance(value, str):
        raise _wrong_type(param, "a string", value)


def _boolean(value: Any, param: str) -> None:
    if not isinstance(value, bool):
        raise _wrong_type(param, "a boolean", value)


def _anything(value: Any, param: str) -> None:
    """For free-form payloads (tool parameter schemas, metadata, MCP tools)."""


def _range(kind: str, value: float, param: str, lo: float | None, hi: float | None) -> None:
    if lo is not None and value < lo:
        raise _Invalid(
            f"{kind}_below_min_value",
            f"Invalid '{param}': {kind} below minimum value. "
            f"Expected a value >= {lo}, but got {value} instead.",
            param,
        )
    if hi is not None and value > hi:
        raise _Invalid(
            f"{kind}_above_max_value",
            f"Invalid '{param}': {kind} above maximum value. "
            f"Expected a value <= {hi}, but got {value} instead.",
            param,
        )


def _integer(lo: int | None = None, hi: int | None = None) -> Check:
    def check(value: Any, param: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(param, "an integer", value)
        _range("integer", value, param, lo, hi)

    return check


def _number(lo: float | None = None, hi: float | None = None) -> Check:
    def check(value: Any, param: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong_type(param, "a decimal", value)
        _range("decimal", value, param, lo, hi)

    return check


def _enum(*allowed: Any) -> Check:
    def check(value: Any, param: str) -> None:
        if isinstance(value, dict | list) or value not in allowed:
            supported = ", ".join(repr(a) for a in allowed)
            raise _Invalid(
                "invalid_value",
                f"Invalid value: {value!r}. Supported values are: {supported}.",
                param,
            )

    return check


def _one_of_lists(*allowed: list) -> Check:
    """An array equal to one of ``allowed`` (modalities are a fixed set of combinations)."""

    def check(value: Any, param: str) -> None:
        if not isinstance(value, list):
            raise _wrong_type(param, "an array", value)
        if value not in allowed:
            supported = ", ".join(repr(a) for a in allowed)
            raise _Invalid(
                "invalid_value",
                f"Invalid value: {value!r}. Supported values are: {supported}.",
                param,
            )

    return check


def _nullable(inner: Check) -> Check:
    def check(value: Any, param: str) -> None:
        if value is not None:
            inner(value, param)

    return check


def _either(*checks: Check) -> Check:
    """The first check that passes wins; otherwise the first check's error is reported."""

    def check(value: Any, param: str) -> None:
        first: _Invalid | None = None
        for inner in checks:
            try:
                inner(value, param)
            except _Invalid as exc:
                first = first or exc
            else:
                return
        assert first is not None
        raise first

    return check


def _array(item: Check) -> Check:
    def check(value: Any, param: str) -> None:
        if not isinstance(value, list):
            raise _wrong_type(param, "an array", value)
        for index, element in enumerate(value):
            item(element, f"{param}[{index}]")

    return check


def _object(fields: dict[str, Check], required: Iterable[str] = ()) -> Check:
    """A JSON object with exactly these optional fields, of which ``required`` must be present."""
    required = tuple(required)

    def check(value: Any, param: str) -> None:
        if not isinstance(value, dict):
            raise _wrong_type(param, "an object", value)
        # Unknown keys first: that is the mistake a bridge most often makes (beta names on GA).
        for key in value:
            if key not in fields:
                path = _join(param, key)
                raise _Invalid("unknown_parameter", f"Unknown parameter: '{path}'.", path)
        for key in required:
            if key not in value:
                path = _join(param, key)
                raise _Invalid(
                    "missing_required_parameter", f"Missing required parameter: '{path}'.", path
                )
        for key, element in value.items():
            fields[key](element, _join(param, key))

    return check


def _string_map(value: Any, param: str) -> None:
    """An object of any keys whose values are strings (MCP headers, prompt variables)."""
    if not isinstance(value, dict):
        raise _wrong_type(param, "an object", value)
    for key, element in value.items():
        _string(element, _join(param, key))


def _tagged(variants: dict[str, dict[str, Check]], tag: str = "type") -> Check:
    """A union of objects told apart by ``tag``; each variant lists its fields besides the tag."""
    tag_check = _enum(*variants)

    def check(value: Any, param: str) -> None:
        if not isinstance(value, dict):
            raise _wrong_type(param, "an object", value)
        if tag not in value:
            path = _join(param, tag)
            raise _Invalid(
                "missing_required_parameter", f"Missing required parameter: '{path}'.", path
            )
        tag_check(value[tag], _join(param, tag))
        _object({tag: _anything, **variants[value[tag]]})(value, param)

    return check


# Pieces both dialects share.
_MAX_TOKENS = _either(_integer(1, 4096), _enum("inf"))
_TRANSCRIPTION = _object({"model": _string, "language": _string, "prompt": _string})
_NOISE_REDUCTION = _nullable(_object({"type": _enum("near_field", "far_field")}, ["type"]))
_VAD_COMMON = {"create_response": _boolean, "interrupt_response": _boolean}
# Only the threshold range is documented (0.0 to 1.0); the millisecond fields just have to be
# non-negative integers here rather than inventing bounds.
_TURN_DETECTION = _nullable(
    _tagged(
        {
            "server_vad": {
                "threshold": _number(0.0, 1.0),
                "prefix_padding_ms": _integer(0),
                "silence_duration_ms": _integer(0),
                "idle_timeout_ms": _nullable(_integer(0)),
                **_VAD_COMMON,
            },
            # semantic_vad has no threshold/prefix/silence: sending them is an unknown parameter.
            "semantic_vad": {"eagerness": _enum("low", "medium", "high", "auto"), **_VAD_COMMON},
        }
    )
)
_FUNCTION_TOOL = {"name": _string, "description": _string, "parameters": _anything}
_TRACING = _nullable(
    _either(
        _enum("auto"),
        _object({"workflow_name": _string, "group_id": _string, "metadata": _anything}),
    )
)
_METADATA = _nullable(_anything)


# --------------------------------------------------------------------------------------------
# The two dialects: schemas, defaults, event names and where each setting lives.


def _dig(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _merge(base: dict, update: dict, replace: frozenset[str]) -> dict:
    """Deep-merge ``update`` into a copy of ``base``; keys in ``replace`` are replaced whole.

    Unions (format, turn_detection, ...) are replaced rather than merged: switching server_vad to
    semantic_vad must not keep a stale ``threshold``.
    """
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if key not in replace and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, replace)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _vad_with_defaults(turn_detection: Any) -> Any:
    if not isinstance(turn_detection, dict):
        return turn_detection
    if turn_detection["type"] == "server_vad":
        defaults = {
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 200,
            "idle_timeout_ms": None,
        }
    else:
        defaults = {"eagerness": "auto"}
    return {**defaults, "create_response": True, "interrupt_response": True, **turn_detection}


class _Dialect:
    """Where the GA and beta interfaces differ; the connection logic is shared."""

    name: str
    session_check: Check
    response_check: Check
    item_check: Check
    renames: dict[str, str]  # GA server event name -> this dialect's name
    replace_keys: frozenset[str]  # session keys that session.update replaces whole

    def default_session(self, session_id: str, model: str) -> dict:
        raise NotImplementedError

    def normalise(self, session: dict) -> dict:
        raise NotImplementedError

    def input_kind(self, session: dict) -> str:
        raise NotImplementedError

    def output_kind(self, session: dict) -> str:
        raise NotImplementedError

    def voice(self, config: dict) -> str | None:
        raise NotImplementedError

    def turn_detection(self, session: dict) -> dict | None:
        raise NotImplementedError

    def transcription(self, session: dict) -> dict | None:
        raise NotImplementedError

    def text_only(self, config: dict) -> bool | None:
        """True/False if ``config`` (session or response) sets the modalities, else None."""
        raise NotImplementedError

    def response_fields(self, session: dict) -> dict:
        raise NotImplementedError


_GA_FORMAT = _tagged({"audio/pcm": {"rate": _enum(24000)}, "audio/pcmu": {}, "audio/pcma": {}})
# GA: one of ["audio"] or ["text"], not both (reference).
_GA_MODALITIES = _one_of_lists(["audio"], ["text"])
# The MCP tool as openai-python's realtime types have it (RealtimeToolsConfigUnion's Mcp).
_MCP_FILTER = _object({"tool_names": _array(_string), "read_only": _boolean})
_MCP_TOOL = {
    "server_label": _string,
    "server_url": _string,
    "connector_id": _string,
    "authorization": _string,
    "headers": _nullable(_string_map),
    "allowed_tools": _nullable(_either(_array(_string), _MCP_FILTER)),
    "require_approval": _nullable(_either(
        _enum("always", "never"), _object({"always": _MCP_FILTER, "never": _MCP_FILTER}))),
    "server_description": _string,
}


def _mcp_tool_complete(tool: dict, param: str) -> None:
    """What the types cannot say: a label, and a server URL or a connector, not both."""
    if "server_label" not in tool:
        path = _join(param, "server_label")
        raise _Invalid("missing_required_parameter", f"Missing required parameter: '{path}'.",
                       path)
    if ("server_url" in tool) == ("connector_id" in tool):
        raise _Invalid("invalid_value", "An MCP tool needs exactly one of server_url and "
                       "connector_id.", param)


def _ga_tool(value: Any, param: str) -> None:
    _tagged({"function": _FUNCTION_TOOL, "mcp": _MCP_TOOL})(value, param)
    if value["type"] == "mcp":
        _mcp_tool_complete(value, param)


_GA_TOOL = _ga_tool
_GA_TOOL_CHOICE = _either(
    _enum("none", "auto", "required"),
    _tagged({"function": {"name": _string}, "mcp": {"server_label": _string, "name": _string}}),
)
_GA_AUDIO_OUTPUT = {"format": _GA_FORMAT, "voice": _enum(*VOICES), "speed": _number(0.25, 1.5)}
_GA_SESSION = _object(
    {
        "type": _enum("realtime"),
        "model": _string,
        "instructions": _string,
        "output_modalities": _GA_MODALITIES,
        "max_output_tokens": _MAX_TOKENS,
        "audio": _object(
            {
                "input": _object(
                    {
                        "format": _GA_FORMAT,
                        "transcription": _nullable(_TRANSCRIPTION),
                        "noise_reduction": _NOISE_REDUCTION,
                        "turn_detection": _TURN_DETECTION,
                    }
                ),
                "output": _object(_GA_AUDIO_OUTPUT),
            }
        ),
        "tools": _array(_GA_TOOL),
        "tool_choice": _GA_TOOL_CHOICE,
        "tracing": _TRACING,
        "truncation": _either(
            _enum("auto", "disabled"),
            _object(
                {
                    "type": _enum("retention_ratio"),
                    "retention_ratio": _number(0.0, 1.0),
                    "token_limits": _object({"post_instructions": _integer(0)}),
                },
                ["type", "retention_ratio"],
            ),
        ),
        "prompt": _nullable(
            _object({"id": _string, "version": _string, "variables": _string_map}, ["id"])
        ),
        # gpt-realtime-2.x only (checked against the session's model on update).
        "reasoning": _object(
            {"effort": _enum("minimal", "low", "medium", "high", "xhigh")}, ["effort"]),
        "include": _nullable(_array(_enum("item.input_audio_transcription.logprobs"))),
    },
    # GA requires the session type on every update; this fake only does "realtime" sessions.
    required=["type"],
)
_GA_RESPONSE = _object(
    {
        "instructions": _string,
        "output_modalities": _GA_MODALITIES,
        "max_output_tokens": _MAX_TOKENS,
        "audio": _object({"output": _object({"format": _GA_FORMAT, "voice": _enum(*VOICES)})}),
        "conversation": _string,
        "metadata": _METADATA,
        "input": _array(_anything),
        "tools": _array(_GA_TOOL),
        "tool_choice": _GA_TOOL_CHOICE,
        "prompt": _anything,
    }
)
_ITEM_COMMON = {"id": _string, "object": _enum("realtime.item"), "status": _string}


def _item_check(content_types: Iterable[str]) -> Check:
    content = _array(
        _tagged(
            {
                kind: {"text": _string, "audio": _string, "transcript": _nullable(_string)}
                for kind in content_types
            }
        )
    )
    return _tagged(
        {
            "message": {
                **_ITEM_COMMON,
                "role": _enum("user", "assistant", "system"),
                "content": content,
            },
            "function_call": {
                **_ITEM_COMMON,
                "call_id": _string,
                "name": _string,
                "arguments": _string,
            },
            "function_call_output": {**_ITEM_COMMON, "call_id": _string, "output": _string},
        }
    )


_GA_FORMAT_KINDS = {"audio/pcm": "pcm", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}


class _GA(_Dialect):
    name = "ga"
    renames: dict[str, str] = {}
    # staticmethod: plain functions stored on a class would otherwise bind to `self`.
    session_check = staticmethod(_GA_SESSION)
    response_check = staticmethod(_GA_RESPONSE)
    item_check = staticmethod(
        _item_check(["input_text", "input_audio", "output_text", "output_audio"])
    )
    replace_keys = frozenset(
        {"format", "turn_detection", "noise_reduction", "transcription", "tracing", "truncation",
         "prompt", "tool_choice"}
    )

    def default_session(self, session_id: str, model: str) -> dict:
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "model": model,
            "expires_at": int(time.time()) + 3600,
            "output_modalities": ["audio"],
            "instructions": "",
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": None,
            "truncation": "auto",
            "prompt": None,
            "include": None,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": None,
                    "noise_reduction": None,
                    "turn_detection": _vad_with_defaults({"type": "server_vad"}),
                },
                "output": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "voice": "alloy",
                    "speed": 1.0,
                },
            },
        }

    def normalise(self, session: dict) -> dict:
        audio_in = session["audio"]["input"]
        audio_in["turn_detection"] = _vad_with_defaults(audio_in["turn_detection"])
        for direction in ("input", "output"):
            fmt = session["audio"][direction]["format"]
            if fmt["type"] == "audio/pcm":
                fmt.setdefault("rate", 24000)
        return session

    def input_kind(self, session: dict) -> str:
        return _GA_FORMAT_KINDS[session["audio"]["input"]["format"]["type"]]

    def output_kind(self, session: dict) -> str:
        return _GA_FORMAT_KINDS[session["audio"]["output"]["format"]["type"]]

    def voice(self, config: dict) -> str | None:
        return _dig(config, "audio", "output", "voice")

    def turn_detection(self, session: dict) -> dict | None:
        return session["audio"]["input"]["turn_detection"]

    def transcription(self, session: dict) -> dict | None:
        return session["audio"]["input"]["transcription"]

    def text_only(self, config: dict) -> bool | None:
        modalities = config.get("output_modalities")
        return None if modalities is None else modalities == ["text"]

    def response_fields(self, session: dict) -> dict:
        return {
            "conversation_id": "conv_fake",
            "output_modalities": session["output_modalities"],
            "max_output_tokens": session["max_output_tokens"],
            "audio": {"output": copy.deepcopy(session["audio"]["output"])},
            "metadata": None,
        }


_BETA_FORMAT = _enum("pcm16", "g711_ulaw", "g711_alaw")
_BETA_FORMAT_KINDS = {"pcm16": "pcm", "g711_ulaw": "pcmu", "g711_alaw": "pcma"}
# Beta: text alone, or text and audio (in either order); audio alone was not accepted.
_BETA_MODALITIES = _one_of_lists(["text"], ["text", "audio"], ["audio", "text"])
_BETA_TOOL_CHOICE = _either(_enum("none", "auto", "required"), _tagged({"function": {"name": _string}}))
_BETA_SESSION = _object(
    {
        "model": _string,
        "instructions": _string,
        "modalities": _BETA_MODALITIES,
        "voice": _enum(*VOICES),
        "input_audio_format": _BETA_FORMAT,
        "output_audio_format": _BETA_FORMAT,
        "input_audio_transcription": _nullable(_TRANSCRIPTION),
        "input_audio_noise_reduction": _NOISE_REDUCTION,
        "turn_detection": _TURN_DETECTION,
        "tools": _array(_tagged({"function": _FUNCTION_TOOL})),
        "tool_choice": _BETA_TOOL_CHOICE,
        "temperature": _number(0.6, 1.2),
        "max_response_output_tokens": _MAX_TOKENS,
        "speed": _number(0.25, 1.5),
        "tracing": _TRACING,
    }
)
_BETA_RESPONSE = _object(
    {
        "instructions": _string,
        "modalities": _BETA_MODALITIES,
        "voice": _enum(*VOICES),
        "output_audio_format": _BETA_FORMAT,
        "tools": _array(_tagged({"function": _FUNCTION_TOOL})),
        "tool_choice": _BETA_TOOL_CHOICE,
        "temperature": _number(0.6, 1.2),
        "max_response_output_tokens": _MAX_TOKENS,
        "conversation": _string,
        "metadata": _METADATA,
        "input": _array(_anything),
    }
)


class _Beta(_Dialect):
    name = "beta"
    session_check = staticmethod(_BETA_SESSION)
    response_check = staticmethod(_BETA_RESPONSE)
    item_check = staticmethod(
        _item_check(["input_text", "input_audio", "item_reference", "text", "audio"])
    )
    # The GA server event names (what this module emits internally) as the beta API spelled them.
    renames = {
        "response.output_audio.delta": "response.audio.delta",
        "response.output_audio.done": "response.audio.done",
        "response.output_audio_transcript.delta": "response.audio_transcript.delta",
        "response.output_audio_transcript.done": "response.audio_transcript.done",
        "response.output_text.delta": "response.text.delta",
        "response.output_text.done": "response.text.done",
    }
    replace_keys = frozenset(
        {"turn_detection", "input_audio_transcription", "input_audio_noise_reduction", "tracing",
         "tool_choice"}
    )

    def default_session(self, session_id: str, model: str) -> dict:
        return {
            "object": "realtime.session",
            "id": session_id,
            "model": model,
            "expires_at": int(time.time()) + 1800,
            "modalities": ["text", "audio"],
            "instructions": "",
            "voice": "alloy",
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_transcription": None,
            "input_audio_noise_reduction": None,
            "turn_detection": _vad_with_defaults({"type": "server_vad"}),
            "tools": [],
            "tool_choice": "auto",
            "temperature": 0.8,
            "max_response_output_tokens": "inf",
            "speed": 1.0,
            "tracing": None,
        }

    def normalise(self, session: dict) -> dict:
        session["turn_detection"] = _vad_with_defaults(session["turn_detection"])
        return session

    def input_kind(self, session: dict) -> str:
        return _BETA_FORMAT_KINDS[session["input_audio_format"]]

    def output_kind(self, session: dict) -> str:
        return _BETA_FORMAT_KINDS[session["output_audio_format"]]

    def voice(self, config: dict) -> str | None:
        return config.get("voice")

    def turn_detection(self, session: dict) -> dict | None:
        return session["turn_detection"]

    def transcription(self, session: dict) -> dict | None:
        return session["input_audio_transcription"]

    def text_only(self, config: dict) -> bool | None:
        modalities = config.get("modalities")
        return None if modalities is None else modalities == ["text"]

    def response_fields(self, session: dict) -> dict:
        return {
            "modalities": session["modalities"],
            "voice": session["voice"],
            "output_audio_format": session["output_audio_format"],
            "temperature": session["temperature"],
            "max_output_tokens": session["max_response_output_tokens"],
            "metadata": None,
        }


def _xai_format(value: Any, param: str) -> None:
    _object({"type": _enum("audio/pcm", "audio/pcmu", "audio/pcma"),
             "rate": _integer(8000, 48000)}, ["type"])(value, param)
    if value["type"] != "audio/pcm" and value.get("rate", 8000) != 8000:
        raise _Invalid("invalid_value", "G.711 formats are 8000 Hz only.", _join(param, "rate"))


# xAI's Voice Agent session, as its docs list it: nothing else is accepted.
_XAI_SESSION = _object(
    {
        "instructions": _string,
        "voice": _enum(*XAI_VOICES),
        "turn_detection": _nullable(_object({"type": _enum("server_vad")}, ["type"])),
        "audio": _object({"input": _object({"format": _xai_format}),
                          "output": _object({"format": _xai_format})}),
        "tools": _array(_tagged({"function": _FUNCTION_TOOL})),
    }
)
_XAI_FORMAT_KINDS = {"audio/pcm": "pcm", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}


class _XAI(_GA):
    """xAI's Voice Agent API: OpenAI's GA event names, its own session shape; its first event
    is conversation.created; no truncate, cancel or delete among its client events."""

    name = "xai"
    session_check = staticmethod(_XAI_SESSION)
    response_check = staticmethod(_object({"modalities": _one_of_lists(
        ["text"], ["audio"], ["text", "audio"], ["audio", "text"])}))
    replace_keys = frozenset({"format", "turn_detection"})
    client_events = ("session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                     "input_audio_buffer.clear", "conversation.item.create", "response.create")

    def default_session(self, session_id: str, model: str) -> dict:
        return {
            "id": session_id,
            "object": "realtime.session",
            "model": model,
            "instructions": "",
            "voice": "Ara",
            "turn_detection": {"type": "server_vad"},
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}},
                      "output": {"format": {"type": "audio/pcm", "rate": 24000}}},
            "tools": [],
        }

    def normalise(self, session: dict) -> dict:
        return session

    def input_kind(self, session: dict) -> str:
        return _XAI_FORMAT_KINDS[session["audio"]["input"]["format"]["type"]]

    def output_kind(self, session: dict) -> str:
        return _XAI_FORMAT_KINDS[session["audio"]["output"]["format"]["type"]]

    def voice(self, config: dict) -> str | None:
        return config.get("voice")

    def turn_detection(self, session: dict) -> dict | None:
        # The server cancels its answer when the caller speaks, and answers the turn.
        return _vad_with_defaults(session["turn_detection"])

    def transcription(self, session: dict) -> dict | None:
        return {"model": "xai"}  # the caller is always transcribed

    def text_only(self, config: dict) -> bool | None:
        modalities = config.get("modalities")
        return None if modalities is None else "audio" not in modalities

    def response_fields(self, session: dict) -> dict:
        return {"output_modalities": ["audio"], "metadata": None}


def _client_schemas(dialect: _Dialect) -> dict[str, Check]:
    """Every client event type this fake accepts, with its full top-level schema."""
    common = {"type": _string, "event_id": _string}
    schemas = {
        "session.update": _object({**common, "session": dialect.session_check}, ["session"]),
        "input_audio_buffer.append": _object({**common, "audio": _string}, ["audio"]),
        "input_audio_buffer.commit": _object(common),
        "input_audio_buffer.clear": _object(common),
        "conversation.item.create": _object(
            {**common, "previous_item_id": _nullable(_string), "item": dialect.item_check},
            ["item"],
        ),
        "conversation.item.delete": _object({**common, "item_id": _string}, ["item_id"]),
        "conversation.item.truncate": _object(
            {
                **common,
                "item_id": _string,
                "content_index": _integer(0),
                "audio_end_ms": _integer(0),
            },
            ["item_id", "content_index", "audio_end_ms"],
        ),
        "response.create": _object({**common, "response": dialect.response_check}),
        "response.cancel": _object({**common, "response_id": _string}),
    }
    accepted = getattr(dialect, "client_events", None)
    if accepted is not None:
        schemas = {kind: schema for kind, schema in schemas.items() if kind in accepted}
    return schemas


# --------------------------------------------------------------------------------------------
# What tests look at.


@dataclass
class FakeSession:
    """One accepted WebSocket connection, as the fake saw it. For assertions in tests."""

    path: str
    model: str | None
    headers: dict[str, str]
    session: dict = field(default_factory=dict)
    """The merged session config after every accepted ``session.update``."""
    client_events: list[dict] = field(default_factory=list)
    """Every client event in order; ``input_audio_buffer.append`` as ``{'type', 'bytes': n}``."""
    server_events: list[dict] = field(default_factory=list)
    """Every server event sent, in order; audio deltas as ``{'type', 'item_id', 'bytes': n}``."""
    audio_in: bytearray = field(default_factory=bytearray)
    """Caller audio decoded from ``input_audio_buffer.append``."""
    function_calls: dict[str, str] = field(default_factory=dict)
    """``call_id -> name`` of every function call the fake's model made."""
    truncations: list[dict] = field(default_factory=list)
    """``{'item_id', 'content_index', 'audio_end_ms', 'accepted': bool}`` per truncate request."""
    closed: trio.Event = field(default_factory=trio.Event)
    close_code: int | None = None
    _changed: trio.Event = field(default_factory=trio.Event, repr=False)

    def events_of(self, event_type: str) -> list[dict]:
        """The client events of one type, in order."""
        return [e for e in self.client_events if e.get("type") == event_type]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[FakeSession], bool]) -> None:
        """Block until ``predicate(self)`` holds; re-checked after each client or server event."""
        while not predicate(self):
            if self.closed.is_set():
                raise RuntimeError("the connection closed before the condition held")
            await self._changed.wait()

    async def wait_for_client_event(self, event_type: str, count: int = 1) -> dict:
        """Block until ``count`` client events of ``event_type`` were handled; return the last."""
        await self.wait_until(lambda s: len(s.events_of(event_type)) >= count)
        return self.events_of(event_type)[count - 1]


@dataclass
class _Item:
    role: str
    audio_ms: int = 0


@dataclass(frozen=True)
class ScriptedResponse:
    """What one response produces, instead of the default reply: used by tests of tools.

    ``audio`` None: no audio item (a function call alone). ``function_call``: ``(name,
    arguments)``; the fake refuses to call a function the session did not declare.
    """

    audio: bytes | None = b""
    transcript: str | None = None
    function_call: tuple[str, dict] | None = None


@dataclass
class _Response:
    id: str
    item_id: str | None
    text_only: bool
    script: ScriptedResponse | None = None
    cancel_requested: trio.Event = field(default_factory=trio.Event)
    cancel_reason: str = "client_cancelled"
    finished: trio.Event = field(default_factory=trio.Event)


class FakeWebSocketServer:
    """What the fake AI servers share (this one and tests/fakes/live.py): serving the
    endpoint at ``path``, the sessions accepted, deterministic ids. A subclass's ``_handle``
    checks the upgrade and hands it to :meth:`_accept` with its connection class."""

    path: str  # the endpoint's path (a property where it depends on the provider)

    def __init__(self) -> None:
        self.sessions: list[FakeSession] = []
        self.connections: list[Any] = []
        """The open connections (tests send server events on one to script a server's end)."""
        self.crashes: list[BaseException] = []
        """Bugs in the fake itself; tests should assert this stays empty."""
        self.url: str | None = None
        self._session_added = trio.Event()
        # Deterministic ids (item_000001, ...) keep test failures reproducible.
        self._ids = itertools.count(1)

    def new_id(self, prefix: str) -> str:
        """A fresh id such as ``item_000007``, unique within this server."""
        return f"{prefix}_{next(self._ids):06d}"

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; ``task_status.started(url)`` once listening.

        With ``ssl_context`` it serves ``wss://`` (the test certificate in tests/fakes/tls is
        for ``localhost``, which the URL then names). Connection handlers run in this task's
        nursery, so cancelling ``serve`` ends them all.
        """
        async with trio.open_nursery() as nursery:
            ws_server = await nursery.start(
                partial(serve_websocket, self._handle, host, port, ssl_context,
                        handler_nursery=nursery)
            )
            scheme, name = ("wss", "localhost") if ssl_context else ("ws", host)
            self.url = f"{scheme}://{name}:{ws_server.port}{self.path}"
            task_status.started(self.url)

    async def wait_for_session(self, n: int = 1) -> FakeSession:
        """Block until the ``n``-th connection (1-based) was accepted; return its FakeSession."""
        while len(self.sessions) < n:
            await self._session_added.wait()
        return self.sessions[n - 1]

    async def _handle(self, request: WebSocketRequest) -> None:
        raise NotImplementedError

    async def _accept(self, request: WebSocketRequest, model: str | None,
                      connection_class: Callable[[Any, WebSocketConnection, FakeSession], Any]
                      ) -> None:
        """Accept the upgrade, record its :class:`FakeSession`, run its connection to the
        end (``connection_class(server, ws, fake).run()``)."""
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in request.headers
        }
        ws = await request.accept()
        fake = FakeSession(path=request.path, model=model, headers=headers)
        self.sessions.append(fake)
        self._session_added.set()
        self._session_added = trio.Event()
        connection = connection_class(self, ws, fake)
        self.connections.append(connection)
        logger.info("%s: connection %d on %s", type(self).__name__, len(self.sessions),
                    request.path)
        try:
            await connection.run()
        finally:
            self.connections.remove(connection)
            if fake.close_code is None and ws.closed is not None:
                fake.close_code = ws.closed.code
            fake.closed.set()
            fake._notify()


class FakeRealtimeServer(FakeWebSocketServer):
    """A strict, deterministic stand-in for ``wss://api.openai.com/v1/realtime``.

    :param api_key: the key ``Authorization: Bearer`` must carry.
    :param beta: speak the beta interface (requires ``OpenAI-Beta: realtime=v1``) instead of GA.
    :param provider: ``openai``; ``azure`` (the endpoint at /openai/v1/realtime?model=DEPLOYMENT,
        the key in an ``api-key`` header or as a bearer token; with ``beta`` the preview one,
        /openai/realtime?api-version=...&deployment=..., without the OpenAI-Beta header); or
        ``xai`` (/v1/realtime, xAI's session shape and voices, conversation.created first, no
        truncate/cancel/delete).
    :param reply_audio: audio each response streams, sent as is; by default 1 s of a 400 Hz tone
        in the session's output format.
    :param respond_after_ms: with server/semantic VAD on, this much caller audio since the last
        turn or response counts as one utterance (speech_started .. a response). None: never.
    :param chunk_ms: audio per ``response.output_audio.delta``.
    :param speed: pacing of deltas as a multiple of real time; 0 sends them without pauses.
    :param welcome_on_response_create: if False, ``response.create`` gets an empty (no output)
        response, so tests can drive turns by VAD alone without a greeting in the way.
    :param caller_transcript: transcript of each caller turn (when transcription is configured).
    :param reply_transcript: transcript of each reply.
    :param close_after_s: close each connection after this long, as the 60-minute cap does
        (``session_expired`` error, close 1001 "maximum duration").
    :param reject_connections: answer the HTTP upgrade with ``reject_status`` instead.
    :param reject_first: answer only the first this-many upgrades with ``reject_status`` (429
        for a rate limit, 503 for an outage), then accept.
    :param stall_after_ms: stop streaming a response's audio after this much (the response
        stays active until cancelled): a response "still being generated", deterministically.

    Tests script responses with :meth:`queue_response` (e.g. a function call).
    """

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        beta: bool = False,
        provider: str = "openai",
        reply_audio: bytes | None = None,
        respond_after_ms: int | None = 600,
        chunk_ms: int = 100,
        speed: float = 4.0,
        welcome_on_response_create: bool = True,
        caller_transcript: str = "hello",
        reply_transcript: str = "Hello! How can I help you today?",
        close_after_s: float | None = None,
        reject_connections: bool = False,
        reject_status: int = 503,
        close_timeout_s: float = 2.0,
        reject_first: int = 0,
        stall_after_ms: int | None = None,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.beta = beta
        assert provider in {"openai", "azure", "xai"} and not (beta and provider == "xai")
        self.provider = provider
        self.reply_audio = reply_audio
        self.respond_after_ms = respond_after_ms
        self.chunk_ms = chunk_ms
        self.speed = speed
        self.welcome_on_response_create = welcome_on_response_create
        self.caller_transcript = caller_transcript
        self.reply_transcript = reply_transcript
        self.close_after_s = close_after_s
        self.reject_connections = reject_connections
        self.reject_status = reject_status
        self.close_timeout_s = close_timeout_s
        self.reject_first = reject_first
        self.rejected = 0
        self.stall_after_ms = stall_after_ms
        self.scripted: list[ScriptedResponse] = []
        self.dialect: _Dialect = _XAI() if provider == "xai" else _Beta() if beta else _GA()
        self.schemas = _client_schemas(self.dialect)

    @property
    def path(self) -> str:
        """The endpoint's path in this provider's shape."""
        if self.provider == "azure":
            return AZURE_PREVIEW_PATH if self.beta else AZURE_PATH
        return REALTIME_PATH

    def queue_response(self, script: ScriptedResponse) -> None:
        """The next response (not an empty one) produces ``script`` instead of the default."""
        self.scripted.append(script)

    async def send_error_all(self, code: str, message: str, error_type: str) -> None:
        """Send an ``error`` event on every open connection (a rate limit, a server error)."""
        for connection in list(self.connections):
            with contextlib.suppress(ConnectionClosed):
                await connection.send(
                    {"type": "error", "error": {"type": error_type, "code": code,
                                                "message": message, "param": None,
                                                "event_id": None}}
                )

    async def abort_all(self) -> None:
        """Drop every connection without a close frame, as a network failure does.

        trio-websocket has no public way to do that, so the fake closes the TCP stream
        under the connection (a private attribute: acceptable in a test double).
        """
        for connection in list(self.connections):
            connection.fake.close_code = 1006  # "abnormal closure", never sent on the wire
            await connection.ws._close_stream()

    async def close_all(self, code: int = 1000, reason: str | None = None) -> None:
        """Close every open connection with ``code``, e.g. 1001 to mimic the session cap."""
        for connection in list(self.connections):
            await connection.close(code, reason)

    async def _handle(self, request: WebSocketRequest) -> None:
        if self.reject_connections or self.rejected < self.reject_first:
            self.rejected += 1
            await request.reject(self.reject_status, body=b"rejected (fake)")
            return
        url = urlsplit(request.path)
        if url.path != self.path:
            await request.reject(404, body=b"not found")
            return
        query = parse_qs(url.query)
        model = query.get("model", [None])[0]
        if self.provider == "azure" and self.beta:
            # The preview endpoint: the deployment names the model; its api-version is required.
            if query.get("api-version") != [AZURE_PREVIEW_API_VERSION] or "model" in query:
                await request.reject(400, body=b"api-version missing or unsupported")
                return
            model = query.get("deployment", [None])[0]
        if self.provider == "azure" and not model:
            await request.reject(404, body=b"DeploymentNotFound")  # no deployment named
            return
        await self._accept(request, model, _Connection)


class _Connection:
    """One Realtime session: dispatches client events; responses stream in a child task."""

    def __init__(self, server: FakeRealtimeServer, ws: WebSocketConnection, fake: FakeSession):
        self.server = server
        self.ws = ws
        self.fake = fake
        self.dialect = server.dialect
        self.active: _Response | None = None
        self.items: dict[str, _Item] = {}
        self.last_item_id: str | None = None
        self.input_total = 0  # bytes of caller audio this session
        self.uncommitted = 0  # bytes in the input audio buffer
        self.since_turn = 0  # bytes since the last VAD turn or response start
        self.audio_sent = False  # voice is locked once assistant audio exists
        self._nursery: trio.Nursery | None = None
        # One table routes client events: the schemas' keys, each to its _on_<type> method.
        self._handlers: dict[str, Callable[[dict], Any]] = {
            event_type: getattr(self, "_on_" + event_type.replace(".", "_"))
            for event_type in server.schemas
        }

    # -- plumbing ------------------------------------------------------------------------------

    async def send(self, event: dict, *, record: dict | None = None) -> None:
        """Send one server event (GA name; renamed for beta) with a fresh event_id.

        ``record`` replaces the event in :attr:`FakeSession.server_events` (to skip base64).
        """
        event_type = self.dialect.renames.get(event["type"], event["type"])
        event = {**event, "type": event_type, "event_id": self.server.new_id("event")}
        if record is not None:
            record["type"] = event_type
        self.fake.server_events.append(event if record is None else record)
        await self.ws.send_message(json.dumps(event))
        self.fake._notify()

    async def send_error(
        self, code: str, message: str, param: str | None, client_event_id: str | None
    ) -> None:
        await self.send(
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "code": code,
                    "message": message,
                    "param": param,
                    "event_id": client_event_id,
                },
            }
        )

    async def close(self, code: int, reason: str | None) -> None:
        """Close with ``code``; bounded, since a client that stops reading never completes it."""
        if self.fake.close_code is None:
            # trio-websocket reports a locally initiated close as 1000, so remember ours.
            self.fake.close_code = code
        with trio.move_on_after(self.server.close_timeout_s):
            await self.ws.aclose(code, reason)

    async def run(self) -> None:
        """Serve the session until the client or the fake closes it."""
        try:
            if await self._handshake_ok():
                await self._serve_session()
        except ConnectionClosed:
            pass
        except Exception as exc:
            # A bug in the fake. trio-websocket closes the socket in a `finally` that a test's
            # cancellation can interrupt, which loses the exception; so record it and tell the
            # client before re-raising.
            self.server.crashes.append(exc)
            logger.exception("realtime fake crashed")
            with contextlib.suppress(ConnectionClosed):
                await self.send_error("fake_server_crash", repr(exc), None, None)
            raise

    async def _serve_session(self) -> None:
        self.fake.session = self.dialect.default_session(
            self.server.new_id("sess"),
            self.fake.model or (BETA_DEFAULT_MODEL if self.server.beta else GA_DEFAULT_MODEL),
        )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                if self.dialect.name == "xai":
                    await self.send({"type": "conversation.created", "conversation": {
                        "id": self.server.new_id("conv"), "object": "realtime.conversation"}})
                else:
                    await self.send({"type": "session.created", "session": self.fake.session})
                if self.server.close_after_s is not None:
                    nursery.start_soon(self._expire, self.server.close_after_s)
                while True:
                    await self._dispatch(await self.ws.get_message())
            except ConnectionClosed:
                pass
            finally:
                # Ends the streaming response and the expiry timer with the connection.
                nursery.cancel_scope.cancel()

    async def _handshake_ok(self) -> bool:
        """The checks the real server makes before ``session.created``."""
        headers = self.fake.headers
        if self.server.provider == "azure":
            # Azure: an api-key header, or an Entra token as a bearer (the key stands in).
            key_ok = (headers.get("api-key") == self.server.api_key) != (
                headers.get("authorization") == f"Bearer {self.server.api_key}")
        else:
            key_ok = headers.get("authorization") == f"Bearer {self.server.api_key}"
        if not key_ok:
            await self.send_error(
                "invalid_api_key",
                "Incorrect API key provided. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                None,
                None,
            )
            await self.close(CLOSE_INVALID_API_KEY, "invalid_api_key")
            return False
        beta_header = headers.get("openai-beta", "")
        if "realtime=v1" in beta_header and not self.server.beta:
            await self.send_error(
                "beta_api_shape_disabled",
                "The Realtime API beta shape has been disabled. "
                "Use the GA interface: no OpenAI-Beta header, GA event and field names.",
                None,
                None,
            )
            await self.close(CLOSE_API_SHAPE, "beta_api_shape_disabled")
            return False
        if self.server.beta and self.server.provider == "openai" and "realtime=v1" not in beta_header:
            # A beta-only server needs the header; the code name is this fake's.
            await self.send_error(
                "missing_beta_header",
                "This server speaks the beta Realtime API: send 'OpenAI-Beta: realtime=v1'.",
                None,
                None,
            )
            await self.close(CLOSE_API_SHAPE, "missing_beta_header")
            return False
        return True

    async def _expire(self, after_s: float) -> None:
        await trio.sleep(after_s)
        try:
            await self.send_error(
                "session_expired", "Your session hit the maximum duration of 60 minutes.", None, None
            )
        except ConnectionClosed:
            return
        await self.close(CLOSE_MAXIMUM_DURATION, "maximum duration")

    async def _dispatch(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            await self.send_error(
                "invalid_request_error", "Binary frames are not supported; send JSON text.", None,
                None,
            )
            return
        try:
            event = json.loads(message)
        except ValueError:
            await self.send_error(
                "invalid_json", "We could not parse the JSON body of your request.", None, None
            )
            return
        if not isinstance(event, dict):
            await self.send_error("invalid_type", "A client event must be a JSON object.", None, None)
            return
        event_type = event.get("type")
        if event_type == "input_audio_buffer.append":
            # Keep the log small: the handler fills in the decoded size.
            self.fake.client_events.append({"type": event_type, "bytes": None})
        else:
            self.fake.client_events.append(event)
        try:
            await self._handle_event(event_type, event)
        except _Invalid as exc:
            await self.send_error(exc.code, exc.message, exc.param, event.get("event_id"))
        finally:
            self.fake._notify()

    async def _handle_event(self, event_type: Any, event: dict) -> None:
        if event_type == "output_audio_buffer.clear":
            # Reference: exists only for WebRTC/SIP sessions; a WebSocket bridge owns its playout.
            raise _Invalid(
                "invalid_value",
                "output_audio_buffer.clear is only supported for WebRTC and SIP sessions.",
                "type",
            )
        schema = self.server.schemas.get(event_type) if isinstance(event_type, str) else None
        if schema is None:
            supported = ", ".join(repr(t) for t in self.server.schemas)
            raise _Invalid(
                "invalid_value",
                f"Invalid value: {event_type!r}. Supported values are: {supported}.",
                "type",
            )
        schema(event, "")
        await self._handlers[event_type](event)

    # -- client events -------------------------------------------------------------------------

    async def _on_session_update(self, event: dict) -> None:
        update = event["session"]
        model = self.fake.session.get("model") or ""
        if ("reasoning" in update and self.server.provider == "openai"
                and not model.startswith(REASONING_MODEL_PREFIX)):
            raise _Invalid("invalid_value", f"The model {model} does not support reasoning.",
                           "session.reasoning")
        voice = self.dialect.voice(update)
        if voice is not None and self.audio_sent and voice != self.dialect.voice(self.fake.session):
            raise _Invalid(
                "cannot_update_voice",
                "Cannot update a conversation's voice if assistant audio is present.",
                "session.audio.output.voice" if self.dialect.name == "ga" else "session.voice",
            )
        merged = _merge(self.fake.session, update, self.dialect.replace_keys)
        self.fake.session = self.dialect.normalise(merged)
        await self.send({"type": "session.updated", "session": self.fake.session})

    async def _on_input_audio_buffer_append(self, event: dict) -> None:
        try:
            audio = base64.b64decode(event["audio"], validate=True)
        except binascii.Error:
            raise _Invalid(
                "invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.", "audio"
            ) from None
        self.fake.client_events[-1]["bytes"] = len(audio)
        self.fake.audio_in += audio
        self.input_total += len(audio)
        self.uncommitted += len(audio)
        turn_detection = self.dialect.turn_detection(self.fake.session)
        if turn_detection is None or self.server.respond_after_ms is None:
            return
        self.since_turn += len(audio)
        # The VAD stand-in: any audio counts as speech, and respond_after_ms of it is one whole
        # utterance. Deterministic by construction; real VAD would listen for energy and silence.
        bpms = bytes_per_ms(self.dialect.input_kind(self.fake.session))
        if self.since_turn >= self.server.respond_after_ms * bpms:
            await self._vad_turn(turn_detection, bpms)

    async def _vad_turn(self, turn_detection: dict, bpms: int) -> None:
        item_id = self.server.new_id("item")
        start_ms = (self.input_total - self.since_turn) // bpms
        self.since_turn = 0
        await self.send(
            {"type": "input_audio_buffer.speech_started", "audio_start_ms": start_ms,
             "item_id": item_id}
        )
        if self.active is not None and turn_detection["interrupt_response"]:
            # Barge-in: the server cancels its own response (reference, barge-in step 2).
            await self._cancel_active("turn_detected")
        await self.send(
            {"type": "input_audio_buffer.speech_stopped",
             "audio_end_ms": self.input_total // bpms, "item_id": item_id}
        )
        await self._commit(item_id)
        if turn_detection["create_response"] and self.active is None:
            await self._start_response({})

    async def _on_input_audio_buffer_commit(self, event: dict) -> None:
        await self._commit(self.server.new_id("item"))
        self.since_turn = 0

    async def _commit(self, item_id: str) -> None:
        bpms = bytes_per_ms(self.dialect.input_kind(self.fake.session))
        # The real server refuses to commit less than 100 ms.
        if self.uncommitted < 100 * bpms:
            raise _Invalid(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least 100ms "
                f"of audio, but buffer only has {self.uncommitted / bpms:.2f}ms of audio.",
            )
        self.uncommitted = 0
        previous = self.last_item_id
        self.items[item_id] = _Item(role="user")
        self.last_item_id = item_id
        await self.send(
            {"type": "input_audio_buffer.committed", "previous_item_id": previous,
             "item_id": item_id}
        )
        await self.send(
            {
                "type": "conversation.item.created",
                "previous_item_id": previous,
                "item": {
                    "id": item_id,
                    "object": "realtime.item",
                    "type": "message",
                    "status": "completed",
                    "role": "user",
                    "content": [{"type": "input_audio", "transcript": None}],
                },
            }
        )
        if self.dialect.transcription(self.fake.session) is not None:
            transcript = self.server.caller_transcript
            base = {"item_id": item_id, "content_index": 0}
            await self.send(
                {"type": "conversation.item.input_audio_transcription.delta", **base,
                 "delta": transcript}
            )
            await self.send(
                {"type": "conversation.item.input_audio_transcription.completed", **base,
                 "transcript": transcript}
            )

    async def _on_input_audio_buffer_clear(self, event: dict) -> None:
        self.uncommitted = 0
        self.since_turn = 0
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _on_conversation_item_create(self, event: dict) -> None:
        item = copy.deepcopy(event["item"])
        item.setdefault("id", self.server.new_id("item"))
        item.setdefault("object", "realtime.item")
        item.setdefault("status", "completed")
        if item["id"] in self.items:
            raise _Invalid(
                "invalid_value", f"Item with id '{item['id']}' already exists.", "item.id"
            )
        previous = event.get("previous_item_id", self.last_item_id)
        self.items[item["id"]] = _Item(role=item.get("role", item["type"]))
        self.last_item_id = item["id"]
        await self.send(
            {"type": "conversation.item.created", "previous_item_id": previous, "item": item}
        )

    async def _on_conversation_item_delete(self, event: dict) -> None:
        item_id = event["item_id"]
        if self.items.pop(item_id, None) is None:
            raise _Invalid("invalid_value", f"Item with item_id '{item_id}' not found.", "item_id")
        await self.send({"type": "conversation.item.deleted", "item_id": item_id})

    async def _on_conversation_item_truncate(self, event: dict) -> None:
        item_id, end_ms = event["item_id"], event["audio_end_ms"]
        record = {
            "item_id": item_id,
            "content_index": event["content_index"],
            "audio_end_ms": end_ms,
            "accepted": False,
        }
        self.fake.truncations.append(record)
        item = self.items.get(item_id)
        if item is None:
            raise _Invalid("invalid_value", f"Item with item_id '{item_id}' not found.", "item_id")
        if item.role != "assistant" or event["content_index"] != 0:
            raise _Invalid(
                "invalid_value",
                "Only the audio content (content_index 0) of an assistant message can be "
                "truncated.",
                "content_index",
            )
        # The mistake barge-in code makes: truncating at a wall-clock estimate beyond the audio
        # the server actually produced (pipecat #2106). The real server's wording:
        if end_ms > item.audio_ms:
            raise _Invalid(
                "invalid_value",
                f"Audio content of {item.audio_ms} ms is already shorter than {end_ms} ms",
                "audio_end_ms",
            )
        item.audio_ms = end_ms
        record["accepted"] = True
        await self.send(
            {"type": "conversation.item.truncated", "item_id": item_id,
             "content_index": event["content_index"], "audio_end_ms": end_ms}
        )

    async def _on_response_create(self, event: dict) -> None:
        await self._start_response(
            event.get("response") or {}, empty=not self.server.welcome_on_response_create
        )

    async def _on_response_cancel(self, event: dict) -> None:
        wanted = event.get("response_id")
        if self.active is None or (wanted is not None and wanted != self.active.id):
            raise _Invalid(
                "response_cancel_not_active", "Cancellation failed: no active response found."
            )
        await self._cancel_active("client_cancelled")

    # -- responses ------------------------------------------------------------------------------

    async def _cancel_active(self, reason: str) -> None:
        """Stop the active response and wait until its ``response.done`` went out."""
        response = self.active
        assert response is not None
        response.cancel_reason = reason
        response.cancel_requested.set()
        await response.finished.wait()

    def _response_object(self, response: _Response, status: str, output: list, **extra: Any) -> dict:
        return {
            "object": "realtime.response",
            "id": response.id,
            "status": status,
            "status_details": None,
            "output": output,
            **self.dialect.response_fields(self.fake.session),
            "usage": None,
            **extra,
        }

    def _assistant_item(self, response: _Response, status: str, content: list) -> dict:
        return {
            "id": response.item_id,
            "object": "realtime.item",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    async def _start_response(self, config: dict, *, empty: bool = False) -> None:
        """Announce a response; its output streams from a task in the connection's nursery."""
        if self.active is not None:
            raise _Invalid(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.active.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        text_only = self.dialect.text_only(config)
        if text_only is None:
            text_only = bool(self.dialect.text_only(self.fake.session))
        script = self.server.scripted.pop(0) if self.server.scripted and not empty else None
        if script is not None and script.function_call is not None:
            declared = {t.get("name") for t in self.fake.session.get("tools") or []}
            # A test that scripts a call to an undeclared tool is wrong; the model never does.
            assert script.function_call[0] in declared, f"{script.function_call[0]} not declared"
        no_audio_item = empty or (script is not None and script.audio is None)
        response = _Response(
            id=self.server.new_id("resp"),
            item_id=None if no_audio_item else self.server.new_id("item"),
            text_only=text_only,
            script=script,
        )
        self.active = response
        self.since_turn = 0
        # The head goes out before the next client event is read, so its order is deterministic.
        await self.send(
            {"type": "response.created",
             "response": self._response_object(response, "in_progress", [])}
        )
        if not empty:
            self.items[response.item_id] = _Item(role="assistant")
            previous, self.last_item_id = self.last_item_id, response.item_id
            await self.send(
                {"type": "response.output_item.added", "response_id": response.id,
                 "output_index": 0, "previous_item_id": previous,
                 "item": self._assistant_item(response, "in_progress", [])}
            )
            part = {"type": "text", "text": ""} if text_only else {"type": "audio", "transcript": ""}
            await self.send(
                {"type": "response.content_part.added", "response_id": response.id,
                 "item_id": response.item_id, "output_index": 0, "content_index": 0,
                 "part": part}
            )
        assert self._nursery is not None
        self._nursery.start_soon(self._stream_response, response)

    def _reply_audio(self, kind: str, response: _Response) -> bytes:
        if response.script is not None and response.script.audio:
            return response.script.audio
        if self.server.reply_audio is not None:
            return self.server.reply_audio
        return _default_reply(kind)

    async def _pause(self, response: _Response) -> None:
        """Pace one chunk; a cancel request ends the pause early."""
        if self.server.speed > 0:
            with trio.move_on_after(self.server.chunk_ms / 1000 / self.server.speed):
                await response.cancel_requested.wait()

    async def _stream_response(self, response: _Response) -> None:
        try:
            await self._stream_output(response)
        except ConnectionClosed:
            pass
        finally:
            if self.active is response:
                self.active = None
            response.finished.set()

    async def _stream_output(self, response: _Response) -> None:
        ids = {"response_id": response.id, "item_id": response.item_id, "output_index": 0,
               "content_index": 0}
        transcript = self.server.reply_transcript
        if response.script is not None and response.script.transcript is not None:
            transcript = response.script.transcript
        audio_ms = 0
        if response.item_id is None:
            output: list = []
        elif response.text_only:
            if not response.cancel_requested.is_set():
                await self.send({"type": "response.output_text.delta", **ids, "delta": transcript})
            output = [{"type": "output_text" if self.dialect.name == "ga" else "text",
                       "text": transcript}]
        else:
            kind = self.dialect.output_kind(self.fake.session)
            bpms = bytes_per_ms(kind)
            audio = self._reply_audio(kind, response)
            chunk = self.server.chunk_ms * bpms
            item = self.items[response.item_id]
            for offset in range(0, len(audio), chunk):
                if offset:
                    await self._pause(response)
                stall = self.server.stall_after_ms
                if stall is not None and item.audio_ms >= stall:
                    await response.cancel_requested.wait()  # generating... until cancelled
                if response.cancel_requested.is_set():
                    break
                piece = audio[offset:offset + chunk]
                await self.send(
                    {"type": "response.output_audio.delta", **ids,
                     "delta": base64.b64encode(piece).decode("ascii")},
                    record={"item_id": response.item_id, "bytes": len(piece)},
                )
                self.audio_sent = True
                item.audio_ms += len(piece) // bpms
                audio_ms += len(piece) // bpms
                if offset == 0:
                    await self.send(
                        {"type": "response.output_audio_transcript.delta", **ids,
                         "delta": transcript}
                    )
            output = [{"type": "output_audio" if self.dialect.name == "ga" else "audio",
                       "transcript": transcript}]

        if response.cancel_requested.is_set():
            # Cancelled: only the item (incomplete) and response.done are promised; a client must
            # not wait for the audio/transcript .done events of a cancelled response.
            outputs = []
            if response.item_id is not None:
                item_done = self._assistant_item(response, "incomplete", output)
                await self.send({"type": "response.output_item.done", "response_id": response.id,
                                 "output_index": 0, "item": item_done})
                outputs = [item_done]
            self.active = None
            await self.send(
                {"type": "response.done",
                 "response": self._response_object(
                     response, "cancelled", outputs,
                     status_details={"type": "cancelled", "reason": response.cancel_reason},
                     usage=self._usage(audio_ms, ""))}
            )
            return

        outputs = []
        if response.item_id is not None:
            if response.text_only:
                await self.send({"type": "response.output_text.done", **ids, "text": transcript})
                part = {"type": "text", "text": transcript}
            else:
                await self.send({"type": "response.output_audio.done", **ids})
                await self.send(
                    {"type": "response.output_audio_transcript.done", **ids,
                     "transcript": transcript}
                )
                part = {"type": "audio", "transcript": transcript}
            await self.send({"type": "response.content_part.done", **ids, "part": part})
            item_done = self._assistant_item(response, "completed", output)
            await self.send({"type": "response.output_item.done", "response_id": response.id,
                             "output_index": 0, "item": item_done})
            outputs = [item_done]
        if response.script is not None and response.script.function_call is not None:
            outputs.append(await self._function_call(response, len(outputs)))
        # Clear `active` before response.done goes out: a client may answer it at once with
        # response.create, and that must not race into conversation_already_has_active_response.
        self.active = None
        await self.send(
            {"type": "response.done",
             "response": self._response_object(
                 response, "completed", outputs,
                 usage=self._usage(audio_ms, transcript if outputs else ""))}
        )
        await self.send(
            {"type": "rate_limits.updated",
             "rate_limits": [{"name": "tokens", "limit": 40000, "remaining": 39000,
                              "reset_seconds": 1.5}]}
        )

    async def _function_call(self, response: _Response, output_index: int) -> dict:
        """Stream a scripted function call item; returns the completed item."""
        assert response.script is not None and response.script.function_call is not None
        name, arguments = response.script.function_call
        item_id = self.server.new_id("item")
        call_id = self.server.new_id("call")
        text = json.dumps(arguments)
        item = {"id": item_id, "object": "realtime.item", "type": "function_call",
                "status": "in_progress", "call_id": call_id, "name": name, "arguments": ""}
        previous, self.last_item_id = self.last_item_id, item_id
        self.items[item_id] = _Item(role="function_call")
        ids = {"response_id": response.id, "item_id": item_id, "output_index": output_index,
               "call_id": call_id}
        await self.send({"type": "response.output_item.added", "response_id": response.id,
                         "output_index": output_index, "previous_item_id": previous,
                         "item": item})
        await self.send({"type": "response.function_call_arguments.delta", **ids, "delta": text})
        await self.send({"type": "response.function_call_arguments.done", **ids, "name": name,
                         "arguments": text})
        item = {**item, "status": "completed", "arguments": text}
        await self.send({"type": "response.output_item.done", "response_id": response.id,
                         "output_index": output_index, "item": item})
        self.fake.function_calls[call_id] = name
        return item

    def _usage(self, audio_ms: int, transcript: str) -> dict:
        """Plausible, deterministic token counts (about 10 input / 20 output audio tokens a second)."""
        bpms = bytes_per_ms(self.dialect.input_kind(self.fake.session))
        instructions = self.fake.session.get("instructions") or ""
        input_text = len(instructions) // 4
        input_audio = self.input_total // bpms // 100
        output_text = len(transcript.split())
        output_audio = audio_ms // 50
        return {
            "total_tokens": input_text + input_audio + output_text + output_audio,
            "input_tokens": input_text + input_audio,
            "output_tokens": output_text + output_audio,
            "input_token_details": {"text_tokens": input_text, "audio_tokens": input_audio,
                                    "cached_tokens": 0},
            "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
        }


_DEFAULT_REPLIES: dict[str, bytes] = {}


def _default_reply(kind: str) -> bytes:
    """1 s of 400 Hz tone in ``kind``, encoded once per format."""
    if kind not in _DEFAULT_REPLIES:
        _DEFAULT_REPLIES[kind] = tone(kind, 1000)
    return _DEFAULT_REPLIES[kind]


# --------------------------------------------------------------------------------------------
# Standalone, for `make demo`.


def main(argv: list[str] | None = None) -> None:
    """Run the fake until killed; the first stdout line is ``url=ws://HOST:PORT/v1/realtime``."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.realtime",
        description="A strict fake OpenAI Realtime WebSocket server.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="test-key")
    parser.add_argument("--beta", action="store_true", help="speak the beta interface")
    parser.add_argument("--provider", choices=("openai", "azure", "xai"), default="openai",
                        help="the endpoint, credentials and session shape to serve")
    parser.add_argument("--speed", type=float, default=1.0, help="delta pacing x real time")
    parser.add_argument("--chunk-ms", type=int, default=100)
    parser.add_argument("--respond-after-ms", type=int, default=600)
    parser.add_argument("--close-after-s", type=float, default=None)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    server = FakeRealtimeServer(
        api_key=args.api_key,
        beta=args.beta,
        provider=args.provider,
        speed=args.speed,
        chunk_ms=args.chunk_ms,
        respond_after_ms=args.respond_after_ms,
        close_after_s=args.close_after_s,
    )

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(server.serve, host=args.host, port=args.port))
            print(f"url={url}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C in `make demo` is a normal stop
        trio.run(run)


if __name__ == "__main__":
    main()

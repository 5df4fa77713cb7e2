"""The ``session.update`` that configures a call's session, in each shape a provider speaks.

Sans-IO. ``ga``: OpenAI's interface since 2025-08-28 (and Azure's GA endpoint); ``beta``: the
retired interface some compatible servers still speak; ``xai``: xAI's Voice Agent session
(voice and turn detection at the top, formats with their rate). A setting a shape does not
document is not sent in it (the GA server rejects unknown fields; start-up says so once,
RealtimeSettings.startup_notes). Field names follow openai-python's realtime types; docs/openai.md
has the table of which setting goes where.
"""

from __future__ import annotations

import math
from typing import Any

from openai_flavor.settings import END_CALL_TOOL, TRANSFER_TOOL, RealtimeSettings

# The G.711 format names of each shape.
GA_FORMAT = {"PCMU": {"type": "audio/pcmu"}, "PCMA": {"type": "audio/pcma"}}
BETA_FORMAT = {"PCMU": "g711_ulaw", "PCMA": "g711_alaw"}
XAI_FORMAT = {"PCMU": {"type": "audio/pcmu", "rate": 8000},
              "PCMA": {"type": "audio/pcma", "rate": 8000}}


def rtpai_decides_barge_in(settings: RealtimeSettings) -> bool:
    """``barge_in_min_ms`` above 0: the server neither cancels a response nor starts one when
    its VAD hears the caller; rtpai does both (openai_flavor/barge_in.py). Needs the server's
    VAD and a shape whose turn detection takes both switches (not xAI's)."""
    return (settings.barge_in_min_ms > 0 and settings.turn_detection_type != "none"
            and settings.shape != "xai")


def _turn_detection(settings: RealtimeSettings, *, interrupt: bool = True) -> dict[str, Any] | None:
    kind = settings.turn_detection_type
    if kind == "none":
        return None
    if settings.shape == "xai":
        return {"type": "server_vad"}  # the only field xAI documents
    # False only while an uninterruptible welcome message plays (the server must not cancel
    # it when the caller speaks: rtpai also keeps playing it), or while rtpai decides.
    by_rtpai = rtpai_decides_barge_in(settings)
    switches = {"create_response": not by_rtpai, "interrupt_response": interrupt and not by_rtpai}
    if kind == "semantic_vad":
        # semantic_vad rejects threshold/prefix/silence: it decides turns from meaning.
        return {"type": "semantic_vad", "eagerness": settings.turn_detection_eagerness,
                **switches}
    return {
        "type": "server_vad",
        "threshold": settings.turn_detection_threshold,
        "prefix_padding_ms": settings.turn_detection_prefix_ms,
        "silence_duration_ms": settings.turn_detection_silence_ms,
        **switches,
    }


def tool_definitions(settings: RealtimeSettings) -> list[dict[str, Any]]:
    """The function tools offered to the model (the same shape in every dialect)."""
    tools: list[dict[str, Any]] = []
    if settings.end_call_tool:
        tools.append({
            "type": "function",
            "name": END_CALL_TOOL,
            "description": "End the phone call. Say a short goodbye first: the call ends once "
                           "everything you said has been played to the caller.",
            "parameters": {"type": "object", "properties": {
                "reason": {"type": "string", "description": "Why the call ends."}}},
        })
    if settings.transfer_enabled:
        targets = sorted({*settings.transfer_allow, *filter(None, [settings.transfer_target])})
        target: dict[str, Any] = {"type": "string", "enum": targets,
                                  "description": "Where to transfer the caller."}
        if settings.transfer_target:
            target["description"] += f" Default: {settings.transfer_target}."
        tools.append({
            "type": "function",
            "name": TRANSFER_TOOL,
            "description": "Transfer the caller to a person or department. Tell the caller "
                           "first that you are transferring them.",
            "parameters": {"type": "object", "properties": {"target": target},
                           "required": [] if settings.transfer_target else ["target"]},
        })
    for tool in settings.tools:
        tools.append({"type": "function", "name": tool.name, "description": tool.description,
                      "parameters": dict(tool.parameters)})
    return tools


def _tool_choice(settings: RealtimeSettings) -> str | dict[str, str]:
    choice = settings.tool_choice
    if choice in {"auto", "none", "required"}:
        return choice
    server, colon, tool = choice.partition(":")
    if colon:
        return {"type": "mcp", "server_label": server, "name": tool}
    return {"type": "function", "name": choice}


def session_update(
    settings: RealtimeSettings,
    codec: str,
    *,
    instructions: str | None = None,
    interrupt: bool = True,
) -> dict[str, Any]:
    """The ``session.update`` that configures a call's session for G.711 ``codec``.

    ``instructions`` overrides the configured ones (a reconnect adds a recap); ``interrupt``
    False keeps the server from cancelling a response when the caller speaks.
    """
    instructions = instructions if instructions is not None else settings.instructions
    builder = {"ga": _ga, "beta": _beta, "xai": _xai}[settings.shape]
    session = builder(settings, codec, _turn_detection(settings, interrupt=interrupt))
    if instructions:
        session["instructions"] = instructions
    return {"type": "session.update", "session": session}


def _max_tokens(settings: RealtimeSettings) -> int | str:
    return "inf" if math.isinf(settings.max_tokens) else int(settings.max_tokens)


def _transcription(settings: RealtimeSettings) -> dict[str, str] | None:
    if not settings.transcription_model:
        return None
    transcription = {"model": settings.transcription_model}
    if settings.transcription_language:
        transcription["language"] = settings.transcription_language
    return transcription


def _ga(settings: RealtimeSettings, codec: str, detection: Any) -> dict[str, Any]:
    # There is no temperature any more: the server rejects it as an unknown parameter.
    audio_input: dict[str, Any] = {"format": GA_FORMAT[codec], "turn_detection": detection}
    transcription = _transcription(settings)
    if transcription:
        audio_input["transcription"] = transcription
    if settings.noise_reduction != "off":
        audio_input["noise_reduction"] = {"type": settings.noise_reduction}
    output: dict[str, Any] = {"format": GA_FORMAT[codec], "voice": settings.voice_name}
    if settings.speed != 1.0:
        output["speed"] = settings.speed
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": ["audio"],
        "max_output_tokens": _max_tokens(settings),
        "audio": {"input": audio_input, "output": output},
    }
    if settings.reasoning_effort and settings.reasoning_model:
        session["reasoning"] = {"effort": settings.reasoning_effort}
    if settings.truncation == "disabled":
        session["truncation"] = "disabled"
    elif isinstance(settings.truncation, float):
        session["truncation"] = {"type": "retention_ratio",
                                 "retention_ratio": settings.truncation}
    if settings.prompt_id:
        prompt: dict[str, Any] = {"id": settings.prompt_id}
        if settings.prompt_version:
            prompt["version"] = settings.prompt_version
        if settings.prompt_variables:
            prompt["variables"] = dict(settings.prompt_variables)
        session["prompt"] = prompt
    tools = tool_definitions(settings) + [server.tool() for server in settings.mcp]
    if tools:
        session["tools"] = tools
        session["tool_choice"] = _tool_choice(settings)
    return session


def _beta(settings: RealtimeSettings, codec: str, detection: Any) -> dict[str, Any]:
    session: dict[str, Any] = {
        "modalities": ["audio", "text"],
        "voice": settings.voice_name,
        "input_audio_format": BETA_FORMAT[codec],
        "output_audio_format": BETA_FORMAT[codec],
        "turn_detection": detection,
        "temperature": settings.temperature,
        "max_response_output_tokens": _max_tokens(settings),
    }
    transcription = _transcription(settings)
    if transcription:
        session["input_audio_transcription"] = transcription
    if settings.noise_reduction != "off":
        session["input_audio_noise_reduction"] = {"type": settings.noise_reduction}
    if settings.speed != 1.0:
        session["speed"] = settings.speed
    tools = tool_definitions(settings)
    if tools:
        session["tools"] = tools
        # Beta has no MCP tools; a choice naming one is refused by the configuration check.
        session["tool_choice"] = _tool_choice(settings)
    return session


def _xai(settings: RealtimeSettings, codec: str, detection: Any) -> dict[str, Any]:
    # Only what xAI's Voice Agent docs list: voice, instructions, turn_detection, audio
    # formats, tools (docs/openai.md: what was verified).
    session: dict[str, Any] = {
        "turn_detection": detection,
        "audio": {"input": {"format": XAI_FORMAT[codec]},
                  "output": {"format": XAI_FORMAT[codec]}},
    }
    voice = settings.voice_name
    if voice is not None:
        session["voice"] = voice
    tools = tool_definitions(settings)
    if tools:
        session["tools"] = tools
    return session


def interrupt_update(settings: RealtimeSettings, interrupt: bool) -> dict[str, Any] | None:
    """Switch the server's barge-in (``interrupt_response``) on or off, nothing else; None
    where the shape has no such switch (xAI)."""
    detection = _turn_detection(settings, interrupt=interrupt)
    if settings.shape == "xai":
        return None
    if settings.shape == "beta":
        return {"type": "session.update", "session": {"turn_detection": detection}}
    # GA requires the session type on every update; turn_detection is replaced whole.
    return {"type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": detection}}}}

"""Realtime events, sans-IO: the session.update of each dialect and the usage sums."""

import base64
import json
import math

from openai_flavor import events
from openai_flavor.session import redact
from openai_flavor.settings import RealtimeSettings


def settings(**overrides):
    base = dict(url="wss://api.openai.com/v1/realtime", model="gpt-realtime-2.1", api_key="sk-x")
    return RealtimeSettings(**{**base, **overrides})


def test_ga_session_update_for_pcmu():
    update = events.session_update(settings(instructions="Be brief.", max_tokens=512), "PCMU")
    assert update == {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "instructions": "Be brief.",
            "output_modalities": ["audio"],
            "max_output_tokens": 512,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "transcription": {"model": "gpt-4o-mini-transcribe"},
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 200,
                        "create_response": True,
                        "interrupt_response": True,
                    },
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": "alloy"},
            },
        },
    }


def test_ga_has_no_temperature_and_inf_tokens_is_a_string():
    session = events.session_update(settings(temperature=1.1), "PCMA")["session"]
    assert "temperature" not in json.dumps(session)
    assert session["max_output_tokens"] == "inf"
    assert session["audio"]["output"]["format"] == {"type": "audio/pcma"}


def test_semantic_vad_sends_eagerness_not_thresholds():
    session = events.session_update(settings(turn_detection_type="semantic_vad"), "PCMU")["session"]
    detection = session["audio"]["input"]["turn_detection"]
    assert detection["type"] == "semantic_vad" and "eagerness" in detection
    assert not {"threshold", "prefix_padding_ms", "silence_duration_ms"} & detection.keys()


def test_turn_detection_none_is_null():
    session = events.session_update(settings(turn_detection_type="none"), "PCMU")["session"]
    assert session["audio"]["input"]["turn_detection"] is None


def test_beta_dialect_shape():
    session = events.session_update(
        settings(dialect="beta", temperature=0.7, max_tokens=math.inf, voice="ash"), "PCMA"
    )["session"]
    assert session["input_audio_format"] == session["output_audio_format"] == "g711_alaw"
    assert session["temperature"] == 0.7 and session["voice"] == "ash"
    assert session["max_response_output_tokens"] == "inf"
    assert "audio" not in session and "type" not in session


def test_audio_append_is_valid_json_with_base64():
    frame = bytes(range(160))
    event = json.loads(events.audio_append(frame))
    assert event["type"] == "input_audio_buffer.append"
    assert base64.b64decode(event["audio"]) == frame


def test_usage_is_summed_across_responses():
    total: dict = {}
    usage = {
        "total_tokens": 30, "input_tokens": 20, "output_tokens": 10,
        "input_token_details": {"text_tokens": 5, "audio_tokens": 15, "cached_tokens": 4},
        "output_token_details": {"text_tokens": 2, "audio_tokens": 8},
    }
    events.add_usage(total, usage)
    events.add_usage(total, usage)
    events.add_usage(total, None)
    assert total["total_tokens"] == 60
    assert total["input_token_details"]["cached_tokens"] == 8
    assert total["output_token_details"]["audio_tokens"] == 16


def test_session_url_adds_the_model():
    assert settings().session_url() == "wss://api.openai.com/v1/realtime?model=gpt-realtime-2.1"
    assert settings(url="ws://h/v1/realtime?model=m").session_url() == "ws://h/v1/realtime?model=m"


def test_refusal_reasons_and_secret_redaction():
    assert "OPENAI_API_KEY" in settings(api_key=None).refusal_reason()
    assert "disable" in settings(disable=True).refusal_reason()
    assert settings().refusal_reason() is None
    assert "sk-x" not in repr(settings())
    assert redact("Incorrect API key provided: sk-secret-1", "sk-secret-1") == (
        "Incorrect API key provided: <redacted>"
    )

"""Realtime events, sans-IO: the session.update of each dialect and the usage sums."""

import base64
import json
import math

from openai_flavor import events
from openai_flavor.errors import redact
from openai_flavor.settings import RealtimeSettings, ToolSpec


def settings(**overrides):
    base = dict(url="wss://api.openai.com/v1/realtime", model="gpt-realtime-2.1", api_key="sk-x")
    return RealtimeSettings(**{**base, **overrides})


def test_ga_session_update_for_pcmu():
    update = events.session_update(
        settings(instructions="Be brief.", max_tokens=512, end_call_tool=False), "PCMU"
    )
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


def test_tools_end_call_transfer_and_custom():
    lookup = ToolSpec("lookup_order", "Find an order", {"type": "object", "properties": {}})
    tools = events.tool_definitions(settings(
        transfer_target="sip:desk@example.com", transfer_allow=("sip:sales@example.com",),
        tools=(lookup,),
    ))
    assert [t["name"] for t in tools] == ["end_call", "transfer_call", "lookup_order"]
    assert all(t["type"] == "function" for t in tools)
    target = tools[1]["parameters"]["properties"]["target"]
    # The allow-list is the enum the model chooses from; the default makes it optional.
    assert target["enum"] == ["sip:desk@example.com", "sip:sales@example.com"]
    assert tools[1]["parameters"]["required"] == []
    assert events.tool_definitions(settings(end_call_tool=False)) == []
    update = events.session_update(settings(tools=(lookup,)), "PCMU")["session"]
    assert update["tool_choice"] == "auto" and len(update["tools"]) == 2


def test_transcription_model_and_eagerness():
    session = events.session_update(
        settings(transcription_model=None, turn_detection_type="semantic_vad",
                 turn_detection_eagerness="low"), "PCMU")["session"]
    assert "transcription" not in session["audio"]["input"]
    assert session["audio"]["input"]["turn_detection"]["eagerness"] == "low"
    beta = events.session_update(settings(dialect="beta", transcription_model="whisper-1"), "PCMU")
    assert beta["session"]["input_audio_transcription"] == {"model": "whisper-1"}


def test_interrupt_update_switches_only_barge_in():
    ga = events.interrupt_update(settings(), False)
    assert ga["session"]["type"] == "realtime"
    assert ga["session"]["audio"]["input"]["turn_detection"]["interrupt_response"] is False
    assert set(ga["session"]) == {"type", "audio"}
    beta = events.interrupt_update(settings(dialect="beta"), True)
    assert beta["session"]["turn_detection"]["interrupt_response"] is True
    first = events.session_update(settings(), "PCMU", interrupt=False)["session"]
    assert first["audio"]["input"]["turn_detection"]["interrupt_response"] is False


def test_recap_keeps_the_instructions_and_the_latest_turns():
    transcript = [{"role": "caller", "text": f"turn {n}"} for n in range(1000)]
    recap = events.recap_instructions("Be brief.", transcript)
    assert recap.startswith("Be brief.\n\n")
    assert recap.endswith("caller: turn 999")
    assert "caller: turn 0\n" not in recap
    assert len(recap) < events.RECAP_MAX_CHARS + 400
    assert events.recap_instructions("Be brief.", []) == "Be brief."
    assert "caller: hi" in events.recap_instructions(None, [{"role": "caller", "text": "hi"}])


def test_function_call_parsing_and_outputs():
    done = {"type": "response.function_call_arguments.done", "call_id": "call_1",
            "name": "end_call", "arguments": '{"reason": "done"}'}
    assert events.parse_function_call(done) == ("call_1", "end_call", {"reason": "done"})
    assert events.parse_function_call({**done, "arguments": "[1"})[2] is None
    assert events.parse_function_call({**done, "arguments": "[1]"})[2] is None
    output = events.function_call_output("call_1", '{"ok": true}')
    assert output["item"] == {"type": "function_call_output", "call_id": "call_1",
                              "output": '{"ok": true}'}
    text = events.caller_text(events.dtmf_text("12#"))
    assert text["item"]["content"] == [
        {"type": "input_text", "text": "[The caller pressed these keys on the phone keypad: 12#]"}]

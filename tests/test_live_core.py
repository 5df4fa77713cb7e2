"""GPT-Live's sans-IO parts: the floor (when the model yielded, when a goodbye is said), the
wire it speaks, and how ``[openai] api = live`` is configured. No sockets, no clock."""

from __future__ import annotations

import base64
import json
import math

import pytest

from ctl.config import ConfigError, load_config
from ctl.engine import Engine
from openai_flavor import FLAVOR
from openai_flavor.events import MalformedEvent
from openai_flavor.live import events
from openai_flavor.live.session import LiveSession
from openai_flavor.live.settings import LIVE_MODEL, LIVE_URL, LiveSettings
from openai_flavor.live.turns import GOODBYE_LIMIT, GOODBYE_QUIET, YIELD_GAP, Floor
from openai_flavor.session import RealtimeSession
from openai_flavor.settings import RealtimeSettings

# --- the floor --------------------------------------------------------------------------------


def test_a_caller_speaking_after_the_model_stopped_clears_once():
    floor = Floor()
    floor.model_audio(10.0)
    floor.caller_speech(10.05)
    assert not floor.clear_due(10.05, playout_holds_audio=True)  # audio may still be coming
    assert floor.wake_at() == pytest.approx(10.0 + YIELD_GAP)
    assert floor.clear_due(10.0 + YIELD_GAP, playout_holds_audio=True)
    assert not floor.clear_due(11.0, playout_holds_audio=True)  # once per yield
    assert floor.spurt_ended(11.0)
    assert floor.wake_at() == math.inf  # nothing more is due until something happens


def test_a_backchannel_while_the_model_keeps_talking_clears_nothing():
    floor = Floor()
    floor.model_audio(9.95)
    for n in range(20):  # the model streams a delta every 100 ms, the caller says "uh-huh"
        now = 10.0 + n * 0.1
        floor.caller_speech(now)
        assert not floor.clear_due(now, playout_holds_audio=True)
        floor.model_audio(now + 0.05)


def test_nothing_is_cleared_when_nothing_is_left_to_play():
    floor = Floor()
    floor.model_audio(1.0)
    floor.caller_speech(2.0)
    assert not floor.clear_due(2.0, playout_holds_audio=False)


def test_new_model_audio_starts_a_new_yield():
    floor = Floor()
    floor.model_audio(1.0)
    floor.caller_speech(1.5)
    assert floor.clear_due(1.5, playout_holds_audio=True)
    floor.model_audio(3.0)
    floor.caller_speech(3.5)
    assert floor.clear_due(3.5, playout_holds_audio=True)


def test_a_talkspurt_ends_once_after_the_gap():
    floor = Floor()
    floor.model_audio(1.0)
    assert not floor.spurt_ended(1.0 + YIELD_GAP / 2)
    assert floor.spurt_ended(1.0 + YIELD_GAP)
    assert not floor.spurt_ended(5.0)


def test_the_goodbye_is_said_once_the_model_is_quiet():
    floor = Floor()
    floor.end_call("bye", 5.0)
    floor.model_audio(5.5)  # the goodbye is spoken after the tool call
    assert floor.goodbye_due(5.5 + GOODBYE_QUIET - 0.01) is None
    assert floor.goodbye_due(5.5 + GOODBYE_QUIET) == "bye"
    assert floor.goodbye_due(100.0) is None  # once


def test_a_goodbye_that_never_ends_is_cut_at_the_limit():
    floor = Floor()
    floor.end_call("bye", 0.0)
    for n in range(200):
        floor.model_audio(n * 0.1)
        if floor.goodbye_due(n * 0.1) is not None:
            assert n * 0.1 == pytest.approx(GOODBYE_LIMIT)
            return
    raise AssertionError("the goodbye limit never came")


def test_transcript_deltas_become_one_entry_per_turn():
    floor = Floor()
    assert floor.transcript_delta("caller", "I need ") == []
    assert floor.transcript_delta("caller", "a taxi.") == []
    assert floor.transcript_delta("assistant", "Where ") == [("caller", "I need a taxi.")]
    assert floor.transcript_delta("assistant", "to?") == []
    assert floor.flush() == [("assistant", "Where to?")]


# --- the wire ---------------------------------------------------------------------------------


def settings(**overrides) -> LiveSettings:
    return LiveSettings(base=RealtimeSettings(url="wss://x/v1/realtime", model="m",
                                             api_key="k", **overrides))


def test_session_start_names_the_model_the_codec_and_the_delegated_tools():
    start = events.session_start(settings(transfer_target="sip:desk@x"), "PCMA",
                                 instructions="Hi.")
    session = start["session"]
    assert start["type"] == "session.start"
    assert session["model"] == LIVE_MODEL
    assert session["audio"]["input"]["format"] == {"type": "audio/pcma", "rate": 8000}
    assert session["audio"]["output"] == {"format": {"type": "audio/pcma", "rate": 8000},
                                          "voice": "alloy"}
    tools = session["delegation"]["responses"]["tools"]
    assert [t["name"] for t in tools] == ["end_call", "transfer_call"]
    assert set(session) == {"model", "audio", "instructions", "delegation"}


def test_caller_audio_is_appended_as_base64_of_the_g711_bytes():
    frame = bytes(range(160))
    event = json.loads(events.audio_append(frame))
    assert event == {"type": "session.input_audio.append",
                     "audio": base64.b64encode(frame).decode()}


def test_a_delegated_function_call_is_read_from_the_nested_responses_event():
    event = {"type": "response.event", "delegation_id": "dlg_1", "event": {
        "type": "response.output_item.done", "item": {
            "type": "function_call", "call_id": "call_1", "name": "end_call",
            "arguments": '{"reason": "done"}'}}}
    assert events.delegated_call(event) == ("dlg_1", "call_1", "end_call", {"reason": "done"})
    text = {"type": "response.event", "event": {"type": "response.output_text.delta"}}
    assert events.delegated_call(text) is None
    with pytest.raises(MalformedEvent):
        events.delegated_call({"type": "response.event", "event": "not an object"})


def test_usage_seconds_are_cumulative_numbers_only():
    assert events.audio_seconds({"usage": {"seconds": 12.5}}) == 12.5
    assert events.audio_seconds({"usage": {"seconds": "12"}}) is None
    assert events.audio_seconds({"usage": {"seconds": True}}) is None
    assert events.audio_seconds({}) is None


# --- configuration ----------------------------------------------------------------------------


def configure(environ, path=None):
    config = load_config(path, environ={"OPENAI_API_KEY": "k", **environ})
    explicit = frozenset(key for section, key in config.explicit if section == "openai")
    return (FLAVOR.configure(config["openai"], explicit),
            {name: FLAVOR.configure(values, explicit) for name, values in config.profiles.items()})


def test_realtime_stays_the_default():
    main, _ = configure({})
    assert isinstance(main, RealtimeSettings) and main.model == "gpt-realtime-2.1"


def test_api_live_gets_gpt_lives_endpoint_and_model_unless_written():
    main, _ = configure({"OPENAI_API": "live"})
    assert isinstance(main, LiveSettings)
    assert (main.session_url(), main.model, main.dialect) == (LIVE_URL, LIVE_MODEL, "live")
    pinned, _ = configure({"OPENAI_API": "live", "OPENAI_API_MODEL": "gpt-live-1.1",
                           "OPENAI_URL": "wss://proxy.example/v1/live/sessions"})
    assert (pinned.session_url(), pinned.model) == ("wss://proxy.example/v1/live/sessions",
                                                    "gpt-live-1.1")


def test_a_profile_may_speak_the_other_api(tmp_path):
    path = tmp_path / "rtpai.conf"
    path.write_text("[openai:live]\napi = live\nvoice = marin\n")
    main, profiles = configure({}, str(path))
    assert isinstance(main, RealtimeSettings)
    assert isinstance(profiles["live"], LiveSettings) and profiles["live"].voice == "marin"


def test_the_api_row_names_its_choices():
    with pytest.raises(ConfigError, match="realtime, live"):
        load_config(None, environ={"OPENAI_API": "duplex"})


def test_settings_live_ignores_are_said_once_at_start_up():
    main, _ = configure({"OPENAI_API": "live", "OPENAI_TURN_DETECT_TYPE": "semantic_vad",
                         "OPENAI_TEMPERATURE": "0.7"})
    notes = main.startup_notes()
    assert any("turn_detection_type" in note and "owns turn-taking" in note for note in notes)
    assert any("temperature" in note for note in notes)
    assert configure({"OPENAI_API": "live"})[0].startup_notes() == []


def test_the_flavor_gives_each_profile_its_protocols_session():
    main, _ = configure({"OPENAI_API": "live"})
    assert type(FLAVOR.new_session(main, bridge=_bridge(), poller=None)) is LiveSession
    realtime, _ = configure({})
    assert type(FLAVOR.new_session(realtime, bridge=_bridge(), poller=None)) is RealtimeSession


def test_withheld_tools_stay_withheld_for_live():
    main, _ = configure({"OPENAI_API": "live", "OPENAI_TRANSFER_TARGET": "sip:desk@x"})
    kept, withheld = main.withhold(lambda action: "no proxy" if action == "transfer" else None)
    assert isinstance(kept, LiveSettings) and not kept.transfer_enabled
    assert withheld == {"transfer_call": "no proxy"}
    names = [t["name"] for t in events.session_start(kept, "PCMU", instructions=None)[
        "session"]["delegation"]["responses"]["tools"]]
    assert names == ["end_call"]


def test_the_engine_logs_the_ignored_settings_at_start_up(caplog):
    engine = Engine(load_config(None, environ={"OPENAI_API_KEY": "k", "OPENAI_API": "live",
                                               "OPENAI_MAX_TOKENS": "100"}))
    assert any("max_tokens" in note for note in engine.settings.startup_notes())


def _bridge():
    from media.bridge import CallBridge
    from media.playout import PlayoutQueue
    return CallBridge(call_id="c", codec="PCMU", ptime_ms=20, playout=PlayoutQueue(160, max_bytes=8000),
                      end_call=lambda kind, reason: None, transfer=lambda target: None)


def test_azure_serves_gpt_live_at_its_resource_with_its_api_key_header():
    url = "wss://acme.openai.azure.com/openai/v1/live/sessions"
    main, _ = configure({"OPENAI_API": "live", "OPENAI_PROVIDER": "azure", "OPENAI_URL": url})
    assert main.session_url() == url  # no query: the model goes in session.start
    assert main.headers() == [("api-key", "k")]
    openai, _ = configure({"OPENAI_API": "live", "OPENAI_API_DIALECT": "beta"})
    assert openai.headers() == [("Authorization", "Bearer k")]  # never the beta header


def test_xai_has_no_gpt_live():
    with pytest.raises(ConfigError, match="provider = xai"):
        load_config(None, environ={"OPENAI_API": "live", "OPENAI_PROVIDER": "xai"})


def test_the_delegated_backend_reasons_as_configured():
    main, _ = configure({"OPENAI_API": "live", "OPENAI_REASONING_EFFORT": "low"})
    delegate = events.session_start(main, "PCMU", instructions=None)["session"]["delegation"]
    assert delegate["responses"]["reasoning"] == {"effort": "low"}

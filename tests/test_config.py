"""Configuration: INI plus environment, environment winning, every error naming the setting."""

import math

import pytest

from ctl.config import SETTINGS, ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "rtpai.conf"
    path.write_text(text)
    return str(path)


def test_defaults():
    config = load_config(None, environ={})
    assert config["ng"]["listen"] == ("127.0.0.1", 2223)
    assert config["openai"]["model"] == "gpt-realtime-2.1"
    assert config["openai"]["dialect"] == "ga"
    assert config["openai"]["voice"] is None  # the provider's: alloy on OpenAI (test_providers)
    assert config["openai"]["temperature"] == 0.8
    assert math.isinf(config["openai"]["max_tokens"])
    assert config["openai"]["turn_detection_type"] == "server_vad"
    assert config["openai"]["turn_detection_silence_ms"] == 200
    assert config["openai"]["turn_detection_threshold"] == 0.5
    assert config["openai"]["turn_detection_prefix_ms"] == 300
    assert config["rtp"]["ip"] == "127.0.0.1"
    assert config["openai"]["key"] is None


def test_environment_wins_over_the_file(tmp_path):
    path = write(tmp_path, "[openai]\nvoice = ash\nopenai_key = from-file\n[ng]\nlisten = 2300\n")
    config = load_config(path, environ={"OPENAI_VOICE": "coral"})
    assert config["openai"]["voice"] == "coral"
    assert config["openai"]["key"] == "from-file"  # the alias openai_key
    assert config["ng"]["listen"] == ("127.0.0.1", 2300)
    assert ("openai", "voice") in config.explicit and ("openai", "model") not in config.explicit


@pytest.mark.parametrize(
    "env, message",
    [
        ({"OPENAI_TEMPERATURE": "1.5"}, "[openai] temperature / OPENAI_TEMPERATURE: expected a number from 0.6 to 1.2"),
        ({"OPENAI_MAX_TOKENS": "5000"}, "[openai] max_tokens / OPENAI_MAX_TOKENS: expected an integer from 1 to 4096"),
        ({"OPENAI_TURN_DETECT_TYPE": "loud"}, "OPENAI_TURN_DETECT_TYPE: expected one of server_vad, semantic_vad, none"),
        ({"NG_LISTEN": "nowhere"}, "[ng] listen / NG_LISTEN"),
        ({"RTP_MIN_PORT": "40000", "RTP_MAX_PORT": "40000"}, "RTP_MIN_PORT must be below"),
        ({"RTP_BIND_IP": "0.0.0.0"}, "[rtp] ip / RTP_IP: required"),
        ({"OPENAI_DISABLE": "maybe"}, "[openai] disable / OPENAI_DISABLE"),
        ({"OPENAI_API_DIALECT": "v2"}, "OPENAI_API_DIALECT: expected one of ga, beta"),
        ({"OPENAI_VOICE": "nova"}, "[openai] voice / OPENAI_VOICE: expected one of alloy, ash, ballad, coral, echo, sage, shimmer, verse, marin, cedar"),
        ({"OPENAI_TURN_DETECT_EAGERNESS": "eager"}, "OPENAI_TURN_DETECT_EAGERNESS: expected one of low, medium, high, auto"),
        ({"OPENAI_TOOLS": "{}"}, "[openai] tools / OPENAI_TOOLS: expected a JSON array of tools"),
        ({"OPENAI_TOOLS": "[{"}, "[openai] tools / OPENAI_TOOLS: expected a JSON array of tools"),
        ({"OPENAI_TOOLS": '[{"name": "end_call"}]'}, "tool 0: the name 'end_call' is taken"),
        ({"OPENAI_TOOLS": '[{"name": "has space"}]'}, "tool 0: name must be"),
        ({"OPENAI_TOOLS": '[{"name": "x", "parameters": {"type": "string"}}]'}, "parameters must be a JSON schema of type object"),
        ({"OPENAI_TOOLS": '[{"name": "x"}]'}, "[openai] tool_webhook / OPENAI_TOOL_WEBHOOK: required"),
        ({"OPENAI_TOOL_WEBHOOK": "ftp://x"}, "expected an http:// or https:// URL"),
        ({"OPENAI_TOOL_TIMEOUT": "0"}, "[openai] tool_timeout / OPENAI_TOOL_TIMEOUT: expected a number from 0.1 to 60.0"),
        ({"OPENAI_RECONNECT_TIMEOUT": "-1"}, "[openai] reconnect_timeout / OPENAI_RECONNECT_TIMEOUT: expected a number from 0.0 to 600.0"),
        ({"OPENAI_WELCOME_INTERRUPTIBLE": "perhaps"}, "[openai] welcome_interruptible / OPENAI_WELCOME_INTERRUPTIBLE"),
    ],
)
def test_invalid_values_name_the_setting_and_its_range(env, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=env)
    assert message in str(info.value)


def test_max_tokens_inf_and_numbers():
    assert load_config(None, environ={"OPENAI_MAX_TOKENS": "4096"})["openai"]["max_tokens"] == 4096
    assert math.isinf(load_config(None, environ={"OPENAI_MAX_TOKENS": "inf"})["openai"]["max_tokens"])


def test_secrets_never_appear_in_repr_or_errors(tmp_path):
    config = load_config(None, environ={"OPENAI_API_KEY": "sk-very-secret"})
    assert "sk-very-secret" not in repr(config)
    key_setting = next(s for s in SETTINGS if s.key == "key")
    assert key_setting.secret


def test_unreadable_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "missing.conf"), environ={})
    with pytest.raises(ConfigError, match="not valid INI"):
        load_config(write(tmp_path, "no section here\n"), environ={})


def test_every_setting_is_documented():
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    for setting in SETTINGS:
        assert f"`{setting.env}`" in doc, setting.label
        assert f"`{setting.key}`" in doc, setting.label


def test_tools_from_json_or_a_file(tmp_path):
    from openai_flavor.settings import RealtimeSettings

    declared = '[{"name": "lookup_order", "description": "Find an order", "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}]'
    env = {"OPENAI_TOOLS": declared, "OPENAI_TOOL_WEBHOOK": "http://127.0.0.1:9/tools"}
    config = load_config(None, environ=env)
    (tool,) = config["openai"]["tools"]
    assert tool.name == "lookup_order" and tool.parameters["properties"]["id"]["type"] == "string"
    path = tmp_path / "tools.json"
    path.write_text(declared)
    from_file = load_config(None, environ={**env, "OPENAI_TOOLS": f"@{path}"})
    assert from_file["openai"]["tools"] == config["openai"]["tools"]
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(None, environ={**env, "OPENAI_TOOLS": f"@{tmp_path}/absent.json"})
    settings = RealtimeSettings.from_config(config["openai"])
    assert settings.tools == config["openai"]["tools"]


def test_transcription_transfer_and_welcome_settings():
    from openai_flavor.settings import RealtimeSettings

    config = load_config(None, environ={
        "OPENAI_TRANSCRIPTION_MODEL": "none",
        "OPENAI_TRANSFER_ALLOW": "sip:sales@example.com, sip:support@example.com,",
        "OPENAI_WELCOME_MSG": "Hi", "OPENAI_WELCOME_INTERRUPTIBLE": "no",
    })
    settings = RealtimeSettings.from_config(config["openai"])
    assert settings.transcription_model is None
    assert settings.transfer_allow == ("sip:sales@example.com", "sip:support@example.com")
    assert settings.transfer_enabled and settings.transfer_allowed("sip:sales@example.com")
    assert not settings.transfer_allowed("sip:premium-rate@example.com")
    assert settings.welcome_guarded
    defaults = RealtimeSettings.from_config(load_config(None, environ={})["openai"])
    assert defaults.transcription_model == "gpt-4o-mini-transcribe"
    assert not defaults.transfer_enabled and not defaults.welcome_guarded
    assert defaults.end_call_tool and defaults.reconnect_timeout == 20
    assert defaults.dtmf_terminator == "#"
    for written, terminator in (("*", "*"), ("none", None)):
        section = load_config(None, environ={"OPENAI_DTMF_TERMINATOR": written})["openai"]
        assert RealtimeSettings.from_config(section).dtmf_terminator == terminator


def test_start_up_notes_for_settings_the_dialect_does_not_send():
    from openai_flavor.settings import RealtimeSettings

    def notes(env):
        config = load_config(None, environ=env)
        explicit = frozenset(k for s, k in config.explicit if s == "openai")
        return RealtimeSettings.from_config(config["openai"], explicit=explicit).startup_notes()

    assert notes({}) == []
    assert notes({"OPENAI_API_DIALECT": "beta", "OPENAI_TEMPERATURE": "0.9"}) == []
    (note,) = notes({"OPENAI_TEMPERATURE": "0.9"})
    assert "temperature" in note and "not sent" in note
    (note,) = notes({"OPENAI_TURN_DETECT_TYPE": "semantic_vad", "OPENAI_TURN_DETECT_THRESHOLD": "0.7"})
    assert "turn_detection_threshold" in note and "semantic_vad" in note


def test_a_profile_with_tools_needs_a_tool_webhook(tmp_path):
    """Issue 16: [openai:NAME] tools without any tool_webhook once passed validation and hit an
    assert at the first tool call; it is a configuration error naming the profile's setting."""
    tools = '[{"name": "lookup_order"}]'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"[openai:sales]\ntools = {tools}\n"), environ={})
    assert str(info.value) == (
        "[openai:sales] tool_webhook: required when [openai:sales] tools declares tools "
        "(their calls are forwarded to it)"
    )
    # The webhook may come from the profile or from [openai] (and its environment name).
    in_profile = f"[openai:sales]\ntools = {tools}\ntool_webhook = http://127.0.0.1:9/t\n"
    assert load_config(write(tmp_path, in_profile), environ={}).profiles["sales"]["tools"]
    inherited = load_config(write(tmp_path, f"[openai:sales]\ntools = {tools}\n"),
                            environ={"OPENAI_TOOL_WEBHOOK": "http://127.0.0.1:9/t"})
    assert inherited.profiles["sales"]["tool_webhook"] == "http://127.0.0.1:9/t"

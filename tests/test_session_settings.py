"""The session settings callers notice (issue 15, part 3): each validated with its range, sent
only in the shape and model that has it, and accepted by the strict fake as sent."""

from __future__ import annotations

import pytest
import trio

from ctl.config import ConfigError, load_config
from openai_flavor import session_update
from openai_flavor.mcp import McpServer
from openai_flavor.settings import RealtimeSettings
from tests.fakes.realtime import FakeRealtimeServer, tone
from tests.fakes.session import wait_until
from tests.test_openai_session import errors, harness


def settings(**overrides) -> RealtimeSettings:
    return RealtimeSettings(**{"url": "ws://x/v1/realtime", "model": "gpt-realtime-2.1",
                               "api_key": "k", **overrides})


@pytest.mark.parametrize("env, message", [
    ({"OPENAI_SPEED": "2"}, "[openai] speed / OPENAI_SPEED: expected a number from 0.25 to 1.5"),
    ({"OPENAI_TRUNCATION": "1.5"}, "expected auto, disabled or a retention ratio from 0.0 to 1.0"),
    ({"OPENAI_TRANSCRIPTION_LANGUAGE": "english"}, "expected a two-letter ISO-639-1 code"),
    ({"OPENAI_REASONING_EFFORT": "max"},
     "expected one of minimal, low, medium, high, xhigh"),
    ({"OPENAI_NOISE_REDUCTION": "car"}, "expected one of near_field, far_field, off"),
    ({"OPENAI_PROMPT_ID": "pmpt_1", "OPENAI_PROMPT_VARIABLES": '{"n": 3}'},
     "expected a JSON object whose values are strings"),
    ({"OPENAI_PROMPT_VERSION": "2"}, "prompt_version / OPENAI_PROMPT_VERSION: needs"),
    ({"OPENAI_TOOL_CHOICE": "lookup"}, "tool_choice / OPENAI_TOOL_CHOICE: expected auto, none"),
    ({"OPENAI_TOOL_CHOICE": "crm:find"}, "'crm' is not one of the MCP servers"),
    ({"OPENAI_MCP": "crm"}, "[openai] mcp: no [mcp:crm] section"),
    ({"OPENAI_TOOL_CHOICE": "crm:find", "OPENAI_API_DIALECT": "beta"},
     "MCP tools exist in the GA session only"),
    ({"OPENAI_IDLE_REPROMPT_S": "-1"}, "expected a number from 0.0 to 600.0"),
    ({"OPENAI_BARGE_IN_MIN_MS": "5000"}, "expected an integer from 0 to 3000"),
])
def test_each_session_setting_is_validated_with_its_range(env, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=env)
    assert message in str(info.value)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "rtpai.conf"
    path.write_text(text)
    return str(path)


def test_mcp_servers_come_from_named_sections_with_headers_from_the_environment(tmp_path):
    path = write(tmp_path, """
[mcp:crm]
server_url = https://mcp.example.com/sse?token=url-secret
allowed_tools = lookup_customer, open_ticket
headers = Authorization=CRM_TOKEN
description = Customer records
[openai]
mcp = crm
tool_choice = crm:lookup_customer
[openai:sales]
mcp =
tool_choice = auto
""")
    config = load_config(path, environ={"CRM_TOKEN": "Bearer header-secret"})
    (server,) = config["openai"]["mcp"]
    assert server == McpServer("crm", "https://mcp.example.com/sse?token=url-secret",
                               "Customer records", ("lookup_customer", "open_ticket"),
                               {"Authorization": "Bearer header-secret"})
    assert config.profiles["sales"]["mcp"] == ()
    # Both secrets are redacted from logs, and neither shows in the configuration's repr.
    secrets = config.secrets()
    assert "Bearer header-secret" in secrets and "token=url-secret" in secrets
    assert "secret" not in repr(config)
    session = session_update.session_update(
        RealtimeSettings.from_config(config["openai"]), "PCMU")["session"]
    assert session["tools"][-1] == {
        "type": "mcp", "server_label": "crm", "server_url": server.server_url,
        "require_approval": "never", "server_description": "Customer records",
        "allowed_tools": ["lookup_customer", "open_ticket"],
        "headers": {"Authorization": "Bearer header-secret"}}
    assert session["tool_choice"] == {"type": "mcp", "server_label": "crm",
                                      "name": "lookup_customer"}


@pytest.mark.parametrize("section, message", [
    ("[mcp:crm]\nallowed_tools = a\n", "[mcp:crm] server_url: required"),
    ("[mcp:crm]\nserver_url = https://m\nheaders = X-Key=NOT_SET\n",
     "the environment variable NOT_SET is not set"),
    ("[mcp:crm]\nserver_url = https://m\nrequire_approval = always\n",
     "[mcp:crm] require_approval: expected one of never"),
    ("[mcp:crm]\nserver_url = https://m\ncolour = red\n", "[mcp:crm] colour: unknown setting"),
    ("[mcp:crm]\nserver_url = ftp://m\n", "[mcp:crm] server_url: expected an https://"),
])
def test_a_broken_mcp_section_is_refused_naming_it(tmp_path, section, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, section + "[openai]\nmcp = crm\n"), environ={})
    assert message in str(info.value)
    assert "ftp://m" not in str(info.value)  # a server URL is a secret: never echoed


def test_ga_session_carries_each_setting_where_the_types_have_it():
    session = session_update.session_update(settings(
        reasoning_effort="low", noise_reduction="far_field", speed=1.2, truncation=0.8,
        transcription_language="de", prompt_id="pmpt_1", prompt_version="3",
        prompt_variables={"city": "Paris"}, tool_choice="end_call"), "PCMA")["session"]
    assert session["reasoning"] == {"effort": "low"}
    assert session["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
    assert session["audio"]["output"]["speed"] == 1.2
    assert session["truncation"] == {"type": "retention_ratio", "retention_ratio": 0.8}
    assert session["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe",
                                                          "language": "de"}
    assert session["prompt"] == {"id": "pmpt_1", "version": "3", "variables": {"city": "Paris"}}
    assert session["tool_choice"] == {"type": "function", "name": "end_call"}
    # The defaults add nothing to what was sent before these settings existed.
    plain = session_update.session_update(settings(), "PCMU")["session"]
    assert {"reasoning", "truncation", "prompt"}.isdisjoint(plain)
    assert "noise_reduction" not in plain["audio"]["input"]
    assert "speed" not in plain["audio"]["output"]


def test_each_setting_is_left_out_of_the_shapes_and_models_without_it():
    extras = dict(reasoning_effort="high", truncation="disabled", prompt_id="pmpt_1",
                  noise_reduction="near_field", speed=0.9, transcription_language="fr")
    older = session_update.session_update(settings(model="gpt-realtime", **extras), "PCMU")
    assert "reasoning" not in older["session"]  # not a gpt-realtime-2.x model
    beta = session_update.session_update(settings(dialect="beta", **extras), "PCMU")["session"]
    assert {"reasoning", "truncation", "prompt"}.isdisjoint(beta)
    assert beta["input_audio_noise_reduction"] == {"type": "near_field"}
    assert beta["speed"] == 0.9 and beta["input_audio_transcription"]["language"] == "fr"
    xai = session_update.session_update(settings(provider="xai", **extras), "PCMU")["session"]
    assert set(xai) == {"turn_detection", "audio", "tools"}  # no voice set: the server's
    notes = settings(model="gpt-realtime", explicit=frozenset({"reasoning_effort"}),
                     reasoning_effort="low").startup_notes()
    assert notes == ["[openai] reasoning_effort applies to gpt-realtime-2.x models only; with "
                     "gpt-realtime it is not sent"]


@pytest.mark.trio
@pytest.mark.parametrize("model, reasoning", [("gpt-realtime-2.1", True),
                                              ("gpt-realtime-1.5", False)])
async def test_the_strict_ga_fake_accepts_every_session_setting_as_sent(model, reasoning):
    """All of part 3 in one GA session: the fake rejects any field it does not know, and
    reasoning for a model without it; not one error comes back."""
    server = FakeRealtimeServer(reply_audio=tone("pcmu", 200), speed=0)
    mcp = McpServer("crm", "https://mcp.example.com", "CRM", ("find",), {"X-Key": "v"})
    with trio.fail_after(10):
        async with harness(
            server, model=model, reasoning_effort="medium", noise_reduction="far_field",
            speed=1.25, truncation=0.5, transcription_language="en", prompt_id="pmpt_abc",
            prompt_version="2", prompt_variables={"name": "Ada"}, mcp=(mcp,),
            tool_choice="crm:find",
        ) as h:
            fake = await server.wait_for_session()
            await wait_until(h.session, lambda s: s.ready)
            await h.speak()
            await wait_until(h.session, lambda s: s.stats.responses == 1)
            session = fake.session
            assert ("reasoning" in session) is reasoning
            assert session["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
            assert session["audio"]["output"]["speed"] == 1.25
            assert session["truncation"]["retention_ratio"] == 0.5
            assert session["prompt"]["variables"] == {"name": "Ada"}
            assert session["tools"][-1]["type"] == "mcp"
            assert errors(fake) == []

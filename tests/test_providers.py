"""OpenAI-compatible providers as configuration: ``[openai] provider = openai | azure | xai``.

Each provider's URL, credentials and session shape (openai_flavor/providers.py) against the
strict fake in that provider's shape: Azure's endpoint and api-key header, xAI's session,
voices, first event and missing truncate. A wrong shape is an error event (or a rejected
upgrade) in the fake, which these tests assert never happens.
"""

from __future__ import annotations

import pytest
import trio

from ctl.config import ConfigError, load_config
from openai_flavor.settings import RealtimeSettings
from tests.fakes.realtime import FakeRealtimeServer, tone
from tests.fakes.session import wait_until
from tests.test_openai_session import FRAME, errors, harness


def settings(**overrides) -> RealtimeSettings:
    return RealtimeSettings(**{"url": None, "model": "gpt-realtime-2.1", "api_key": "k",
                               **overrides})


# --- the table -------------------------------------------------------------------------------


def test_openai_is_the_default_endpoint_with_the_model_and_a_bearer_key():
    s = settings()
    assert s.session_url() == "wss://api.openai.com/v1/realtime?model=gpt-realtime-2.1"
    assert s.headers() == [("Authorization", "Bearer k")]
    assert s.voice_name == "alloy" and s.shape == "ga"
    beta = settings(dialect="beta")
    assert beta.headers() == [("Authorization", "Bearer k"), ("OpenAI-Beta", "realtime=v1")]


def test_azure_names_its_deployment_and_sends_an_api_key_header():
    ga = settings(provider="azure", model="my-deploy",
                  url="wss://res.openai.azure.com/openai/v1/realtime")
    assert ga.session_url() == "wss://res.openai.azure.com/openai/v1/realtime?model=my-deploy"
    assert ga.headers() == [("api-key", "k")]  # no OpenAI-Beta, no bearer
    preview = settings(provider="azure", model="my-deploy", dialect="beta",
                       api_version="2025-04-01-preview",
                       url="wss://res.openai.azure.com/openai/realtime")
    assert preview.session_url() == ("wss://res.openai.azure.com/openai/realtime?"
                                     "api-version=2025-04-01-preview&deployment=my-deploy")
    assert preview.headers() == [("api-key", "k")]
    entra = settings(provider="azure", model="d", url="wss://r/openai/v1/realtime", auth="bearer")
    assert entra.headers() == [("Authorization", "Bearer k")]


def test_xai_names_a_model_only_when_set_and_spells_voices_as_its_docs():
    s = settings(provider="xai", voice="eve")
    assert s.session_url() == "wss://api.x.ai/v1/realtime"
    assert s.voice_name == "Eve" and s.shape == "xai"
    assert settings(provider="xai").voice_name is None  # the server's own default
    named = settings(provider="xai", model="grok-voice-latest", explicit=frozenset({"model"}))
    assert named.session_url() == "wss://api.x.ai/v1/realtime?model=grok-voice-latest"


@pytest.mark.parametrize("env, message", [
    ({"OPENAI_PROVIDER": "azure"}, "[openai] url / OPENAI_URL: required with provider = azure"),
    ({"OPENAI_API_VERSION": "2025-04-01-preview"},
     "[openai] api_version / OPENAI_API_VERSION: only Azure's preview endpoint takes one"),
    ({"OPENAI_PROVIDER": "xai", "OPENAI_VOICE": "alloy"},
     "[openai] voice / OPENAI_VOICE: expected one of Ara, Eve, Leo, Rex, Sal"),
    ({"OPENAI_PROVIDER": "xai", "OPENAI_API_DIALECT": "beta"}, "xAI speaks its own session"),
    ({"OPENAI_PROVIDER": "bedrock"}, "expected one of openai, azure, xai"),
    ({"OPENAI_AUTH": "basic"}, "expected one of bearer, api-key"),
])
def test_provider_settings_that_cannot_work_are_refused(env, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=env)
    assert message in str(info.value)


def test_provider_notes_say_what_is_not_sent():
    config = load_config(None, environ={
        "OPENAI_PROVIDER": "xai", "OPENAI_NOISE_REDUCTION": "far_field",
        "OPENAI_TURN_DETECT_THRESHOLD": "0.7", "OPENAI_WELCOME_MSG": "Hi",
        "OPENAI_WELCOME_INTERRUPTIBLE": "false"})
    explicit = frozenset(k for section, k in config.explicit if section == "openai")
    notes = RealtimeSettings.from_config(config["openai"], explicit=explicit).startup_notes()
    assert any("noise_reduction: not part of the xai session" in n for n in notes)
    assert any("turn_detection_threshold" in n and "provider = xai" in n for n in notes)
    assert any("welcome_interruptible" in n for n in notes)


# --- against the fake in each provider's shape -----------------------------------------------


async def converse(h, fake, reply: bytes) -> None:
    """A welcome, then a caller turn answered: the whole path in the provider's shape."""
    h.bridge.media_started.set()
    await wait_until(h.session, lambda s: s.stats.responses == 1)
    assert b"".join(h.play(len(reply) // FRAME)) == reply
    h.play_all()
    await h.speak()
    await wait_until(h.session, lambda s: s.stats.responses == 2)
    assert bytes(fake.audio_in) == b"\x55" * FRAME * 30


@pytest.mark.trio
@pytest.mark.parametrize("auth", ["api-key", "bearer"])
async def test_azure_ga_endpoint_deployment_and_key(auth):
    reply = tone("pcmu", 400)
    server = FakeRealtimeServer(provider="azure", reply_audio=reply, speed=0)
    with trio.fail_after(10):
        async with harness(server, provider="azure", model="rtpai-realtime", auth=auth,
                           welcome_message="Hello") as h:
            fake = await server.wait_for_session()
            assert fake.path == "/openai/v1/realtime?model=rtpai-realtime"
            assert fake.model == "rtpai-realtime"
            if auth == "api-key":
                assert fake.headers["api-key"] == "test-key"
                assert "authorization" not in fake.headers
            else:
                assert fake.headers["authorization"] == "Bearer test-key"
            await converse(h, fake, reply)
            assert errors(fake) == []


@pytest.mark.trio
async def test_azure_preview_endpoint_speaks_beta_with_its_api_version():
    reply = tone("pcmu", 400)
    server = FakeRealtimeServer(provider="azure", beta=True, reply_audio=reply, speed=0)
    with trio.fail_after(10):
        async with harness(server, provider="azure", model="rtpai-preview", dialect="beta",
                           api_version="2025-04-01-preview", welcome_message="Hello") as h:
            fake = await server.wait_for_session()
            assert fake.model == "rtpai-preview" and "openai-beta" not in fake.headers
            await converse(h, fake, reply)
            assert fake.session["input_audio_format"] == "g711_ulaw"
            assert errors(fake) == []


@pytest.mark.trio
async def test_xai_session_shape_voice_and_welcome_without_truncate():
    reply = tone("pcmu", 1000)
    server = FakeRealtimeServer(provider="xai", reply_audio=reply, speed=0)
    with trio.fail_after(10):
        async with harness(server, provider="xai", voice="rex", instructions="Be brief.",
                           welcome_message="Hello") as h:
            fake = await server.wait_for_session()
            assert fake.model is None and fake.headers["authorization"] == "Bearer test-key"
            assert fake.server_events[0]["type"] == "conversation.created"
            update = (await fake.wait_for_client_event("session.update"))["session"]
            assert update["voice"] == "Rex" and update["turn_detection"] == {"type": "server_vad"}
            assert update["audio"]["input"]["format"] == {"type": "audio/pcmu", "rate": 8000}
            h.bridge.media_started.set()
            # The welcome: xAI documents no instructions on response.create.
            welcome = await fake.wait_for_client_event("conversation.item.create")
            assert welcome["item"]["role"] == "system"
            assert "Hello" in welcome["item"]["content"][0]["text"]
            assert (await fake.wait_for_client_event("response.create")) == {
                "type": "response.create"}
            await wait_until(h.session, lambda s: s.stats.responses == 1)
            h.play(7)
            await h.speak()  # barge-in: the server stops itself; no truncate is sent
            await wait_until(h.session, lambda s: s.stats.barge_ins == 1)
            await wait_until(h.session, lambda s: s.stats.responses >= 2)
            assert h.session.stats.truncations == 0
            assert fake.events_of("conversation.item.truncate") == []
            assert h.session.snapshot()["dialect"] == "xai"
            assert errors(fake) == []

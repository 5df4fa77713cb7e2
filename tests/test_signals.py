"""Signals to the real daemon: none of them ends a call without a drain (issue 11, part 5).

SIGTERM/SIGINT drain, a second one stops at once; SIGHUP reloads [log] and [openai]; SIGUSR1
logs a state line; SIGUSR2, SIGALRM and SIGPIPE are harmless. Each test waits on the daemon's
log line or an ng reply, never on time.
"""

from __future__ import annotations

import io
import logging
import os
import signal

import pytest
import trio

from ctl.client import send_command
from ctl.config import load_config
from ctl.daemon import reload_config
from ctl.engine import Engine
from ctl.logs import RedactSecrets, configure_logging
from tests.fakes.daemon import running_daemon
from tests.fakes.realtime import FakeRealtimeServer

OFFER = (
    "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
)


def ng_address(log: bytes) -> tuple[str, int]:
    line = log[log.index(b"rtpai ready: ng on "):].split(b"\n", 1)[0]
    host, _, port = line.rsplit(b" ", 1)[1].decode().rpartition(":")
    return host, int(port)


async def ng(address, command, **params):
    return await trio.to_thread.run_sync(send_command, address, command, params or None)


def daemon_env(url: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "OPENAI_URL": url, "OPENAI_API_KEY": "sig-key",
           "NG_LISTEN": "127.0.0.1:0", "RTP_MIN_PORT": "43500", "RTP_MAX_PORT": "43599",
           "NG_SHUTDOWN_GRACE": "0",  # leaving the test: SIGTERM ends the calls at once
           **extra}
    env.pop("LOG_LEVEL", None)
    return env


async def offer_call(address, call_id: str) -> None:
    reply = await ng(address, "offer", **{"call-id": call_id, "from-tag": "ft", "sdp": OFFER})
    assert reply["result"] == "ok", reply


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM,
                                    signal.SIGPIPE, signal.SIGHUP])
async def test_stray_signals_never_end_the_daemon_nor_its_calls(signum):
    server = FakeRealtimeServer(api_key="sig-key", respond_after_ms=None)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            async with running_daemon(daemon_env(url)) as (daemon, log):
                address = ng_address(log)
                await offer_call(address, "kept")
                await server.wait_for_session(1)
                for count in range(1, 4):  # also repeated: each is handled, none is fatal
                    daemon.send_signal(signum)
                    # (One at a time: a signal sent while the same one is pending is merged.)
                    if signum != signal.SIGPIPE:  # Python ignores SIGPIPE from start-up
                        await log.wait_for(f"received {signum.name}".encode(), count=count)
                    assert (await ng(address, "ping"))["result"] == "pong"
                query = await ng(address, "query", **{"call-id": "kept"})
                assert query["rtpai"]["state"] in ("offered", "active")
                assert daemon.returncode is None
            assert daemon.returncode == 0  # the SIGTERM on leaving: a clean drain
            nursery.cancel_scope.cancel()


async def test_sigusr1_logs_one_line_of_state():
    server = FakeRealtimeServer(api_key="sig-key", respond_after_ms=None)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            async with running_daemon(daemon_env(url)) as (daemon, log):
                address = ng_address(log)
                await offer_call(address, "one")
                await offer_call(address, "two")
                await server.wait_for_session(2)
                daemon.send_signal(signal.SIGUSR1)
                end = await log.wait_for(b"received SIGUSR1: ")
                line = log[end:].split(b"\n", 1)[0]
                await log.wait_for(b"\n", start=end)
                line = log[end:].split(b"\n", 1)[0].decode()
            nursery.cancel_scope.cancel()
    assert line.startswith("calls: 2 offered; ports in use: 2/50 pairs; AI sessions: 2 open")


async def test_second_sigterm_during_the_drain_stops_at_once():
    # A grace of an hour: only the second signal can end the drain in this test's bound.
    server = FakeRealtimeServer(api_key="sig-key", respond_after_ms=None)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            env = daemon_env(url, NG_SHUTDOWN_GRACE="3600")
            async with running_daemon(env) as (daemon, log):
                address = ng_address(log)
                await offer_call(address, "long")
                await server.wait_for_session(1)
                daemon.send_signal(signal.SIGTERM)
                await log.wait_for(b"draining: 1 calls")
                # Draining: alive, answering, refusing new calls so the proxy fails over.
                assert (await ng(address, "ping"))["result"] == "pong"
                refused = await ng(address, "offer", **{"call-id": "new", "from-tag": "f",
                                                        "sdp": OFFER})
                assert refused["result"] == "error"  # no "supports": load-limit, as rtpengine
                assert "limit" in refused["error-reason"]
                daemon.send_signal(signal.SIGUSR1)  # not a stop signal, even now
                await log.wait_for(b"; draining")
                assert daemon.returncode is None
                daemon.send_signal(signal.SIGTERM)
                await daemon.wait()
                assert b"received SIGTERM again: stopping now" in log
            assert daemon.returncode == 0
            nursery.cancel_scope.cancel()


async def test_sighup_reloads_openai_for_new_calls_and_names_what_needs_a_restart(tmp_path):
    server = FakeRealtimeServer(api_key="sig-key", respond_after_ms=None)
    config = tmp_path / "rtpai.conf"
    config.write_text("[rtp]\nmin_port = 43500\nmax_port = 43599\n[log]\nlevel = info\n")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            env = daemon_env(url)
            for name in ("RTP_MIN_PORT", "RTP_MAX_PORT"):
                env.pop(name)
            async with running_daemon(env, "--config", str(config)) as (daemon, log):
                address = ng_address(log)
                await offer_call(address, "before")
                await server.wait_for_session(1)

                # An invalid file changes nothing.
                config.write_text("[openai]\ntemperature = 9\n")
                daemon.send_signal(signal.SIGHUP)
                await log.wait_for(b"configuration not reloaded, nothing changed: "
                                   b"[openai] temperature")
                await offer_call(address, "still-fine")

                config.write_text("[rtp]\nmin_port = 44000\nmax_port = 44099\n"
                                  "[openai]\ndisable = true\n")
                daemon.send_signal(signal.SIGHUP)
                await log.wait_for(b"configuration reloaded")
                assert b"need a restart (not applied): [rtp] min_port / RTP_MIN_PORT, " \
                       b"[rtp] max_port / RTP_MAX_PORT" in log
                refused = await ng(address, "offer", **{"call-id": "after", "from-tag": "f",
                                                        "sdp": OFFER})
                assert refused["result"] == "error"
                assert "disabled" in refused["error-reason"]
                # The call up before the reload goes on with the settings it started with.
                query = await ng(address, "query", **{"call-id": "before"})
                assert query["rtpai"]["state"] in ("offered", "active")
                assert query["tags"]["ft"]["medias"][0]["streams"][0]["local port"] < 44000
            nursery.cancel_scope.cancel()


def test_reload_applies_the_log_level_and_redacts_a_new_key_first(tmp_path):
    """The part of SIGHUP the daemon test cannot see (its LOG_LEVEL comes from the
    environment, which wins over the file): the level, and a rotated key's redaction."""
    config = tmp_path / "rtpai.conf"
    config.write_text("[openai]\nkey = sk-first-key\n[log]\nlevel = info\n")
    engine = Engine(load_config(str(config), environ={}))
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        redactor = configure_logging("info", engine.config.secrets(), stream)
        config.write_text("[openai]\nkey = sk-rotated-key\n[log]\nlevel = debug\n")
        assert reload_config(engine, str(config), redactor, environ={}) is not None
        assert root.level == logging.DEBUG
        assert engine.settings.api_key == "sk-rotated-key"  # for calls offered from now on
        logging.getLogger("rtpai.test").debug("keys sk-first-key sk-rotated-key")
    finally:
        root.handlers[:], root.level = saved
    assert "keys [redacted] [redacted]" in stream.getvalue()


def test_reload_replaces_the_ng_allow_list_without_a_restart(tmp_path, caplog):
    """Adding a proxy to [ng] allow takes a SIGHUP, not a restart that drops every call."""
    config = tmp_path / "rtpai.conf"
    config.write_text("[openai]\nkey = sk-k\n[ng]\nallow = 192.0.2.1\n")
    engine = Engine(load_config(str(config), environ={}))
    assert not engine.dispatcher.acl.allows("198.51.100.7")
    config.write_text("[openai]\nkey = sk-k\n[ng]\nallow = 192.0.2.1, 198.51.100.0/24\n")
    with caplog.at_level(logging.INFO):
        assert reload_config(engine, str(config), RedactSecrets(), environ={}) is not None
    assert engine.dispatcher.acl.allows("198.51.100.7")
    assert engine.dispatcher.acl.allows("192.0.2.1")
    assert "need a restart" not in caplog.text


def test_reload_keeps_withholding_the_tools_the_proxy_cannot_carry_out(tmp_path):
    """With no proxy to end calls, end_call is not offered; a SIGHUP must not offer it again."""
    config = tmp_path / "rtpai.conf"
    config.write_text("[openai]\nkey = sk-k\n[openai:sales]\nvoice = ash\n")
    engine = Engine(load_config(str(config), environ={}))
    assert not engine.settings.end_call_tool and not engine.profiles["sales"].end_call_tool
    assert reload_config(engine, str(config), RedactSecrets(), environ={}) is not None
    assert not engine.settings.end_call_tool and not engine.profiles["sales"].end_call_tool

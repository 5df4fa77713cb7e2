"""The two commands as a user runs them: the `rtpai` daemon and `rtpai-ctl`."""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest
import trio

from media.sdp import parse_sdp
from tests.fakes.daemon import running_daemon
from tests.fakes.realtime import FakeRealtimeServer

OFFER = (
    "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 8 0\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def ctl(ng: str, *args: str, stdin: bytes | None = None) -> trio.CompletedProcess:
    return await trio.run_process(
        [sys.executable, "-m", "ctl.client", "--ng", ng, *args],
        stdin=stdin, capture_stdout=True, capture_stderr=True, check=False,
    )


async def test_daemon_and_ctl_ping_offer_delete(tmp_path):
    server = FakeRealtimeServer(api_key="cli-key", respond_after_ms=None)
    port = free_udp_port()
    ng = f"127.0.0.1:{port}"
    config = tmp_path / "rtpai.conf"
    config.write_text(f"[ng]\nlisten = {ng}\n[rtp]\nmin_port = 43000\nmax_port = 43099\n"
                      "[openai]\nkey = cli-key\n")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            env = {**os.environ, "OPENAI_URL": url}
            env.pop("OPENAI_API_KEY", None)  # the key comes from the file
            async with running_daemon(env, "--config", str(config)) as (daemon, log):
                pong = await ctl(ng, "ping")
                assert pong.returncode == 0 and pong.stdout.strip() == b"pong"

                offer = await ctl(ng, "offer", "--call-id", "cli-1", "--from-tag", "t1",
                                  "--sdp-file", "-", stdin=OFFER.encode())
                assert offer.returncode == 0, offer.stderr
                answer = parse_sdp(offer.stdout.decode())
                assert answer.media[0].codecs[0].encoding == "PCMA"  # the offer's order
                await server.wait_for_session(1)

                listing = await ctl(ng, "list", "--ids-only")
                assert listing.stdout.split() == [b"cli-1"]
                table = (await ctl(ng, "list")).stdout.decode().splitlines()
                assert table[0].split()[:4] == ["CALL-ID", "STATE", "AGE", "CODEC"]
                assert table[1].split()[0] == "cli-1" and "PCMA/20ms" in table[1]

                summary = (await ctl(ng, "query", "--call-id", "cli-1")).stdout.decode()
                assert summary.startswith("call cli-1: offered")
                assert "PCMA/20 ms" in summary and "gpt-realtime-2.1 (ga)" in summary

                deleted = await ctl(ng, "--json", "delete", "--call-id", "cli-1")
                reply = json.loads(deleted.stdout)
                assert reply["result"] == "ok" and reply["rtpai"]["codec"] == "PCMA"

                unknown = await ctl(ng, "query", "--call-id", "nope")
                assert unknown.returncode == 1 and b"Unknown call-id" in unknown.stderr
            assert daemon.returncode == 0  # SIGTERM is a clean shutdown
            assert b"cli-key" not in log  # the key never reaches the log
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "env, message",
    [
        ({"OPENAI_TEMPERATURE": "2"}, b"[openai] temperature / OPENAI_TEMPERATURE"),
        ({"RTP_MIN_PORT": "70000"}, b"[rtp] min_port / RTP_MIN_PORT"),
    ],
)
async def test_daemon_refuses_to_start_with_an_invalid_setting(env, message):
    result = await trio.run_process(
        [sys.executable, "-m", "ctl.daemon"], env={**os.environ, **env},
        capture_stderr=True, check=False,
    )
    assert result.returncode == 2 and message in result.stderr


async def test_ctl_reports_a_silent_engine():
    port = free_udp_port()  # nothing listens: connected UDP gets "connection refused"
    result = await ctl(f"127.0.0.1:{port}", "ping")
    assert result.returncode == 2 and b"rtpai-ctl:" in result.stderr


@pytest.mark.parametrize("pure", [True, False], ids=["RTPAI_PURE_PYTHON", "compiled"])
async def test_the_daemon_says_once_at_start_up_which_per_packet_path_runs(pure):
    """media/native.py: one line, compiled or pure Python and why (issue 14)."""
    if not pure:
        from tests.native_paths import require_compiled

        require_compiled()
    env = {**os.environ, "NG_LISTEN": f"127.0.0.1:{free_udp_port()}", "OPENAI_API_KEY": "k",
           "RTPAI_PURE_PYTHON": "1" if pure else ""}
    with trio.fail_after(30):
        async with running_daemon(env) as (_, log):
            text = log.decode()
    lines = [line for line in text.splitlines() if "per-packet" in line]
    assert len(lines) == 1, text
    if pure:
        assert "pure Python" in lines[0] and "RTPAI_PURE_PYTHON is set" in lines[0]
    else:
        assert "compiled (media._fast, openai_flavor._fast, ctl._fast, media._fast_sdp)" in lines[0]

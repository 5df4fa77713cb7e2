"""``rtpai-ctl top`` and the readable ``rtpai-ctl query``: the frame as a pure function, and the
real thing in a real terminal (tmux) against the real daemon with a call."""

from __future__ import annotations

import os
import sys

import trio

from ctl.client import format_query
from ctl.top import Frame, render
from tests.fakes.daemon import running_daemon
from tests.fakes.realtime import FakeRealtimeServer
from tests.peers import require_tool
from tests.test_cli import OFFER, ctl, free_udp_port

QUERY = {
    "result": "ok", "created": 1_000_000, "SSRC": {"1": {"average MOS": {"MOS": 43}}},
    "rtpai": {
        "state": "active", "codec": "PCMA", "ptime": 20, "lost": 3, "jitter ms": 1.5,
        "rtp in": {"packets": 1500, "bytes": 258000}, "rtp out": {"packets": 1490},
        "dropped": {"late": 2, "malformed": 0},
        "ai": {"state": "open", "model": "gpt-realtime-2.1", "dialect": "ga", "responses": 4,
               "response latency ms": {"last": 612.4},
               "usage": {"total_tokens": 1234, "input_token_details": {"audio_tokens": 900}},
               "cost": {"usd": 0.0421, "model": "gpt-realtime-2.1",
                        "prices_as_of": "2026-12-01"},
               "transcript": [{"role": "assistant", "text": "Hello, how can I help?",
                               "at s": 0.4},
                              {"role": "caller", "text": "My order.", "at s": 3.25}]},
    },
}


def test_a_frame_shows_each_call_with_its_figures():
    frame = Frame(statistics={"currentstatistics": {"sessionsown": 1}}, taken_at=1_000_090,
                  calls=[("abc@host", QUERY), ("gone-1", {"result": "error"})])
    lines = render(frame, width=120, address="127.0.0.1:2223")
    header, row, gone = lines[-3:]
    assert header.split() == ["CALL-ID", "STATE", "AGE", "CODEC", "RX", "TX", "LOST", "MOS",
                              "AI", "LATENCY", "TOKENS", "COST"]
    assert row.split() == ["abc@host", "active", "1:30", "PCMA/20", "1500", "1490", "3", "4.3",
                           "open", "612ms", "1234", "$0.0421"]
    assert gone.split()[:2] == ["gone-1", "gone"]
    assert "1 active" in lines[1]
    assert all(len(line) <= 40 for line in render(frame, width=40, address="x"))


def test_query_prints_the_figures_and_the_transcript_readably():
    text = format_query("abc@host", QUERY)
    assert "  cost       $0.0421 (gpt-realtime-2.1, prices of 2026-12-01)" in text
    assert "MOS 4.3" in text and "dropped    late 2" in text
    assert "    [    0.4s] assistant: Hello, how can I help?" in text
    assert "    [    3.2s]    caller: My order." in text


async def tmux(*args: str) -> trio.CompletedProcess:
    return await trio.run_process([require_tool("tmux"), "-L", f"rtpai-test-{os.getpid()}",
                                   *args], capture_stdout=True, capture_stderr=True,
                                  check=False)


async def screen_showing(needle: str) -> str:
    """The pane's text once it shows ``needle``. A terminal has no event for "drawn": the
    pane is read every 100 ms (the caller bounds the wait)."""
    while True:
        shown = (await tmux("capture-pane", "-p", "-t", "top")).stdout.decode()
        if needle in shown:
            return shown
        await trio.sleep(0.1)


async def test_top_in_a_real_terminal_shows_the_call_resizes_and_quits_on_q(tmp_path):
    require_tool("tmux")
    server = FakeRealtimeServer(api_key="top-key", respond_after_ms=None)
    ng = f"127.0.0.1:{free_udp_port()}"
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            env = {**os.environ, "OPENAI_URL": url, "OPENAI_API_KEY": "top-key",
                   "NG_LISTEN": ng, "RTP_MIN_PORT": "43200", "RTP_MAX_PORT": "43299",
                   "NG_SHUTDOWN_GRACE": "0"}
            async with running_daemon(env):
                offer = await ctl(ng, "offer", "--call-id", "top-call-1", "--from-tag", "t1",
                                  "--sdp-file", "-", stdin=OFFER.encode())
                assert offer.returncode == 0, offer.stderr
                command = (f"cd {os.getcwd()} && exec {sys.executable} -m ctl.client "
                           f"--ng {ng} top --interval 0.3")
                started = await tmux("new-session", "-d", "-s", "top", "-x", "150", "-y", "20",
                                     command)
                assert started.returncode == 0, started.stderr
                try:
                    # A detached session may start at tmux's default size: make it wide.
                    await tmux("resize-window", "-t", "top", "-x", "150", "-y", "20")
                    shown = await screen_showing("$0.0000")
                    row = next(line for line in shown.splitlines() if "top-call-1" in line)
                    assert row.split()[1] in ("offered", "active")  # its state column
                    assert row.split()[-1] == "$0.0000"  # priced, nothing used yet
                    assert "CALL-ID" in shown and "1 active" in shown
                    # A narrower terminal: the frame is redrawn to its width.
                    await tmux("resize-window", "-t", "top", "-x", "50")
                    narrow = await screen_showing("top-call-1")
                    assert max(len(line.rstrip()) for line in narrow.splitlines()) <= 50
                    await tmux("send-keys", "-t", "top", "q")
                    while (await tmux("has-session", "-t", "top")).returncode == 0:
                        await trio.sleep(0.1)  # the session ends with top's exit
                finally:
                    await tmux("kill-server")
            nursery.cancel_scope.cancel()

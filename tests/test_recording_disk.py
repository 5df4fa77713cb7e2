"""A full disk under the real daemon: the recording stops, the call does not."""

from __future__ import annotations

import json
import os
import resource

import trio

from media.sdp import parse_sdp
from tests.fakes.caller import FakeCaller
from tests.fakes.daemon import running_daemon
from tests.fakes.realtime import FakeRealtimeServer, tone
from tests.test_cli import ctl, free_udp_port

LIMIT = 64 * 1024  # bytes a file may grow to: 2 s of a stereo recording


def limit_file_size() -> None:
    """In the daemon's process, before it runs: files cannot grow past LIMIT (EFBIG, as a
    full disk's ENOSPC; the daemon ignores SIGXFSZ)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


async def test_a_full_disk_ends_the_recording_and_the_call_goes_on(tmp_path):
    server = FakeRealtimeServer(api_key="disk-key", respond_after_ms=None)
    ng = f"127.0.0.1:{free_udp_port()}"
    speech = tone("pcmu", 4000, hz=1000)  # 4 s: 128 KB of recording, twice the limit
    frames = [speech[i:i + 160] for i in range(0, len(speech), 160)]
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            env = {**os.environ, "OPENAI_URL": url, "OPENAI_API_KEY": "disk-key",
                   "NG_LISTEN": ng, "RTP_MIN_PORT": "43300", "RTP_MAX_PORT": "43399",
                   "NG_SHUTDOWN_GRACE": "0", "RECORDING_MODE": "all",
                   "RECORDING_DIR": str(tmp_path)}
            async with running_daemon(env, preexec_fn=limit_file_size) as (daemon, log):
                caller = FakeCaller()
                await caller.bind()
                offer = await ctl(ng, "offer", "--call-id", "full-1", "--from-tag", "t1",
                                  "--sdp-file", "-", stdin=caller.sdp_offer().encode())
                assert offer.returncode == 0, offer.stderr
                port = parse_sdp(offer.stdout.decode()).media[0].port
                await caller.stream(("127.0.0.1", port), frames)
                await log.wait_for(b"recording stopped, the call goes on: File too large")
                query = json.loads((await ctl(ng, "--json", "query", "--call-id",
                                              "full-1")).stdout)
                assert query["rtpai"]["state"] == "active"  # the call is untouched
                assert query["rtpai"]["rtp in"]["packets"] == len(frames)
                assert query["rtpai"]["recording"]["status"] == "failed"
                stats = json.loads((await ctl(ng, "--json", "statistics")).stdout)
                assert stats["statistics"]["rtpai"]["recording"]["failures"] == 1
                assert b"Traceback" not in log
                assert log.count(b"recording stopped") == 1  # one line, not one per write
            nursery.cancel_scope.cancel()
    assert not [name for name in os.listdir(tmp_path) if name.endswith((".part", ".wav"))]

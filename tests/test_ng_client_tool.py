"""rtpengine's own ng client, `rtpengine-ng-client` (Debian: rtpengine-utils), drives rtpai.

A third party's encoder and decoder (Perl's Bencode, NGCP::Rtpengine; random-number cookies,
LF-only SDP) against an in-process rtpai with the fake Realtime server. The tool prints what it
decoded with Data::Dumper (`key => 'value'`, numbers as strings) and dies with
`Error reason: "..."` on an error reply; the assertions read that output as a user would.
The tool has no receive timeout, so every run is bounded here.
"""

from __future__ import annotations

import re

import pytest
import trio

from ctl.config import load_config
from ctl.engine import Engine
from media.sdp import parse_sdp
from tests.fakes.realtime import FakeRealtimeServer
from tests.peers import LOOPBACK, require_tool

pytestmark = [pytest.mark.realpeers, pytest.mark.trio]

RTP_PORTS = (44000, 44099)  # a range no other test uses
CALL_ID = "ng-client-1@127.0.0.1"
# The tool's own sample offer (its source's usage comment), on loopback.
OFFER = "v=0\no=moo 1 2 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 3456 RTP/AVP 0\n"
ANSWER = OFFER.replace("moo", "callee").replace("3456", "3458")
MARK_IN, MARK_OUT = "-----8<-----8<-----8<-----8<-----8<-----", "----->8----->8----->8----->8----->8-----"


def block(output: str, title: str) -> str:
    """The text between the scissors marks after `title` ("New SDP:", "Result dictionary:")."""
    _, found, rest = output.partition(f"{title}\n{MARK_IN}\n")
    assert found, f"no {title!r} block in:\n{output}"
    return rest.partition(MARK_OUT)[0]


async def ng_client(port: int, *args: str) -> tuple[int, str, str]:
    tool = require_tool("rtpengine-ng-client")
    with trio.fail_after(5):
        result = await trio.run_process(
            [tool, f"--proxy-address={LOOPBACK}", f"--proxy-port={port}", *args],
            capture_stdout=True, capture_stderr=True, check=False,
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_rtpengine_ng_client_drives_a_whole_call():
    require_tool("rtpengine-ng-client")
    server = FakeRealtimeServer(respond_after_ms=None)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            config = load_config(None, environ={
                "NG_LISTEN": f"{LOOPBACK}:0",
                "RTP_MIN_PORT": str(RTP_PORTS[0]),
                "RTP_MAX_PORT": str(RTP_PORTS[1]),
                "OPENAI_URL": url,
                "OPENAI_API_KEY": "test-key",
            })
            engine = Engine(config)
            _, port = await nursery.start(engine.run)

            for json_flag in ((), ("--json",)):
                code, out, err = await ng_client(port, *json_flag, "ping")
                assert code == 0, err
                assert block(out, "Result dictionary:").split() == ["{", "result", "=>", "'pong'", "}"]

            call = (f"--call-id={CALL_ID}", "--from-tag=ft")
            code, out, err = await ng_client(port, *call, f"--sdp={OFFER}", "offer")
            assert code == 0, err
            assert block(out, "Old SDP:").strip() == OFFER.strip()
            answer = parse_sdp(block(out, "New SDP:"))
            audio = answer.media[0]
            assert RTP_PORTS[0] <= audio.port <= RTP_PORTS[1]
            assert [(c.payload_type, c.encoding) for c in audio.codecs] == [(0, "PCMU")]
            assert "Result dictionary:" not in out  # nothing but result and sdp came back
            await server.wait_for_session(1)

            code, out, err = await ng_client(port, *call, "--to-tag=tt", f"--sdp={ANSWER}", "answer")
            assert code == 0, err
            assert parse_sdp(block(out, "New SDP:")).media[0].port == audio.port

            code, out, err = await ng_client(port, f"--call-id={CALL_ID}", "query")
            assert code == 0, err
            stats = block(out, "Result dictionary:")
            for line in ("tags => {", "ft => {", f"'local port' => '{audio.port}'",
                         "totals => {", "RTP => {", "RTCP => {", "rtpai => {"):
                assert line in stats, f"{line!r} not in\n{stats}"

            for json_flag in ((), ("--json",)):
                code, out, err = await ng_client(port, *json_flag, "list")
                assert code == 0, err
                assert re.search(r"calls => \[\s*'" + re.escape(CALL_ID) + r"'\s*\]", out), out

            code, out, err = await ng_client(port, "statistics")
            assert code == 0, err
            assert "currentstatistics => {" in out and "sessionsown => '1'" in out

            code, out, err = await ng_client(port, "--call-id=nobody@127.0.0.1", "query")
            assert code != 0
            assert 'Error reason: "Unknown call-id"' in err

            (live,) = engine.calls
            code, out, err = await ng_client(port, *call, "delete")
            assert code == 0, err
            stats = block(out, "Result dictionary:")
            assert f"'local port' => '{audio.port}'" in stats
            assert "'end reason' => 'deleted by the proxy'" in stats
            await live.ended.wait()  # the delete is answered at once; the call closes after
            assert engine.ports.in_use == 0

            code, out, err = await ng_client(port, *call, "delete")
            assert code == 0, err  # a warning is still "ok"
            assert block(out, "Result dictionary:").split("\n")[1].strip() == (
                "warning => 'Call-ID not found or tags didn\\'t match'"
            )
            nursery.cancel_scope.cancel()

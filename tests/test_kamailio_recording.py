"""Recording a call placed through a real Kamailio 5.6: sipp calls sip:record@, the script's
``rtpengine_offer("... record-call=yes")`` asks rtpai to record it (tests/peers/kamailio.cfg),
and the call leaves a stereo WAV with the caller's and the model's audio at their times, its
sidecar, and a JSON-lines CDR with usage and cost."""

from __future__ import annotations

import json
import socket

import pytest
import trio

from media.bridge import EndReason
from media.g711 import decode_pcm16le
from media.rtp import parse_rtp
from tests.fakes.engine import engine_for_test, watch
from tests.fakes.realtime import FakeRealtimeServer, tone
from tests.peers import (
    LOOPBACK,
    UAC_WAIT_BYE_SCENARIO,
    LoopbackCapture,
    require_proxy,
    require_root,
    require_tool,
    run_sipp,
    start_proxy,
    unused_media_port,
    unused_port,
    write_rtp_pcap,
)
from tests.wavcheck import dominant_hz, read_stereo

pytestmark = pytest.mark.realpeers

FRAME = 160
SLACK = 16  # samples: the milestones and the frames are read off the clock a moment apart


def pcm(audio: bytes) -> list[int]:
    raw = decode_pcm16le("PCMU", audio)
    return [int.from_bytes(raw[i:i + 2], "little", signed=True) for i in range(0, len(raw), 2)]


def find_near(channel: list[int], pattern: list[int], near: int) -> int | None:
    for index in range(max(near - SLACK, 0), near + SLACK + 1):
        if channel[index:index + len(pattern)] == pattern:
            return index
    return None


async def test_kamailio_record_call_flag_gives_a_wav_a_sidecar_and_a_cdr(tmp_path):
    require_proxy("kamailio")
    require_tool("sipp")
    require_root()  # sipp's pcap player and LoopbackCapture use raw sockets
    recordings, cdr = tmp_path / "rec", tmp_path / "cdr.jsonl"
    recordings.mkdir()
    caller_audio = tone("pcmu", 800, hz=1000)
    payloads = [caller_audio[i:i + FRAME] for i in range(0, len(caller_audio), FRAME)]
    pcap = tmp_path / "caller.pcap"
    write_rtp_pcap(pcap, payloads)
    reply_audio = tone("pcmu", 400, hz=440)
    server = FakeRealtimeServer(reply_audio=reply_audio, respond_after_ms=300, speed=0)
    sip_port, sipp_port, media_port = unused_port(), unused_port(), unused_media_port()
    http_port = unused_port(socket.SOCK_STREAM)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine = engine_for_test(
                url, RTP_MIN_PORT="42400", RTP_MAX_PORT="42499", PROXY_TYPE="kamailio",
                PROXY_URL=f"http://127.0.0.1:{http_port}/RPC", RECORDING_MODE="on-request",
                RECORDING_DIR=str(recordings), CDR_FILE=str(cdr))
            offers, deletes = watch(engine, "offer"), watch(engine, "delete")
            engine_nursery = trio.CancelScope()

            async def run_engine(task_status=trio.TASK_STATUS_IGNORED) -> None:
                with engine_nursery:
                    await engine.run(task_status=task_status)

            ng_address = await nursery.start(run_engine)
            async with (
                start_proxy("kamailio", tmp_path, sip_port=sip_port, ng_port=ng_address[1],
                            http_port=http_port),
                LoopbackCapture(media_port) as capture,
            ):
                sipp_done = trio.Event()

                async def call() -> None:
                    await run_sipp(UAC_WAIT_BYE_SCENARIO, target=(LOOPBACK, sip_port),
                                   local_port=sipp_port, media_port=media_port, pcap=pcap,
                                   extra=("-recv_timeout", "30000", "-s", "record"))
                    sipp_done.set()

                nursery.start_soon(call)
                heard = bytearray()
                while reply_audio not in heard:  # the model's answer reached sipp
                    heard += parse_rtp((await capture.receive()).payload).payload
                session = await server.wait_for_session(1)
                await session.wait_until(lambda s: len(s.audio_in) >= len(caller_audio))
                call_ = next(iter(engine.calls))
                call_.end(EndReason.SHUTDOWN, "test done")  # Kamailio BYEs sipp, deletes
                await sipp_done.wait()
                await deletes.wait_for(1)
            engine_nursery.cancel()  # the engine stops: recordings completed, CDRs written
            nursery.cancel_scope.cancel()

    # Kamailio passed the script's record-call=yes on to rtpai.
    assert offers.seen[0][0]["record-call"] == "yes"
    wavs = list(recordings.glob("*.wav"))
    assert len(wavs) == 1, list(recordings.iterdir())
    sidecar = json.loads(wavs[0].with_suffix(".json").read_text())
    left, right, rate = read_stereo(wavs[0])
    timeline, offset = sidecar["timeline ms"], sidecar["recording"]["offset s"]

    def at(milestone: str) -> int:
        return round((timeline[milestone] / 1000 - offset) * rate)

    # sipp's pcap on the left from its first packet, sample for sample (no loss on lo)...
    start = find_near(left, pcm(caller_audio), at("first_caller_rtp"))
    assert start is not None, at("first_caller_rtp")
    # ... the model's answer on the right, as sipp was sent it, when it was sent (its first
    # 100 ms: the caller talks on meanwhile, and the fake server's VAD may cut the answer).
    answer = find_near(right, pcm(reply_audio)[:800], at("first_rtp_to_caller"))
    assert answer is not None, at("first_rtp_to_caller")
    assert abs(dominant_hz(right[answer:answer + 800], rate) - 440) < 10
    assert answer > start  # the caller spoke first; the gap between is the response latency
    # The CDR: one line, with usage and cost, naming the recording.
    (record,) = [json.loads(line) for line in cdr.read_text().splitlines()]
    assert record["call-id"] == sidecar["call-id"] == offers.seen[0][0]["call-id"]
    assert record["end reason"] == "test done"
    assert record["ai"]["usage"]["total_tokens"] > 0
    assert record["ai"]["cost"]["usd"] > 0 and record["ai"]["cost"]["model"]
    assert record["recordings"][0]["file"] == str(wavs[0])
    assert sidecar["recording"]["status"] == "finished"
    assert sidecar["recording"]["sidecar"] == str(wavs[0].with_suffix(".json"))

"""Recording whole calls through the engine: ng flags and commands in, a stereo WAV whose two
channels hold the caller's and the model's audio where they happened, its sidecar and the
call's CDR out. Real sockets on 127.0.0.1; the peers (proxy, caller, Realtime) are fakes."""

from __future__ import annotations

import json

import pytest
import trio

from media.g711 import decode_pcm16le
from media.rtp import RtpPacketizer
from media.sdp import parse_sdp
from tests.fakes.caller import FakeCaller
from tests.fakes.proxy import FakeProxy
from tests.fakes.realtime import FakeRealtimeServer, tone
from tests.test_call_flow import start_engine
from tests.wavcheck import dominant_hz, loud_spans, read_stereo

CALLER_HZ, MODEL_HZ = 1000, 440
FRAME = 160
LOST = 10  # the caller's 11th packet never arrives
# Where a frame lands may differ from the milestone it is compared with by the time between
# the milestone's clock reading and the frame's: well under a millisecond on loopback.
SLACK = 16  # samples, 2 ms


def pcm(audio: bytes) -> list[int]:
    raw = decode_pcm16le("PCMU", audio)
    return [int.from_bytes(raw[i:i + 2], "little", signed=True) for i in range(0, len(raw), 2)]


def find_near(channel: list[int], pattern: list[int], near: int) -> int | None:
    """Where ``pattern`` lies in ``channel``, sample for sample, within SLACK of ``near``."""
    for index in range(max(near - SLACK, 0), near + SLACK + 1):
        if channel[index:index + len(pattern)] == pattern:
            return index
    return None


async def send_with_a_loss(caller: FakeCaller, destination, payloads: list[bytes]) -> None:
    """As a phone sends, 20 ms apart, except that packet LOST is lost on the way."""
    packetizer = RtpPacketizer(0)
    start = trio.current_time()
    for n, payload in enumerate(payloads):
        await trio.sleep_until(start + n * 0.02)
        packet = packetizer.packet(payload, FRAME)
        if n != LOST:
            await caller.sock.sendto(packet, destination)


async def test_a_recorded_call_has_each_party_in_its_channel_at_its_time(tmp_path):
    recordings, cdr = tmp_path / "rec", tmp_path / "cdr.jsonl"
    recordings.mkdir()
    caller_audio = tone("pcmu", 600, hz=CALLER_HZ)
    caller_frames = [caller_audio[i:i + FRAME] for i in range(0, len(caller_audio), FRAME)]
    reply_audio = tone("pcmu", 400, hz=MODEL_HZ)
    server = FakeRealtimeServer(reply_audio=reply_audio, respond_after_ms=400, speed=0)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine, ng = await start_engine(
                nursery, url, RECORDING_MODE="on-request", RECORDING_DIR=str(recordings),
                CDR_FILE=str(cdr))
            caller = FakeCaller()
            await caller.bind()
            nursery.start_soon(caller.receive)
            async with FakeProxy(ng) as proxy:
                # Not asked for: not recorded (on-request).
                plain = await proxy.command("offer", **{
                    "call-id": "plain", "from-tag": "ft", "sdp": caller.sdp_offer()})
                assert plain["result"] == "ok"
                # Kamailio's rtpengine_offer("record-call=yes").
                reply = await proxy.command("offer", **{
                    "call-id": "rec-1", "from-tag": "ft", "sdp": caller.sdp_offer(),
                    "record-call": "yes"})
                assert reply["result"] == "ok" and "warning" not in reply
                port = parse_sdp(reply["sdp"]).media[0].port
                await send_with_a_loss(caller, ("127.0.0.1", port), caller_frames)
                await caller.wait_for(lambda got: reply_audio in b"".join(p.payload for p in got))
                # A pause: nothing is recorded for its length, on either channel.
                assert (await proxy.command("pause recording", **{"call-id": "rec-1"})) == {
                    "result": "ok"}
                query = await proxy.command("query", **{"call-id": "rec-1"})
                assert query["rtpai"]["recording"]["status"] == "paused"
                await caller.stream(("127.0.0.1", port), caller_frames[:10])  # unrecorded
                assert (await proxy.command("start recording", **{"call-id": "rec-1"}))[
                    "result"] == "ok"
                await proxy.command("delete", **{"call-id": "rec-1", "from-tag": "ft"})
                await proxy.command("delete", **{"call-id": "plain", "from-tag": "ft"})
                unknown = await proxy.command("stop recording", **{"call-id": "nobody"})
                assert unknown == {"result": "error", "error-reason": "Unknown call-id"}
            nursery.cancel_scope.cancel()  # the engine stops: the writer finishes, CDRs drain

    wavs = sorted(recordings.glob("*.wav"))
    assert len(wavs) == 1 and "-rec-1-" in wavs[0].name
    sidecar = json.loads(wavs[0].with_suffix(".json").read_text())
    left, right, rate = read_stereo(wavs[0])
    offer_to_recording = sidecar["recording"]["offset s"]
    timeline = sidecar["timeline ms"]

    def at(milestone: str) -> int:
        return round((timeline[milestone] / 1000 - offer_to_recording) * rate)

    # Left: the caller's tone, sample for sample, from its first packet's arrival; the lost
    # packet is a gap in its place, and what follows is not shifted.
    caller_pcm = pcm(caller_audio)
    start = find_near(left, caller_pcm[:LOST * FRAME], at("first_caller_rtp"))
    assert start is not None, (loud_spans(left, threshold=300)[:2], at("first_caller_rtp"))
    assert not any(abs(s) > 8 for s in left[start + LOST * FRAME:start + (LOST + 1) * FRAME])
    assert left[start + (LOST + 1) * FRAME:start + len(caller_audio)] == caller_pcm[
        (LOST + 1) * FRAME:]
    assert abs(dominant_hz(left[start:start + 1600], rate) - CALLER_HZ) < 20
    # Right: exactly what the caller was played, from the answer's first frame sent.
    answer = find_near(right, pcm(reply_audio), at("first_rtp_to_caller"))
    assert answer is not None, (loud_spans(right, threshold=300)[:2], at("first_rtp_to_caller"))
    assert abs(dominant_hz(right[answer:answer + 1600], rate) - MODEL_HZ) < 10
    # The pause: the 10 frames the caller sent meanwhile are not in the file.
    assert len([s for s in loud_spans(left, threshold=300)]) == 2  # the tone, cut once
    # The sidecar and the CDR: the same record, with usage and cost.
    assert sidecar["call-id"] == "rec-1" and sidecar["codec"] == "PCMU"
    assert sidecar["end reason"] == "deleted by the proxy"
    assert sidecar["recording"]["status"] == "finished"
    assert sidecar["ai"]["usage"]["total_tokens"] > 0
    assert sidecar["ai"]["cost"]["usd"] > 0 and sidecar["ai"]["cost"]["prices_as_of"]
    assert [entry["role"] for entry in sidecar["transcript"]] == ["caller", "assistant"]
    assert all(isinstance(entry["at s"], float) for entry in sidecar["transcript"])
    records = {r["call-id"]: r for r in map(json.loads, cdr.read_text().splitlines())}
    assert set(records) == {"rec-1", "plain"}
    assert records["plain"]["recordings"] == []
    assert records["rec-1"]["ai"]["cost"] == sidecar["ai"]["cost"]
    assert records["rec-1"]["recordings"][0]["file"] == str(wavs[0])


@pytest.mark.parametrize("mode, flag, recorded", [
    ("all", None, True), ("all", "no", False), ("on-request", None, False),
    ("on-request", "on", True),
])
async def test_which_calls_are_recorded(tmp_path, mode, flag, recorded):
    server = FakeRealtimeServer(respond_after_ms=None)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine, ng = await start_engine(nursery, url, RECORDING_MODE=mode,
                                            RECORDING_DIR=str(tmp_path))
            caller = FakeCaller()
            await caller.bind()
            async with FakeProxy(ng) as proxy:
                offer = {"call-id": "c", "from-tag": "ft", "sdp": caller.sdp_offer()}
                if flag:
                    offer["record call"] = flag  # rtpengine's spelling, with a space
                await proxy.command("offer", **offer)
                query = await proxy.command("query", **{"call-id": "c"})
                # None (no recording) is left out of a bencoded reply.
                assert (query["rtpai"].get("recording") is not None) == recorded
                stats = await proxy.command("statistics")
                assert stats["statistics"]["rtpai"]["recording"]["started"] == int(recorded)
            nursery.cancel_scope.cancel()


async def test_with_recording_off_the_commands_are_refused_and_the_flag_warned(tmp_path):
    server = FakeRealtimeServer(respond_after_ms=None)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine, ng = await start_engine(nursery, url)
            caller = FakeCaller()
            await caller.bind()
            async with FakeProxy(ng) as proxy:
                offer = await proxy.command("offer", **{
                    "call-id": "c", "from-tag": "ft", "sdp": caller.sdp_offer(),
                    "flags": ["record-call"]})
                assert offer["result"] == "ok"
                assert offer["warning"] == "Call recording is disabled ([recording] mode = off)"
                start = await proxy.command("start recording", **{"call-id": "c"})
                assert start == {"result": "error", "error-reason":
                                 "Call recording is disabled ([recording] mode = off)"}
            nursery.cancel_scope.cancel()


async def test_stop_then_start_makes_a_second_file_each_with_its_sidecar(tmp_path):
    server = FakeRealtimeServer(respond_after_ms=None)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine, ng = await start_engine(nursery, url, RECORDING_MODE="on-request",
                                            RECORDING_DIR=str(tmp_path))
            caller = FakeCaller()
            await caller.bind()
            async with FakeProxy(ng) as proxy:
                await proxy.command("offer", **{"call-id": "c", "from-tag": "ft",
                                                "sdp": caller.sdp_offer()})
                for command in ("start recording", "stop recording", "stop recording",
                                "start recording"):
                    assert (await proxy.command(command, **{"call-id": "c"})) == {
                        "result": "ok"}
                await proxy.command("delete", **{"call-id": "c", "from-tag": "ft"})
            nursery.cancel_scope.cancel()
    first, second = sorted(tmp_path.glob("*.wav"), key=lambda p: len(p.name))
    assert second.name == first.name[:-4] + "-1.wav"
    stopped = json.loads(first.with_suffix(".json").read_text())
    ended = json.loads(second.with_suffix(".json").read_text())
    assert stopped["end"] is None and stopped["recording"]["status"] == "finished"
    assert ended["end"] and ended["end reason"] == "deleted by the proxy"
    assert [r["file"] for r in ended["recordings"]] == [str(first), str(second)]

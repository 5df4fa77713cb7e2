"""``make demo``: one whole local call through a real rtpai process, no API key needed.

A simulated proxy sends ``offer``, a simulated caller streams speech over RTP, a local
Realtime-protocol server (the tests' fake) answers with audio, the caller receives it paced at
20 ms, and ``delete`` ends the call. The timeline and the figures printed are measured in this
run, not canned.
"""

from __future__ import annotations

import math
import os
import socket
import statistics
import sys

import trio

from media.sdp import parse_sdp
from tests.fakes.caller import FakeCaller
from tests.fakes.daemon import running_daemon
from tests.fakes.proxy import FakeProxy
from tests.fakes.realtime import FakeRealtimeServer, tone, ulaw_from_linear

DEMO_KEY = "demo-key-not-a-secret"
CALL_ID = "demo-call-1@127.0.0.1"


def speech_like(ms: int) -> bytes:
    """A vowel-ish signal (two harmonics, a slow envelope), mu-law encoded."""
    rate = 8000
    samples = []
    for n in range(rate * ms // 1000):
        t = n / rate
        envelope = 0.5 - 0.5 * math.cos(2 * math.pi * 3 * t)
        value = 6000 * envelope * (math.sin(2 * math.pi * 180 * t) + 0.5 * math.sin(
            2 * math.pi * 360 * t))
        samples.append(round(value))
    return bytes(ulaw_from_linear(s) for s in samples)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def demo() -> None:
    reply = tone("pcmu", 1200, hz=440)
    # The fake "hears" a turn after 2.5 s of caller audio: the greeting (1.2 s) has played by
    # then, so the caller does not interrupt it.
    server = FakeRealtimeServer(api_key=DEMO_KEY, reply_audio=reply, respond_after_ms=2500,
                                speed=4.0)
    ng_port = free_udp_port()
    env = {
        **os.environ,
        "NG_LISTEN": f"127.0.0.1:{ng_port}",
        "RTP_MIN_PORT": "35000",
        "RTP_MAX_PORT": "35999",
        "OPENAI_API_KEY": DEMO_KEY,
        "OPENAI_WELCOME_MSG": "Hello, thanks for calling the rtpai demo.",
        "OPENAI_INSTRUCTIONS": "You are a friendly receptionist.",
    }
    marks: dict[str, float] = {}

    async with trio.open_nursery() as nursery:
        env["OPENAI_URL"] = await nursery.start(server.serve)
        caller = FakeCaller()
        await caller.bind()
        nursery.start_soon(caller.receive)
        async with running_daemon(env) as (process, _log):
            print(f"rtpai started (pid {process.pid}), ng on 127.0.0.1:{ng_port}, "
                  f"Realtime server at {env['OPENAI_URL']}")
            async with FakeProxy(("127.0.0.1", ng_port)) as proxy:
                assert (await proxy.command("ping")) == {"result": "pong"}
                t0 = trio.current_time()
                answer = await proxy.command(
                    "offer", **{"call-id": CALL_ID, "from-tag": "caller-tag",
                                "sdp": caller.sdp_offer()},
                )
                marks["offer answered"] = trio.current_time()
                if answer.get("result") != "ok":
                    raise SystemExit(f"offer failed: {answer}")
                audio = parse_sdp(answer["sdp"]).media[0]
                print(f"offer -> answer: {audio.codecs[0].encoding} on port {audio.port}")
                session = await server.wait_for_session(1)
                marks["AI session open"] = trio.current_time()

                # The caller listens to the greeting, then speaks (2 s), then is silent.
                speech = bytes([0xFF]) * 8000 + speech_like(2000) + bytes([0xFF]) * 8000
                frames = [speech[i:i + 160] for i in range(0, len(speech), 160)]
                marks["first caller packet"] = trio.current_time()
                streamed = trio.Event()

                async def talk() -> None:
                    await caller.stream(("127.0.0.1", audio.port), frames)
                    streamed.set()

                nursery.start_soon(talk)

                def replies_heard(got) -> int:
                    return b"".join(p.payload for p in got).count(reply)

                with trio.fail_after(20):
                    await caller.wait_for(lambda got: any(p.payload != bytes([0xFF]) * 160
                                                          for p in got))
                    marks["greeting starts at caller"] = trio.current_time()
                    await caller.wait_for(lambda got: replies_heard(got) >= 1)
                    marks["greeting fully played"] = trio.current_time()
                    await caller.wait_for(lambda got: replies_heard(got) >= 2)
                    marks["answer fully played"] = trio.current_time()
                    await streamed.wait()
                deleted = await proxy.command("delete", **{"call-id": CALL_ID,
                                                           "from-tag": "caller-tag"})
                marks["delete answered"] = trio.current_time()
        nursery.cancel_scope.cancel()

    print("\ntimeline (ms after offer, seen by the caller/proxy side):")
    for name, at in sorted(marks.items(), key=lambda kv: kv[1]):
        print(f"  {1000 * (at - t0):8.1f}  {name}")
    stats = deleted.get("rtpai", {})
    print("\ntimeline (ms after offer, inside rtpai):")
    for name, ms in sorted(stats.get("timeline ms", {}).items(), key=lambda kv: kv[1]):
        print(f"  {ms:8}  {name}")
    packets = caller.received
    gaps = [1000 * (b.at - a.at) for a, b in zip(packets, packets[1:], strict=False)]
    ai = stats.get("ai", {})
    print("\ndelete statistics:")
    print(f"  totals RTP       {deleted['totals']['RTP']}")
    print(f"  caller -> rtpai  {stats.get('rtp in')}")
    print(f"  rtpai -> caller  {stats.get('rtp out')}")
    print(f"  to the model     {ai.get('audio sent bytes')} bytes, "
          f"from the model {ai.get('audio received bytes')} bytes, "
          f"{ai.get('responses')} responses")
    print(f"  transcript       {ai.get('transcript')}")
    print(f"  end reason       {stats.get('end reason')}")
    if gaps:
        print(f"\npacing at the caller: {len(packets)} packets, gap p50 "
              f"{statistics.median(gaps):.2f} ms, p99 {percentile(gaps, 0.99):.2f} ms, "
              f"max {max(gaps):.2f} ms (target 20 ms)")
    print(f"caller audio at the Realtime server: {len(session.audio_in)} bytes "
          f"of {len(speech)} sent")


def main() -> int:
    trio.run(demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())

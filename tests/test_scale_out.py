"""Many rtpai hosts behind one Kamailio: the rtpengine module's engine set, for real (issue 13).

Three rtpai instances, each on its own "host" (a network namespace with a veth pair to the
root namespace: tests/peers/hosts.py), in one set with weights 3:2:1; the first host runs
``[ng] workers = 2`` behind its one address. Real Kamailio 5.6 (tests/peers/kamailio.cfg, with
the test timings: a silent engine is given up after 2 x 500 ms and retried after 1 s; dialogs
time out after DIALOG_TIMEOUT) and sipp callers. In one run, in order:

1. six calls spread over the set by its weights, 3:2:1 (the module picks an engine by the
   Call-ID's byte sum, modulo the enabled weights: ``kamailio_pick`` below);
2. an instance at its ``[ng] max_sessions`` answers ``load limit``; Kamailio puts the call on
   another instance;
3. an instance killed mid-call (SIGKILL) is disabled by the module and new calls that hash to
   it succeed on the others; its call ends only when the proxy ends the dialog: the killed
   rtpai cannot ask, so the dialog module's timeout does it, with a BYE to both legs (the
   measured figure is printed and in docs/kamailio.md);
4. restarted, the instance is used again.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from functools import partial

import pytest
import trio

from ctl.ng import decode_reply, encode_request
from tests.fakes.realtime import FakeRealtimeServer
from tests.peers import (
    LOOPBACK,
    UAC_SCENARIO,
    UAC_WAIT_BYE_SCENARIO,
    require_root,
    require_tool,
    run_sipp,
    start_proxy,
    supervised,
    unused_media_port,
    unused_port,
    write_rtp_pcap,
)
from tests.peers.hosts import Host, hosts

pytestmark = pytest.mark.realpeers

WEIGHTS = (3, 2, 1)
NG_PORT = 2223
DIALOG_TIMEOUT = 4  # seconds: how long the killed instance's call lives on in Kamailio
FULL_AT = 4  # [ng] max_sessions of the first instance


def kamailio_pick(call_id: str, enabled: tuple[bool, ...] = (True, True, True),
                  weights: tuple[int, ...] = WEIGHTS) -> int:
    """The engine Kamailio's rtpengine module picks for a new call (rtpengine.c
    select_rtpe_node, the default hash_algo 0): the Call-ID's byte sum, its low 8 bits,
    modulo the sum of the enabled engines' weights, walked through the set in order."""
    cut = (sum(call_id.encode()) & 0xFF) % sum(w for w, on in zip(weights, enabled, strict=True) if on)
    for index, (weight, on) in enumerate(zip(weights, enabled, strict=True)):
        if not on:
            continue
        if cut < weight:
            return index
        cut -= weight
    raise AssertionError("unreachable")


def call_id_for(index: int, prefix: str, enabled=(True, True, True), weights=WEIGHTS) -> str:
    return next(f"{prefix}-{n}@sipp" for n in range(1000)
                if kamailio_pick(f"{prefix}-{n}@sipp", enabled, weights) == index)


def spread_prefix(calls: int) -> str:
    """A sipp ``-cid_str`` whose calls 1..``calls`` split exactly by the weights."""
    for k in range(1000):
        picks = [kamailio_pick(f"spread{k}-{n}@sipp") for n in range(1, calls + 1)]
        if [picks.count(i) for i in range(3)] == [calls * w // sum(WEIGHTS) for w in WEIGHTS]:
            return f"spread{k}"
    raise AssertionError("no prefix splits by the weights")


async def ng(host: Host, command: str, *, tries: int = 10, **params) -> dict:
    """One ng command to ``host``'s rtpai, straight from the test (a second proxy's view)."""
    cookie = os.urandom(6).hex().encode()
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.connect((host.address, NG_PORT))
        for _ in range(tries):
            with suppress(ConnectionRefusedError):  # the previous try's ICMP: not up yet
                await sock.send(encode_request(cookie, command, params or None))
            with trio.move_on_after(0.5):
                while True:
                    try:
                        reply_cookie, reply = decode_reply(await sock.recv(65535))
                    except ConnectionRefusedError:
                        break
                    if reply_cookie == cookie:
                        return reply
    raise TimeoutError(f"no ng reply from {host.address}")


async def managed(host: Host) -> int:
    reply = await ng(host, "statistics")
    return reply["statistics"]["totalstatistics"]["managedsessions"]


@asynccontextmanager
async def rtpai_on(host: Host, tmp_path, openai_url: str, **extra: str):
    env = {**os.environ, "NG_LISTEN": f"{host.address}:{NG_PORT}", "RTP_IP": host.address,
           "RTP_BIND_IP": host.address, "RTP_MIN_PORT": f"{44000 + 100 * host.index}",
           "RTP_MAX_PORT": f"{44099 + 100 * host.index}", "OPENAI_API_KEY": "scale-key",
           "OPENAI_URL": openai_url.replace("0.0.0.0", host.peer), "NG_SHUTDOWN_GRACE": "0",
           "LOG_LEVEL": "info", **extra}

    async def answers_ping() -> None:
        while True:  # (bounded by supervised's ready_timeout)
            try:
                if (await ng(host, "ping", tries=1)).get("result") == "pong":
                    return
            except TimeoutError:
                pass
            await trio.sleep(0.1)

    command = host.command([sys.executable, "-m", "ctl.daemon"])
    log = tmp_path / f"rtpai-{host.index}.log"
    async with supervised(f"rtpai {host.index}", command, log, answers_ping, 30,
                          env=env) as process:
        yield process


async def test_three_rtpai_hosts_behind_the_proxys_engine_set(tmp_path, record_property,
                                                             proxy_kind):
    require_tool("sipp")
    require_root()
    pcap = tmp_path / "caller.pcap"
    write_rtp_pcap(pcap, [b"\xff" * 160])
    server = FakeRealtimeServer(api_key="scale-key", respond_after_ms=None)
    sip_port = unused_port()

    async def call(call_id: str, scenario=UAC_SCENARIO, **options) -> None:
        await run_sipp(scenario, target=(LOOPBACK, sip_port), local_port=unused_port(),
                       media_port=unused_media_port(), pcap=pcap, logdir=tmp_path,
                       extra=("-cid_str", call_id, *options.pop("extra", ())), **options)

    with hosts(3) as network, trio.fail_after(150):
        first, second, third = network.hosts
        record_property("isolated_hosts", network.isolated)
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            # Every host reaches the fake Realtime API at the root end of its link.
            openai_url = await nursery.start(partial(server.serve, host="0.0.0.0"))
            await stack.enter_async_context(rtpai_on(first, tmp_path, openai_url,
                                                     NG_MAX_SESSIONS=str(FULL_AT),
                                                     NG_WORKERS="2"))
            killable = AsyncExitStack()
            victim = await killable.enter_async_context(rtpai_on(second, tmp_path,
                                                                 openai_url))
            await stack.enter_async_context(rtpai_on(third, tmp_path, openai_url))
            socks = " ".join(f"udp:{h.address}:{NG_PORT}={w}"
                             for h, w in zip(network.hosts, WEIGHTS, strict=True))
            await stack.enter_async_context(start_proxy(
                proxy_kind, tmp_path, sip_port=sip_port, ng_port=NG_PORT, ng_socks=socks,
                dialog_timeout=DIALOG_TIMEOUT))

            # 1. Six calls (three at a time) split 3:2:1 by the weights.
            prefix = spread_prefix(6)
            await run_sipp(UAC_SCENARIO, target=(LOOPBACK, sip_port), local_port=unused_port(),
                           media_port=unused_media_port(), pcap=pcap, logdir=tmp_path,
                           pause_ms=300, timeout=60,
                           extra=("-cid_str", f"{prefix}-%u@sipp", "-m", "6", "-l", "3",
                                  "-r", "10"))
            assert [await managed(h) for h in network.hosts] == [3, 2, 1]

            # 2. The first instance full (calls a second proxy holds there): Kamailio moves
            # its next call to another instance of the set.
            fillers = []
            for n in range(2 * FULL_AT):
                reply = await ng(first, "offer", **{
                    "call-id": f"filler-{n}", "from-tag": "f", "supports": ["load limit"],
                    "sdp": "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n"
                           "t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"})
                if reply["result"] == "load limit":
                    break
                assert reply["result"] == "ok", reply
                fillers.append(f"filler-{n}")
            assert len(fillers) == FULL_AT
            before = [await managed(h) for h in network.hosts]
            await call(call_id_for(0, "full"))
            after = [await managed(h) for h in network.hosts]
            assert after[0] == before[0] and sum(after) == sum(before) + 1
            for filler in fillers:
                await ng(first, "delete", **{"call-id": filler})

            # 3. An instance killed mid-call: its new calls go elsewhere; its call is ended
            # by the proxy's dialog timeout (the BYE the waiting caller expects).
            doomed = call_id_for(1, "doomed")
            doomed_ended = trio.Event()
            timings: dict[str, float] = {}

            async def doomed_call() -> None:
                await call(doomed, UAC_WAIT_BYE_SCENARIO, timeout=30)
                timings["ended"] = trio.current_time()
                doomed_ended.set()

            nursery.start_soon(doomed_call)
            while doomed not in (await ng(second, "list"))["calls"]:
                await trio.sleep(0.05)  # (a remote process: polled, bounded by fail_after)
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            killed_at = trio.current_time()
            await killable.aclose()
            others = [await managed(first), await managed(third)]
            await call(call_id_for(1, "moved"))
            assert [await managed(first), await managed(third)] != others
            assert sum([await managed(first), await managed(third)]) == sum(others) + 1
            await doomed_ended.wait()
            bye_after = timings["ended"] - killed_at
            record_property("killed_call_bye_after_kill_s", round(bye_after, 2))
            print(f"{proxy_kind}: the killed instance's call got the proxy's BYE "
                  f"{bye_after:.2f} s after "
                  f"the kill (dialog timeout {DIALOG_TIMEOUT} s from its answer)")

            # 4. Back: the same address, a fresh process; the module uses it again. Kamailio
            # probes a disabled engine when a call would go to it (after its disable timeout),
            # OpenSIPS 3.6 from a timer: calls that hash to it go on to the others until then.
            async with rtpai_on(second, tmp_path, openai_url):
                back_at = trio.current_time()
                for attempt in range(30):
                    await call(call_id_for(1, f"back{attempt}"), pause_ms=100)
                    if await managed(second):
                        break
                reused_after = trio.current_time() - back_at
                assert await managed(second) == 1
            record_property("restarted_instance_used_again_after_s", round(reused_after, 2))
            print(f"{proxy_kind}: the restarted instance took a call {reused_after:.2f} s after "
                  f"it answered ping ({attempt + 1} calls that hash to it)")
            nursery.cancel_scope.cancel()

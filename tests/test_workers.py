"""``[ng] workers``: one ng address, N worker processes behind a front (issue 13).

The sans-IO parts (routing, the channel's header, the port slices, the merged answers) are
tested directly; the rest on the real daemon with two workers: a call's commands reach its
worker, ``list``/``statistics`` and ``load limit`` speak for the host, a worker killed with
SIGKILL has its calls ended through the proxy and is restarted while the other worker's call
goes on untouched, and SIGTERM drains every worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ctl.bencode import bencode
from ctl.channel import Envelope, Kind, pack, unpack
from ctl.config import ConfigError, load_config
from ctl.daemon import reload_config
from ctl.engine import Engine
from ctl.logs import RedactSecrets
from ctl.ng import decode_reply
from ctl.routing import Route, Unroutable, merge_lists, merge_statistics, owner, peek, port_slice
from ctl.workers import worker_config
from tests.fakes.caller import FakeCaller
from tests.fakes.daemon import running_daemon
from tests.fakes.http import FakeHttpServer
from tests.fakes.realtime import FakeRealtimeServer
from tests.peers import (
    LOOPBACK,
    UAC_SCENARIO,
    require_tool,
    run_sipp,
    start_proxy,
    unused_media_port,
    unused_port,
    write_rtp_pcap,
)
from tests.test_scale_out import call_id_for
from tests.test_signals import OFFER, ng, ng_address

# --------------------------------------------------------------------------- sans-IO


def test_peek_reads_the_route_and_skips_everything_else():
    body = bencode({"sdp": "v=0\r\na=x:7:call-id3:bad\r\n", "flags": ["trust-address"],
                    "replace": ["origin"], "command": "offer", "call-id": "abc@host",
                    "from-tag": "ft", "to-tag": "tt", "via-branch": "z9", "n": 5,
                    "nested": {"call-id": "inner"}})
    assert peek(body) == Route("offer", b"abc@host", "ft", "tt", "z9")


def test_peek_folds_key_spellings_and_reads_json():
    assert peek(b"d7:command6:delete7:call_id1:ae").call_id == b"a"
    assert peek(b"d7:command10:Statisticse").command == "statistics"
    route = peek(json.dumps({"command": "query", "call id": "j@x", "from_tag": "f"}).encode())
    assert route == Route("query", b"j@x", "f", None, None)


@contextlib.contextmanager
def bounded(seconds: int):
    """Fail instead of hanging: the front's peek must end on every datagram."""

    def expire(signum, frame):
        raise AssertionError(f"still parsing after {seconds} s: the front would hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("body", [
    b"", b"l4:spame", b"d7:command", b"d3:fooi1ee", b"d7:call-id99:shorte", b"{", b"[1]",
    b'{"command": 1}',
    # Lengths int() takes but bencode has not: a negative one moved the parser backwards and
    # looped the front for ever (d1:xl-3:ee), and with it every call of the host.
    b"d1:xl-3:ee", b"d1:a-2:e", b"d7:command4:ping1:a-10:e", b"d1:x+1:ae", b"d1:x 1:ae",
    b"d1:x1_0:aaaaaaaaaae", b"d1:x99999999999:ae",
])
def test_peek_refuses_what_it_cannot_route(body):
    with bounded(5), pytest.raises(Unroutable):
        peek(body)


VALID = (b"d7:command5:offer7:call-id6:c1@x.y8:from-tag2:ft3:sdp10:v=0\r\no=-\r\n"
         b"5:flagsl9:trust-sdpee")


def spliced(cuts: list[int], junk: bytes) -> bytes:
    """VALID with the bytes between two cut points replaced by ``junk``."""
    return VALID[:min(cuts)] + junk + VALID[max(cuts):]


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(st.binary(max_size=120)
       | st.builds(spliced, st.lists(st.integers(0, len(VALID)), min_size=2, max_size=2),
                   st.binary(max_size=12)))
def test_peek_ends_on_any_bytes_with_a_route_or_unroutable(body):
    with bounded(5):
        try:
            route = peek(body)
        except Unroutable:
            return
    assert isinstance(route.command, str) and route.command


def test_ownership_is_stable_and_spreads():
    # CRC-32: the same in every process and run (Python's hash() is salted per process).
    assert owner(b"abc@host", 4) == 0x2A8F5BCC % 4 == 0
    counts = [0, 0]
    for n in range(1000):
        counts[owner(f"call-{n}@10.0.0.1".encode(), 2)] += 1
    assert 400 < counts[0] < 600


def test_port_slices_are_disjoint_whole_pairs_covering_the_range():
    slices = [port_slice(30000, 40000, 3, i) for i in range(3)]
    assert slices == [(30000, 33331), (33332, 36663), (36664, 40000)]
    assert all(low % 2 == 0 for low, _ in slices)
    with pytest.raises(ValueError):
        port_slice(30000, 30003, 3, 0)


def test_workers_setting(monkeypatch):
    assert load_config(None, {"OPENAI_API_KEY": "k"})["ng"]["workers"] == 1
    auto = load_config(None, {"NG_WORKERS": "auto"})["ng"]["workers"]
    assert auto == len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match=r"\[ng\] workers / NG_WORKERS: expected 'auto'"):
        load_config(None, {"NG_WORKERS": "many"})
    with pytest.raises(ConfigError, match=r"\[metrics\] listen .* past 65535"):
        load_config(None, {"NG_WORKERS": "2", "METRICS_LISTEN": "127.0.0.1:65535"})
    assert load_config(None, {"NG_WORKERS": "2", "METRICS_LISTEN": "127.0.0.1:65534"})
    with pytest.raises(ConfigError, match="port pairs"):
        load_config(None, {"NG_WORKERS": "4", "RTP_MIN_PORT": "30000", "RTP_MAX_PORT": "30005"})


def test_each_worker_has_its_ports_and_its_own_metrics_port():
    config = load_config(None, {"OPENAI_API_KEY": "k", "NG_WORKERS": "2", "RTP_MIN_PORT": "30000",
                                "RTP_MAX_PORT": "30099", "METRICS_LISTEN": "127.0.0.1:9105"})
    first, second = (worker_config(config, i, 2) for i in range(2))
    assert first["ng"]["workers"] == second["ng"]["workers"] == 1
    assert (first["rtp"]["min_port"], second["rtp"]["max_port"]) == (30000, 30099)
    assert first["rtp"]["max_port"] < second["rtp"]["min_port"]
    # One port would refuse the second worker's bind: each serves its own calls' metrics.
    assert [first["metrics"]["listen"], second["metrics"]["listen"]] == [
        ("127.0.0.1", 9105), ("127.0.0.1", 9106)]


def test_a_workers_reload_names_no_setting_the_user_did_not_change(tmp_path, caplog):
    """A worker's config is the file's with its port slice: a reload compares like with like."""
    path = tmp_path / "rtpai.conf"
    path.write_text("[openai]\nkey = k\n[rtp]\nmin_port = 30000\nmax_port = 30099\n"
                    "[ng]\nlisten = 127.0.0.1:0\nworkers = 2\n")
    engine = Engine(worker_config(load_config(str(path), {}), 1, 2))
    redactor = RedactSecrets([])
    caplog.set_level(logging.WARNING)
    assert reload_config(engine, str(path), redactor, environ={},
                         adapt=lambda new: worker_config(new, 1, 2)) is not None
    assert "need a restart" not in caplog.text
    # Without it, the slice and workers = 1 read as changed (what every worker's SIGHUP said).
    reload_config(engine, str(path), redactor, environ={})
    assert "need a restart (not applied)" in caplog.text and "[rtp] min_port" in caplog.text


@pytest.mark.parametrize("source, pktinfo", [
    (("192.0.2.7", 5060), b""), (("2001:db8::1", 2223), bytes(range(20))), (("", 0), b""),
])
def test_channel_envelope_round_trip(source, pktinfo):
    envelope = Envelope(Kind.REPLY, source, tag=7, copies=3, calls=1234, pktinfo=pktinfo)
    assert unpack(pack(envelope, b"cookie d6:result2:oke")) == (envelope,
                                                                 b"cookie d6:result2:oke")


def test_host_answers_merge_the_workers_parts():
    def part(calls, used, uptime):
        return {"result": "ok", "statistics": {
            "currentstatistics": {"sessionsown": calls},
            "totalstatistics": {"uptime": uptime},
            "controlstatistics": {"commands": {"offer": calls}, "proxies": []},
            "interfaces": [{"name": "default", "address": "192.0.2.1", "ports": {
                "min": 30000 + used, "max": 35000 + used, "used": used, "totals": 100,
                "used_pct": 0}}]}}

    merged = merge_statistics([part(2, 10, 50), part(3, 30, 40)])["statistics"]
    assert merged["currentstatistics"] == {"sessionsown": 5}
    assert merged["totalstatistics"] == {"uptime": 50}
    assert merged["controlstatistics"]["commands"] == {"offer": 5}
    ports = merged["interfaces"][0]["ports"]
    assert (ports["min"], ports["max"], ports["used"], ports["used_pct"]) == (30010, 35030,
                                                                            40, 20.0)
    assert merged["interfaces"][0]["address"] == "192.0.2.1"
    assert merge_lists([{"calls": ["a"]}, {"calls": ["b", "c"]}], 2)["calls"] == ["a", "b"]


# --------------------------------------------------------------------------- the daemon


def call_ids_of(worker: int, count: int, prefix: str, workers: int = 2) -> list[str]:
    """``count`` call-ids that the front gives to ``worker``."""
    found = [call_id for call_id in (f"{prefix}-{n}@192.0.2.1" for n in range(1000))
             if owner(call_id.encode(), workers) == worker]
    assert len(found) >= count, f"no {count} call-ids of worker {worker}"
    return found[:count]


def workers_env(url: str, ports: tuple[int, int], **extra: str) -> dict[str, str]:
    env = {**os.environ, "OPENAI_URL": url, "OPENAI_API_KEY": "w-key", "NG_WORKERS": "2",
           "NG_LISTEN": "127.0.0.1:0", "RTP_MIN_PORT": str(ports[0]),
           "RTP_MAX_PORT": str(ports[1]), "NG_SHUTDOWN_GRACE": "0", **extra}
    env.pop("LOG_LEVEL", None)
    return env


def worker_pid(log: bytes, index: int) -> int:
    pids = re.findall(rb"worker %d started \(pid (\d+)\)" % index, bytes(log))
    return int(pids[-1])


async def test_a_calls_commands_reach_its_worker_and_the_host_answers_as_one():
    server = FakeRealtimeServer(api_key="w-key", respond_after_ms=None)
    first, second = call_ids_of(0, 1, "one")[0], call_ids_of(1, 1, "two")[0]
    third = call_ids_of(0, 2, "one")[1]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            env = workers_env(url, (43600, 43699), NG_MAX_SESSIONS="2")
            async with running_daemon(env) as (daemon, log):
                address = ng_address(log)
                assert (await ng(address, "ping"))["result"] == "pong"
                ports = {}
                for call_id in (first, second):
                    reply = await ng(address, "offer", **{"call-id": call_id, "from-tag": "f",
                                                          "sdp": OFFER})
                    assert reply["result"] == "ok", reply
                    ports[call_id] = int(re.search(r"m=audio (\d+)", reply["sdp"])[1])
                # Each worker allocates from its half of 43600..43699.
                assert 43600 <= ports[first] < 43650 <= ports[second] <= 43699
                # A re-offer and a query reach the worker that holds the call.
                reoffer = await ng(address, "offer", **{"call-id": first, "from-tag": "f",
                                                        "sdp": OFFER})
                assert int(re.search(r"m=audio (\d+)", reoffer["sdp"])[1]) == ports[first]
                assert (await ng(address, "query", **{"call-id": second}))["result"] == "ok"
                # Host-wide: both workers' calls; the limit counts the host (each worker has
                # one call, the host two: a third is refused, so the proxy tries elsewhere).
                listed = await ng(address, "list")
                assert sorted(listed["calls"]) == sorted([first, second])
                stats = (await ng(address, "statistics"))["statistics"]
                assert stats["currentstatistics"]["sessionsown"] == 2
                assert stats["interfaces"][0]["ports"]["totals"] == 100
                assert stats["rtpai"]["front"]["alive"] == 2
                refused = await ng(address, "offer", **{"call-id": third, "from-tag": "f",
                                                        "sdp": OFFER, "supports": ["load limit"]})
                assert refused["result"] == "load limit", refused
                assert (await ng(address, "delete", **{"call-id": first}))["result"] == "ok"
                missing = await ng(address, "query", **{"call-id": first})
                assert missing["error-reason"] == "Unknown call-id"
            assert daemon.returncode == 0
            nursery.cancel_scope.cancel()


def max_gap_ms(times: list[float]) -> float:
    return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0) * 1000


async def test_a_killed_worker_has_its_calls_ended_and_restarts_while_the_other_goes_on(
        record_property):
    server = FakeRealtimeServer(api_key="w-key", respond_after_ms=None)
    management = FakeHttpServer()
    doomed, kept = call_ids_of(0, 1, "doomed")[0], call_ids_of(1, 1, "kept")[0]
    later = call_ids_of(0, 2, "doomed")[1]
    callers = {doomed: FakeCaller(), kept: FakeCaller()}
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            rpc = await nursery.start(management.serve)
            env = workers_env(url, (43700, 43799), PROXY_TYPE="kamailio", PROXY_URL=rpc + "/RPC")
            async with running_daemon(env) as (daemon, log):
                address = ng_address(log)
                async with trio.open_nursery() as media:
                    for call_id, caller in callers.items():
                        await caller.bind()
                        sdp = caller.sdp_offer(codecs="0").replace("a=rtpmap:8 PCMA/8000\r\n", "")
                        reply = await ng(address, "offer", **{
                            "call-id": call_id, "from-tag": "ft-" + call_id[:4],
                            "to-tag": "tt-" + call_id[:4], "sdp": sdp})
                        assert reply["result"] == "ok", reply
                        port = int(re.search(r"m=audio (\d+)", reply["sdp"])[1])
                        media.start_soon(caller.receive)
                        media.start_soon(caller.stream, ("127.0.0.1", port), [b"\xff" * 160] * 2000)
                    kept_caller = callers[kept]
                    await kept_caller.wait_for(lambda received: len(received) >= 25)
                    await callers[doomed].wait_for(lambda received: len(received) >= 25)
                    os.kill(worker_pid(log, 0), signal.SIGKILL)
                    killed_at = trio.current_time()
                    before = len(kept_caller.received)
                    # The proxy is asked to end the dead worker's call (its BYE ends both legs).
                    await management.wait_for(1)
                    hangup = json.loads(management.requests[0].body)
                    assert hangup["method"] == "dlg.terminate_dlg"
                    assert hangup["params"] == [doomed, "ft-" + doomed[:4], "tt-" + doomed[:4]]
                    await log.wait_for(b"worker 0 ready", count=2)  # restarted
                    # The other worker's call goes on: 1.5 s of its RTP after the kill.
                    await kept_caller.wait_for(
                        lambda received: received[-1].at - killed_at >= 1.5)
                    media.cancel_scope.cancel()
                assert b"rtpai worker 0 stopped (killed by SIGKILL)" in log
                # The restarted worker serves new calls; it knows nothing of the dead ones.
                assert (await ng(address, "offer", **{"call-id": later, "from-tag": "f",
                                                      "sdp": OFFER}))["result"] == "ok"
                gone = await ng(address, "query", **{"call-id": doomed})
                assert gone["error-reason"] == "Unknown call-id"
                stats = (await ng(address, "statistics"))["statistics"]["rtpai"]["front"]
                assert stats["restarts"] == 1 and stats["crash hangups"] == 1
            nursery.cancel_scope.cancel()

    # The kept call never noticed: one stream (one SSRC), not a packet missing across the
    # crash (consecutive sequence numbers), still paced. Its largest gap is recorded (the
    # figure in docs/performance.md), not asserted: the machine's load sets it.
    received = callers[kept].received
    assert len(received) > before
    assert len({packet.ssrc for packet in received}) == 1
    sequences = [packet.sequence for packet in received]
    assert all((b - a) % 65536 == 1 for a, b in zip(sequences, sequences[1:], strict=False))
    around = [p.at for p in received if abs(p.at - killed_at) <= 1.0]
    gap = max_gap_ms(around)
    record_property("kept_call_max_gap_ms_around_the_crash", round(gap, 1))
    print(f"kept call: max RTP gap within 1 s of the crash {gap:.1f} ms "
          f"(whole call {max_gap_ms([p.at for p in received]):.1f} ms)")


@contextlib.asynccontextmanager
async def a_call_on_each_worker(prefix: str, ports: tuple[int, int]):
    """A two-worker daemon whose hang-ups go to a fake Kamailio management interface, with
    one call on each worker: yields (daemon, its log, the management fake, the call-ids)."""
    server = FakeRealtimeServer(api_key="w-key", respond_after_ms=None)
    management = FakeHttpServer()
    calls = [call_ids_of(0, 1, prefix)[0], call_ids_of(1, 1, prefix)[0]]
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        rpc = await nursery.start(management.serve)
        env = workers_env(url, ports, PROXY_TYPE="kamailio", PROXY_URL=rpc + "/RPC")
        async with running_daemon(env) as (daemon, log):
            address = ng_address(log)
            for call_id in calls:
                reply = await ng(address, "offer", **{"call-id": call_id, "from-tag": "f",
                                                      "to-tag": "t", "sdp": OFFER})
                assert reply["result"] == "ok"
            yield daemon, log, management, calls
        nursery.cancel_scope.cancel()


def hang_ups_asked(management: FakeHttpServer) -> list[str]:
    return sorted(json.loads(r.body)["params"][0] for r in management.requests)


async def test_sigterm_drains_every_worker():
    with trio.fail_after(60):
        async with a_call_on_each_worker("drain", (43800, 43899)) as (daemon, log, management,
                                                                      calls):
            daemon.send_signal(signal.SIGTERM)
            # Each worker drains its own call: grace 0, then a hang-up through the proxy.
            await management.wait_for(2)
            await daemon.wait()
        assert daemon.returncode == 0
        assert hang_ups_asked(management) == sorted(calls)
        for index in (0, 1):
            assert b"rtpai[w%d]: received SIGTERM: draining" % index in log
            assert b"[w%d]: draining: 1 calls" % index in log


async def test_workers_whose_front_is_killed_end_their_calls_and_exit():
    with trio.fail_after(60):
        async with a_call_on_each_worker("orphan", (43900, 43999)) as (daemon, log, management,
                                                                       calls):
            workers = [worker_pid(log, 0), worker_pid(log, 1)]
            daemon.kill()  # no drain, no goodbye: the workers see their channel close
            await management.wait_for(2)
            assert hang_ups_asked(management) == sorted(calls)
            while any(os.path.exists(f"/proc/{pid}") for pid in workers):
                await trio.sleep(0.05)  # (other processes: polled, bounded above)


# --------------------------------------------------------------------------- no worker up


class TakenPorts:
    """``count`` consecutive TCP ports on 127.0.0.1, listened on until released (a worker
    whose ``[metrics] listen`` port is taken cannot start: it exits, is restarted with a
    backoff, and exits again, as long as the port is taken)."""

    def __init__(self, count: int) -> None:
        for _ in range(50):
            self._holders = [socket.socket() for _ in range(count)]
            try:
                self._holders[0].bind((LOOPBACK, 0))
                self.port = self._holders[0].getsockname()[1]
                for n, holder in enumerate(self._holders[1:], 1):
                    holder.bind((LOOPBACK, self.port + n))
            except OSError:
                self.release()
                continue
            for holder in self._holders:
                holder.listen()
            return
        raise RuntimeError("no free run of TCP ports on 127.0.0.1")

    def release(self) -> None:
        for holder in self._holders:
            holder.close()

    def __enter__(self) -> TakenPorts:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


@contextlib.asynccontextmanager
async def daemon_with_workers(ports: tuple[int, int], **extra: str):
    """rtpai with ``[ng] workers = 2`` (or ``NG_WORKERS`` in ``extra``), its AI a fake
    Realtime server: yields (process, log, ng address)."""
    server = FakeRealtimeServer(api_key="w-key", respond_after_ms=None)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        async with running_daemon(workers_env(url, ports, **extra)) as (daemon, log):
            yield daemon, log, ng_address(log)
        nursery.cancel_scope.cancel()


async def workers_alive(address) -> int:
    reply = await ng(address, "statistics")
    return reply.get("statistics", {}).get("rtpai", {}).get("front", {}).get("alive", 0)


async def ng_twice(address, datagram: bytes) -> tuple[bytes, bytes]:
    """One raw request sent twice from one socket, as a proxy retransmits it (the same
    source address and port, the same cookie); the reply to each."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock, trio.fail_after(5):
        await sock.connect(address)
        await sock.send(datagram)
        first = await sock.recv(65535)
        await sock.send(datagram)
        return first, await sock.recv(65535)


async def test_a_front_without_a_live_worker_says_so_at_once_and_serves_once_one_is_back():
    with TakenPorts(2) as metrics, trio.fail_after(60):
        async with daemon_with_workers((44100, 44199),
                                       METRICS_LISTEN=f"{LOOPBACK}:{metrics.port}") as (
                daemon, log, address):
            assert b"no worker is up" in log
            # The proxies' liveness probe: an error, not pong (both modules then disable
            # this engine and use the rest of the set).
            assert await ng(address, "ping") == {"result": "error",
                                                 "error-reason": "no rtpai worker is running"}
            # A new call: at once, load limit (the next engine) or the reason.
            offer = {"call-id": "nobody@192.0.2.1", "from-tag": "f", "sdp": OFFER}
            assert await ng(address, "offer", **offer, supports=["load limit"]) == {
                "result": "load limit", "message": "no rtpai worker is running"}
            refused = await ng(address, "offer", **offer)
            assert refused["error-reason"] == "no rtpai worker is running"
            # Without a call-id (nothing to route by) and host-wide: errors too.
            assert (await ng(address, "query"))["result"] == "error"
            for command in ("statistics", "list"):
                reply = await ng(address, command)
                assert reply["error-reason"] == "no rtpai worker is running"
            metrics.release()  # the port is free: the workers start
            while (await ng(address, "ping"))["result"] != "pong":
                await trio.sleep(0.1)  # (restart backoff: bounded by fail_after)
            while await workers_alive(address) != 2:
                await trio.sleep(0.1)  # the other worker too (bounded as above)
            assert (await ng(address, "offer", **offer))["result"] == "ok"


async def test_a_retransmitted_host_wide_command_gets_the_reply_it_missed():
    with trio.fail_after(60):
        async with daemon_with_workers((44200, 44299)) as (daemon, log, address):
            for command in (b"statistics", b"list"):
                request = b"re%s d7:command%d:%se" % (command, len(command), command)
                first, again = await ng_twice(address, request)
                # A fresh gathering would differ (the workers count every statistics); the
                # cache sends the reply the proxy missed, byte for byte.
                assert again == first
                assert decode_reply(first)[1]["result"] == "ok"
            stats = (await ng(address, "statistics"))["statistics"]
            assert stats["controlstatistics"]["commands"]["statistics"] == 2 * 2
            assert stats["rtpai"]["front"]["retransmits"] == 2


async def test_a_statistics_no_worker_answers_in_time_is_an_error_not_the_fronts_end():
    with trio.fail_after(60):
        async with daemon_with_workers((44500, 44599)) as (daemon, log, address):
            stopped = [worker_pid(log, 0), worker_pid(log, 1)]
            for pid in stopped:  # alive to the front, answering nothing
                os.kill(pid, signal.SIGSTOP)
            try:
                assert await ng(address, "statistics") == {
                    "result": "error", "error-reason": "no rtpai worker answered in time"}
            finally:
                for pid in stopped:
                    os.kill(pid, signal.SIGCONT)
            assert (await ng(address, "statistics"))["result"] == "ok"
            assert daemon.returncode is None


def engines_shown(shown):
    """(url, disabled) of each engine in OpenSIPS's ``rtpengine_show`` answer."""
    if isinstance(shown, dict):
        if "url" in shown:
            yield shown["url"], shown.get("disabled")
        for value in shown.values():
            yield from engines_shown(value)
    elif isinstance(shown, list):
        for value in shown:
            yield from engines_shown(value)


async def test_the_proxy_uses_the_other_engines_while_a_front_has_no_worker_up(tmp_path,
                                                                              proxy_kind):
    """A real proxy (Kamailio 5.6, OpenSIPS 3.6), two engines in its set: a front whose
    workers cannot start (their metrics port is taken) and a single rtpai. The proxy's probe
    of the front fails (both rtpengine modules disable an engine whose ping gets anything but
    pong; Kamailio's `rtpengine.ping` says so), a call that hashes to the front goes to the
    other engine, and once a worker is up the front is used again."""
    require_tool("sipp")
    pcap = tmp_path / "caller.pcap"
    write_rtp_pcap(pcap, [b"\xff" * 160])
    sip_port, front_port, other_port = unused_port(), unused_port(), unused_port()
    both = (True, True)

    async def call(call_id: str) -> None:
        await run_sipp(UAC_SCENARIO, target=(LOOPBACK, sip_port), local_port=unused_port(),
                       media_port=unused_media_port(), pcap=pcap, logdir=tmp_path,
                       pause_ms=100, extra=("-cid_str", call_id))

    async def managed(address) -> int:
        return (await ng(address, "statistics"))["statistics"]["totalstatistics"][
            "managedsessions"]

    with TakenPorts(2) as metrics, trio.fail_after(120):
        async with (
            daemon_with_workers((44300, 44399), NG_LISTEN=f"{LOOPBACK}:{front_port}",
                                METRICS_LISTEN=f"{LOOPBACK}:{metrics.port}") as (_, log, front),
            daemon_with_workers((44400, 44499), NG_WORKERS="1",
                                NG_LISTEN=f"{LOOPBACK}:{other_port}") as (_, _, other),
            start_proxy(proxy_kind, tmp_path, sip_port=sip_port, ng_port=front_port,
                        ng_socks=f"udp:{LOOPBACK}:{front_port}=1 "
                                 f"udp:{LOOPBACK}:{other_port}=1") as proxy,
        ):
            assert b"no worker is up" in log
            if proxy_kind == "kamailio":
                probe = await proxy.rpc("rtpengine.ping", f"udp:{LOOPBACK}:{front_port}")
                probe = probe[0] if isinstance(probe, list) else probe
                assert probe["status"] == "fail", probe  # with pong: "success"
            else:  # OpenSIPS pinged it at start-up: disabled
                nodes = list(engines_shown(await proxy.mi("rtpengine_show")))
                assert (f"udp:{LOOPBACK}:{front_port}", 1) in nodes, nodes
            # A call that would go to the front (by its Call-ID) is on the other engine.
            await call(call_id_for(0, "away", both, (1, 1)))
            assert await managed(other) == 1

            metrics.release()  # the workers can start now
            while await workers_alive(front) != 2:
                await trio.sleep(0.1)  # (restart backoff: bounded by fail_after)
            # Kamailio pings a disabled engine again when a call would go to it (past
            # rtpengine_disable_tout, 1 s in tests/peers/kamailio.cfg), OpenSIPS from a timer
            # (1 s in tests/peers/opensips.cfg): back in use.
            for attempt in range(30):
                await call(call_id_for(0, f"back{attempt}", both, (1, 1)))
                if await managed(front):
                    break
            assert await managed(front) == 1

"""The real-peer harness works: sipp -> Kamailio 5.6 -> an ng engine, on 127.0.0.1.

The engine here is a stand-in written in the test (ping/offer/delete, nothing
more), so what is proven is the harness and what Kamailio really sends:
the offer and delete datagrams are kept as golden files for replay tests
(written when missing, or rewritten with RTPAI_UPDATE_GOLDEN=1).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import bencode
import pytest
import trio

from tests.peers import (
    GOLDEN,
    LOOPBACK,
    UAC_SCENARIO,
    LoopbackCapture,
    attach_filter,
    parse_loopback_frame,
    release_media_ports,
    require_root,
    require_tool,
    run_sipp,
    start_kamailio,
    udp_dst_port_filter,
    unused_media_port,
    unused_port,
    write_rtp_pcap,
)

pytestmark = pytest.mark.realpeers

CALL_ID = "harness-1@127.0.0.1"  # sipp -cid_str harness-%u@%s, first call


def answer_sdp(port: int) -> bytes:
    return (
        "v=0\r\n"
        f"o=- 1 1 IN IP4 {LOOPBACK}\r\n"
        "s=rtpai stand-in\r\n"
        f"c=IN IP4 {LOOPBACK}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-15\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    ).encode()


class StandInEngine:
    """Just enough of an ng engine: pong, an SDP answer pointing at `media`, ok."""

    def __init__(self) -> None:
        self.ng = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.media = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.commands: list[tuple[str, dict, bytes]] = []  # (command, dict, datagram)
        self.offered = trio.Event()
        self.deleted = trio.Event()

    async def bind(self) -> None:
        await self.ng.bind((LOOPBACK, 0))
        await self.media.bind((LOOPBACK, 0))

    @property
    def ng_port(self) -> int:
        return self.ng.getsockname()[1]

    @property
    def media_port(self) -> int:
        return self.media.getsockname()[1]

    def first(self, command: str) -> tuple[dict, bytes]:
        return next((d, raw) for c, d, raw in self.commands if c == command)

    async def serve_ng(self) -> None:
        seen: set[bytes] = set()
        while True:
            datagram, peer = await self.ng.recvfrom(65535)
            cookie, _, payload = datagram.partition(b" ")
            request = bencode.decode(payload)
            command = request["command"]
            if cookie in seen:  # a retransmit: the real engine answers from its cache
                continue
            seen.add(cookie)
            self.commands.append((command, request, datagram))
            if command == "ping":
                reply = {"result": "pong"}
            elif command == "offer":
                reply = {"result": "ok", "sdp": answer_sdp(self.media_port)}
                self.offered.set()
            elif command == "delete":
                reply = {"result": "ok"}
                self.deleted.set()
            else:
                reply = {"result": "error", "error-reason": "Unrecognized command"}
            await self.ng.sendto(cookie + b" " + bencode.encode(reply), peer)


@asynccontextmanager
async def stand_in_engine() -> AsyncIterator[StandInEngine]:
    engine = StandInEngine()
    with engine.ng, engine.media:
        await engine.bind()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.serve_ng)
            yield engine
            nursery.cancel_scope.cancel()


def keep_golden(name: str, datagram: bytes) -> None:
    path = GOLDEN / name
    if path.exists() and os.environ.get("RTPAI_UPDATE_GOLDEN") != "1":
        return
    GOLDEN.mkdir(exist_ok=True)
    path.write_bytes(datagram)


def test_write_rtp_pcap_headers(tmp_path):
    payloads = [bytes([i]) * 160 for i in range(3)]
    rtp = write_rtp_pcap(tmp_path / "a.pcap", payloads, payload_type=0, ssrc=0x01020304)
    assert [p[12:] for p in rtp] == payloads
    assert rtp[0][:12] == bytes.fromhex("8080 03e8 00027100 01020304")  # M=1, seq 1000, ts 160000
    assert rtp[1][:12] == bytes.fromhex("8000 03e9 000271a0 01020304")  # ts +160
    data = (tmp_path / "a.pcap").read_bytes()
    assert data[:4] == bytes.fromhex("d4c3b2a1") and data[20:24] == b"\x01\0\0\0"  # Ethernet
    # Each record is a whole Ethernet/IPv4/UDP frame that the sniffer's parser reads back.
    first = data[24 + 16 : 24 + 16 + 14 + 20 + 8 + 172]
    parsed = parse_loopback_frame(first)
    assert parsed is not None and parsed.payload == rtp[0]
    assert parsed.src == (LOOPBACK, 4000) and parsed.dst == (LOOPBACK, 5000)


async def test_sipp_calls_through_kamailio_to_an_ng_engine(tmp_path):
    require_tool("kamailio")
    require_tool("sipp")
    require_root()  # sipp plays pcaps from a raw socket; LoopbackCapture is one too
    payloads = [bytes([0xFF - i]) * 160 for i in range(15)]  # 300 ms of PCMU
    pcap = tmp_path / "caller.pcap"
    sent_rtp = write_rtp_pcap(pcap, payloads)
    sip_port, sipp_port, media_port = unused_port(), unused_port(), unused_media_port()

    with trio.fail_after(40):
        async with (
            stand_in_engine() as engine,  # the engine first: Kamailio pings it at start-up
            start_kamailio(tmp_path, sip_port=sip_port, ng_port=engine.ng_port) as kamailio,
            LoopbackCapture(media_port) as capture,  # before any traffic to sipp
            trio.open_nursery() as nursery,
        ):
            sipp_done = trio.Event()

            async def call() -> None:
                await run_sipp(
                    UAC_SCENARIO,
                    target=(LOOPBACK, sip_port),
                    local_port=sipp_port,
                    media_port=media_port,
                    pcap=pcap,
                    pause_ms=len(payloads) * 20 + 700,
                    extra=("-cid_str", "harness-%u@%s"),
                )
                sipp_done.set()

            nursery.start_soon(call)

            # The caller's RTP reaches the port of the engine's SDP answer, unchanged.
            received = []
            while len(received) < len(sent_rtp):
                data, src = await engine.media.recvfrom(2048)
                assert src == (LOOPBACK, media_port)
                received.append(data)
            assert received == sent_rtp

            # Mid-call: the edge socket made it a confirmed dialog (state 4), named by
            # the tags the engine got, so that the engine can end it with
            # dlg.terminate_dlg call-id from-tag to-tag.
            dialogs = await kamailio.rpc("dlg.list")
            ours = [d for d in dialogs if d["call-id"] == CALL_ID]
            assert len(ours) == 1 and ours[0]["state"] == 4, dialogs
            offer, _ = engine.first("offer")
            assert ours[0]["caller"]["tag"] == offer["from-tag"]
            assert ours[0]["callee"]["tag"] == offer["to-tag"]

            # What the engine sends to sipp's media port is seen on lo, byte for byte.
            back = b"\x80\x00\x00\x01" + bytes(8) + b"\xd5" * 160
            await engine.media.sendto(back, (LOOPBACK, media_port))
            seen = await capture.receive()
            assert seen.payload == back
            assert seen.src == (LOOPBACK, engine.media_port)
            assert seen.dst == (LOOPBACK, media_port)

            await sipp_done.wait()
            # Kamailio deletes before it answers the BYE: nothing to wait for.
            assert engine.deleted.is_set()

    names = [c for c, _, _ in engine.commands]
    assert names == ["ping", "offer", "delete"], names
    offer, offer_raw = engine.first("offer")
    delete, delete_raw = engine.first("delete")
    print("offer keys:", sorted(offer), "delete keys:", sorted(delete))

    assert offer["call-id"] == delete["call-id"] == CALL_ID
    assert "SIPpTag00" in offer["from-tag"] and delete["from-tag"] == offer["from-tag"]
    assert offer["to-tag"]  # to-tag=$ltt(t): the To-tag of Kamailio's 200 OK
    assert "to-tag" not in delete
    assert f"m=audio {media_port} RTP/AVP 0 101" in offer["sdp"]
    assert "a=rtpmap:101 telephone-event/8000" in offer["sdp"]
    assert offer["received-from"] == ["IP4", LOOPBACK]
    assert offer["supports"] == ["load limit"]

    keep_golden("kamailio56_offer.bin", offer_raw)
    keep_golden("kamailio56_delete.bin", delete_raw)


def test_the_capture_filter_keeps_only_udp_to_its_port_in_the_kernel():
    """What the kernel queues for LoopbackCapture: UDP to its port, nothing else on lo."""
    require_root()
    wanted, other = unused_port(), unused_port()
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    with (raw, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
          socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink,
          socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other_sink):
        attach_filter(raw, udp_dst_port_filter(wanted))
        raw.bind(("lo", 0))
        # A packet socket queues frames from its creation on: what crossed lo (other tests'
        # traffic) before the filter was attached is thrown away first.
        raw.setblocking(False)
        with suppress(BlockingIOError):
            while True:
                raw.recv(65536)
        sink.bind((LOOPBACK, wanted))
        other_sink.bind((LOOPBACK, other))
        for n in range(20):
            sender.sendto(b"other %d" % n, (LOOPBACK, other))
            sender.sendto(b"wanted %d" % n, (LOOPBACK, wanted))
        for n in range(20):
            assert sink.recv(100) == b"wanted %d" % n  # all 20 have crossed lo by now
        queued = []
        with suppress(BlockingIOError):
            while True:
                queued.append(parse_loopback_frame(raw.recv(65536)))
    # Each datagram twice (lo shows it going out and coming in); nothing else at all.
    assert [d.payload for d in queued] == [b"wanted %d" % n for n in range(20) for _ in (0, 1)]
    assert {d.dst for d in queued} == {(LOOPBACK, wanted)}


def media_port_of_another_run(only_block: int) -> subprocess.CompletedProcess[str]:
    """``unused_media_port`` in another process, allowed one block only."""
    code = ("import tests.peers as peers\n"
            f"peers._media_blocks = lambda: range({only_block}, {only_block + 1})\n"
            "print(peers.unused_media_port())")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, timeout=30)


def test_sipp_media_ports_are_out_of_the_kernels_way_and_claimed_across_processes():
    low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
                 .split())
    picked = [unused_media_port() for _ in range(20)]
    for port in picked:
        # Never a port a bind to port 0 or an outgoing connection can be given meanwhile.
        assert port % 2 == 0 and not any(low <= p <= high for p in range(port, port + 4))
    assert len({port // 4 for port in picked}) == len(picked)  # no two blocks overlap
    # Another test run on the host, picking while this one holds its block, cannot get it.
    mine = picked[0]
    other = media_port_of_another_run(mine)
    assert "no free block" in other.stderr, other
    release_media_ports()
    assert media_port_of_another_run(mine).stdout.strip() == str(mine)

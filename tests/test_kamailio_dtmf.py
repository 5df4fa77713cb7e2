"""sipp's own RFC 4733 captures, through the proxy (Kamailio 5.6, OpenSIPS 3.6) and rtpai,
reach the AI as digits.

sipp ships one capture per key (/usr/share/sip-tester/dtmf_2833_*.pcap): a press of 280 ms,
its end packet sent three times with one sequence number, as real phones do. The frames of all
twelve are written into one pcap byte for byte (only the capture times are respaced so the
call stays short) and played by tests/peers/uac.xml through the proxy's rtpengine module. The
fake Realtime server must receive each key once, in order, as the text the AI session sends.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
import trio

from ctl.ng import NgRequest
from tests.fakes.engine import engine_for_test, handle
from tests.fakes.realtime import FakeRealtimeServer
from tests.peers import (
    LOOPBACK,
    UAC_SCENARIO,
    require_root,
    require_tool,
    run_sipp,
    start_proxy,
    unused_media_port,
    unused_port,
)

pytestmark = pytest.mark.realpeers

SIPP_PCAPS = Path("/usr/share/sip-tester")
# In the order of their RTP sequence numbers, as one phone sent them; "0" comes last with a
# sequence restart (12080) and an earlier timestamp, which the receiver must survive.
KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "star", "pound", "0"]
DIGITS = {"star": "*", "pound": "#"}
SPACING_US = 250_000  # one press every 250 ms (each capture lasts 140 ms)

_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


def read_pcap(path: Path) -> list[tuple[int, bytes]]:
    """(microseconds, frame) per record of a classic little-endian microsecond pcap."""
    data = path.read_bytes()
    magic, *_rest, linktype = _GLOBAL.unpack_from(data)
    assert magic == 0xA1B2C3D4 and linktype == 1, path
    records, offset = [], _GLOBAL.size
    while offset < len(data):
        sec, usec, caplen, length = _RECORD.unpack_from(data, offset)
        offset += _RECORD.size
        assert caplen == length  # sipp plays whole packets only
        records.append((sec * 1_000_000 + usec, data[offset : offset + caplen]))
        offset += caplen
    return records


def merge_captures(out: Path, keys: list[str] = KEYS, spacing_us: int = SPACING_US) -> int:
    """Write each key's capture into ``out``, respaced; returns the number of packets."""
    count = 0
    with out.open("wb") as f:
        f.write(_GLOBAL.pack(0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for n, key in enumerate(keys):
            records = read_pcap(SIPP_PCAPS / f"dtmf_2833_{key}.pcap")
            first = records[0][0]
            for at, frame in records:
                usec = n * spacing_us + (at - first)
                f.write(_RECORD.pack(usec // 1_000_000, usec % 1_000_000, len(frame), len(frame)))
                f.write(frame)
                count += 1
    return count


KEYPAD_TEXT = re.compile(r"pressed these keys on the phone keypad: ([0-9*#A-D]+)")


def keypad_messages(session) -> list[str]:
    """The key sequences the model was told about, one per message, in order."""
    texts = [
        part["text"]
        for event in session.events_of("conversation.item.create")
        for part in event["item"]["content"]
        if part.get("type") == "input_text"
    ]
    return [match.group(1) for text in texts for match in KEYPAD_TEXT.finditer(text)]


def pressed(session) -> list[str]:
    """Every key the model was told about, in order (the session groups a key sequence into
    one message, ended by # or a pause)."""
    return [key for sequence in keypad_messages(session) for key in sequence]


async def test_sipp_dtmf_captures_through_the_proxy_reach_the_ai_as_digits(tmp_path, proxy_kind):
    require_tool("sipp")
    require_root()
    if not (SIPP_PCAPS / "dtmf_2833_pound.pcap").exists():
        pytest.skip("sipp's DTMF captures are not installed")

    pcap = tmp_path / "dtmf.pcap"
    packets = merge_captures(pcap)
    expected = [DIGITS.get(key, key) for key in KEYS]
    server = FakeRealtimeServer(respond_after_ms=None)
    sip_port, sipp_port, media_port = unused_port(), unused_port(), unused_media_port()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine = engine_for_test(url, RTP_MIN_PORT="42100", RTP_MAX_PORT="42199")
            ng_address = await nursery.start(engine.run)
            async with start_proxy(proxy_kind, tmp_path, sip_port=sip_port,
                                   ng_port=ng_address[1]):
                sipp_done = trio.Event()

                async def call() -> None:
                    await run_sipp(
                        UAC_SCENARIO,
                        target=(LOOPBACK, sip_port),
                        local_port=sipp_port,
                        media_port=media_port,
                        pcap=pcap,
                        # The last key reaches the model after the session's DTMF pause.
                        pause_ms=len(KEYS) * SPACING_US // 1000 + 3500,
                    )
                    sipp_done.set()

                nursery.start_soon(call)
                session = await server.wait_for_session(1)
                await session.wait_until(lambda s: len(pressed(s)) >= len(expected))
                call_id = next(iter(engine.calls)).call_id
                call_stats = handle(engine, NgRequest("query", {"call-id": call_id}))
                await sipp_done.wait()

            assert pressed(session) == expected  # each key once, in order, none invented
            rtpai = call_stats["rtpai"]
            assert rtpai["dtmf"] == len(expected)
            assert rtpai["sequence restarts"] == 1  # the "0" capture's new numbering
            # Each end packet came three times with one sequence number: duplicates, dropped.
            assert rtpai["dropped"]["duplicate"] == 2 * len(KEYS)
            # The "0" capture's first packet jumps 3644 ahead: not believed until the second.
            assert rtpai["dropped"]["late"] == 1
            assert rtpai["rtp in"]["packets"] == packets
            assert session.audio_in == bytearray()  # events never reach the model as audio
            assert len(engine.calls) == 0 and engine.ports.in_use == 0
            nursery.cancel_scope.cancel()


async def test_keys_pressed_0_8_s_apart_reach_the_model_as_one_message(tmp_path, proxy_kind):
    """What a softphone (baresip) showed: 1, 5, # pressed 0.8 s apart reached the model as
    "15" and "#", two messages and two responses. The pause counts from the last key now."""
    require_tool("sipp")
    require_root()
    if not (SIPP_PCAPS / "dtmf_2833_pound.pcap").exists():
        pytest.skip("sipp's DTMF captures are not installed")
    pcap = tmp_path / "dtmf.pcap"
    merge_captures(pcap, ["1", "5", "pound"], spacing_us=800_000)
    server = FakeRealtimeServer(respond_after_ms=None)
    sip_port, sipp_port, media_port = unused_port(), unused_port(), unused_media_port()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine = engine_for_test(url, RTP_MIN_PORT="42100", RTP_MAX_PORT="42199")
            ng_address = await nursery.start(engine.run)
            async with start_proxy(proxy_kind, tmp_path, sip_port=sip_port,
                                   ng_port=ng_address[1]):
                sipp_done = trio.Event()

                async def call() -> None:
                    await run_sipp(UAC_SCENARIO, target=(LOOPBACK, sip_port),
                                   local_port=sipp_port, media_port=media_port, pcap=pcap,
                                   pause_ms=3000)
                    sipp_done.set()

                nursery.start_soon(call)
                session = await server.wait_for_session(1)
                await session.wait_until(lambda s: len(pressed(s)) >= 3)
                await sipp_done.wait()
            assert keypad_messages(session) == ["15#"]
            nursery.cancel_scope.cancel()

"""Offer/delete churn leaves nothing behind: no call, port, socket, task or per-call object.

docs/performance.md ("Memory") measures the daemon's RSS over tens of thousands of cycles; this
is the deterministic part of that: after a hundred cycles, every structure that holds
per-call state is back where it was, and no object of a call is still alive.
"""

from __future__ import annotations

import gc
import socket
from typing import Any

import pytest
import trio
import trio.testing

from ctl.call import Call
from ctl.config import load_config
from ctl.engine import Engine
from ctl.ng import decode_reply, encode_request
from media.bridge import CallBridge
from media.playout import PlayoutQueue
from media.stream import MediaStream
from openai_flavor.session import RealtimeSession
from tests.fakes.realtime import FakeRealtimeServer

pytestmark = pytest.mark.trio

RTP_PORTS = (43300, 43339)
SDP = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)
PER_CALL_TYPES = (Call, MediaStream, CallBridge, PlayoutQueue, RealtimeSession)


def live(kind: type) -> int:
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


def rtp_sockets() -> int:
    """Sockets of the engine's RTP range still open (and not yet collected)."""
    count = 0
    for obj in gc.get_objects():
        inet = (socket.AF_INET, socket.AF_INET6)
        if type(obj) is socket.socket and obj.fileno() != -1 and obj.family in inet:
            port = obj.getsockname()[1]
            count += RTP_PORTS[0] <= port <= RTP_PORTS[1]
    return count


def per_call_state(engine: Engine) -> dict[str, Any]:
    gc.collect()
    assert engine._calls_nursery is not None
    return {
        "calls": len(engine.calls),
        "ports in use": engine.ports.in_use,
        "poller sockets": len(engine.poller),
        "clock entries": len(engine.clock),
        "proxy notifications": len(engine._notifications),
        "engine tasks": len(engine._calls_nursery.child_tasks),
        "rtp sockets": rtp_sockets(),
        **{kind.__name__: live(kind) for kind in PER_CALL_TYPES},
    }


class NgClient:
    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(address)
        self.serial = 0

    def send(self, command: str, **params: Any) -> bytes:
        self.serial += 1
        cookie = b"%d" % self.serial
        self.sock.send(encode_request(cookie, command, params))
        return cookie

    async def replies(self, count: int) -> dict[bytes, dict[str, Any]]:
        found = {}
        while len(found) < count:
            await trio.lowlevel.wait_readable(self.sock)
            cookie, reply = decode_reply(self.sock.recv(65535))
            found[cookie] = reply
        return found


async def test_offer_delete_cycles_leave_no_per_call_state_behind():
    server = FakeRealtimeServer(respond_after_ms=None)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine = Engine(load_config(None, environ={
                "NG_LISTEN": "127.0.0.1:0", "OPENAI_URL": url, "OPENAI_API_KEY": "test-key",
                "RTP_MIN_PORT": str(RTP_PORTS[0]), "RTP_MAX_PORT": str(RTP_PORTS[1]),
            }))
            client = NgClient(await nursery.start(engine.run))

            async def cycles(count: int, prefix: str) -> None:
                for n in range(count):
                    call = {"call-id": f"{prefix}-{n}", "from-tag": "ft"}
                    if n % 2:
                        # Offer and delete in one burst: deleted before its task has run.
                        client.send("offer", sdp=SDP, **call)
                        client.send("delete", **call)
                        replies = await client.replies(2)
                    else:
                        # Deleted once its AI session has had time to connect.
                        client.send("offer", sdp=SDP, **call)
                        replies = await client.replies(1)
                        await trio.sleep(0.005)
                        client.send("delete", **call)
                        replies |= await client.replies(1)
                    assert all(reply["result"] == "ok" for reply in replies.values())

            await cycles(10, "warm")
            await trio.testing.wait_all_tasks_blocked()
            before = per_call_state(engine)
            await cycles(120, "churn")
            await trio.testing.wait_all_tasks_blocked()
            after = per_call_state(engine)
            nursery.cancel_scope.cancel()
    client.sock.close()
    assert after == before
    assert after["calls"] == after["ports in use"] == after["rtp sockets"] == 0
    assert after["Call"] == after["MediaStream"] == after["RealtimeSession"] == 0

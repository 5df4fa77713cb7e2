"""The ng server over a real UDP socket: inline replies, work after the reply, async handlers.

Plain handlers are answered by the receive loop itself, so the reply leaves before anything
they started runs; a :class:`ReplyFirst`'s follow-up runs after the reply is sent and before
the next datagram is read; ``async`` handlers get a task.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
import trio.testing

from ctl.config import load_config
from ctl.dispatcher import Dispatcher, ReplyFirst
from ctl.engine import Engine
from ctl.ng import NgRequest, decode_reply, encode_request
from ctl.ng_server import serve_ng
from tests.fakes.realtime import FakeRealtimeServer

pytestmark = pytest.mark.trio


class Client:
    """A proxy's ng socket: plain blocking-free UDP, read with trio waits."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(address)

    def send(self, cookie: bytes, command: str, **params: Any) -> None:
        self.sock.send(encode_request(cookie, command, params))

    def queued(self) -> bool:
        """Whether a reply is waiting in the socket (loopback delivers within ``sendto``)."""
        try:
            self.sock.recv(65535, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        return True

    async def reply(self) -> tuple[bytes, dict[str, Any]]:
        await trio.lowlevel.wait_readable(self.sock)
        return decode_reply(self.sock.recv(65535))

    def close(self) -> None:
        self.sock.close()


async def test_a_plain_handler_replies_before_what_it_started_runs_and_then_follows_up():
    log: list[str] = []
    client: Client | None = None

    async def started_by_the_offer() -> None:
        log.append("task ran")

    def offer(request: NgRequest) -> ReplyFirst:
        nursery.start_soon(started_by_the_offer)

        def then() -> None:
            assert client is not None
            log.append("then, reply already sent" if client.queued() else "then, no reply yet")

        return ReplyFirst({"sdp": "v=0"}, then=then)

    def query(request: NgRequest) -> dict[str, Any]:
        log.append("query")
        return {}

    async with trio.open_nursery() as nursery:
        dispatcher = Dispatcher({"offer": offer, "query": query})
        address = await nursery.start(serve_ng, ("127.0.0.1", 0), dispatcher)
        client = Client(address)
        # Both datagrams are queued before the server wakes: it handles them back to back.
        client.send(b"1", "offer")
        client.send(b"2", "query")
        assert await client.reply() == (b"1", {"result": "ok", "sdp": "v=0"})
        assert await client.reply() == (b"2", {"result": "ok"})
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    client.close()
    # The follow-up ran once the reply was out and before the next datagram was handled; the
    # task the handler started ran only after both.
    assert log == ["then, reply already sent", "query", "task ran"]


async def test_a_failing_follow_up_is_logged_and_the_server_goes_on(caplog):
    def offer(request: NgRequest) -> ReplyFirst:
        def then() -> None:
            raise RuntimeError("bug after the reply")

        return ReplyFirst({}, then=then)

    def ping(request: NgRequest) -> dict[str, Any]:
        return {"result": "pong"}

    async with trio.open_nursery() as nursery:
        dispatcher = Dispatcher({"offer": offer, "ping": ping})
        client = Client(await nursery.start(serve_ng, ("127.0.0.1", 0), dispatcher))
        client.send(b"1", "offer")
        assert (await client.reply())[1] == {"result": "ok"}
        client.send(b"2", "ping")
        assert (await client.reply())[1] == {"result": "pong"}
        nursery.cancel_scope.cancel()
    client.close()
    assert "work after the reply failed" in caplog.text


async def test_an_async_handler_is_answered_from_its_own_task_with_retransmits():
    release = trio.Event()
    finished: list[str] = []

    async def delete(request: NgRequest) -> ReplyFirst:
        await release.wait()
        return ReplyFirst({"deleted": 1}, then=lambda: finished.append("then"))

    def ping(request: NgRequest) -> dict[str, Any]:
        return {"result": "pong"}

    async with trio.open_nursery() as nursery:
        dispatcher = Dispatcher({"delete": delete, "ping": ping})
        client = Client(await nursery.start(serve_ng, ("127.0.0.1", 0), dispatcher))
        client.send(b"d", "delete")
        client.send(b"d", "delete")  # the proxy's retransmit, while the first is pending
        client.send(b"p", "ping")
        # The pending delete does not hold up the loop: the ping is answered first.
        assert await client.reply() == (b"p", {"result": "pong"})
        release.set()
        # The retransmit is not run again; the reply goes out once for each copy.
        assert await client.reply() == (b"d", {"result": "ok", "deleted": 1})
        assert await client.reply() == (b"d", {"result": "ok", "deleted": 1})
        nursery.cancel_scope.cancel()
    client.close()
    assert finished == ["then"]
    assert dispatcher.commands["delete"] == 1


async def test_an_offer_and_its_delete_in_one_burst_leave_nothing_behind():
    """The delete is read in the same wake-up as the offer, before the call's task has run:
    it still finds the call, and the call's sockets and ports are released (once its task has
    run: the delete is answered at once)."""
    server = FakeRealtimeServer(respond_after_ms=None)
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
        "m=audio 40000 RTP/AVP 0\r\na=sendrecv\r\n"
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            engine = Engine(load_config(None, environ={
                "NG_LISTEN": "127.0.0.1:0", "RTP_MIN_PORT": "43200", "RTP_MAX_PORT": "43209",
                "OPENAI_URL": url, "OPENAI_API_KEY": "test-key",
            }))
            client = Client(await nursery.start(engine.run))
            created = []
            add = engine.calls.add
            engine.calls.add = lambda call: (created.append(call), add(call))[-1]
            for n in range(5):
                call = {"call-id": f"burst-{n}", "from-tag": "ft"}
                client.send(f"o{n}".encode(), "offer", sdp=sdp, **call)
                client.send(f"d{n}".encode(), "delete", **call)
            replies = dict([await client.reply() for _ in range(10)])
            assert all(replies[f"o{n}".encode()]["result"] == "ok" for n in range(5))
            deleted = [replies[f"d{n}".encode()] for n in range(5)]
            assert all(reply["result"] == "ok" and "warning" not in reply for reply in deleted)
            assert [reply["rtpai"]["state"] for reply in deleted] == ["ending"] * 5
            assert len(engine.calls) == 0
            for call in created:
                await call.ended.wait()
            assert engine.ports.in_use == 0
            nursery.cancel_scope.cancel()
    client.close()

"""A fake HTTP server for the proxy's management interface and webhooks (h11, trio)."""

from __future__ import annotations

from dataclasses import dataclass, field

import h11
import trio


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeHttpServer:
    """Answers each request with the next of ``statuses`` (then 200), recording them all."""

    statuses: list[int] = field(default_factory=list)
    reply_body: bytes = b'{"jsonrpc":"2.0","result":"ok","id":1}'
    requests: list[Received] = field(default_factory=list)
    _arrived: trio.Event = field(default_factory=trio.Event)

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(f"http://127.0.0.1:{port}")
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def wait_for(self, count: int) -> None:
        while len(self.requests) < count:
            await self._arrived.wait()

    async def _handle(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = bytearray()
        async with stream:
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    connection.receive_data(data)
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert request is not None
            self.requests.append(Received(
                request.method.decode(), request.target.decode(),
                {k.decode().lower(): v.decode() for k, v in request.headers}, bytes(body)))
            status = self.statuses.pop(0) if self.statuses else 200
            payload = self.reply_body if status == 200 else b"nope"
            await stream.send_all(connection.send(h11.Response(
                status_code=status, headers=[("Content-Length", str(len(payload))),
                                             ("Connection", "close")])))
            await stream.send_all(connection.send(h11.Data(data=payload)))
            await stream.send_all(connection.send(h11.EndOfMessage()))
            self._arrived.set()
            self._arrived = trio.Event()

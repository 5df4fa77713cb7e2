"""A fake tool webhook: an HTTP/1.1 server on trio that records POSTed JSON and answers it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio


@dataclass
class FakeWebhook:
    """``answer(payload) -> (status, body)``; ``hang=True`` never answers (a timeout)."""

    answer: Callable[[Any], tuple[int, bytes]] = lambda payload: (200, b'{"ok": true}')
    hang: bool = False
    chunked: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/rtpai/tools?token=t"
        task_status.started(self.url)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(4096)
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            while len(body) < int(headers["content-length"]):
                body += await stream.receive_some(4096)
            payload = json.loads(body)
            self.requests.append({"request line": lines[0], "headers": headers, "json": payload})
            if self.hang:
                await trio.sleep_forever()
            status, answer = self.answer(payload)
            if self.chunked:
                middle = len(answer) // 2
                chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (answer[:middle], answer[middle:]) if c)
                await stream.send_all(
                    b"HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" % status
                    + chunks + b"0\r\n\r\n")
            else:
                await stream.send_all(
                    b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                    b"Connection: close\r\n\r\n" % (status, len(answer)) + answer)

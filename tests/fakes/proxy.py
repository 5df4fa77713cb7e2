"""A fake SIP proxy's ng side: sends commands as Kamailio's rtpengine module does."""

from __future__ import annotations

import itertools
import os
import socket
from typing import Any

import trio

from ctl.ng import decode_reply, encode_request


class FakeProxy:
    """An ng client on a connected UDP socket, with Kamailio-style cookies and retransmits."""

    def __init__(self, engine: tuple[str, int], *, retransmit_after: float = 1.0, tries: int = 5):
        self.engine = engine
        self.retransmit_after = retransmit_after
        self.tries = tries
        self._seq = itertools.count(1)
        self._sock: trio.socket.SocketType | None = None

    async def __aenter__(self) -> FakeProxy:
        self._sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await self._sock.connect(self.engine)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._sock is not None
        self._sock.close()

    def next_cookie(self) -> bytes:
        return f"1_{os.getpid()}_{next(self._seq)}".encode()

    async def send_raw(self, datagram: bytes, cookie: bytes) -> dict[str, Any]:
        """Send a datagram (resending it like the module) and return the decoded reply."""
        assert self._sock is not None
        for _ in range(self.tries):
            await self._sock.send(datagram)
            with trio.move_on_after(self.retransmit_after):
                while True:
                    reply_cookie, reply = decode_reply(await self._sock.recv(65535))
                    if reply_cookie == cookie:
                        return reply
        raise TimeoutError(f"no ng reply from {self.engine}")

    async def command(self, command: str, **params: Any) -> dict[str, Any]:
        cookie = self.next_cookie()
        return await self.send_raw(encode_request(cookie, command, params), cookie)

"""ng clients for the benchmark: one at a time (latency) and pipelined (throughput, churn).

Both engines get the same client, so its own cost (bencode in Python) is in both figures.
"""

from __future__ import annotations

import itertools
import os
import re
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from ctl.ng import decode_reply, encode_request

ANSWER_PORT = re.compile(r"^m=audio (\d+) ", re.MULTILINE)


def caller_sdp(port: int, host: str = "127.0.0.1") -> str:
    """What a plain SIP phone offers: PCMU, PCMA, telephone-event, 20 ms."""
    return (
        "v=0\r\n"
        f"o=bench 1 1 IN IP4 {host}\r\n"
        "s=bench\r\n"
        f"c=IN IP4 {host}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 8 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-16\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    )


def answer_port(reply: dict[str, Any]) -> int:
    match = ANSWER_PORT.search(reply.get("sdp", ""))
    if reply.get("result") != "ok" or not match:
        raise RuntimeError(f"offer failed: {reply}")
    return int(match.group(1))


class NgClient:
    """A blocking ng client on one connected UDP socket (Kamailio-style cookies)."""

    def __init__(self, address: tuple[str, int], *, timeout: float = 2.0, tries: int = 3):
        self.address = address
        self.timeout = timeout
        self.tries = tries
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.connect(address)
        self._seq = itertools.count(1)
        self._prefix = f"{os.getpid()}_{id(self) & 0xFFFF:x}_"

    def close(self) -> None:
        self.sock.close()

    def cookie(self) -> bytes:
        return f"{self._prefix}{next(self._seq)}".encode()

    def command(self, command: str, **params: Any) -> dict[str, Any]:
        cookie = self.cookie()
        datagram = encode_request(cookie, command, params)
        for _ in range(self.tries):
            self.sock.send(datagram)
            deadline = time.monotonic() + self.timeout
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([self.sock], [], [], left)
                if not ready:
                    break
                reply_cookie, reply = decode_reply(self.sock.recv(65535))
                if reply_cookie == cookie:
                    return reply
        raise TimeoutError(f"no ng reply to {command} from {self.address}")

    def wait_ready(self, seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                saved, self.timeout, self.tries = (self.timeout, self.tries), 0.2, 1
                try:
                    if self.command("ping").get("result") == "pong":
                        return
                finally:
                    self.timeout, self.tries = saved
            except (TimeoutError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def pipelined(
        self,
        steps: Iterator[tuple[str, dict[str, Any], Callable[[dict[str, Any], float], Any]]],
        window: int,
    ) -> float:
        """Keep up to ``window`` requests in flight; each step is (command, params, on_reply).

        ``on_reply(reply, rtt_seconds)`` may return a further step (e.g. the delete after an
        offer), which is sent at once. Returns the elapsed time. Lost datagrams are resent
        after ``timeout`` (the engine's reply cache answers a duplicate without re-running it).
        """
        pending: dict[bytes, tuple[bytes, float, Callable, float]] = {}
        started = time.perf_counter()
        source = iter(steps)
        exhausted = False

        def send(step) -> None:
            command, params, on_reply = step
            cookie = self.cookie()
            datagram = encode_request(cookie, command, params)
            now = time.perf_counter()
            pending[cookie] = (datagram, now, on_reply, now)
            self.sock.send(datagram)

        while True:
            while not exhausted and len(pending) < window:
                try:
                    send(next(source))
                except StopIteration:
                    exhausted = True
            if exhausted and not pending:
                return time.perf_counter() - started
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            now = time.perf_counter()
            if ready:
                while True:
                    try:
                        data = self.sock.recv(65535, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    cookie, reply = decode_reply(data)
                    entry = pending.pop(cookie, None)
                    if entry is None:
                        continue  # the reply to a resend we no longer wait for
                    follow = entry[2](reply, time.perf_counter() - entry[1])
                    if follow is not None:
                        send(follow)
            for cookie, (datagram, first, on_reply, last) in list(pending.items()):
                if now - last > self.timeout:
                    if now - first > self.timeout * self.tries:
                        raise TimeoutError("ng request unanswered after retries")
                    pending[cookie] = (datagram, first, on_reply, now)
                    self.sock.send(datagram)

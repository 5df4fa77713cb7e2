"""A hostile Realtime server: one raw-socket WebSocket server whose every fault is picked by URL.

The strict fake (tests/fakes/realtime.py) is a well-behaved server built on trio-websocket;
this one writes its own frames on a raw TCP stream, so it can misbehave in ways a library
would not let it: never answer the upgrade, stop reading, flood pings, send 16 MiB messages.
A connection's fault comes from its URL query, so that one server (and one rtpai profile per
fault) serves every case, in tests and in ``python -m bench.faults``::

    ws://127.0.0.1:PORT/v1/realtime?fault=mute-response&times=1&call=c7

``times``: the fault applies to this many connections of ``call`` (default: every one), the
later ones are healthy: a reconnect then recovers. Faults (:data:`FAULTS`):

``none``                healthy: session.created, session.updated, a reply per caller turn
``no-upgrade``          reads the HTTP request, never answers it
``silent-101``          answers 101, then never sends session.created
``no-session-updated``  session.created, then ignores session.update
``not-reading``         configures the session, then never reads the socket again
``ping-flood``          configures the session, then floods pings without reading
``garbage``             type-confused events (then behaves): delta 5, response "x", error
                        [], no type, non-object and invalid JSON, a binary frame, ...
``huge``                configures the session, then sends 16 MiB messages
``mute-response``       configures the session, then, once the caller spoke, sends the
                        turn's events (speech started/stopped, committed) and never a response

A healthy turn: after ``TURN_BYTES`` of caller audio, speech_started/stopped, committed,
response.created, ``REPLY_MS`` of audio in 100 ms deltas, audio done, response.done. Run
standalone: ``python -m tests.fakes.hostile --port 0`` prints ``url=ws://...`` first.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import itertools
import json
import socket
import struct
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cache, partial
from urllib.parse import parse_qs, urlsplit

import trio

FAULTS = ("none", "no-upgrade", "silent-101", "no-session-updated", "not-reading",
          "ping-flood", "garbage", "huge", "mute-response")
PATH = "/v1/realtime"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TURN_BYTES = 600 * 8  # 600 ms of G.711: one caller turn
REPLY_MS = 400
HUGE_BYTES = 16 * 1024 * 1024

# What the "garbage" fault sends: each must be counted and dropped, the call going on.
GARBAGE: tuple[bytes | str, ...] = (
    '{"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "delta": 5}',
    '{"type": "response.output_audio.delta", "delta": "%%% not base64 %%%"}',
    '{"type": "response.output_audio.delta", "item_id": ["i"], "delta": ""}',
    '{"type": "response.output_audio.delta", "response_id": 7, "item_id": "i", "delta": ""}',
    '{"type": "response.created", "response": "x"}',
    '{"type": "response.done", "response": {"id": "never-created"}}',
    '{"type": "response.done", "response": 7}',
    '{"type": "response.function_call_arguments.done", "call_id": {}, "arguments": 5}',
    '{"type": "error", "error": []}',
    '{"type": "error", "error": [1, 2]}',
    '{"type": "error", "error": "x"}',
    '{"type": "session.updated", "session": "s"}',
    '{"delta": "no type"}',
    '{"type": 5}',
    "[1, 2, 3]",
    '"a string"',
    "{not json",
    b"\xff\xfe not utf-8",
    "",
)


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One unmasked server frame (RFC 6455 section 5.2)."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", first, size) + payload
    if size < 65536:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


def text(event: dict | str | bytes) -> bytes:
    if isinstance(event, dict):
        event = json.dumps(event)
    return server_frame(0x1, event.encode() if isinstance(event, str) else event)


@cache
def _huge_frame() -> bytes:
    """A 16 MiB text message, built once (in the bench the attacker shares our CPUs)."""
    return text('{"type":"x","pad":"' + "a" * HUGE_BYTES + '"}')


class ClientFrames:
    """Masked client frames in, ``(opcode, payload)`` out (enough for a test server)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buffer += data
        out = []
        while len(self.buffer) >= 2:
            b = self.buffer
            size, at = b[1] & 0x7F, 2
            if size == 126:
                if len(b) < 4:
                    break
                size, at = struct.unpack_from("!H", b, 2)[0], 4
            elif size == 127:
                if len(b) < 10:
                    break
                size, at = struct.unpack_from("!Q", b, 2)[0], 10
            if len(b) < at + 4 + size:
                break
            key = b[at : at + 4]
            payload = bytes(c ^ key[i % 4] for i, c in enumerate(b[at + 4 : at + 4 + size]))
            out.append((b[0] & 0x0F, payload))
            del b[: at + 4 + size]
        return out


@dataclass
class Connection:
    """What the server saw of one connection, for tests and the bench."""

    call: str
    fault: str
    opened_at: float  # time.monotonic(): comparable across processes (the bench)
    updated_at: float | None = None  # session.updated sent
    client_events: list[str] = field(default_factory=list)
    closed: trio.Event = field(default_factory=trio.Event)


class HostileRealtimeServer:
    def __init__(self) -> None:
        self.url: str | None = None
        self.connections: list[Connection] = []
        self._counts: dict[str, int] = defaultdict(int)
        self._changed = trio.Event()
        self._ids = itertools.count(1)

    async def serve(self, *, host: str = "127.0.0.1", port: int = 0, ssl_context=None,
                    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        assert ssl_context is None, "ws:// only"
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.url = f"ws://{host}:{listeners[0].socket.getsockname()[1]}{PATH}"
        task_status.started(self.url)
        await trio.serve_listeners(self._handle, listeners)

    async def wait_until(self, predicate) -> None:
        while not predicate(self):
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def of(self, call: str) -> list[Connection]:
        return [c for c in self.connections if c.call == call]

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve(stream)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client gave up on us: what the faults are for
        finally:
            with contextlib.suppress(Exception):
                await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            data = await stream.receive_some(4096)
            if not data:
                return
            request += data
        head, _, rest = request.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1]
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:])}
        query = parse_qs(urlsplit(target).query)
        call = query.get("call", ["default"])[0]
        fault = query.get("fault", ["none"])[0]
        times = int(query.get("times", ["1000000"])[0])
        self._counts[call] += 1
        if self._counts[call] > times:
            fault = "none"
        connection = Connection(call, fault, time.monotonic())
        self.connections.append(connection)
        self._notify()
        try:
            await self._session(stream, connection, headers, rest)
        finally:
            connection.closed.set()
            self._notify()

    async def _session(self, stream, connection: Connection, headers, rest: bytes) -> None:
        fault = connection.fault
        if fault == "no-upgrade":
            await trio.sleep_forever()
        accept = base64.b64encode(
            hashlib.sha1(headers["sec-websocket-key"].encode() + _GUID).digest()).decode()
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n")
        if fault == "silent-101":
            await self._drain(stream)
            return
        session = {"id": f"sess_{next(self._ids)}", "object": "realtime.session"}
        await stream.send_all(text({"type": "session.created", "session": session}))
        frames = ClientFrames()
        pending = frames.feed(rest)
        configured = False
        heard = 0
        async with trio.open_nursery() as nursery:
            while True:
                for opcode, payload in pending:
                    if opcode == 0x8:
                        with contextlib.suppress(trio.BrokenResourceError):
                            await stream.send_all(server_frame(0x8, payload[:2]))
                        nursery.cancel_scope.cancel()
                        return
                    if opcode == 0x9:
                        await stream.send_all(server_frame(0xA, payload))
                        continue
                    if opcode != 0x1:
                        continue
                    event = json.loads(payload)
                    kind = event.get("type")
                    connection.client_events.append(kind)
                    if kind == "session.update" and not configured:
                        if fault == "no-session-updated":
                            continue
                        configured = True
                        await stream.send_all(
                            text({"type": "session.updated", "session": session}))
                        connection.updated_at = time.monotonic()
                        self._notify()
                        if fault in ("not-reading", "ping-flood"):
                            if fault == "ping-flood":
                                nursery.start_soon(self._ping_flood, stream)
                            await trio.sleep_forever()  # never reads again
                        if fault == "huge":
                            for _ in range(3):
                                await stream.send_all(_huge_frame())
                            await trio.sleep_forever()
                        if fault == "garbage":
                            for message in GARBAGE:
                                await stream.send_all(text(message) if isinstance(message, str)
                                                      else server_frame(0x2, message))
                            await stream.send_all(text({"type": "marker.garbage_done"}))
                    elif kind == "input_audio_buffer.append":
                        heard += len(base64.b64decode(event["audio"]))
                        if heard >= TURN_BYTES:
                            heard = 0
                            await self._turn(stream, fault == "mute-response")
                    elif kind == "response.create" and fault != "mute-response":
                        await self._reply(stream)
                    self._notify()
                data = await stream.receive_some(65536)
                if not data:
                    nursery.cancel_scope.cancel()
                    return
                pending = frames.feed(data)

    async def _turn(self, stream, mute: bool) -> None:
        item = f"item_{next(self._ids)}"
        for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                     "input_audio_buffer.committed"):
            await stream.send_all(text({"type": kind, "item_id": item}))
        if not mute:
            await self._reply(stream)

    async def _reply(self, stream) -> None:
        response, item = f"resp_{next(self._ids)}", f"item_{next(self._ids)}"
        await stream.send_all(text({"type": "response.created", "response": {"id": response}}))
        chunk = b"\x2a" * 800  # 100 ms of G.711, not silence
        for _ in range(REPLY_MS // 100):
            await stream.send_all(text({"type": "response.output_audio.delta",
                                        "response_id": response, "item_id": item,
                                        "delta": base64.b64encode(chunk).decode()}))
        await stream.send_all(text({"type": "response.output_audio.done",
                                    "response_id": response, "item_id": item}))
        await stream.send_all(text({"type": "response.done", "response": {
            "id": response, "status": "completed",
            "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}}}))

    async def _ping_flood(self, stream) -> None:
        burst = server_frame(0x9, b"") * 4096
        while True:
            await stream.send_all(burst)

    async def _drain(self, stream) -> None:
        while await stream.receive_some(65536):
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.hostile")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = HostileRealtimeServer()

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(server.serve, host=args.host, port=args.port))
            print(f"url={url}", flush=True)
            # The bench asks when each call's connections opened and were configured.
            stdin = trio.lowlevel.FdStream(0)
            buffer = b""
            while True:
                data = await stdin.receive_some(4096)
                if not data:
                    nursery.cancel_scope.cancel()
                    return
                buffer += data
                while b"\n" in buffer:
                    line, _, buffer = buffer.partition(b"\n")
                    if line.strip() == b"STATS":
                        print("STATS " + json.dumps([
                            {"call": c.call, "fault": c.fault, "opened_at": c.opened_at,
                             "updated_at": c.updated_at} for c in server.connections]),
                            flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run)


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    main()

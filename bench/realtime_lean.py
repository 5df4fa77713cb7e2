"""A lean Realtime-protocol server for load: hundreds of sessions on one epoll loop.

``tests/fakes/realtime.py`` validates every field and records every event, which is what the
tests need and far too much for 500 sessions. This one speaks the same wire protocol for what
rtpai sends (the WebSocket upgrade with ``Authorization: Bearer``, ``session.update``,
``input_audio_buffer.append``, ``response.create``, ``conversation.item.truncate``) and
answers like the real server (``session.created``, ``session.updated``, a response's
``response.created`` .. ``response.output_audio.delta`` .. ``response.done``), with a
hand-written RFC 6455 framer over non-blocking sockets and no per-session tasks.

Each session gets a response every ``--interval`` seconds (first one staggered): ``--reply-ms``
of mu-law audio in ``--chunk-ms`` deltas, paced at ``--speed`` x real time. Every delta's audio
starts with ``RTPD`` + the send time (CLOCK_REALTIME ns) + its index in the response, which
the load generator reads back from rtpai's RTP. Caller frames carry ``RTPC`` markers that this
server reads to time RTP-in -> WebSocket-out and to count the frames that arrived.

Control on stdin, one command per line: ``STATS`` (prints ``STATS {json}``), ``WINDOW_START``,
``WINDOW_END`` (latency samples are kept inside the window only), ``RESET``, ``EXIT``.
The first stdout line is ``url=ws://HOST:PORT/v1/realtime``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import errno
import hashlib
import heapq
import itertools
import json
import os
import random
import select
import socket
import struct
import sys
import time

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
APPEND_PREFIX = '{"type":"input_audio_buffer.append","audio":"'
CALLER_MARK = b"RTPC"
CALLER_MARK_FIELDS = struct.Struct("<IIQ")  # call index, frame number, send time (ns)
DELTA_HEAD = struct.Struct("<4sQIH")  # "RTPD", send time (ns), index in response, pad -> 18 B
FRAME_BYTES = 160
# SO_TIMESTAMPNS (Python 3.11 has no name for it): the kernel stamps each segment's arrival,
# and TCP's recvmsg hands over the stamp of the last segment read (socket(7)), so a caller
# frame's latency can be taken to its arrival at this server, without this loop's own delay.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("@qq")
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def summary_us(samples_ns: list[int]) -> dict[str, float | None]:
    """n, p50, p99 and max of nanosecond samples, in microseconds."""
    ordered = sorted(samples_ns)

    def q(fraction: float) -> float | None:
        if not ordered:
            return None
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1000

    return {"n": len(ordered), "p50_us": q(0.5), "p99_us": q(0.99),
            "max_us": ordered[-1] / 1000 if ordered else None}


def ws_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """An unmasked server frame (RFC 6455 5.2)."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, size))
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return head + payload


def unmask(data: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte mask, as one big-integer operation (no per-byte Python loop)."""
    size = len(data)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(
        size, "little"
    )


def tone_ulaw(ms: int) -> bytes:
    """A recognisable, never-silent mu-law pattern (the audio content does not matter)."""
    return bytes(0x10 + (n * 7) % 0x60 for n in range(8 * ms))


class Session:
    __slots__ = (
        "sock", "fd", "inbuf", "outbuf", "open", "fragments", "codec", "number", "response",
        "delta_index", "item", "closing", "scheduled",
    )

    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.open = False  # upgraded to WebSocket
        self.fragments: list[bytes] = []
        self.codec = "audio/pcmu"
        self.number = number
        self.response: str | None = None
        self.item: str | None = None
        self.delta_index = 0
        self.closing = False
        self.scheduled = False  # the session's responses are on the timer


class LeanRealtimeServer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.api_key = args.api_key
        self.epoll = select.epoll()
        self.sessions: dict[int, Session] = {}
        self.timers: list = []  # (deadline, seq, session, action)
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self.delta_bytes = args.chunk_ms * 8
        self.deltas_per_response = max(1, args.reply_ms // args.chunk_ms)
        self.delta_gap = args.chunk_ms / 1000 / args.speed
        audio = tone_ulaw(args.chunk_ms)
        # The marker head is 18 bytes (a multiple of 3) so the rest base64-encodes once.
        self.delta_tail_b64 = base64.b64encode(audio[DELTA_HEAD.size:]).decode()
        self.window = False
        self.reset()

    def reset(self) -> None:
        self.stats = {
            "sessions_total": 0, "session_updates": 0, "appends": 0, "audio_in_bytes": 0,
            "caller_frames": 0, "responses": 0, "deltas": 0, "errors_sent": 0, "closed": 0,
            "bad_auth": 0, "json_slow_path": 0,
        }
        self.latencies: list[int] = []  # RTP send -> append read, ns, inside the window
        self.arrivals: list[int] = []  # RTP send -> the append's arrival (kernel), ns, same
        self.chunk_arrived_ns = 0  # the kernel's stamp of what readable() read last
        self.frames_per_call: dict[int, int] = {}

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):x}"

    # --- loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.args.host, self.args.port))
        listener.listen(4096)
        listener.setblocking(False)
        self.listener = listener
        host, port = listener.getsockname()[:2]
        print(f"url=ws://{host}:{port}/v1/realtime", flush=True)
        os.set_blocking(0, False)
        self.epoll.register(listener.fileno(), select.EPOLLIN)
        self.epoll.register(0, select.EPOLLIN)
        stdin_buf = bytearray()
        while True:
            timeout = -1
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            for fd, events in self.epoll.poll(timeout):
                if fd == listener.fileno():
                    self.accept()
                elif fd == 0:
                    chunk = os.read(0, 65536)
                    if not chunk:
                        return
                    stdin_buf += chunk
                    while b"\n" in stdin_buf:
                        line, _, rest = bytes(stdin_buf).partition(b"\n")
                        stdin_buf[:] = rest
                        if self.command(line.decode().strip()) == "exit":
                            return
                else:
                    session = self.sessions.get(fd)
                    if session is None:
                        continue
                    if events & select.EPOLLOUT:
                        self.flush(session)
                    if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                        self.readable(session)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, session, action = heapq.heappop(self.timers)
                if session.fd in self.sessions and self.sessions[session.fd] is session:
                    action(session)

    def command(self, line: str) -> str | None:
        if line == "STATS":
            latencies = sorted(self.latencies)

            def q(fraction: float) -> float | None:
                if not latencies:
                    return None
                return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))] / 1000

            stats = {
                **self.stats,
                "sessions_open": sum(1 for s in self.sessions.values() if s.open),
                "rtp_to_ws_us": {
                    "n": len(latencies), "p50_us": q(0.5), "p99_us": q(0.99),
                    "max_us": latencies[-1] / 1000 if latencies else None,
                },
                "rtp_to_ws_arrival_us": summary_us(self.arrivals),
                "frames_per_call": self.frames_per_call,
            }
            print("STATS " + json.dumps(stats), flush=True)
        elif line == "WINDOW_START":
            self.window = True
            self.latencies = []
            self.arrivals = []
        elif line == "WINDOW_END":
            self.window = False
        elif line == "RESET":
            self.reset()
        elif line == "EXIT":
            return "exit"
        return None

    def at(self, deadline: float, session: Session, action) -> None:
        heapq.heappush(self.timers, (deadline, next(self._seq), session, action))

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            session = Session(sock, self.stats["sessions_total"])
            self.stats["sessions_total"] += 1
            self.sessions[session.fd] = session
            self.epoll.register(session.fd, select.EPOLLIN)

    def drop(self, session: Session) -> None:
        if self.sessions.pop(session.fd, None) is None:
            return
        self.stats["closed"] += 1
        with contextlib.suppress(OSError):
            self.epoll.unregister(session.fd)
        session.sock.close()

    # --- I/O ----------------------------------------------------------------------------------

    def send(self, session: Session, data: bytes) -> None:
        if session.outbuf:
            session.outbuf += data
            return
        try:
            sent = session.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.drop(session)
            return
        if sent < len(data):
            session.outbuf += data[sent:]
            self.epoll.modify(session.fd, select.EPOLLIN | select.EPOLLOUT)

    def flush(self, session: Session) -> None:
        try:
            sent = session.sock.send(session.outbuf)
        except BlockingIOError:
            return
        except OSError:
            self.drop(session)
            return
        del session.outbuf[:sent]
        if not session.outbuf:
            if session.closing:
                self.drop(session)
            else:
                self.epoll.modify(session.fd, select.EPOLLIN)

    def event(self, session: Session, text: str) -> None:
        self.send(session, ws_frame(text.encode()))

    def readable(self, session: Session) -> None:
        try:
            chunk, ancillary, _, _ = session.sock.recvmsg(262144, socket.CMSG_SPACE(TIMESPEC.size))
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.ECONNRESET:
                raise
            chunk = b""
        if not chunk:
            self.drop(session)
            return
        received_ns = time.time_ns()
        self.chunk_arrived_ns = received_ns  # no stamp: the read's time, as before
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = TIMESPEC.unpack_from(data)
                self.chunk_arrived_ns = seconds * 1_000_000_000 + nanoseconds
        session.inbuf += chunk
        if not session.open:
            self.handshake(session)
            if not session.open:
                return
        self.frames(session, received_ns)

    def handshake(self, session: Session) -> None:
        head, sep, rest = bytes(session.inbuf).partition(b"\r\n\r\n")
        if not sep:
            if len(session.inbuf) > 65536:
                self.drop(session)
            return
        lines = head.decode("latin-1").split("\r\n")
        request_line = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        key = headers.get("sec-websocket-key")
        path = request_line[1] if len(request_line) > 1 else ""
        if (request_line[0] != "GET" or not path.startswith("/v1/realtime") or not key
                or headers.get("upgrade", "").lower() != "websocket"):
            session.closing = True
            self.send(session, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        self.send(
            session,
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode(),
        )
        session.inbuf[:] = rest
        session.open = True
        if headers.get("authorization") != f"Bearer {self.api_key}":
            # The real server upgrades, then sends an error event and closes with 3000.
            self.stats["bad_auth"] += 1
            self.error(session, "invalid_api_key", "Incorrect API key provided.")
            self.close(session, 3000, "invalid_api_key")
            return
        session_id = self.new_id("sess")
        self.event(session, json.dumps({
            "type": "session.created", "event_id": self.new_id("event"),
            "session": self.session_object(session_id, session.codec),
        }))

    @staticmethod
    def session_object(session_id: str, codec: str) -> dict:
        return {
            "type": "realtime", "object": "realtime.session", "id": session_id,
            "model": "gpt-realtime", "output_modalities": ["audio"],
            "audio": {"input": {"format": {"type": codec}}, "output": {"format": {"type": codec}}},
        }

    def frames(self, session: Session, received_ns: int) -> None:
        buf = session.inbuf
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", buf, pos + 2)
                head = 10
            masked = b1 & 0x80
            if masked:
                head += 4
            if size - pos < head + length:
                break
            payload = bytes(buf[pos + head:pos + head + length])
            if masked:
                payload = unmask(payload, bytes(buf[pos + head - 4:pos + head]))
            pos += head + length
            opcode = b0 & 0x0F
            if not b0 & 0x80:  # a fragment: RFC 6455 5.4
                session.fragments.append(payload)
                continue
            if opcode == OP_CONT:
                payload = b"".join(session.fragments) + payload
                session.fragments.clear()
                opcode = OP_TEXT
            if opcode == OP_TEXT:
                self.message(session, payload.decode(), received_ns)
            elif opcode == OP_BINARY:
                self.error(session, "invalid_request_error", "Binary frames are not supported.")
            elif opcode == OP_PING:
                self.send(session, ws_frame(payload, OP_PONG))
            elif opcode == OP_CLOSE:
                code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else 1000
                session.closing = True
                self.send(session, ws_frame(struct.pack("!H", code), OP_CLOSE))
                if not session.outbuf:
                    self.drop(session)
                return
            if session.fd not in self.sessions:
                return
        del buf[:pos]

    # --- Realtime events ----------------------------------------------------------------------

    def error(self, session: Session, code: str, message: str) -> None:
        self.stats["errors_sent"] += 1
        self.event(session, json.dumps({
            "type": "error", "event_id": self.new_id("event"),
            "error": {"type": "invalid_request_error", "code": code, "message": message,
                      "param": None, "event_id": None},
        }))

    def close(self, session: Session, code: int, reason: str) -> None:
        session.closing = True
        self.send(session, ws_frame(struct.pack("!H", code) + reason.encode(), OP_CLOSE))

    def message(self, session: Session, text: str, received_ns: int) -> None:
        if text.startswith(APPEND_PREFIX) and text.endswith('"}'):
            self.append(session, text[len(APPEND_PREFIX):-2], received_ns)
            return
        self.stats["json_slow_path"] += 1
        try:
            event = json.loads(text)
        except ValueError:
            self.error(session, "invalid_json", "We could not parse the JSON body of your request.")
            return
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "input_audio_buffer.append":
            self.append(session, event.get("audio", ""), received_ns)
        elif kind == "session.update":
            self.session_update(session, event.get("session") or {})
        elif kind == "response.create":
            if session.response is None:
                self.start_response(session)
        elif kind == "response.cancel":
            session.delta_index = self.deltas_per_response  # the next tick finishes it
        elif kind == "conversation.item.truncate":
            self.event(session, json.dumps({
                "type": "conversation.item.truncated", "event_id": self.new_id("event"),
                "item_id": event.get("item_id"), "content_index": 0,
                "audio_end_ms": event.get("audio_end_ms"),
            }))
        elif kind in ("input_audio_buffer.commit", "input_audio_buffer.clear"):
            done = "committed" if kind.endswith("commit") else "cleared"
            self.event(session, json.dumps({
                "type": f"input_audio_buffer.{done}", "event_id": self.new_id("event"),
            }))
        else:
            self.error(session, "invalid_value", f"Invalid value: {kind!r}.")

    def append(self, session: Session, audio_b64: str, received_ns: int) -> None:
        try:
            audio = binascii.a2b_base64(audio_b64, strict_mode=True)
        except binascii.Error:
            self.error(session, "invalid_value", "Invalid 'audio'. Expected base64-encoded audio.")
            return
        stats = self.stats
        stats["appends"] += 1
        stats["audio_in_bytes"] += len(audio)
        # rtpai forwards G.711 untouched and may join several frames into one append.
        offset = audio.find(CALLER_MARK)
        while offset >= 0:
            call, _frame, sent_ns = CALLER_MARK_FIELDS.unpack_from(audio, offset + 4)
            stats["caller_frames"] += 1
            self.frames_per_call[call] = self.frames_per_call.get(call, 0) + 1
            if self.window:
                self.latencies.append(received_ns - sent_ns)
                # An append read with later ones is stamped with the last one's arrival: this
                # errs late, never early.
                self.arrivals.append(self.chunk_arrived_ns - sent_ns)
            offset = audio.find(CALLER_MARK, offset + FRAME_BYTES)

    def session_update(self, session: Session, update: dict) -> None:
        self.stats["session_updates"] += 1
        if update.get("type") != "realtime":
            self.error(session, "invalid_value", "session.type must be 'realtime'.")
            return
        audio = update.get("audio") or {}
        codec = ((audio.get("input") or {}).get("format") or {}).get("type", session.codec)
        if codec not in ("audio/pcmu", "audio/pcma", "audio/pcm"):
            self.error(session, "invalid_value", f"Unsupported audio format {codec!r}.")
            return
        session.codec = codec
        self.event(session, json.dumps({
            "type": "session.updated", "event_id": self.new_id("event"),
            "session": self.session_object(self.new_id("sess"), codec),
        }))
        if not session.scheduled and self.args.interval > 0:
            session.scheduled = True
            # Staggered so the sessions' responses do not all start in the same tick.
            delay = self.args.first_after + random.random() * self.args.interval
            self.at(time.monotonic() + delay, session, self.start_response)

    def start_response(self, session: Session) -> None:
        if session.response is not None:
            return
        self.stats["responses"] += 1
        session.response = self.new_id("resp")
        session.item = self.new_id("item")
        session.delta_index = 0
        ids = f'"response_id":"{session.response}","item_id":"{session.item}"'
        self.event(session, '{"type":"response.created","event_id":"%s","response":'
                   '{"object":"realtime.response","id":"%s","status":"in_progress","output":[]}}'
                   % (self.new_id("event"), session.response))
        self.event(session, '{"type":"response.output_item.added","event_id":"%s",'
                   '"response_id":"%s","output_index":0,"item":{"id":"%s","object":'
                   '"realtime.item","type":"message","status":"in_progress","role":"assistant",'
                   '"content":[]}}' % (self.new_id("event"), session.response, session.item))
        self.event(session, '{"type":"response.content_part.added","event_id":"%s",%s,'
                   '"output_index":0,"content_index":0,"part":{"type":"audio","transcript":""}}'
                   % (self.new_id("event"), ids))
        self.delta(session)
        if self.args.interval > 0:
            jitter = (random.random() - 0.5) * 0.2 * self.args.interval
            self.at(time.monotonic() + self.args.interval + jitter, session, self.start_response)

    def delta(self, session: Session) -> None:
        if session.delta_index >= self.deltas_per_response:
            self.finish_response(session)
            return
        head = DELTA_HEAD.pack(b"RTPD", time.time_ns(), session.delta_index, 0)
        audio_b64 = base64.b64encode(head).decode() + self.delta_tail_b64
        self.stats["deltas"] += 1
        self.event(session, '{"type":"response.output_audio.delta","event_id":"%s",'
                   '"response_id":"%s","item_id":"%s","output_index":0,"content_index":0,'
                   '"delta":"%s"}' % (self.new_id("event"), session.response, session.item,
                                      audio_b64))
        session.delta_index += 1
        self.at(time.monotonic() + self.delta_gap, session, self.delta)

    def finish_response(self, session: Session) -> None:
        ids = f'"response_id":"{session.response}","item_id":"{session.item}"'
        ms = self.deltas_per_response * self.args.chunk_ms
        self.event(session, '{"type":"response.output_audio.done","event_id":"%s",%s,'
                   '"output_index":0,"content_index":0}' % (self.new_id("event"), ids))
        self.event(session, '{"type":"response.output_item.done","event_id":"%s",'
                   '"response_id":"%s","output_index":0,"item":{"id":"%s","object":'
                   '"realtime.item","type":"message","status":"completed","role":"assistant",'
                   '"content":[{"type":"output_audio","transcript":""}]}}'
                   % (self.new_id("event"), session.response, session.item))
        self.event(session, json.dumps({
            "type": "response.done", "event_id": self.new_id("event"),
            "response": {
                "object": "realtime.response", "id": session.response, "status": "completed",
                "output": [], "usage": {
                    "total_tokens": ms // 50, "input_tokens": 0, "output_tokens": ms // 50,
                    "input_token_details": {"text_tokens": 0, "audio_tokens": 0,
                                            "cached_tokens": 0},
                    "output_token_details": {"text_tokens": 0, "audio_tokens": ms // 50},
                },
            },
        }))
        session.response = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.realtime_lean", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="bench-key")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between responses")
    parser.add_argument("--first-after", type=float, default=0.5)
    parser.add_argument("--reply-ms", type=int, default=2000)
    parser.add_argument("--chunk-ms", type=int, default=100)
    parser.add_argument("--speed", type=float, default=4.0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        LeanRealtimeServer(args).run()
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""``python -m bench.micro_websocket``: RFC 6455 framing's Python cost per message, ours vs wsproto.

Issue 16 point 5 asks whether rtpai's own framing (openai_flavor/websocket/framing.py) earns its
keep against wsproto, python-hyper's sans-IO WebSocket (the core trio-websocket uses). The
shell around either (socket, TLS, poller) is the same, so what differs is measured here,
in-process and without I/O, on the two messages that make up nearly all of the traffic:

* ``input_audio_buffer.append`` of one 20 ms G.711 frame (160 bytes of audio, base64 in JSON),
  which the client sends 50 times a second per call: **encode** (frame + mask);
* ``response.output_audio.delta`` of 100 ms of audio (the bench server's chunk, as the real
  API's), which the client receives: **decode** (parse + unmask-check + UTF-8 check).

The reverse directions (decoding an append, encoding a delta) are timed too, for symmetry.
wsproto is driven through its public API as the shell would: ``Connection.send(TextMessage)``
(it frames a ``str`` as text and ``bytes`` as binary, so the append's bytes are decoded first:
that is part of its cost) and ``receive_data`` + ``events()`` (which yields ``str``).

Prints ns per message: the median and the best of three interleaved rounds of ``--reps`` runs
of ``--number`` messages each (the best is what to compare on a loaded machine).
"""

from __future__ import annotations

import argparse
import base64
import statistics
import time
from collections.abc import Callable

from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from openai_flavor.events import audio_append
from openai_flavor.websocket.framing import OP_TEXT, FrameDecoder, encode_frame

APPEND = audio_append(bytes(range(160)))  # one 20 ms frame: 160 bytes of mu-law
DELTA = (
    b'{"type":"response.output_audio.delta","event_id":"event_CXYZ0123456789abcdefg",'
    b'"response_id":"resp_CXYZ0123456789abcdefg","item_id":"item_CXYZ0123456789abcdefg",'
    b'"output_index":0,"content_index":0,"delta":"'
    + base64.b64encode(bytes(range(256)) * 3 + bytes(32)) + b'"}'  # 100 ms: 800 bytes
)


def server_frame(payload: bytes) -> bytes:
    """A final unmasked text frame, as a server sends it."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload


def ours_encode(message: bytes) -> Callable[[], object]:
    return lambda: encode_frame(OP_TEXT, message)


def ours_decode(message: bytes) -> Callable[[], object]:
    decoder, frame = FrameDecoder(), server_frame(message)

    def run() -> object:
        decoder.feed(frame)
        return decoder.events()
    return run


def wsproto_encode(message: bytes) -> Callable[[], object]:
    connection = Connection(ConnectionType.CLIENT)
    return lambda: connection.send(TextMessage(data=message.decode("utf-8")))


def wsproto_decode(message: bytes) -> Callable[[], object]:
    connection, frame = Connection(ConnectionType.CLIENT), server_frame(message)

    def run() -> object:
        connection.receive_data(frame)
        return list(connection.events())
    return run


def check() -> None:
    """Both sides agree on the bytes before anything is timed."""
    for message in (APPEND, DELTA):
        assert ours_decode(message)() == [(OP_TEXT, message)]
        (event,) = wsproto_decode(message)()
        assert event.data == message.decode() and event.message_finished
        ours, theirs = ours_encode(message)(), wsproto_encode(message)()
        assert len(ours) == len(theirs) and ours[:2] == bytes(theirs[:2])


def time_per_call(run: Callable[[], object], number: int, reps: int) -> tuple[float, float]:
    """(median, best) ns per call over ``reps`` runs of ``number`` calls."""
    samples = []
    for _ in range(reps):
        started = time.perf_counter_ns()
        for _ in range(number):
            run()
        samples.append((time.perf_counter_ns() - started) / number)
    return statistics.median(samples), min(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000, help="messages per run")
    parser.add_argument("--reps", type=int, default=15, help="runs (median and best kept)")
    args = parser.parse_args(argv)
    check()
    print(f"append: {len(APPEND)} bytes; delta: {len(DELTA)} bytes; "
          f"{args.reps} runs of {args.number} messages; ns per message, median (best)")
    print(f"{'':22} {'ours':>16} {'wsproto':>16} {'wsproto/ours':>13}")
    rows = [("encode append (send)", ours_encode, wsproto_encode, APPEND),
            ("decode delta (receive)", ours_decode, wsproto_decode, DELTA),
            ("encode delta", ours_encode, wsproto_encode, DELTA),
            ("decode append", ours_decode, wsproto_decode, APPEND)]
    for name, ours, theirs, message in rows:
        # Interleaved, so that a burst of load elsewhere on the machine hits both sides.
        ours_times, theirs_times = [], []
        for _ in range(3):
            ours_times.append(time_per_call(ours(message), args.number, args.reps))
            theirs_times.append(time_per_call(theirs(message), args.number, args.reps))
        o_med = statistics.median(t[0] for t in ours_times)
        t_med = statistics.median(t[0] for t in theirs_times)
        o_best = min(t[1] for t in ours_times)
        t_best = min(t[1] for t in theirs_times)
        print(f"{name:22} {o_med:8.0f} ({o_best:5.0f}) {t_med:8.0f} ({t_best:5.0f}) "
              f"{t_med / o_med:8.2f} ({t_best / o_best:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

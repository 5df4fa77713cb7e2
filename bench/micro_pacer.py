"""``python -m bench.micro_pacer``: what one paced packet costs in trio, two ways.

* one task per call sleeping until its own deadline (what rtpai did before ``media/clock.py``);
* one engine-wide task ticking every millisecond and sending every call whose frame is due
  (the recommendation in docs/performance.md, which ``media/clock.py`` implements).

Both send a 172-byte datagram per call every 20 ms to one local socket that is drained every
10 ms (so no receiver wake-up is charged to the sender). Prints CPU-ms per call-second.
"""

from __future__ import annotations

import socket
import sys
import time

import trio

PTIME = 0.020
PACKET = b"\x80" * 172


async def per_call_task(sock: socket.socket, destination, send: bool) -> None:
    deadline = trio.current_time()
    while True:
        await trio.sleep_until(deadline)
        if send:
            sock.sendto(PACKET, destination)
        deadline += PTIME


async def shared_clock(sockets: list[socket.socket], destination, slots: int = 20) -> None:
    groups = [sockets[i::slots] for i in range(slots)]
    deadline = trio.current_time()
    tick = 0
    while True:
        await trio.sleep_until(deadline)
        for sock in groups[tick % slots]:
            sock.sendto(PACKET, destination)
        tick += 1
        deadline += PTIME / slots


async def measure(calls: int, mode: str, seconds: float = 4.0) -> float:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sink.setblocking(False)
    destination = sink.getsockname()
    sockets = []
    for _ in range(calls):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sockets.append(sock)

    async def drain() -> None:
        while True:
            await trio.sleep(0.01)
            try:
                while True:
                    sink.recv(2048)
            except BlockingIOError:
                pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        if mode == "shared":
            nursery.start_soon(shared_clock, sockets, destination)
        else:
            for sock in sockets:
                nursery.start_soon(per_call_task, sock, destination, mode == "per-call")
                await trio.sleep(PTIME / calls)  # spread the deadlines over the 20 ms
        await trio.sleep(1)
        started = time.process_time()
        await trio.sleep(seconds)
        used = time.process_time() - started
        nursery.cancel_scope.cancel()
    for sock in (*sockets, sink):
        sock.close()
    return 1000 * used / (seconds * calls)


def main() -> int:
    print("calls  mode                 CPU-ms per call-second")
    for calls in (100, 500, 1000):
        for mode in ("per-call (no send)", "per-call", "shared"):
            cost = trio.run(measure, calls, mode.split(" ")[0] if "no send" not in mode
                            else "per-call-nosend")
            print(f"{calls:5}  {mode:20} {cost:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

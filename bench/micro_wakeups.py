"""``python -m bench.micro_wakeups``: what the media clock's wake-ups cost, under trio for real.

``bench.micro_media`` drives the clock synchronously and counts only the work per frame. Live,
the clock task also sleeps between wake-ups: a cancel scope, trio's run loop, an
``epoll_wait`` and the VM's idle and wake-up, and caches gone cold in between. This runs the
engine's :class:`~media.clock.MediaClock` in its own trio task on the real clock, ``--calls``
streams sending silence to one loopback socket, their grids spread over ``--phases`` lattice
points per 20 ms (20: one per millisecond, as calls starting at random times end up; fewer:
as if grids were anchored on a coarser lattice), and reports process CPU per frame sent and
wake-ups per second. It also times a bare wake-up every millisecond three ways.
``--media-thread auto,off`` compares the media send thread (docs/performance.md, round 5:
the frames sent by a C thread, its wake-ups counted with the clock's) with the Python sender.

CPU time, not instructions: this depends on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

import trio

from bench.micro_media import PTIME_MS, Call, _drain
from media.clock import MediaClock

PTIME = PTIME_MS / 1000


def _sent(table: list[Call]) -> int:
    for call in table:
        call.stream.sender.sync_stats()  # the send thread's counters, if it sends
    return sum(call.stream.stats.rtp_out.packets for call in table)


def _wakeups(clock: MediaClock) -> int:
    thread = clock.send_thread
    return clock.wakeups + (thread.engine.wakeups if thread is not None else 0)


async def paced(calls: int, phases: int, seconds: float,
                media_thread: str = "auto") -> tuple[float, float]:
    """(CPU µs per frame, wake-ups per second) of the clock pacing ``calls`` streams."""
    phones = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phones.bind(("127.0.0.1", 0))
    phones.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    phones.setblocking(False)
    table = [Call(n, phones.getsockname()) for n in range(calls)]
    clock = MediaClock(media_thread=media_thread)
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        first = (int(trio.current_time() / PTIME) + 1) * PTIME
        for phase in range(phases):
            await trio.sleep_until(first + phase * PTIME / phases)
            for call in table[phase::phases]:
                call.stream.on_datagram(call.caller_packet(), phones.getsockname())  # latch
                call.stream.start_pacing(clock)

        async def drain() -> None:
            while True:
                await trio.sleep(0.05)
                _drain(phones)

        nursery.start_soon(drain)
        await trio.sleep(0.5)
        sent = _sent(table)
        wakeups = _wakeups(clock)
        began = time.process_time()
        await trio.sleep(seconds)
        used = time.process_time() - began
        sent = _sent(table) - sent
        wakeups = _wakeups(clock) - wakeups
        nursery.cancel_scope.cancel()
    for call in table:
        call.stream.stop_pacing()
        call.stream.rtp_socket.close()
        call.stream.rtcp_socket.close()
    phones.close()
    return 1e6 * used / sent, wakeups / seconds


async def cancel_scope_wakeups(seconds: float) -> float:
    """CPU µs per wake-up of a task sleeping as the clock does, every millisecond."""
    count, due = 0, trio.current_time()
    began = time.process_time()
    end = due + seconds
    while due < end:
        due += 0.001
        with trio.CancelScope(deadline=due):
            await trio.sleep_forever()
        count += 1
    return 1e6 * (time.process_time() - began) / count


async def checkpoint_wakeups(seconds: float) -> float:
    """CPU µs per pass of trio's scheduler that does not sleep (a checkpoint)."""
    count = 0
    began = time.process_time()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        await trio.lowlevel.checkpoint()
        count += 1
    return 1e6 * (time.process_time() - began) / count


def sleep_wakeups(seconds: float) -> float:
    """CPU µs per wake-up of a thread in ``time.sleep`` every millisecond (no trio)."""
    count, due = 0, time.perf_counter()
    began = time.process_time()
    end = due + seconds
    while due < end:
        due += 0.001
        time.sleep(max(0.0, due - time.perf_counter()))
        count += 1
    return 1e6 * (time.process_time() - began) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--phases", default="20,4", help="comma list: grids per 20 ms")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--media-thread", default="off",
                        help="comma list of [rtp] media_thread values to run, alternating")
    args = parser.parse_args()
    for _ in range(args.reps):
        for mode in args.media_thread.split(","):
            for phases in (int(p) for p in args.phases.split(",")):
                cost, rate = trio.run(paced, args.calls, phases, args.seconds, mode)
                print(f"{args.calls} calls, media_thread={mode:4}, grids on {phases:2} points "
                      f"per 20 ms: {cost:5.2f} us CPU per frame sent, {rate:4.0f} wake-ups/s")
    print(f"a wake-up every ms: trio cancel scope {trio.run(cancel_scope_wakeups, 2.0):.1f} us, "
          f"time.sleep {sleep_wakeups(2.0):.1f} us; "
          f"a trio checkpoint {trio.run(checkpoint_wakeups, 1.0):.1f} us (CPU each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench.micro_media``: the media plane's Python cost per RTP packet, repeatably.

N calls, each a real :class:`~media.stream.MediaStream` on real loopback sockets, latched to
one "phones" socket, as in production at steady state (``send_silence`` on, the caller
talking, the AI answering ~2 s every 3 s in 100 ms deltas). Time is virtual and advances on
the media clock's 1 ms lattice; each millisecond:

* **rx**: the phones socket sends one RTP packet to each call whose 20 ms slot it is, then the
  engine's ``SocketPoller.dispatch`` runs (``_rtp_readable`` -> ``parse_rtp`` ->
  ``ReorderBuffer`` -> ``JitterEstimator`` -> ``_deliver``, which hands the payload to the
  AI session's consumer on the call's bridge, here a stub: the WebSocket send is not
  measured);
* **tx**: the engine's ``MediaClock.tick_due(now)`` runs (every due call's ``tick``: a frame of
  AI audio or silence, packetized and sent); with ``--media-thread``, the media send thread's
  engine (docs/performance.md, round 5) stepped by hand instead (``run_due``, then the drain
  of its events), every call registered with it: the same work in C.

Only those two calls are measured; the harness around them (sending the callers' packets,
queueing the AI's audio, draining what rtpai sent and what it handed the AI) is not. No trio
scheduling is involved: the clock and the poller are driven synchronously, on a
``MockClock`` that only moves when the bench moves it, so the work is the same in every run.

Two measures:

* wall time per packet (the median and best of ``--reps`` runs), with the bare syscalls
  (``sendto`` per frame; ``recvfrom`` per packet) timed alongside as the floor;
* ``--callgrind``: instructions per packet, counted by valgrind, which do not care what else
  runs on this shared machine; this re-runs the bench under ``valgrind --tool=callgrind``
  once per side, collecting only that side's calls (a 3-line C shim toggles collection; it
  is compiled into bench/build/ on first use). User-space instructions only: the kernel's
  side of a syscall is not counted, the Python around it is.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
import trio.testing

from media.bridge import CallBridge
from media.clock import TICK, MediaClock
from media.options import MediaOptions
from media.playout import PlayoutQueue
from media.poller import SocketPoller
from media.send_thread import SendThread
from media.stream import MediaStream, bind_pair

BUILD = Path(__file__).resolve().parent / "build"
PTIME_MS = 20
FRAME = PTIME_MS * 8  # PCMU bytes per frame
SLOTS = PTIME_MS  # 1 ms lattice points per frame: calls are spread over them
# The lean Realtime server's rhythm (bench/realtime_lean.py): a 2 s answer every ~3 s, sent as
# 100 ms deltas every 25 ms.
ANSWER_EVERY_MS = 3000
DELTAS = 20
DELTA_EVERY_MS = 25
DELTA_BYTES = 800
CALLER_PAYLOAD = b"\x11" * FRAME


_PORTS = itertools.cycle(range(47000, 61000, 2))


def free_pair() -> tuple[socket.socket, socket.socket]:
    """An RTP/RTCP socket pair on the next free even port (other jobs share this machine)."""
    for port in _PORTS:
        try:
            return bind_pair("127.0.0.1", port)
        except OSError:
            continue
    raise RuntimeError("no free port pair left")


class NullWriter:
    """A recording writer that takes batches and drops them: ``--record null`` measures what
    recording costs the trio thread alone (placing frames, batching, the queue's lock is
    left out), without a disk or the writer thread's share of the GIL."""

    def submit(self, file, batch) -> bool:
        return True

    def finish(self, file, sidecar) -> None:
        pass


def recorder(writer, directory: str, index: int):
    """A recording for call ``index`` on ``writer`` (``--record``)."""
    from media.recording import CallRecording, RecordingFile

    path = os.path.join(directory, f"bench-{index}.wav")
    file = RecordingFile(path=path, codec="PCMU", call_id=f"bench-{index}", offset_s=0.0)
    if hasattr(writer, "open"):
        writer.open(file)
    return CallRecording(file=file, started=trio.current_time(), writer=writer)


class Call:
    """One call's media, and the harness's view of its caller and its AI."""

    def __init__(self, index: int, phones: tuple[str, int], writer=None,
                 directory: str = "") -> None:
        rtp, rtcp = free_pair()
        self.rtp_address = rtp.getsockname()
        self.bridge = CallBridge(
            call_id=f"bench-{index}",
            codec="PCMU",
            ptime_ms=PTIME_MS,
            playout=PlayoutQueue(FRAME, max_bytes=600 * 8000),
            end_call=lambda kind, reason: None,
            transfer=lambda target: None,
        )
        self.stream = MediaStream(
            self.bridge, rtp, rtcp, payload_type=0, remote=phones,
            telephone_event=101, options=MediaOptions(timeout=60),
        )
        self.bridge.attach_caller_audio(lambda frame: True)  # the AI session's stand-in
        if writer is not None:
            self.stream.recorder = recorder(writer, directory, index)
        self.slot = index % SLOTS
        self.answer_at = (index * 37) % ANSWER_EVERY_MS  # answers start staggered
        self.answers = 0
        self.sequence = index * 1000
        self.ssrc = 0x10000 + index

    def caller_packet(self) -> bytes:
        self.sequence = (self.sequence + 1) & 0xFFFF
        header = struct.pack("!BBHII", 0x80, 0, self.sequence, self.sequence * FRAME & 0xFFFFFFFF,
                             self.ssrc)
        return header + CALLER_PAYLOAD

    def ai_speaks(self, ms: int) -> None:
        """Queue the AI's audio due at ``ms`` (harness work: the AI session's side)."""
        into = (ms - self.answer_at) % ANSWER_EVERY_MS
        if into % DELTA_EVERY_MS or into >= DELTAS * DELTA_EVERY_MS:
            return
        item = self.answers
        self.bridge.playout.push(b"\x7e" * DELTA_BYTES, item)
        if into == (DELTAS - 1) * DELTA_EVERY_MS:
            self.bridge.playout.finish_item(0xFF)
            self.answers += 1


class Counters:
    def __init__(self) -> None:
        self.rx_ns = self.tx_ns = 0
        self.rx_packets = self.tx_packets = 0
        self.recording_failures = self.batches_dropped = 0


def _toggle_collect() -> ctypes.CDLL | None:
    """The C shim that turns callgrind's collection on and off (None when not under valgrind)."""
    library = os.environ.get("MICRO_MEDIA_CG_SHIM")
    return ctypes.CDLL(library) if library else None


def _sent(table: list[Call]) -> int:
    for call in table:
        call.stream.sender.sync_stats()  # the send thread's counters, when it sends
    return sum(call.stream.stats.rtp_out.packets for call in table)


async def simulate(calls: int, seconds: float, warmup: float, collect: str | None,
                   idle: float = 0.0, record: str | None = None,
                   media_thread: bool = False) -> Counters:
    """Run ``calls`` calls for ``warmup`` + ``seconds`` of virtual time; count the window.

    ``idle`` seconds of real sleep between virtual milliseconds let the caches go cold between
    wake-ups, as they do in production below saturation (the work per packet then costs about
    twice as much time as back to back).
    """
    phones = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phones.bind(("127.0.0.1", 0))
    phones.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    phones.setblocking(False)
    clock = MediaClock()
    thread = clock.send_thread = SendThread(manual=True) if media_thread else None
    poller = SocketPoller()
    mock: trio.testing.MockClock = trio.lowlevel.current_clock()  # type: ignore[assignment]
    shim = _toggle_collect() if collect else None
    counters = Counters()
    writer = None
    if record == "null":
        writer = NullWriter()
    elif record:  # a directory: the real writer thread, writing real WAV files there
        from media.recording_writer import RecordingWriter

        writer = RecordingWriter()
        writer.start()
    table = [Call(n, phones.getsockname(), writer, record or "") for n in range(calls)]
    by_slot = [[call for call in table if call.slot == slot] for slot in range(SLOTS)]
    async with trio.open_nursery() as nursery:
        for call in table:
            nursery.start_soon(call.stream.run, poller)
        await trio.testing.wait_all_tasks_blocked()
        # Each call starts on its own lattice point: its caller's first packet latches it
        # and starts its silence, on the grid of that millisecond.
        for ms in range(SLOTS):
            for call in by_slot[ms]:
                phones.sendto(call.caller_packet(), call.rtp_address)
            poller.dispatch(trio.current_time)
            for call in by_slot[ms]:
                call.stream.start_pacing(clock)
            _tick(clock, thread, trio.current_time())
            mock.jump(TICK)
        start_ms = SLOTS
        warm_ms = start_ms + round(warmup * 1000)
        end_ms = warm_ms + round(seconds * 1000)
        perf = time.perf_counter_ns
        for ms in range(start_ms, end_ms):
            counting = ms >= warm_ms
            now = trio.current_time()
            due = by_slot[ms % SLOTS]
            for call in table:
                call.ai_speaks(ms)
            for call in due:
                phones.sendto(call.caller_packet(), call.rtp_address)
            received = sum(call.stream.stats.rtp_in.packets for call in due)
            sent = _sent(table)
            if thread is not None:
                thread.engine.set_now(now)  # the AI's pushes just now were at ``now``
            toggle_rx = shim if counting and collect in ("rx", "none") else None
            toggle_tx = shim if counting and collect == "tx" else None
            if toggle_rx:
                toggle_rx.cg_toggle()
            began = perf()
            if collect != "none":
                poller.dispatch(trio.current_time)
            rx_done = perf()
            if toggle_rx:
                toggle_rx.cg_toggle()
            if collect == "none":
                poller.dispatch(trio.current_time)
            if toggle_tx:
                toggle_tx.cg_toggle()
            tx_began = perf()
            _tick(clock, thread, now)
            tx_done = perf()
            if toggle_tx:
                toggle_tx.cg_toggle()
            if counting:
                counters.rx_ns += rx_done - began
                counters.tx_ns += tx_done - tx_began
                counters.rx_packets += sum(c.stream.stats.rtp_in.packets for c in due) - received
                counters.tx_packets += _sent(table) - sent
            _drain(phones)
            mock.jump(TICK)
            if idle:
                time.sleep(idle)
        nursery.cancel_scope.cancel()
    for call in table:
        if writer is not None:
            call.stream.recorder.stop(None)
        call.stream.stop_pacing()
        if call.stream.stats.send_errors or call.stream.stats.rtp_in.errors:
            raise RuntimeError(f"call {call.bridge.call_id}: {call.stream.stats}")
        call.stream.rtp_socket.close()
        call.stream.rtcp_socket.close()
    phones.close()
    if hasattr(writer, "stop"):
        writer.stop(60)
        counters.recording_failures = writer.counters.failures
        counters.batches_dropped = writer.counters.batches_dropped
    return counters


def _tick(clock: MediaClock, thread: SendThread | None, now: float) -> None:
    """One wake-up's sending: the media clock's, and the send thread's when it runs."""
    if thread is not None:
        thread.engine.set_now(now)
        thread.engine.run_due()
        thread.drain()
    clock.tick_due(now)


def _drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return count
        count += 1


def syscall_floor(calls: int, rounds: int = 50) -> tuple[float, float]:
    """µs of a bare ``sendto`` per frame and of a bare ``recvfrom`` per packet, same sockets."""
    phones = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phones.bind(("127.0.0.1", 0))
    phones.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    phones.setblocking(False)
    destination = phones.getsockname()
    sockets = [free_pair() for _ in range(calls)]
    packet = b"\x80" * (12 + FRAME)
    send_ns = receive_ns = 0
    perf = time.perf_counter_ns
    for _ in range(rounds):
        began = perf()
        for rtp, _rtcp in sockets:
            rtp.sendto(packet, destination)
        send_ns += perf() - began
        _drain(phones)
        for rtp, _rtcp in sockets:
            phones.sendto(packet, rtp.getsockname())
        began = perf()
        for rtp, _rtcp in sockets:
            rtp.recvfrom(2048)
        receive_ns += perf() - began
    for pair in sockets:
        for sock in pair:
            sock.close()
    phones.close()
    total = calls * rounds
    return send_ns / total / 1000, receive_ns / total / 1000


def run_once(calls: int, seconds: float, warmup: float, collect: str | None = None,
             idle: float = 0.0, record: str | None = None,
             media_thread: bool = False) -> Counters:
    return trio.run(simulate, calls, seconds, warmup, collect, idle, record, media_thread,
                    clock=trio.testing.MockClock())


def callgrind(calls: int, seconds: float, warmup: float,
              sides: tuple[str, ...] = ("tx", "rx"), record: str | None = None,
              media_thread: bool = False) -> dict[str, float]:
    """Instructions per packet for each side, each from its own run under callgrind."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--callgrind needs valgrind")
    shim = BUILD / "cgtoggle.so"
    if not shim.exists():
        BUILD.mkdir(exist_ok=True)
        source = BUILD / "cgtoggle.c"
        source.write_text("#include <valgrind/callgrind.h>\n"
                          "void cg_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }\n")
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(shim), str(source)],
                       check=True)
    counts = {}
    for side in (*sides, "none"):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "callgrind.out"
            command = [
                "valgrind", "--tool=callgrind", "--collect-atstart=no",
                f"--callgrind-out-file={out}", sys.executable, "-m", "bench.micro_media",
                "--calls", str(calls), "--seconds", str(seconds), "--warmup", str(warmup),
                "--reps", "1", "--collect", side,
                *(["--record", record] if record else []),
                *(["--media-thread"] if media_thread else []),
            ]
            env = dict(os.environ, MICRO_MEDIA_CG_SHIM=str(shim), PYTHONHASHSEED="0")
            run = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            totals = re.search(r"^totals: (\d+)", out.read_text(), re.M)
            counts[side] = int(totals.group(1))
            if side != "none":
                packets = re.search(rf"^{side} packets (\d+)$", run.stdout, re.M)
                counts[f"{side} packets"] = int(packets.group(1))
    # The "none" run toggled collection around nothing, once per millisecond as the others
    # did: what the toggling itself costs, taken off both.
    return {side: (counts[side] - counts["none"]) / counts[f"{side} packets"]
            for side in sides}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured virtual time")
    parser.add_argument("--warmup", type=float, default=0.5, help="virtual time not counted")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--idle-us", type=float, default=0,
                        help="real sleep between virtual milliseconds (cold caches, as live)")
    parser.add_argument("--callgrind", action="store_true",
                        help="instructions per packet under valgrind (slow: ~1 min)")
    parser.add_argument("--side", choices=("tx", "rx"), help="--callgrind: only this side")
    parser.add_argument("--record", metavar="DIR|null",
                        help="record every call: WAV files into DIR through the writer "
                             "thread, or 'null' (the trio thread's share only: no thread)")
    parser.add_argument("--media-thread", action="store_true",
                        help="send with the media send thread's engine, stepped by hand")
    parser.add_argument("--collect", choices=("tx", "rx", "none"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.collect:  # one side, under callgrind (see callgrind())
        counters = run_once(args.calls, args.seconds, args.warmup, args.collect,
                            record=args.record, media_thread=args.media_thread)
        print(f"tx packets {counters.tx_packets}\nrx packets {counters.rx_packets}")
        return 0
    if args.callgrind:
        sides = (args.side,) if args.side else ("tx", "rx")
        counts = callgrind(args.calls, args.seconds, args.warmup, sides, args.record,
                           args.media_thread)
        print(f"{args.calls} calls, instructions per packet: "
              + "  ".join(f"{side} {count:,.0f}" for side, count in counts.items()))
        return 0
    tx, rx = [], []
    for _ in range(args.reps):
        counters = run_once(args.calls, args.seconds, args.warmup, idle=args.idle_us / 1e6,
                            record=args.record, media_thread=args.media_thread)
        tx.append(counters.tx_ns / counters.tx_packets / 1000)
        rx.append(counters.rx_ns / counters.rx_packets / 1000)
    if counters.recording_failures or counters.batches_dropped:
        print(f"  recording: {counters.recording_failures} failures, "
              f"{counters.batches_dropped} batches dropped")
    send_floor, receive_floor = syscall_floor(args.calls)
    print(f"{args.calls} calls, {args.seconds:g} s x {args.reps}"
          + (f", {args.idle_us:g} us idle between milliseconds" if args.idle_us else "") + ": "
          f"{counters.tx_packets} frames sent, {counters.rx_packets} received per run")
    print(f"  tx  µs per frame sent      median {statistics.median(tx):6.2f}  best {min(tx):6.2f}"
          f"   (bare sendto {send_floor:.2f})")
    print(f"  rx  µs per packet received median {statistics.median(rx):6.2f}  best {min(rx):6.2f}"
          f"   (bare recvfrom {receive_floor:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench.micro_percall --tree DIR [--tree DIR ...]``: what one call costs, by part.

For each tree (any rtpai checkout, a38b145 included: the daemon runs from that directory, with
``bench/percall_probe.py`` inside its trio run), the lean Realtime server and the C load
generator of ``bench.run``, pure Python (``RTPAI_PURE_PYTHON=1``) unless ``--compiled``:

1. memory: a daemon under tracemalloc; ``--calls`` offers, every AI session open, caller RTP
   flowing for a few seconds (latched, pacing, talk spurts both ways); then, per call, the
   heap grown (by file:line and by file), gc-tracked objects by type, and trio tasks by name;
2. wake-ups: a fresh daemon without tracemalloc, the same calls, then ``--window`` seconds of
   steady state: trio task steps per call-second by task name, run-loop I/O waits, process
   CPU, and (``--profile``) Python function calls per call-second (cProfile's counts).

Deterministic counts, not times (apart from the CPU line): they are what to compare between
trees on a noisy machine. Writes bench/build/percall-<label>.json per tree and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

from bench.ngload import NgClient, answer_port, caller_sdp
from bench.run import (
    BUILD,
    LOADGEN,
    Child,
    free_udp_port,
    rtpai_environment,
    server_stats,
    start_server,
)

PROBE = Path(__file__).resolve().parent / "percall_probe.py"


class ProbeClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(120)

    def ask(self, line: str) -> dict:
        self.sock.send(line.encode())
        pieces = []
        while True:
            data = self.sock.recv(70000)
            pieces.append(data[1:])
            if data[:1] == b"E":
                return json.loads(b"".join(pieces))


def start_daemon(tree: Path, url: str, *, trace: bool, compiled: bool, log: Path):
    ng_port, probe_port = free_udp_port(), free_udp_port()
    env = {**rtpai_environment(ng_port, url), "PERCALL_PROBE": str(probe_port)}
    env.pop("PERCALL_TRACE", None)
    if trace:
        env["PERCALL_TRACE"] = "1"
    if not compiled:
        env["RTPAI_PURE_PYTHON"] = "1"
    daemon = Child("rtpai", [sys.executable, str(PROBE)], env=env, stdin=False,
                   stderr_path=log, cwd=tree)
    ng = NgClient(("127.0.0.1", ng_port))
    ng.wait_ready()
    return daemon, ng, ProbeClient(probe_port)


def one_run(tree: Path, label: str, args: argparse.Namespace, *, trace: bool) -> dict:
    n = args.calls
    server, url = start_server()
    daemon, ng, probe = start_daemon(tree, url, trace=trace, compiled=args.compiled,
                                     log=BUILD / f"percall-{label}-{'mem' if trace else 'cpu'}.log")
    loadgen = None
    try:
        time.sleep(0.5)
        probe.ask("mark")
        settle = args.settle
        window = 0 if trace else args.window
        loadgen = Child("loadgen", [str(LOADGEN), "--calls", str(n), "--warmup", str(settle),
                                    "--duration", str(window + 5)])
        port = int(loadgen.expect("PORT", 5))
        targets = [answer_port(ng.command("offer", **{"call-id": f"pc-{i}", "from-tag": f"f{i}",
                                                       "sdp": caller_sdp(port)}))
                   for i in range(n)]
        deadline = time.monotonic() + 60
        while server_stats(server)["sessions_open"] < n:
            if time.monotonic() > deadline:
                raise TimeoutError("AI sessions did not all open")
            time.sleep(0.2)
        loadgen.write("TARGETS " + " ".join(map(str, targets)))
        loadgen.expect("WINDOW_START", settle + 30)
        if trace:
            result = probe.ask(f"diff {n}")
            for kind in args.sample:
                result[f"sample_{kind}"] = probe.ask(f"sample {kind}")
            result["attributes"] = probe.ask("attrs")
            # The AI's audio waiting in the playout queues at that moment depends on where
            # each call's answers are (the lean server answers every 3 s, faster than real
            # time): kilobytes per call that move from run to run. Told apart, by line.
            source = (tree / "media" / "playout.py").read_text().splitlines()
            audio_lines = {f"{tree / 'media' / 'playout.py'}:{n}"
                           for n, text in enumerate(source, 1) if "_buffer +=" in text}
            queued = sum(size for where, size, _ in result["by_lineno"] if where in audio_lines)
            result["queued_audio_kib_per_call"] = queued / 1024
            result["heap_kib_per_call_without_audio"] = result["heap_kib_per_call"] - queued / 1024
        else:
            # Untraced, RSS means something (under tracemalloc its own traces dominate).
            grown = probe.ask(f"diff {n}")
            result_rss = grown["rss_kib_per_call"]
            probe.ask("steps start" + (" profile" if args.profile else ""))
            time.sleep(window)
            result = probe.ask("steps stop")
            call_s = n * result["seconds"]
            result["cpu_ms_per_call_s"] = 1000 * result["cpu_s"] / call_s
            result["steps_per_call_s"] = {k: v / call_s for k, v in result["steps"].items()}
            result["io_waits_per_s"] = result["io_waits"] / result["seconds"]
            result["rss_kib_per_call"] = result_rss
            if "calls" in result:
                result["calls_per_call_s"] = {k: v / call_s for k, v in result["calls"].items()}
                del result["calls"]
        loadgen.expect("WINDOW_END", window + 30)
        for i in range(n):
            ng.command("delete", **{"call-id": f"pc-{i}", "from-tag": f"f{i}"})
        return result
    finally:
        if loadgen is not None:
            loadgen.stop("eof")
        daemon.stop()
        server.write("EXIT")
        server.stop("eof")
        ng.close()


def summary(label: str, mem: dict | None, cpu: dict | None) -> None:
    print(f"== {label}")
    if mem is not None:
        summary_mem(mem)
    if cpu is not None:
        summary_cpu(cpu)


def summary_mem(mem: dict) -> None:
    print(f"  heap {mem['heap_kib_per_call_without_audio']:.1f} KiB/call without the queued "
          f"audio ({mem['queued_audio_kib_per_call']:.1f}), gc objects "
          f"{mem['objects_per_call']:.1f}/call, trio tasks {mem['tasks_per_call']:.2f}/call")
    print(f"  heap's high-water mark {mem['heap_peak_kib_per_call']:.1f} KiB/call")
    print(f"  tasks: {mem['task_names']}")
    print("  heap by file (B/call):")
    for where, size, _count in mem["by_filename"][:15]:
        print(f"    {size:7d}  {where}")


def summary_cpu(cpu: dict) -> None:
    print(f"  RSS {cpu['rss_kib_per_call']:.1f} KiB/call (untraced, queued audio included)")
    print(f"  CPU {cpu['cpu_ms_per_call_s']:.3f} ms/call-s (noisy), I/O waits "
          f"{cpu['io_waits_per_s']:.0f}/s, task steps "
          f"{sum(cpu['steps_per_call_s'].values()):.2f}/call-s; cycle collector "
          f"{cpu['gc_collections']} collections, {1000 * cpu['gc_cpu_s'] / cpu['seconds']:.2f} "
          f"ms CPU/s")
    for name, rate in sorted(cpu["steps_per_call_s"].items(), key=lambda kv: -kv[1])[:8]:
        print(f"    {rate:8.3f}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro_percall", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, action="append", required=True)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--settle", type=float, default=4.0, help="seconds of RTP first")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--profile", action="store_true", help="count function calls too")
    parser.add_argument("--sample", action="append", default=[],
                        help="also list 30 live objects of this type (e.g. tuple)")
    parser.add_argument("--mem", action=argparse.BooleanOptionalAction, default=True,
                        help="the traced run (--no-mem: the wake-up run only)")
    parser.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=True,
                        help="the wake-up run (--no-cpu: memory only)")
    parser.add_argument("--compiled", action="store_true", help="the compiled fast path")
    args = parser.parse_args(argv)
    BUILD.mkdir(parents=True, exist_ok=True)
    for tree in args.tree:
        label = tree.resolve().name
        mem = one_run(tree.resolve(), label, args, trace=True) if args.mem else None
        cpu = one_run(tree.resolve(), label, args, trace=False) if args.cpu else None
        (BUILD / f"percall-{label}.json").write_text(json.dumps({"mem": mem, "cpu": cpu},
                                                                indent=1))
        summary(label, mem, cpu)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

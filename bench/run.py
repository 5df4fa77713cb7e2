"""``python -m bench.run``: measure rtpai's media path, its ng set-up, and its memory.

Per N (``--calls``): a fresh rtpai process and a fresh lean Realtime server; N offers through
the ng socket (callers on the C load generator's socket); talk spurts both ways for
``--warmup`` + ``--duration`` seconds; then N deletes, whose statistics give rtpai's side of
the packet counts. rtpai's CPU is ``utime+stime`` from /proc over the generator's window.

Then: calls that come and go (``--churn-media N@R``: N concurrent calls with media both ways
while R calls a second start and end: stalls and how many calls each hit, ng latency, the
collector's pauses), offer -> reply latency and throughput against rtpai and Debian's
``rtpengine`` (userspace only, 127.0.0.1, a private port range), a 10,000-cycle offer/delete
churn for memory, and (``--profile N``) a py-spy profile of rtpai under N calls.

After the ``--calls`` list, up to ``--search-runs`` more N search for the largest healthy N
(bench/targets.py). rtpai runs on one core (``--rtpai-cpus``, taskset: every thread and child
it starts), the load side on the others.

Everything runs on 127.0.0.1 and every child is stopped at the end. Results are printed and
written as JSON to bench/build/; the output ends with issue 14's targets, one table read from
that JSON (``python -m bench.targets FILE`` prints it again).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import baseline, targets
from bench.ngload import NgClient, answer_port, caller_sdp

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "bench" / "build"
LOADGEN = BUILD / "loadgen"
API_KEY = "bench-key"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
# Below the ephemeral range (32768+), apart from each other and from the tests' ranges.
RTPAI_PORTS = (16000, 23999)
RTPENGINE_PORTS = (24000, 31999)  # rtpengine takes four ports per offer (both legs)


# --- processes --------------------------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Child:
    """A child process whose stdout lines arrive on a queue (a thread reads them)."""

    def __init__(self, name: str, argv: list[str], *, env: dict | None = None,
                 stdin: bool = True, stderr_path: Path | None = None,
                 cwd: Path = ROOT) -> None:
        self.name = name
        self.stderr_file = (
            open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL  # noqa: SIM115
        )
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, text=True, bufsize=1,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=self.stderr_file,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"{self.name}: no {prefix!r} within {timeout} s") from None
            if line is None:
                raise RuntimeError(f"{self.name} exited (code {self.proc.poll()})")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def write(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self, how: str = "term", timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            if how == "eof" and self.proc.stdin:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.stderr_file is not subprocess.DEVNULL:
            self.stderr_file.close()


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of every thread of ``pid`` in seconds (proc(5): fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants: with ``--workers`` N > 1, rtpai is a front and N workers,
    and its CPU and memory are theirs together."""
    pids = [pid]
    for parent in pids:  # (grows as it goes: children, then theirs)
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                pids += [int(child) for child in task.read_text().split()]
    return pids


def tree_cpu_times(pid: int) -> tuple[float, float]:
    times = [(0.0, 0.0)]
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            times.append(cpu_times(member))
    return sum(t[0] for t in times), sum(t[1] for t in times)


def cpu_seconds(pid: int) -> float:
    return sum(tree_cpu_times(pid))


def machine_cpu() -> dict[str, float]:
    """Machine-wide CPU seconds, all cores (proc(5): /proc/stat): processes, interrupts
    (softirq: loopback delivery not charged to a process), and steal (the hypervisor)."""
    with open("/proc/stat") as handle:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (
            int(v) for v in handle.readline().split()[1:9])
    return {"processes": (user + nice + system) / CLK_TCK, "irq": (irq + softirq) / CLK_TCK,
            "steal": steal / CLK_TCK}


def run_queue_wait_s(pid: int) -> float:
    """Seconds ``pid``'s main thread has waited on a run queue, ready but not running
    (/proc/PID/schedstat, second field): on a shared machine, the stalls that are not its own."""
    with open(f"/proc/{pid}/schedstat") as handle:
        return int(handle.read().split()[1]) / 1e9


def tree_run_queue_wait_s(pid: int) -> float:
    """Seconds every thread of ``pid`` and its descendants waited on a run queue, ready but
    not running (/proc/PID/task/TID/schedstat): with rtpai pinned to one core, the time
    others took that core from it."""
    total = 0
    for member in process_tree(pid):
        for stat in Path(f"/proc/{member}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int(stat.read_text().split()[1])
    return total / 1e9


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants (the workers behind a front)."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/statm") as handle:
            total += int(handle.read().split()[1]) * PAGE_KIB
    return total


def parse_cpus(text: str) -> set[int]:
    """A CPU list as taskset(1) and /proc's Cpus_allowed_list write it: ``0``, ``0,2-3``."""
    cpus: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def cpu_list(cpus: set[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def thread_affinity(pid: int) -> dict[str, Any]:
    """Every thread of ``pid`` and its descendants: how many, and the CPUs any may run on
    (proc(5): Cpus_allowed_list), to show that the pinning held for threads started late."""
    threads = 0
    allowed: set[int] = set()
    for member in process_tree(pid):
        for status in Path(f"/proc/{member}/task").glob("*/status"):
            with contextlib.suppress(OSError):
                for line in status.read_text().splitlines():
                    if line.startswith("Cpus_allowed_list:"):
                        allowed |= parse_cpus(line.partition(":")[2])
                        threads += 1
    return {"threads": threads, "cpus_allowed": cpu_list(allowed)}


# ``--rtpai-cpus``: the CPUs rtpai (and rtpengine, for the offer comparison) may run on, or
# None for no pinning. taskset(1) sets the affinity before the interpreter starts, and every
# thread and child inherits it, so a thread started later (a media thread, workers) is held
# to the same core. The driver pins itself, and so its children (the AI server, the load
# generator), to LOAD_CPUS.
RTPAI_CPUS: set[int] | None = None
LOAD_CPUS: set[int] | None = None


def pinned(argv: list[str]) -> list[str]:
    if RTPAI_CPUS is None:
        return argv
    return ["taskset", "-c", cpu_list(RTPAI_CPUS), *argv]


def choose_pinning(spec: str, workers: int) -> tuple[set[int] | None, set[int] | None, str]:
    """(rtpai's CPUs, the load side's, what the report says about it).

    ``auto``: one rtpai process on CPU 0 and everything else on the other CPUs, when there
    are at least two and one rtpai process (the issue's "N on one core"; with workers the
    figure is the machine's, not a core's). ``none``: no pinning. Otherwise a CPU list.
    """
    every = os.sched_getaffinity(0)
    if spec == "none" or (spec == "auto" and (len(every) < 2 or workers > 1)):
        why = "asked" if spec == "none" else (
            "one CPU" if len(every) < 2 else f"{workers} workers")
        return None, None, f"not pinned ({why}): rtpai shares every core with the load side"
    mine = {min(every)} if spec == "auto" else parse_cpus(spec)
    if not mine <= every:
        raise SystemExit(f"--rtpai-cpus {spec}: this process may use CPUs {cpu_list(every)}")
    rest = every - mine or every  # one CPU asked for everything: share it, and say so
    return mine, rest, (f"rtpai, all its threads and processes, on CPU {cpu_list(mine)} "
                        f"(taskset); AI server, load generator and driver on CPU "
                        f"{cpu_list(rest)}; loopback's receive work runs on the sender's CPU")


def start_server(interval: float = 3.0) -> tuple[Child, str]:
    server = Child("realtime_lean", [sys.executable, "-m", "bench.realtime_lean",
                                     "--api-key", API_KEY, "--interval", str(interval)])
    return server, server.expect("url=", 10)


def server_stats(server: Child) -> dict[str, Any]:
    server.write("STATS")
    return json.loads(server.expect("STATS ", 10))


# The tree whose ctl.daemon runs (``--rtpai-tree``): another checkout's, to measure before/after
# with the same driver and load generator.
RTPAI_TREE = ROOT
# RTPAI_GC_THRESHOLDS for the daemon (``--gc-thresholds``), to measure the collector's settings.
GC_THRESHOLDS: str | None = None
# ``--metrics``: rtpai serves /metrics ([metrics] listen) and a scraper reads it once a second,
# as Prometheus would, for the cost of metrics on vs off.
METRICS = False
SCRAPE_INTERVAL = 1.0


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Scraper:
    """GET /metrics every SCRAPE_INTERVAL from a thread of the driver (its CPU is not
    rtpai's); how long each scrape took and how big it was."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.seconds: list[float] = []
        self.size = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import urllib.request

        due = time.monotonic()
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due += SCRAPE_INTERVAL
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    self.size = len(response.read())
            except OSError:
                self.failures += 1
                continue
            self.seconds.append(time.perf_counter() - started)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(10)
        return {"scrapes": len(self.seconds), "failures": self.failures, "bytes": self.size,
                "ms_p50": round(1000 * (percentile(self.seconds, 0.5) or 0), 2),
                "ms_max": round(1000 * max(self.seconds, default=0), 2)}


# NG_WORKERS for the daemon (``--workers``): 1 is the single process, N > 1 a front and N
# worker processes (ctl/front.py), measured together.
WORKERS = 1


def rtpai_environment(ng_port: int, url: str, *, workers: int = 1) -> dict[str, str]:
    """The environment a benchmarked rtpai runs in (shared with bench/micro_percall.py)."""
    env = {
        **os.environ,
        "NG_LISTEN": f"127.0.0.1:{ng_port}",
        "RTP_BIND_IP": "127.0.0.1",
        "RTP_MIN_PORT": str(RTPAI_PORTS[0]),
        "RTP_MAX_PORT": str(RTPAI_PORTS[1]),
        "RTP_TIMEOUT": "60",
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_URL": url,
        # Per-call info lines (offer, ending) would be in the figures; production may keep
        # them, at a cost the churn figure bounds.
        "LOG_LEVEL": "warning",
        "NG_WORKERS": str(workers),
    }
    for name in ("OPENAI_WELCOME_MSG", "OPENAI_INSTRUCTIONS", "OPENAI_DISABLE"):
        env.pop(name, None)
    return env


def start_rtpai(url: str, log_path: Path) -> tuple[Child, NgClient]:
    ng_port = free_udp_port()
    env = rtpai_environment(ng_port, url, workers=WORKERS)
    if GC_THRESHOLDS:
        env["RTPAI_GC_THRESHOLDS"] = GC_THRESHOLDS
    metrics_port = free_tcp_port() if METRICS else None
    if metrics_port is not None:
        env["METRICS_LISTEN"] = f"127.0.0.1:{metrics_port}"
    rtpai = Child("rtpai", pinned([sys.executable, "-m", "ctl.daemon"]), env=env, stdin=False,
                  stderr_path=log_path, cwd=RTPAI_TREE)
    rtpai.metrics_port = metrics_port
    client = NgClient(("127.0.0.1", ng_port))
    client.wait_ready()
    return rtpai, client


def start_rtpengine(log_path: Path) -> tuple[Child, NgClient] | None:
    binary = shutil.which("rtpengine")
    if binary is None:
        return None
    ng_port = free_udp_port()
    argv = [
        binary, "--config-file=none", "--foreground", "--log-stderr", "--log-level=4",
        "--table=-1", "--interface=127.0.0.1", f"--listen-ng=127.0.0.1:{ng_port}",
        f"--port-min={RTPENGINE_PORTS[0]}", f"--port-max={RTPENGINE_PORTS[1]}",
        "--no-redis-required", "--pidfile=/dev/null",
    ]
    # On rtpai's CPU too: the two engines compared on the same footing.
    engine = Child("rtpengine", pinned(argv), stdin=False, stderr_path=log_path)
    client = NgClient(("127.0.0.1", ng_port))
    try:
        client.wait_ready(15)
    except TimeoutError:
        engine.stop()
        return None
    return engine, client


# --- one N ------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def wait_for_quiet(limit_percent: float = 25.0, longest: float = 30.0) -> float:
    """On a shared machine, start when other processes use under ``limit_percent`` of a core
    (or after ``longest`` seconds). Returns the load seen last, for the report."""
    deadline = time.monotonic() + longest
    while True:
        before = machine_cpu()["processes"]
        time.sleep(1.0)
        load = 100 * (machine_cpu()["processes"] - before)
        if load < limit_percent or time.monotonic() > deadline:
            return round(load, 1)


def run_calls(n: int, args: argparse.Namespace, *, profile: bool = False) -> dict[str, Any]:
    """N concurrent calls through fresh rtpai + server processes; the window's figures."""
    tag = f"calls-{n}{'-profile' if profile else ''}"
    load_before = wait_for_quiet()
    server, url = start_server()
    rtpai, ng = start_rtpai(url, BUILD / f"rtpai-{tag}.log")
    loadgen = None
    spy = None
    scraper = Scraper(rtpai.metrics_port) if rtpai.metrics_port else None
    scrapes = None
    try:
        time.sleep(0.5)
        rss_idle = rss_kib(rtpai.pid)
        loadgen = Child("loadgen", [str(LOADGEN), "--calls", str(n), "--warmup",
                                    str(args.warmup), "--duration", str(args.duration),
                                    *(["--wake-on-receive"] if args.gen_wake else [])])
        caller_port = int(loadgen.expect("PORT", 5))
        rtp_ports = []
        offer_times = []
        for i in range(n):
            started = time.perf_counter()
            reply = ng.command("offer", **{"call-id": f"bench-{n}-{i}", "from-tag": f"ft{i}",
                                           "sdp": caller_sdp(caller_port)})
            offer_times.append(time.perf_counter() - started)
            rtp_ports.append(answer_port(reply))
        deadline = time.monotonic() + 30
        while server_stats(server)["sessions_open"] < n:
            if time.monotonic() > deadline:
                raise TimeoutError("AI sessions did not all open")
            time.sleep(0.2)
        loadgen.write("TARGETS " + " ".join(map(str, rtp_ports)))
        loadgen.expect("WINDOW_START", args.warmup + 10)
        server.write("WINDOW_START")
        cpu0 = {p.name: cpu_seconds(p.pid) for p in (rtpai, server, loadgen)}
        split0 = tree_cpu_times(rtpai.pid)
        waited0 = tree_run_queue_wait_s(rtpai.pid)
        machine0 = machine_cpu()
        t0 = time.monotonic()
        if profile:
            spy = Child("py-spy", [str(ROOT / ".venv" / "bin" / "py-spy"), "record",
                                   "--pid", str(rtpai.pid), "--duration",
                                   str(int(args.duration)), "--rate", "100", "--nonblocking",
                                   "--format", "raw", "--output",
                                   str(BUILD / f"profile-{n}.txt")],
                        stdin=False, stderr_path=BUILD / f"py-spy-{n}.log")
        loadgen.expect("WINDOW_END", args.duration + 10)
        window = time.monotonic() - t0
        cpu1 = {p.name: cpu_seconds(p.pid) for p in (rtpai, server, loadgen)}
        split1 = tree_cpu_times(rtpai.pid)
        waited1 = tree_run_queue_wait_s(rtpai.pid)
        machine1 = machine_cpu()
        rss_loaded = rss_kib(rtpai.pid)
        threads = thread_affinity(rtpai.pid)
        server.write("WINDOW_END")
        gen = json.loads(loadgen.expect("SUMMARY", 10))
        srv = server_stats(server)
        if spy is not None:
            spy.proc.wait(30)
        deletes = [ng.command("delete", **{"call-id": f"bench-{n}-{i}", "from-tag": f"ft{i}"})
                   for i in range(n)]
    finally:
        if scraper is not None:
            scrapes = scraper.stop()
        for child in (spy, loadgen):
            if child is not None:
                child.stop("eof")
        rtpai.stop()
        server.write("EXIT")
        server.stop("eof")
        ng.close()

    rtp_in = [d["rtpai"]["rtp in"]["packets"] for d in deletes]
    rtp_out = sum(d["rtpai"]["rtp out"]["packets"] for d in deletes)
    dropped = collections.Counter()
    for d in deletes:
        dropped.update(d["rtpai"]["dropped"])
    reanchors = sum(d["rtpai"]["pacer re-anchors"] for d in deletes)
    lost_in = sum(max(0, sent - got) for sent, got in zip(gen["sent_per_call"], rtp_in,
                                                          strict=True))
    cpu = {name: cpu1[name] - cpu0[name] for name in cpu0}
    call_seconds = n * window
    result = {
        "calls": n,
        "metrics": scrapes,  # None: [metrics] off; else the scraper's figures
        "workers": WORKERS,
        "window_s": round(window, 2),
        # utime+stime of every rtpai process over the window: /proc/PID/stat counts all the
        # process's threads (tests/test_bench_run.py holds that), so a media thread is in it.
        "rtpai_cpu_ms_per_call_s": round(1000 * cpu["rtpai"] / call_seconds, 3),
        "rtpai_threads": threads["threads"],
        "rtpai_cpus_allowed": threads["cpus_allowed"],
        "rtpai_cpu_percent": round(100 * cpu["rtpai"] / window, 1),
        "rtpai_user_percent": round(100 * (split1[0] - split0[0]) / window, 1),
        "rtpai_system_percent": round(100 * (split1[1] - split0[1]) / window, 1),
        "server_cpu_percent": round(100 * cpu["realtime_lean"] / window, 1),
        "loadgen_cpu_percent": round(100 * cpu["loadgen"] / window, 1),
        # What else the machine did meanwhile (percent of one core): other processes (a
        # shared machine's noise), interrupts, and time the hypervisor stole from our vCPUs.
        "others_cpu_percent": round(100 * (machine1["processes"] - machine0["processes"]
                                           - sum(cpu.values())) / window, 1),
        "others_before_start_percent": load_before,
        # Ready to run but not running: time other processes held rtpai's core.
        "rtpai_run_queue_wait_percent": round(max(0.0, 100 * (waited1 - waited0) / window), 1),
        "irq_softirq_percent": round(100 * (machine1["irq"] - machine0["irq"]) / window, 1),
        "steal_percent": round(100 * (machine1["steal"] - machine0["steal"]) / window, 1),
        "rss_idle_kib": rss_idle,
        "rss_loaded_kib": rss_loaded,
        "rss_per_call_kib": round((rss_loaded - rss_idle) / n, 1),
        "gap_err_us": {k: gen["gap_err"][k] for k in ("n", "p50_us", "p99_us", "max_us")},
        "bursts_lt10ms": gen["bursts_lt10ms"],
        "lost_out": gen["lost_out"],
        "lost_in": lost_in,
        "dups_out": gen["dups"],
        "caller_packets_sent": gen["sent"],
        "caller_speech_frames_sent": gen["sent_speech"],
        "caller_frames_at_server": srv["caller_frames"],
        "caller_frames_at_server_pct": round(
            100 * srv["caller_frames"] / max(1, gen["sent_speech"]), 3),
        "rtp_to_ws_us": srv["rtp_to_ws_us"],  # to the AI server's read of the append
        "rtp_to_ws_arrival_us": srv.get("rtp_to_ws_arrival_us"),  # to its arrival there
        "delta_to_first_rtp_us": gen["delta_first"],
        "delta_to_first_rtp_excess_us": gen["delta_excess"],
        "delta_missed_slot": gen["missed_slot"],
        "delta_any_to_rtp_us": gen["delta_all"],
        "rtp_out_packets": rtp_out,
        "dropped": dict(dropped),
        "pacer_reanchors": reanchors,
        "offer_ms_under_load": {
            "p50": round(1000 * percentile(offer_times, 0.5), 3),
            "p99": round(1000 * percentile(offer_times, 0.99), 3),
        },
        "server": {k: srv[k] for k in ("appends", "responses", "deltas", "errors_sent",
                                        "json_slow_path", "sessions_total")},
        "loadgen": {k: gen[k] for k in ("send_errors", "sendmmsg_calls", "recvmmsg_calls",
                                        "recv_window", "unknown_src", "silent_calls")},
    }
    result["health_failures"] = targets.health_failures(result)
    return result


healthy = targets.healthy  # the bar, spelled out in bench/targets.py


def calls_or_failure(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """One N-calls run; a run that fails (AI sessions that never all open, a generator that
    never ends its window) is an unhealthy N, recorded, and the bench goes on."""
    try:
        result = run_calls(n, args)
    except Exception as exc:  # noqa: BLE001 - the report says what failed, and goes on
        print(f"{n} calls failed: {exc!r}", file=sys.stderr)
        return {"calls": n, "error": repr(exc), "health_failures": [f"run failed: {exc!r}"]}
    failures = result["health_failures"]
    print(json.dumps(result))
    print(f"{n} calls: {'healthy' if not failures else 'NOT healthy: ' + '; '.join(failures)}",
          flush=True)
    return result


def search_top_out(args: argparse.Namespace, listed: list[dict[str, Any]]) -> dict[str, Any]:
    """After the ``--calls`` list, more runs (at most ``--search-runs``) to find the largest
    healthy N: growing past the list if every N was healthy, then bisecting between the
    largest healthy N and the first unhealthy one above it (bench/targets.py)."""
    runs: list[dict[str, Any]] = []
    n = None
    while len(runs) < args.search_runs:
        outcomes = {r["calls"]: healthy(r) for r in listed + runs}
        n = targets.next_search_n(outcomes, cap=args.search_cap)
        if n is None:
            break
        low, high = targets.bracket(outcomes)
        print(f"\n== search {len(runs) + 1}/{args.search_runs}: {n} calls (healthy: "
              f"{'up to ' + str(low) if low else 'none yet'}; "
              f"{'not at ' + str(high) if high else 'nothing unhealthy yet'})", flush=True)
        runs.append(calls_or_failure(n, args))
    outcomes = {r["calls"]: healthy(r) for r in listed + runs}
    low, high = targets.bracket(outcomes)
    return {"runs": runs, "budget": args.search_runs, "cap": args.search_cap,
            "closed": targets.next_search_n(outcomes, cap=args.search_cap) is None,
            "largest_healthy_n": low, "first_unhealthy_above": high}


# --- calls that come and go ------------------------------------------------------------------


# A gap error above this is a stall's mark on a call (the generator records each one).
STALL_MS = 10.0
# Stall marks closer than this to the previous one are the same stall: a pause of the engine's
# one thread delays every call's next packet, and they arrive in one burst when it ends.
STALL_CLUSTER_MS = 10.0


def stall_clusters(marks: list[list[float]]) -> list[dict[str, Any]]:
    """The generator's stall marks ([ms, slot, error us]) grouped into stalls, biggest first."""
    clusters: list[dict[str, Any]] = []
    last = None
    for at, slot, err in sorted(marks):
        if last is None or at - last > STALL_CLUSTER_MS:
            clusters.append({"at_s": round(at / 1000, 3), "calls": set(), "max_ms": 0.0})
        cluster = clusters[-1]
        cluster["calls"].add(slot)
        cluster["max_ms"] = max(cluster["max_ms"], round(err / 1000, 1))
        last = at
    for cluster in clusters:
        cluster["calls"] = len(cluster["calls"])
    return sorted(clusters, key=lambda c: (-c["calls"], -c["max_ms"]))


def gc_window(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """The collector's figures (``statistics`` -> ``gc``, ctl/gcstats.py) over the window."""
    if not before or not after:
        return None  # an rtpai without the hook (before issue 18)
    gens = []
    for b, a in zip(before["generations"], after["generations"], strict=True):
        gens.append({"collections": a["collections"] - b["collections"],
                     "collected": a["collected"] - b["collected"],
                     "pause_ms_total": round(a["pause ms total"] - b["pause ms total"], 1),
                     "pause_ms_max_since_start": a["pause ms max"],
                     "cpu_ms_total": round(a.get("cpu ms total", 0) - b.get("cpu ms total", 0), 1),
                     "cpu_ms_max_since_start": a.get("cpu ms max")})
    return {"thresholds": after["thresholds"], "frozen": after["frozen"], "generations": gens}


def ms_summary(values: list[float]) -> dict[str, float | None]:
    pick = lambda q: None if not values else round(percentile(values, q), 2)  # noqa: E731
    return {"n": len(values), "p50": pick(0.5), "p99": pick(0.99),
            "max": round(max(values), 2) if values else None}


def churn_media(n: int, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    """N concurrent calls with media both ways while ``rate`` calls a second start and end.

    Calls ramp up at ``rate`` (the warm-up covers it), then each ``1/rate`` s the oldest call
    is deleted and a new one offered, so a call lives ``n/rate`` s. The generator's callers
    follow (START/STOP on its stdin). Over the window: gap errors across all calls, the stalls
    and how many calls each hit, offer and delete round trips, the AI timeline, rtpai's CPU
    and the collector's collections and pauses (``statistics``).
    """
    tag = f"churn-{n}-{rate:g}"
    load_before = wait_for_quiet()
    server, url = start_server()
    rtpai, ng = start_rtpai(url, BUILD / f"rtpai-{tag}.log")
    warmup = n / rate + args.warmup
    loadgen = None
    offers: list[tuple[float, float]] = []  # (time, round trip ms)
    deletes: list[tuple[float, float, dict]] = []
    errors: list[dict] = []
    try:
        time.sleep(0.5)
        loadgen = Child("loadgen", [str(LOADGEN), "--churn", "--calls", str(n), "--warmup",
                                    str(warmup), "--duration", str(args.duration),
                                    "--stall-ms", str(STALL_MS)])
        caller_port = int(loadgen.expect("PORT", 5))
        loadgen.expect("STREAMING", 5)
        started = time.monotonic()
        window = (started + warmup, started + warmup + args.duration)
        sdp = caller_sdp(caller_port)
        free = list(range(n))
        live: collections.deque[tuple[int, str]] = collections.deque()
        serial = 0
        next_at = started
        gc_before = gc_after = None
        in_window = False
        while True:
            now = time.monotonic()
            if not in_window and now >= window[0]:
                in_window = True  # once: an rtpai without the gc hook answers None
                gc_before = ng.command("statistics")["statistics"].get("rtpai", {}).get("gc")
                waited = run_queue_wait_s(rtpai.pid)
            if now >= window[1]:
                gc_after = ng.command("statistics")["statistics"].get("rtpai", {}).get("gc")
                waited = run_queue_wait_s(rtpai.pid) - waited
                break
            if now < next_at:
                time.sleep(min(next_at - now, 0.005))
                continue
            next_at += 1 / rate
            if len(live) >= n:
                slot, call_id = live.popleft()
                loadgen.write(f"STOP {slot}")
                t = time.perf_counter()
                reply = ng.command("delete", **{"call-id": call_id, "from-tag": "ft"})
                deletes.append((time.monotonic(), 1000 * (time.perf_counter() - t), reply))
                if reply.get("result") != "ok" or "warning" in reply:
                    errors.append(reply)
                free.append(slot)
            slot = free.pop()
            serial += 1
            call_id = f"{tag}-{serial}"
            t = time.perf_counter()
            reply = ng.command("offer", **{"call-id": call_id, "from-tag": "ft", "sdp": sdp})
            offers.append((time.monotonic(), 1000 * (time.perf_counter() - t)))
            try:
                port = answer_port(reply)
            except RuntimeError:
                errors.append(reply)
                free.append(slot)
                continue
            loadgen.write(f"START {slot} {port}")
            live.append((slot, call_id))
        cpu = cpu_seconds(rtpai.pid)
        loadgen.expect("WINDOW_END", 10)
        gen = json.loads(loadgen.expect("SUMMARY", 15))
    finally:
        if loadgen is not None:
            loadgen.stop("eof")
        rtpai.stop()
        server.write("EXIT")
        server.stop("eof")
        ng.close()

    def in_window(at: float) -> bool:
        return window[0] <= at < window[1]

    timelines = [d["rtpai"]["timeline ms"] for at, _, d in deletes if "rtpai" in d]
    ai_open = [t["ai_session_open"] for t in timelines if "ai_session_open" in t]
    # rtpai's share of the first AI audio: its first delta received -> its first RTP sent.
    playout = [t["first_rtp_to_caller"] - t["first_ai_audio"] for t in timelines
               if "first_rtp_to_caller" in t and "first_ai_audio" in t]
    stalls = stall_clusters(gen.get("stalls", []))
    return {
        "calls": n,
        "rate_per_s": rate,
        "call_seconds": round(n / rate, 1),
        "window_s": args.duration,
        "others_before_start_percent": load_before,
        "rtpai_cpu_s_total": round(cpu, 1),
        # Ready to run but not running, over the window: the machine's doing, not rtpai's.
        "rtpai_run_queue_wait_s": round(waited, 2),
        "gap_err_us": {k: gen["gap_err"][k] for k in ("n", "p50_us", "p99_us", "p999_us",
                                                       "max_us")},
        "stall_marks_over_ms": STALL_MS,
        "stalls": len(stalls),
        "stall_most_calls": stalls[0]["calls"] if stalls else 0,
        "stalls_over_5_calls": sum(1 for c in stalls if c["calls"] > 5),
        "worst_stalls": stalls[:8],
        "offer_ms": ms_summary([ms for at, ms in offers if in_window(at)]),
        "delete_ms": ms_summary([ms for at, ms, _ in deletes if in_window(at)]),
        "ai_session_open_ms": ms_summary(ai_open),
        "ai_delta_to_first_rtp_ms": ms_summary(playout),
        "gc": gc_window(gc_before, gc_after),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "lost_out": gen["lost_out"],
        "unknown_src": gen["unknown_src"],
    }


# --- ng: offer -> reply, rtpai vs rtpengine ---------------------------------------------------


# rtpengine keeps a deleted call (and its four ports) for 30 s by default.
NO_DELAY = {"delete-delay": 0}


def offer_timing(ng: NgClient, label: str, count: int, window: int) -> dict[str, Any]:
    """``count`` offers one at a time (latency), then ``count`` with ``window`` in flight.

    Every offer's call is deleted (untimed) before the next is counted, so a few calls exist
    at any time: rtpai paces silence to the offer's address from the moment a call exists,
    and a thousand such calls would be measured instead of the offer.
    """
    sdp = caller_sdp(9)  # port 9 (discard): nobody sends media in this test
    for i in range(50):  # warm-up
        ng.command("offer", **{"call-id": f"{label}-w{i}", "from-tag": "a", "sdp": sdp})
        ng.command("delete", **{"call-id": f"{label}-w{i}", "from-tag": "a", **NO_DELAY})
    rtts = []
    for i in range(count):
        call = {"call-id": f"{label}-s{i}", "from-tag": "a"}
        started = time.perf_counter()
        reply = ng.command("offer", **call, sdp=sdp)
        rtts.append(time.perf_counter() - started)
        answer_port(reply)
        ng.command("delete", **call, **NO_DELAY)

    piped: list[float] = []
    errors = []

    def steps():
        for i in range(count):
            call = {"call-id": f"{label}-p{i}", "from-tag": "a"}

            def on_offer(reply, rtt, call=call):
                if reply.get("result") != "ok":
                    errors.append(reply)
                piped.append(rtt)
                return "delete", {**call, **NO_DELAY}, lambda reply, rtt: None

            yield "offer", {**call, "sdp": sdp}, on_offer

    elapsed = ng.pipelined(steps(), window)
    return {
        "sequential_p50_us": round(1e6 * percentile(rtts, 0.5), 1),
        "sequential_p99_us": round(1e6 * percentile(rtts, 0.99), 1),
        "sequential_offers_per_s": round(count / sum(rtts), 1),
        "pipelined_window": window,
        "pipelined_cycles_per_s": round(count / elapsed, 1),
        "pipelined_offer_p50_us": round(1e6 * percentile(piped, 0.5), 1),
        "errors": len(errors),
        "first_error": errors[0].get("error-reason") if errors else None,
    }


def compare_offers(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    # The server answers sessions but never speaks (interval 0): only set-up is measured.
    server, url = start_server(interval=0)
    rtpai, ng = start_rtpai(url, BUILD / "rtpai-offers.log")
    try:
        results["rtpai"] = offer_timing(ng, "rtpai", args.offers, 16)
        results["rtpai"]["cpu_s"] = round(cpu_seconds(rtpai.pid), 2)
    finally:
        rtpai.stop()
        server.write("EXIT")
        server.stop("eof")
        ng.close()
    started = start_rtpengine(BUILD / "rtpengine.log")
    if started is None:
        results["rtpengine"] = None
        return results
    engine, ng = started
    try:
        results["rtpengine"] = offer_timing(ng, "rtpengine", args.offers, 16)
        results["rtpengine"]["cpu_s"] = round(cpu_seconds(engine.pid), 2)
        results["rtpengine"]["version"] = subprocess.run(
            ["rtpengine", "--version"], capture_output=True, text=True
        ).stdout.strip() or subprocess.run(
            ["rtpengine", "--version"], capture_output=True, text=True).stderr.strip()
    finally:
        engine.stop()
        ng.close()
    a, b = results["rtpai"], results["rtpengine"]
    results["ratio_p50_rtpai_over_rtpengine"] = round(
        a["sequential_p50_us"] / b["sequential_p50_us"], 2)
    results["ratio_throughput_rtpai_over_rtpengine"] = round(
        a["pipelined_cycles_per_s"] / b["pipelined_cycles_per_s"], 2)
    return results


# --- memory churn -----------------------------------------------------------------------------


# Batches of --churn cycles. The first fills the ng reply cache; the others show whether
# anything else accumulates, and the allocator's heap settling (it takes a couple of batches).
CHURN_BATCHES = ("first", "second", "third")


def churn(args: argparse.Namespace) -> dict[str, Any]:
    """Three batches of ``--churn`` offer/delete cycles (8 in flight); RSS between them."""
    server, url = start_server(interval=0)
    rtpai, ng = start_rtpai(url, BUILD / "rtpai-churn.log")
    sdp = caller_sdp(9)
    errors: list[dict] = []
    try:
        time.sleep(0.5)
        rss = {"start": rss_kib(rtpai.pid)}

        def cycles(prefix: str, count: int):
            for i in range(count):
                call = {"call-id": f"{prefix}-{i}", "from-tag": "a"}

                def on_offer(reply, rtt, call=call):
                    if reply.get("result") != "ok":
                        errors.append(reply)
                    return "delete", call, on_delete

                yield "offer", {**call, "sdp": sdp}, on_offer

        def on_delete(reply, rtt):
            if reply.get("result") != "ok":
                errors.append(reply)

        ng.pipelined(cycles("warm", 500), 8)
        time.sleep(1)
        rss["after_500_warmup"] = rss_kib(rtpai.pid)
        spy = None
        if args.profile:
            spy = Child("py-spy", [str(ROOT / ".venv" / "bin" / "py-spy"), "record", "--pid",
                                   str(rtpai.pid), "--rate", "100", "--nonblocking", "--format",
                                   "raw", "--output", str(BUILD / "profile-churn.txt")],
                        stdin=False, stderr_path=BUILD / "py-spy-churn.log")
        elapsed = ng.pipelined(cycles("churn", args.churn), 8)
        if spy is not None:
            spy.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            spy.proc.wait(30)
        time.sleep(2)
        rss["after_first_batch"] = rss_kib(rtpai.pid)
        # The ng reply cache keeps up to 20,000 replies or 10 MiB for 45 s, so the first batch
        # grows RSS by design; the later ones show whether anything else accumulates.
        for batch in CHURN_BATCHES[1:]:
            ng.pipelined(cycles(f"churn-{batch}", args.churn), 8)
            time.sleep(2)
            rss[f"after_{batch}_batch"] = rss_kib(rtpai.pid)
        stats = ng.command("statistics")["statistics"]["currentstatistics"]
        srv = server_stats(server)
    finally:
        rtpai.stop()
        server.write("EXIT")
        server.stop("eof")
        ng.close()
    return {
        "cycles": args.churn,
        "cycles_per_s": round(args.churn / elapsed, 1),
        "rss_kib": rss,
        **{
            f"growth_kib_per_1000_cycles_{batch}_batch": round(
                (rss[f"after_{batch}_batch"] - rss[previous]) / args.churn * 1000, 1)
            for batch, previous in zip(
                CHURN_BATCHES,
                ["after_500_warmup"] + [f"after_{b}_batch" for b in CHURN_BATCHES[:-1]],
                strict=True,
            )
        },
        "sessions_left": stats["sessionsown"],
        "ports_in_use": stats["portsinuse"],
        "ws_sessions_open_at_server": srv["sessions_open"],
        "errors": len(errors),
    }


# --- profile ----------------------------------------------------------------------------------


TASK_LABELS = (
    ({"MediaClock.run", "MediaStream.tick"}, "pacer: MediaClock.run + MediaStream.tick"),
    # Caller audio is sent from the RTP receiver's stack: this label is checked before it.
    ({"RealtimeSession._append_caller_audio"}, "WS writer: RealtimeSession._append_caller_audio"),
    ({"RealtimeSession._readable", "RealtimeSession._read_events", "WebSocket.flush"},
     "WS reader (in the poller) + flusher"),
    ({"SocketPoller.run", "MediaPoller.run", "Call._receive_media"},
     "RTP receiver: SocketPoller.run"),
    ({"serve_ng", "Dispatcher.handle", "Engine.offer", "Engine.delete", "Call.run",
      "RealtimeSession.run", "WebSocket.connect"}, "ng + call set-up/tear-down"),
    ({"Deadlines.expire"}, "trio timers: Deadlines.expire (cancel scopes)"),
    ({"EpollIOManager.get_events", "EpollIOManager.process_events"}, "trio epoll wait/dispatch"),
)


def summarise_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> shares of the busy samples.

    ``self``/``inclusive`` are per function (line numbers folded); ``tasks`` groups samples
    by the part of rtpai they ran in (:data:`TASK_LABELS`; --nonblocking sampling cuts some
    stacks short, those are "unattributed"), adding up to 100 %.
    """
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    tasks: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [re.sub(r":\d+\)$", ")", f.strip()) for f in stack.split(";") if f.strip()]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
        names = [f.partition(" (")[0] for f in frames]
        task = next((label for keys, label in TASK_LABELS if any(n in keys for n in names)),
                    "trio scheduler, other" if "unrolled_run" in names
                    else "unattributed (partial stack)")
        tasks[task] += samples

    def table(counter, n=top):
        return [(frame, round(100 * c / total, 1)) for frame, c in counter.most_common(n)]

    return {"samples": total, "self": table(own), "inclusive": table(inclusive),
            "tasks": table(tasks, 12)}


# --- report -----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {"cores": str(os.cpu_count()), "model": model, "kernel": platform.release(),
            "python": platform.python_version()}


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def print_table(results: list[dict[str, Any]]) -> None:
    us_to_ms = lambda us: None if us is None else us / 1000  # noqa: E731
    header = ("N", "CPU ms/call-s", "rtpai CPU %", "srv %", "gen %", "RSS KiB/call",
              "gap err p50/p99/max ms", "bursts<10ms", "lost out/in", "to server %",
              "RTP->WS p50/p99 ms", "delta->1st RTP p50/p99 ms", "excess p50/p99 ms", "missed")
    print(" | ".join(header))
    for r in results:
        g, w, d, e = (r["gap_err_us"], r["rtp_to_ws_us"], r["delta_to_first_rtp_us"],
                      r["delta_to_first_rtp_excess_us"])
        print(" | ".join([
            str(r["calls"]), fmt(r["rtpai_cpu_ms_per_call_s"]), fmt(r["rtpai_cpu_percent"]),
            fmt(r["server_cpu_percent"]), fmt(r["loadgen_cpu_percent"]),
            fmt(r["rss_per_call_kib"]),
            "/".join(fmt(us_to_ms(g[k])) for k in ("p50_us", "p99_us", "max_us")),
            str(r["bursts_lt10ms"]), f"{r['lost_out']}/{r['lost_in']}",
            fmt(r["caller_frames_at_server_pct"]),
            "/".join(fmt(us_to_ms(w[k])) for k in ("p50_us", "p99_us")),
            "/".join(fmt(us_to_ms(d[k])) for k in ("p50_us", "p99_us")),
            "/".join(fmt(us_to_ms(e[k])) for k in ("p50_us", "p99_us")),
            str(r["delta_missed_slot"]),
        ]))


def section(run, args: argparse.Namespace) -> dict[str, Any]:
    """One part of the report; a failure is recorded and the other parts still run."""
    try:
        return run(args)
    except Exception as exc:  # noqa: BLE001 - the report says what failed, and goes on
        print(f"{run.__name__} failed: {exc!r}", file=sys.stderr)
        return {"error": repr(exc)}


def run_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """``--baseline REF`` (bench/baseline.py): the CPU per call-second beside REF's."""
    global RTPAI_TREE
    this_tree = RTPAI_TREE
    tree = baseline.baseline_tree(ROOT, args.baseline)

    def run_on(n: int, where: Path) -> dict[str, Any]:
        global RTPAI_TREE
        RTPAI_TREE = where
        try:
            return run_calls(n, args)
        finally:
            RTPAI_TREE = this_tree

    return baseline.compare(args.baseline, tree, this_tree, args.baseline_calls,
                            args.baseline_reps, run_on)


def main(argv: list[str] | None = None) -> int:
    global RTPAI_TREE, GC_THRESHOLDS, WORKERS, RTPAI_PORTS, METRICS, RTPAI_CPUS, LOAD_CPUS
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", default="50,100,200,300,500,700,1000",
                        help="comma-separated concurrent call counts")
    parser.add_argument("--duration", type=float, default=30, help="measured seconds per N")
    parser.add_argument("--warmup", type=float, default=5, help="seconds before the window")
    parser.add_argument("--offers", type=int, default=1000, help="offers per engine timed")
    parser.add_argument("--churn", type=int, default=10000, help="offer/delete cycles")
    parser.add_argument("--search-runs", type=int, default=None,
                        help="runs after --calls to find the largest healthy N: past the list "
                             "while every N is healthy, then bisecting (default 4; --quick 1)")
    parser.add_argument("--search-cap", type=int, default=2000,
                        help="the search never runs more calls than this")
    parser.add_argument("--rtpai-cpus", default="auto", metavar="auto|none|LIST",
                        help="the CPUs rtpai runs on (taskset; all its threads and processes); "
                             "the load side gets the others. auto: CPU 0 with one rtpai "
                             "process on a machine of 2+ CPUs, else none")
    parser.add_argument("--profile", type=int, default=0, help="py-spy rtpai under N calls")
    parser.add_argument("--quick", action="store_true",
                        help="50,200 calls, 10 s windows, 1 search run, 1 baseline run each, "
                             "300 offers, 2000 churn cycles, churn-media 200@20")
    parser.add_argument("--skip", default="", help="comma list of: calls,churn-media,offers,churn")
    parser.add_argument("--churn-media", default="200@20,480@40",
                        help="comma list of N@R: N concurrent calls while R a second come and go")
    parser.add_argument("--rtpai-tree", type=Path, default=ROOT,
                        help="run that checkout's rtpai (e.g. the code before a change)")
    parser.add_argument("--baseline", metavar="REF", default=None,
                        help="also run a worktree of git REF (built, under the temporary "
                             "directory) at --baseline-calls, alternating with this tree")
    parser.add_argument("--baseline-calls", type=int, default=200)
    parser.add_argument("--baseline-reps", type=int, default=None,
                        help="runs per tree (A, B, A, B ...; default 2, --quick 1)")
    parser.add_argument("--gc-thresholds", default=None,
                        help="RTPAI_GC_THRESHOLDS for rtpai, e.g. 700,10,10 (CPython's)")
    parser.add_argument("--metrics", action="store_true",
                        help="rtpai serves /metrics and is scraped once a second")
    parser.add_argument("--rtp-ports", default=None, metavar="MIN-MAX",
                        help=f"rtpai's RTP port range (default {RTPAI_PORTS[0]}-"
                             f"{RTPAI_PORTS[1]}); another on a machine where a second "
                             "benchmark runs")
    parser.add_argument("--workers", type=int, default=1,
                        help="[ng] workers for rtpai (NG_WORKERS): N > 1 is a front and N "
                             "worker processes, their CPU and memory counted together")
    parser.add_argument("--gen-wake", action="store_true",
                        help="the generator sleeps in epoll on its socket (each RTP packet "
                             "then costs rtpai a cross-CPU wake-up); default: 1 ms polling")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.duration, args.warmup = "50,200", 10, 3
        args.offers, args.churn, args.churn_media = 300, 2000, "200@20"
    if args.search_runs is None:
        args.search_runs = 1 if args.quick else 4
    if args.baseline_reps is None:
        args.baseline_reps = 1 if args.quick else 2
    skip = set(filter(None, args.skip.split(",")))
    RTPAI_TREE, GC_THRESHOLDS = args.rtpai_tree.resolve(), args.gc_thresholds
    METRICS = args.metrics
    WORKERS = args.workers
    if args.rtp_ports:
        low, _, high = args.rtp_ports.partition("-")
        RTPAI_PORTS = (int(low), int(high))
    if not LOADGEN.exists():
        print(f"{LOADGEN} is missing: run `make bench` (or `make bench/build/loadgen`)",
              file=sys.stderr)
        return 2
    BUILD.mkdir(parents=True, exist_ok=True)
    RTPAI_CPUS, LOAD_CPUS, pin_detail = choose_pinning(args.rtpai_cpus, WORKERS)
    if LOAD_CPUS is not None:
        # The driver's children (AI server, load generator) inherit this; rtpai's taskset
        # overrides it.
        os.sched_setaffinity(0, LOAD_CPUS)
    started = time.monotonic()
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup,
                     "workers": args.workers,
                     "talk_spurt": "1 s speech / 2 s silence (DTX), 50 pps while talking",
                     "ai": "2 s reply every ~3 s as 100 ms deltas at 4x real time"},
        "pinning": {"rtpai_cpus": RTPAI_CPUS and cpu_list(RTPAI_CPUS),
                    "load_cpus": LOAD_CPUS and cpu_list(LOAD_CPUS), "detail": pin_detail,
                    "short": (f"on one core (CPU {cpu_list(RTPAI_CPUS)})"
                              if RTPAI_CPUS and len(RTPAI_CPUS) == 1
                              else f"on CPUs {cpu_list(RTPAI_CPUS)}" if RTPAI_CPUS
                              else "(cores not pinned)")},
    }
    print(f"machine: {report['machine']}")
    print(f"pinning: {pin_detail}")
    results: list[dict[str, Any]] = []
    if "calls" not in skip:
        for n in [int(x) for x in args.calls.split(",") if x]:
            print(f"\n== {n} calls: {args.warmup:g} s warm-up, {args.duration:g} s window",
                  flush=True)
            results.append(calls_or_failure(n, args))
        report["calls"] = results
        report["search"] = search_top_out(args, results)
        report["largest_healthy_n"] = report["search"]["largest_healthy_n"]
        print()
        print_table(sorted((r for r in results + report["search"]["runs"] if "error" not in r),
                           key=lambda r: r["calls"]))
        print(f"largest N with p99 gap error < 5 ms, no loss, every frame delivered: "
              f"{report['largest_healthy_n']} (first unhealthy above it: "
              f"{report['search']['first_unhealthy_above']})")
    if args.baseline:
        print(f"\n== {args.baseline_calls} calls, this tree beside {args.baseline}, "
              f"{args.baseline_reps} runs each", flush=True)
        report["baseline"] = section(run_baseline, args)
        print(json.dumps({k: v for k, v in report["baseline"].items() if k != "runs"}))
    if "churn-media" not in skip:
        report["churn_media"] = []
        for spec in filter(None, args.churn_media.split(",")):
            calls, _, rate = spec.partition("@")
            print(f"\n== churn: {calls} calls, {rate} a second come and go, "
                  f"{args.duration:g} s window", flush=True)
            result = section(lambda a, c=int(calls), r=float(rate): churn_media(c, r, a), args)
            report["churn_media"].append(result)
            print(json.dumps(result))
    if "offers" not in skip:
        print(f"\n== offer -> reply: {args.offers} offers each, rtpai vs rtpengine", flush=True)
        report["offers"] = section(compare_offers, args)
        print(json.dumps(report["offers"], indent=1))
    if "churn" not in skip:
        print(f"\n== memory: {len(CHURN_BATCHES)} x {args.churn} offer/delete cycles", flush=True)
        report["churn"] = section(churn, args)
        print(json.dumps(report["churn"], indent=1))
    if args.profile:
        print(f"\n== profile: py-spy on rtpai under {args.profile} calls", flush=True)
        profiled = run_calls(args.profile, args, profile=True)
        report["profile"] = {
            "calls": args.profile,
            "run": profiled,
            **summarise_profile(BUILD / f"profile-{args.profile}.txt"),
        }
        for kind in ("tasks", "self", "inclusive"):
            print(f"top {kind}:")
            for frame, share in report["profile"][kind][:15]:
                print(f"  {share:5.1f}%  {frame}")
        churn_profile = BUILD / "profile-churn.txt"
        if churn_profile.exists():
            report["profile_churn"] = summarise_profile(churn_profile)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    # The verdicts are read from the report as saved: `python -m bench.targets FILE` prints
    # the same table again.
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = BUILD / f"results-{stamp}.json"
    out.write_text(json.dumps(report, indent=1))  # first: a table that fails loses nothing
    report["issue14_targets"] = targets.rows(report)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nelapsed {report['elapsed_s']} s; results in {out.relative_to(ROOT)}\n")
    print(targets.render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

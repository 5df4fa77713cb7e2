"""``python -m bench.faults``: each AI-link fault beside 20 healthy calls.

One rtpai process; the healthy calls' Realtime server is the lean one bench.run uses, their
callers the C load generator (bench/loadgen.c), which measures every RTP inter-departure
error against 20 ms. Beside them, for every fault of the hostile server (tests/fakes/hostile.py,
its own process), two calls through an ``[openai:...]`` profile each:

* ``once``: the fault hits the first connection only: the time to recover is from the
  first connection's opening to the next one's ``session.updated`` (the hostile server's
  clock: CLOCK_MONOTONIC, shared by every process here);
* ``always``: every connection is faulty: the time to end is from the first connection's
  opening to the proxy being told to hang up (a webhook in this process), with the reason.

The faulty calls' callers are a Python thread sending 20 ms frames of speech-like audio (the
``mute-response`` fault needs a caller turn). A baseline run comes first with the same 16
extra calls to the same hostile server process, only with ``fault=none``: the difference in
the healthy calls' p99 gap error is the faults' alone. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.ngload import NgClient, answer_port, caller_sdp
from bench.run import API_KEY, BUILD, LOADGEN, ROOT, Child, free_udp_port, start_server
from tests.fakes.hostile import FAULTS

FAULTY = [f for f in FAULTS if f != "none"]
# The "always" profiles give up sooner than the default 20 s, to keep the run short; the
# bounds themselves are the defaults (docs/reliability.md).
ALWAYS_RECONNECT_TIMEOUT = 10
PORTS = (16000, 23999)


class Hangups:
    """The proxy webhook: when each call was hung up, and why."""

    def __init__(self) -> None:
        self.events: dict[str, tuple[float, str]] = {}
        hangups = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                event = json.loads(body)
                if event.get("event") == "hangup":
                    hangups.events.setdefault(event["call_id"],
                                              (time.monotonic(), event.get("reason", "")))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class FaultyCallers:
    """One RTP stream per faulty call, 20 ms apart, from one thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.targets: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        payload = bytes((0x20 + (k * 37) % 0x5F) for k in range(160))
        seq = 0
        due = time.monotonic()
        while not self.stop.is_set():
            seq += 1
            for i, port in enumerate(list(self.targets)):
                header = bytes([0x80, 0]) + (seq & 0xFFFF).to_bytes(2, "big") + (
                    (seq * 160) & 0xFFFFFFFF).to_bytes(4, "big") + (0x20000000 + i).to_bytes(
                    4, "big")
                self.sock.sendto(header + payload, ("127.0.0.1", port))
            due += 0.02
            time.sleep(max(0.0, due - time.monotonic()))


def start_rtpai(config: Path, hook: str, log_path: Path) -> tuple[Child, NgClient]:
    ng_port = free_udp_port()
    env = {**os.environ, "NG_LISTEN": f"127.0.0.1:{ng_port}", "RTP_BIND_IP": "127.0.0.1",
           "RTP_MIN_PORT": str(PORTS[0]), "RTP_MAX_PORT": str(PORTS[1]), "RTP_TIMEOUT": "60",
           "OPENAI_API_KEY": API_KEY, "PROXY_TYPE": "webhook", "PROXY_URL": hook,
           "LOG_LEVEL": "warning"}
    for name in ("OPENAI_WELCOME_MSG", "OPENAI_INSTRUCTIONS", "OPENAI_DISABLE", "OPENAI_URL"):
        env.pop(name, None)
    rtpai = Child("rtpai", [sys.executable, "-m", "ctl.daemon", "--config", str(config)],
                  env=env, stdin=False, stderr_path=log_path)
    client = NgClient(("127.0.0.1", ng_port))
    client.wait_ready()
    return rtpai, client


def run(args: argparse.Namespace, *, with_faults: bool) -> dict[str, Any]:
    lean, lean_url = start_server()
    hostile = Child("hostile", [sys.executable, "-m", "tests.fakes.hostile", "--port", "0"])
    hostile_url = hostile.expect("url=", 10)
    hangups = Hangups()
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as ini:
        ini.write(f"[openai]\nurl = {lean_url}\n")
        ini.write(f"[openai:clean]\nurl = {hostile_url}?fault=none\n")
        for fault in FAULTY:
            ini.write(f"[openai:{fault}-once]\nurl = {hostile_url}?fault={fault}&times=1"
                      f"&call={fault}-once\n")
            ini.write(f"[openai:{fault}-always]\nurl = {hostile_url}?fault={fault}"
                      f"&call={fault}-always\nreconnect_timeout = {ALWAYS_RECONNECT_TIMEOUT}\n")
    tag = "faults" if with_faults else "baseline"
    rtpai, ng = start_rtpai(Path(ini.name), hangups.url, BUILD / f"rtpai-{tag}.log")
    callers = FaultyCallers()
    feeder = threading.Thread(target=callers.run, daemon=True)
    loadgen = None
    results: dict[str, Any] = {}
    try:
        loadgen = Child("loadgen", [str(LOADGEN), "--calls", str(args.calls), "--warmup",
                                    str(args.warmup), "--duration", str(args.duration)])
        caller_port = int(loadgen.expect("PORT", 5))
        targets = []
        for i in range(args.calls):
            reply = ng.command("offer", **{"call-id": f"healthy-{i}", "from-tag": f"ft{i}",
                                           "to-tag": "tt", "sdp": caller_sdp(caller_port)})
            targets.append(answer_port(reply))
        time.sleep(1.0)  # the healthy sessions open
        loadgen.write("TARGETS " + " ".join(map(str, targets)))
        loadgen.expect("WINDOW_START", args.warmup + 10)
        offered: dict[str, float] = {}
        # The baseline has the same extra calls, the same callers, the same hostile server
        # process, only healthy: what differs is the faults alone.
        feeder.start()
        for fault in FAULTY:
            for mode in ("once", "always"):
                name = f"{fault}-{mode}"
                reply = ng.command("offer", **{
                    "call-id": name, "from-tag": "ft", "to-tag": "tt",
                    "sdp": caller_sdp(callers.port),
                    "profile": name if with_faults else "clean"})
                callers.targets.append(answer_port(reply))
                offered[name] = time.monotonic()
                time.sleep(0.05)  # one offer at a time, as calls arrive
        loadgen.expect("WINDOW_END", args.duration + 10)
        gen = json.loads(loadgen.expect("SUMMARY", 10))
        hostile.write("STATS")
        connections = json.loads(hostile.expect("STATS ", 10))
        queries = {name: ng.command("query", **{"call-id": name}) for name in offered}
        results = {"gap_err_us": gen["gap_err"], "lost_out": gen["lost_out"],
                   "faults": summarise(offered, connections, hangups.events, queries)
                   if with_faults else {}}
    finally:
        callers.stop.set()
        if loadgen is not None:
            loadgen.stop("eof")
        rtpai.stop()
        hostile.stop("eof")
        lean.write("EXIT")
        lean.stop("eof")
        ng.close()
        hangups.server.shutdown()
        os.unlink(ini.name)
    return results


def summarise(offered: dict[str, float], connections: list[dict], hangups: dict,
              queries: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in offered:
        fault, mode = name.rsplit("-", 1)
        mine = [c for c in connections if c["call"] == name]
        first = mine[0]["opened_at"] if mine else offered[name]
        ai = queries[name].get("rtpai", {}).get("ai", {})
        entry: dict[str, Any] = {"connections": len(mine), "loss": ai.get("last loss"),
                                 "malformed": ai.get("malformed events")}
        if mode == "once":
            healthy = [c for c in mine[1:] if c["updated_at"] is not None]
            entry["recovered_s"] = (round(healthy[0]["updated_at"] - first, 2)
                                    if healthy else None)
            entry["still_up"] = name not in hangups
            if fault == "garbage":  # nothing to recover from: the call never lost its link
                entry["recovered_s"] = 0.0 if len(mine) == 1 and entry["still_up"] else None
        else:
            ended = hangups.get(name)
            entry["ended_s"] = round(ended[0] - first, 2) if ended else None
            entry["reason"] = ended[1] if ended else None
        out.setdefault(fault, {})[mode] = entry
    return out


def ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--calls", type=int, default=20, help="healthy calls")
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--duration", type=float, default=40,
                        help="the window: long enough for every 'always' call to end")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args(argv)
    BUILD.mkdir(parents=True, exist_ok=True)
    if not LOADGEN.exists():
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(LOADGEN),
                        str(ROOT / "bench" / "loadgen.c")], check=True)
    report: dict[str, Any] = {}
    if not args.no_baseline:
        report["baseline"] = run(args, with_faults=False)
        g = report["baseline"]["gap_err_us"]
        print(f"baseline: {args.calls} healthy calls beside {2 * len(FAULTY)} healthy "
              f"calls to the hostile server (fault=none), gap error p50/p99/max ms "
              f"{ms(g['p50_us'])}/{ms(g['p99_us'])}/{ms(g['max_us'])}", flush=True)
    report["faults"] = run(args, with_faults=True)
    g = report["faults"]["gap_err_us"]
    print(f"with {2 * len(FAULTY)} faulty calls beside them: gap error p50/p99/max ms "
          f"{ms(g['p50_us'])}/{ms(g['p99_us'])}/{ms(g['max_us'])}, RTP lost "
          f"{report['faults']['lost_out']}")
    print(f"{'fault':<20} {'recover (once)':>14} {'end (always)':>12}  end reason / loss")
    for fault, modes in report["faults"]["faults"].items():
        once, always = modes.get("once", {}), modes.get("always", {})
        rec = once.get("recovered_s")
        end = always.get("ended_s")
        what = always.get("reason") or always.get("loss") or once.get("loss")
        if fault == "garbage":
            what = (f"{always.get('malformed')} malformed events counted and dropped, "
                    "the link kept")
        print(f"{fault:<20} {('-' if rec is None else f'{rec:.2f} s'):>14} "
              f"{('up' if end is None else f'{end:.2f} s'):>12}  {what}")
    out = BUILD / "faults.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

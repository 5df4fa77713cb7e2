"""``python -m bench.offer_phases``: where one offer's time goes inside a running ``ctl.daemon``.

The driver starts the lean Realtime server (as ``bench.run``'s offers phase does: sessions
accepted, nothing said) and a daemon with probes (``--serve``), sends ``--cycles`` sequential
offer + delete pairs (and as many pings, for the round-trip floor), stops the daemon and prints
the p50/p90 of each phase of an offer:

* ``wake``: the kernel's receive timestamp (SO_TIMESTAMPNS) to the moment ``recvfrom`` returns
  (epoll, trio's scheduler, and whatever else was runnable: the previous call's work);
* ``decode``, ``request``, ``sdp`` (``parse_sdp`` + ``negotiate``; ``sdp_parse`` the parse
  alone), ``bind`` (ports + sockets),
  ``build`` (the answer SDP), ``encode`` (the bencoded reply), ``cache`` (the reply cache);
* ``answer``: all of ``Dispatcher.answer`` (the above from ``decode`` and the handler's rest);
* ``sendto``: the syscall; ``inside``: arrival to the reply's ``sendto`` returning;
* ``then``: the work after the reply (the Call built and started), off the offer's time.

The probes are wrappers around module attributes, installed before the engine is built; each
costs ~0.2 µs. ``--profile FILE`` runs the daemon under cProfile instead (no probes).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import signal
import socket
import struct
import sys
import time
import types
from collections import defaultdict
from functools import wraps
from pathlib import Path

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@ll")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- the daemon side --------------------------------------------------------------------------


def install_probes(samples: dict[str, list[float]]) -> None:
    """Wrap the offer path's steps; ``samples[phase]`` gets microseconds per offer."""
    import ctl.dispatcher
    import ctl.engine
    import ctl.ng_requests
    import ctl.ng_server
    import ctl.offers
    import ctl.reply_cache
    import ctl.rtp_ports
    import media.sdp

    clock = time.perf_counter_ns
    state = {"offer": False, "arrival": 0}

    def timed(phase, function, *, offers_only=True):
        @wraps(function)
        def probe(*args, **kwargs):
            started = clock()
            try:
                return function(*args, **kwargs)
            finally:
                if state["offer"] or not offers_only:
                    samples[phase].append((clock() - started) / 1000)
                elif state.get("command") == "ping":
                    samples[phase + "_ping"].append((clock() - started) / 1000)
        return probe

    decode = ctl.dispatcher.decode_request

    def decode_probe(body):
        started = clock()
        request = decode(body)
        state["offer"] = request.command == "offer"
        state["command"] = request.command
        if state["offer"]:
            samples["decode"].append((clock() - started) / 1000)
        return request

    ctl.dispatcher.decode_request = decode_probe
    ctl.dispatcher.encode_reply = timed("encode", ctl.dispatcher.encode_reply)
    ctl.reply_cache.ReplyCache.complete = timed("cache", ctl.reply_cache.ReplyCache.complete)
    parse = ctl.ng_requests.OfferRequest.parse.__func__
    ctl.ng_requests.OfferRequest.parse = classmethod(timed("request", parse))
    ctl.offers.negotiate = timed("sdp", ctl.offers.negotiate)
    ctl.rtp_ports.PortBinder.bind = timed("bind", ctl.rtp_ports.PortBinder.bind)
    media.sdp.build_answer = timed("build", media.sdp.build_answer)
    media.sdp.parse_sdp = timed("sdp_parse", media.sdp.parse_sdp)
    ctl.dispatcher.Dispatcher.answer = timed("answer", ctl.dispatcher.Dispatcher.answer)
    follow_up = ctl.dispatcher.Dispatcher.follow_up

    def follow_up_probe(self, answer):
        was_offer = state["offer"]
        started = clock()
        follow_up(self, answer)
        if was_offer:
            samples["then"].append((clock() - started) / 1000)
        state["offer"] = False

    ctl.dispatcher.Dispatcher.follow_up = follow_up_probe
    ctl.engine.Engine.delete = timed("delete", ctl.engine.Engine.delete, offers_only=False)

    class ProbedSocket(socket.socket):
        """The ng socket: its receive takes the kernel's arrival time, its send is timed."""

        def bind(self, address):
            self.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            return super().bind(address)

        def recvfrom(self, size, flags=0):
            data, ancillary, _, source = self.recvmsg(size, socket.CMSG_SPACE(16), flags)
            now = time.time_ns()
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = _TIMESPEC.unpack(payload[:_TIMESPEC.size])
                    state["arrival"] = seconds * 1_000_000_000 + nanoseconds
                    state["woken"] = now
            return data, source

        def sendto(self, data, *args):
            started = clock()
            try:
                return super().sendto(data, *args)
            finally:
                suffix = "" if state["offer"] else "_" + state.get("command", "?")
                samples["sendto" + suffix].append((clock() - started) / 1000)
                samples["wake" + suffix].append((state["woken"] - state["arrival"]) / 1000)
                samples["inside" + suffix].append((time.time_ns() - state["arrival"]) / 1000)

    shim = types.ModuleType("socket")
    shim.__dict__.update(socket.__dict__)
    shim.socket = ProbedSocket
    ctl.ng_server.socket = shim


def serve(out: Path, profile: Path | None) -> int:
    from ctl import daemon

    samples: dict[str, list[float]] = defaultdict(list)
    if profile is not None:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            return daemon.main([])
        finally:
            profiler.disable()
            profiler.dump_stats(profile)
    install_probes(samples)
    try:
        return daemon.main([])
    finally:
        out.write_text(json.dumps(samples))


# --- the driver -------------------------------------------------------------------------------


def drive(args: argparse.Namespace) -> dict:
    from bench import run as bench_run
    from bench.ngload import answer_port, caller_sdp

    out = bench_run.BUILD / "offer-phases.json"
    bench_run.BUILD.mkdir(parents=True, exist_ok=True)
    server, url = bench_run.start_server(interval=0)
    low, _, high = args.rtp_ports.partition("-")
    bench_run.RTPAI_PORTS = (int(low), int(high))
    argv_tail = ["--serve", str(out)]
    if args.profile:
        argv_tail += ["--profile", str(Path(args.profile).resolve())]
    # bench.run's daemon environment, with this file as the entry point, run in the tree
    # measured (``--rtpai-tree``: its ctl/ and media/, these probes).
    real_child = bench_run.Child
    bench_run.RTPAI_TREE = Path(args.rtpai_tree).resolve()

    def child(name, argv, **kwargs):
        return real_child(name, [sys.executable, str(Path(__file__).resolve()), *argv_tail],
                          **kwargs)

    bench_run.Child = child
    try:
        rtpai, ng = bench_run.start_rtpai(url, bench_run.BUILD / "rtpai-offer-phases.log")
    finally:
        bench_run.Child = real_child
    sdp = caller_sdp(9)
    rtts, pings = [], []
    try:
        for i in range(args.cycles):
            call = {"call-id": f"phases-{i}", "from-tag": "a"}
            started = time.perf_counter()
            answer_port(ng.command("offer", **call, sdp=sdp))
            rtts.append(1e6 * (time.perf_counter() - started))
            ng.command("delete", **call, **{"delete-delay": 0})
            if args.ping:  # a ping between the cycles: the round trip's floor
                started = time.perf_counter()
                ng.command("ping")
                pings.append(1e6 * (time.perf_counter() - started))
    finally:
        rtpai.stop()
        server.write("EXIT")
        server.stop("eof")
        ng.close()
    report = {"offer_rtt_p50_us": round(percentile(rtts, 0.5), 1),
              "offer_rtt_p99_us": round(percentile(rtts, 0.99), 1),
              "ping_rtt_p50_us": round(percentile(pings, 0.5), 1) if pings else None}
    if not args.profile:
        samples = json.loads(out.read_text())
        skip = args.cycles // 10  # warm-up
        for phase, values in samples.items():
            values = values[skip:] or values
            report[phase] = {"p50": round(percentile(values, 0.5), 1),
                             "p90": round(percentile(values, 0.9), 1)}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.offer_phases", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--rtp-ports", default="8000-11999", metavar="MIN-MAX",
                        help="rtpai's RTP port range (away from bench.run's, which may be busy)")
    parser.add_argument("--rtpai-tree", default=str(Path(__file__).resolve().parent.parent),
                        help="the checkout whose daemon is probed (default: this one)")
    parser.add_argument("--ping", action="store_true",
                        help="a ping after each cycle (bench.run's offers phase has none)")
    parser.add_argument("--profile", default=None, help="cProfile the daemon into this file")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.serve:
        sys.path.insert(0, os.getcwd())  # the measured tree's packages, not this file's dir
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return serve(Path(args.serve), Path(args.profile) if args.profile else None)
    print(json.dumps(drive(args), indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())

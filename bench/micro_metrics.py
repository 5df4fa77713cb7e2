"""``python -m bench.micro_metrics``: the CPU one /metrics scrape costs rtpai, by call count.

An in-process engine with N calls (offers through its dispatch table; their AI sessions keep
failing to connect to a closed port, which changes nothing a scrape reads), then the scrape's
render (``EngineMetrics.exposition``: the collector's sums over the calls, the process
figures from /proc, the text format) timed in CPU seconds, ``--scrapes`` times. What the
machine's other load does to wall time does not enter a CPU-time figure, which is why this
is the figure docs/performance.md compares with rtpai's CPU at N calls (``bench.run``): a
scrape per second costs ``ms per scrape / 10`` percent of a core.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import trio

from bench.ngload import caller_sdp
from ctl.config import load_config
from ctl.engine import Engine
from ctl.ng import NgRequest


async def measure(calls: int, scrapes: int) -> dict[str, float]:
    engine = Engine(load_config(None, environ={
        "NG_LISTEN": "127.0.0.1:0", "OPENAI_URL": "ws://127.0.0.1:9/v1/realtime",
        "OPENAI_API_KEY": "bench-key", "RTP_MIN_PORT": "44000",
        "RTP_MAX_PORT": str(44000 + 2 * calls + 16),
    }))
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        route = engine.dispatcher.handlers["offer"]
        for i in range(calls):
            request = NgRequest("offer", {"call-id": f"m{i}", "from-tag": "ft",
                                          "sdp": caller_sdp(9000 + 2 * i)})
            route.handle(route.parse(request)).then()
        await trio.sleep(0.2)  # the calls' tasks under way
        size = len(engine.metrics.exposition())
        cpu = []
        for _ in range(scrapes):
            started = time.process_time()
            engine.metrics.exposition()
            cpu.append(time.process_time() - started)
        nursery.cancel_scope.cancel()
    return {"calls": calls, "bytes": size, "cpu_ms_median": round(1000 * statistics.median(cpu), 3),
            "cpu_ms_min": round(1000 * min(cpu), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", default="0,200,1000")
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the failing AI sessions' warnings
    for calls in (int(n) for n in args.calls.split(",")):
        result = trio.run(measure, calls, args.scrapes)
        print(f"{calls:5d} calls: {result['cpu_ms_median']:.3f} ms CPU per scrape "
              f"(min {result['cpu_ms_min']:.3f}), {result['bytes']} bytes; at 1 Hz "
              f"{result['cpu_ms_median'] / 10:.3f} % of a core")


if __name__ == "__main__":
    main()

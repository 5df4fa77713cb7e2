"""``python -m bench.offer_ab``: two rtpai variants' offer -> reply, back to back (A, B, A, B).

Each run is ``bench.run``'s offers phase (``compare_offers``: 1000 sequential offers, then
1000 offer/delete cycles 16 in flight, against rtpai and then Debian's rtpengine), so every run
has rtpengine's figure from the same minute. A variant is a checkout (``--a-tree``) and/or
environment settings (``--a-env RTP_PORT_POOL=0``). On a shared machine single runs mean
little: the medians and the median of the per-pair B/A ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from bench import run as bench_run

FIGURES = (
    ("rtpai", "sequential_p50_us"),
    ("rtpai", "sequential_p99_us"),
    ("rtpai", "pipelined_cycles_per_s"),
    ("rtpai", "cpu_s"),
    ("rtpengine", "sequential_p50_us"),
    ("rtpengine", "sequential_p99_us"),
)


def variant(tree: Path | None, env: list[str]) -> dict:
    return {"tree": (tree or bench_run.ROOT).resolve(),
            "env": dict(item.split("=", 1) for item in env)}


def one_run(which: dict, offers: int) -> dict:
    saved = {key: os.environ.get(key) for key in which["env"]}
    os.environ.update(which["env"])
    bench_run.RTPAI_TREE = which["tree"]
    try:
        result = bench_run.compare_offers(argparse.Namespace(offers=offers))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    row = {f"{engine} {name}": result[engine][name] for engine, name in FIGURES}
    row["p50 rtpai/rtpengine"] = result["ratio_p50_rtpai_over_rtpengine"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.offer_ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a-tree", type=Path, default=None)
    parser.add_argument("--b-tree", type=Path, default=None)
    parser.add_argument("--a-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--b-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--reps", type=int, default=6, help="runs per variant")
    parser.add_argument("--offers", type=int, default=1000)
    parser.add_argument("--rtp-ports", default="8000-11999", metavar="MIN-MAX")
    args = parser.parse_args(argv)
    low, _, high = args.rtp_ports.partition("-")
    bench_run.RTPAI_PORTS = (int(low), int(high))
    bench_run.BUILD.mkdir(parents=True, exist_ok=True)
    variants = {"A": variant(args.a_tree, args.a_env), "B": variant(args.b_tree, args.b_env)}
    rows: dict[str, list[dict]] = {"A": [], "B": []}
    for rep in range(args.reps):
        for name in ("A", "B") if rep % 2 == 0 else ("B", "A"):
            row = one_run(variants[name], args.offers)
            rows[name].append(row)
            print(name, json.dumps(row), flush=True)
    print("\nmedians (A | B | median of per-pair B/A)")
    for key in rows["A"][0]:
        a = [r[key] for r in rows["A"]]
        b = [r[key] for r in rows["B"]]
        ratios = [y / x for x, y in zip(a, b, strict=True) if x]
        print(f"  {key:34} {statistics.median(a):9.1f} | {statistics.median(b):9.1f} | "
              f"{statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

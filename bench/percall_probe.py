"""Run ``ctl.daemon`` of the tree in the current directory with a probe inside its trio run.

Started by ``bench/micro_percall.py`` as a script (``python /path/to/percall_probe.py``) with the
measured tree as its working directory, so that it works on any revision (a38b145 included):
it only assumes that the daemon calls ``trio.run(async_fn, *args)``. The probe task answers
one-line commands on a UDP port (``PERCALL_PROBE``), each with one line of JSON:

* ``mark``: collect, then remember the heap (tracemalloc, when ``PERCALL_TRACE`` is set), the
  gc-tracked objects by type and the live trio tasks;
* ``diff N``: the same now, minus the mark, divided by N calls;
* ``steps start`` / ``steps stop``: count trio task steps (wake-ups) by task name, the run
  loop's I/O waits, and Python function calls (cProfile's counts, not its times) between
  the two, with the process CPU used.
"""

from __future__ import annotations

import collections
import cProfile
import gc
import json
import os
import pstats
import runpy
import sys
import time
import tracemalloc

# The tree under test, not this script's directory, is what ``import ctl`` must find.
sys.path[0] = os.getcwd()

TRACE = bool(os.environ.get("PERCALL_TRACE"))
if TRACE:
    tracemalloc.start(1)

import trio  # noqa: E402  (after tracemalloc: its own imports are not the calls')


def tasks() -> list[trio.lowlevel.Task]:
    found = []
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        found.append(task)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return found


def objects() -> tuple[collections.Counter, collections.Counter]:
    """gc-tracked objects by type name: (count, bytes by sys.getsizeof, instance dicts
    counted as such)."""
    counts: collections.Counter = collections.Counter()
    sizes: collections.Counter = collections.Counter()
    for obj in gc.get_objects():
        name = type(obj).__qualname__
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj)
    return counts, sizes


class Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps: collections.Counter = collections.Counter()
        self.io_waits = 0
        # The cycle collector's share: collections per generation and CPU in them.
        self.collections = [0, 0, 0]
        self.gc_cpu = 0.0
        self._gc_started = 0.0
        gc.callbacks.append(self.collecting)

    def collecting(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.process_time()
        else:
            self.collections[info["generation"]] += 1
            self.gc_cpu += time.process_time() - self._gc_started

    def stop(self) -> None:
        gc.callbacks.remove(self.collecting)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] += 1

    def before_io_wait(self, timeout: float) -> None:
        self.io_waits += 1


class Probe:
    def __init__(self) -> None:
        self.marked: dict | None = None
        self.steps: Steps | None = None
        self.profile: cProfile.Profile | None = None
        self.cpu0 = 0.0
        self.t0 = 0.0

    def state(self, name: str) -> dict:
        gc.collect()
        counts, sizes = objects()
        if os.environ.get("PERCALL_TRIM"):
            # Free memory glibc keeps in its heaps (fragmentation) back to the kernel first:
            # what is left is what is in use.
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/statm") as statm:
            resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        state = {"counts": counts, "sizes": sizes, "rss": resident,
                 "tasks": collections.Counter(task.name for task in tasks())}
        if TRACE:
            # To a file, not kept: a snapshot's traces are objects too, that the next count
            # would see as the calls'.
            path = f"/tmp/percall-{os.getpid()}-{name}.heap"
            state["heap_total"], state["heap_peak"] = tracemalloc.get_traced_memory()
            tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, __file__),
                 tracemalloc.Filter(False, tracemalloc.__file__)]).dump(path)
            state["heap"] = path
        return state

    def command(self, line: str) -> dict:
        words = line.split()
        if words[0] == "mark":
            self.marked = self.state("mark")
            if TRACE:
                tracemalloc.reset_peak()
            return {"ok": True}
        if words[0] == "diff":
            calls = int(words[1])
            now, then = self.state("now"), self.marked
            assert then is not None
            out: dict = {}
            # RSS grown (tracemalloc's own bookkeeping included when tracing: compare
            # trees, not this with the heap).
            out["rss_kib_per_call"] = (now["rss"] - then["rss"]) / 1024 / calls
            out["objects_per_call"] = sum((now["counts"] - then["counts"]).values()) / calls
            out["object_types"] = {
                name: [round((now["counts"][name] - then["counts"][name]) / calls, 2),
                       round((now["sizes"][name] - then["sizes"][name]) / calls)]
                for name in set(now["counts"]) | set(then["counts"])
                if abs(now["counts"][name] - then["counts"][name]) >= calls / 2}
            out["tasks_per_call"] = (sum(now["tasks"].values())
                                     - sum(then["tasks"].values())) / calls
            out["task_names"] = {name: round((now["tasks"][name] - then["tasks"][name]) / calls, 2)
                                 for name in set(now["tasks"]) | set(then["tasks"])
                                 if now["tasks"][name] != then["tasks"][name]}
            if TRACE:
                # The highest the heap went since the mark (before this state's snapshot): what
                # the offers and AI session set-ups held at once, freed since, but left to the
                # allocator's arenas (RSS) as a high-water mark.
                out["heap_peak_kib_per_call"] = (
                    now["heap_peak"] - then["heap_total"]) / 1024 / calls
                out["heap_kib_per_call"] = (now["heap_total"] - then["heap_total"]) / 1024 / calls
                heap_now = tracemalloc.Snapshot.load(now["heap"])
                heap_then = tracemalloc.Snapshot.load(then["heap"])
                for path in (now["heap"], then["heap"]):
                    os.unlink(path)
                for key in ("lineno", "filename"):
                    stats = heap_now.compare_to(heap_then, key)
                    out[f"by_{key}"] = [
                        [str(stat.traceback[0]), round(stat.size_diff / calls),
                         round(stat.count_diff / calls, 2)]
                        for stat in stats if abs(stat.size_diff) >= 16 * calls]
            return out
        if words[0] == "steps" and words[1] == "start":
            self.steps = Steps()
            trio.lowlevel.add_instrument(self.steps)
            self.profile = cProfile.Profile() if "profile" in words else None
            self.cpu0, self.t0 = time.process_time(), time.monotonic()
            if self.profile is not None:
                self.profile.enable()
            return {"ok": True}
        if words[0] == "steps" and words[1] == "stop":
            if self.profile is not None:
                self.profile.disable()
            cpu, seconds = time.process_time() - self.cpu0, time.monotonic() - self.t0
            assert self.steps is not None
            trio.lowlevel.remove_instrument(self.steps)
            self.steps.stop()
            out = {"seconds": seconds, "cpu_s": cpu, "io_waits": self.steps.io_waits,
                   "gc_collections": self.steps.collections, "gc_cpu_s": self.steps.gc_cpu,
                   "steps": dict(self.steps.steps.most_common())}
            if self.profile is not None:
                if os.environ.get("PERCALL_PROFILE_OUT"):
                    self.profile.dump_stats(os.environ["PERCALL_PROFILE_OUT"])
                stats = pstats.Stats(self.profile).stats  # type: ignore[attr-defined]
                calls = {f"{path.split('/')[-2:]!s}:{line}:{name}": primitive
                         for (path, line, name), (primitive, *_rest) in stats.items()}
                out["calls"] = dict(sorted(calls.items(), key=lambda kv: -kv[1])[:400])
            return out
        if words[0] == "attrs":
            # Instance attributes per type of the tree's own classes (materialises their
            # dicts: ask last). Past 30, CPython 3.11 gives up the shared keys: a whole dict.
            most: dict = {}
            for obj in gc.get_objects():
                kind = type(obj)
                if kind.__module__.split(".")[0] not in ("ctl", "media", "openai_flavor"):
                    continue
                if isinstance(obj, type) or not hasattr(obj, "__dict__"):
                    continue
                name = f"{kind.__module__}.{kind.__qualname__}"
                most[name] = max(most.get(name, 0), len(obj.__dict__))
            return most
        if words[0] == "sample":
            import random
            found = [obj for obj in gc.get_objects() if type(obj).__qualname__ == words[1]]
            return {"count": len(found), "sample": [repr(obj)[:200] for obj in
                                                    random.sample(found, min(30, len(found)))]}
        return {"error": f"unknown command {line!r}"}

    async def serve(self, port: int) -> None:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", port))
        while True:
            data, source = await sock.recvfrom(100)
            reply = json.dumps(self.command(data.decode())).encode()
            # Large replies go in pieces, the last one marked.
            for start in range(0, len(reply), 60000):
                piece = reply[start:start + 60000]
                last = start + 60000 >= len(reply)
                await sock.sendto((b"E" if last else b"M") + piece, source)


_run = trio.run


def run_with_probe(async_fn, *args, **kwargs):
    probe = Probe()

    async def both():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe.serve, int(os.environ["PERCALL_PROBE"]))
            await async_fn(*args)
            nursery.cancel_scope.cancel()

    return _run(both, **kwargs)


trio.run = run_with_probe
sys.argv = ["ctl.daemon"]
runpy.run_module("ctl.daemon", run_name="__main__", alter_sys=True)

"""The cycle collector, watched and tuned for a long-lived media server.

A full collection stops the one thread that paces every call's audio for as long as it takes
to traverse every tracked object: with per-call reference cycles that was 115 ms at 480 calls
(issue 18). Calls now leave no cycles (tests/test_churn_memory.py), so collections find
(almost) nothing; what is left is their cost, which this module makes visible to operators
(``statistics`` -> ``rtpai`` -> ``gc``) and keeps small:

* ``gc.freeze()`` once started: the modules, configuration and engine objects built at start-up
  live as long as the process, and a full collection need not traverse them again.
* the thresholds: see :data:`THRESHOLDS`.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

# (gen0, gen1, gen2); CPython's default is (700, 10, 10). Measured on the benchmark machine
# (docs/performance.md, "Churn"): a live call holds ~250 tracked objects, and a collection
# traverses the live objects of the generations it collects, garbage or not: a full one ~70 ms
# of CPU at 480 calls (116 ms at 580), past the 40 ms a caller's jitter buffer hides, pausing
# every call at once; a young one ~0.5 ms for 5 000 objects, ~5 ms for 20 000, ~28 ms for
# 50 000. With the defaults, 480 calls with 40 set-ups a second saw 228 young, 20 middle and 2
# full collections in 30 s (the full ones 77 and 145 ms), and every one of them freed nothing:
# calls leave no cycles. A young collection runs when allocations exceed deallocations by gen0's
# threshold; calls freed by reference counting allocate about as much as they free, so with
# 50 000 the same churn ran 0 or 1 collection per 30 s window (7 runs at 200 and 480 calls),
# each at most a young one of ~50 000 objects. The collector stays on, so a cycle from a rare
# path is still collected, and ``statistics`` -> ``rtpai`` -> ``gc`` shows what it does.
THRESHOLDS = (50_000, 20, 10)


class GcMonitor:
    """Counts collections per generation and their pauses (a ``gc.callbacks`` hook)."""

    def __init__(self, clock=time.perf_counter, cpu_clock=time.thread_time) -> None:
        self._clock = clock
        # The thread's CPU time besides the wall clock: a pause much longer in wall time than
        # in CPU time was the process being descheduled (a busy machine), not the collector.
        self._cpu_clock = cpu_clock
        self._started: float | None = None
        self._cpu_started = 0.0
        self.collections = [0, 0, 0]
        self.collected = [0, 0, 0]  # objects freed by the collector (cycles: a leak's sign)
        self.pause_ms_total = [0.0, 0.0, 0.0]
        self.pause_ms_max = [0.0, 0.0, 0.0]
        self.cpu_ms_total = [0.0, 0.0, 0.0]
        self.cpu_ms_max = [0.0, 0.0, 0.0]
        self.last_full_ms = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
            self._cpu_started = self._cpu_clock()
            return
        if self._started is None:
            return
        pause = (self._clock() - self._started) * 1000
        cpu = (self._cpu_clock() - self._cpu_started) * 1000
        self._started = None
        generation = info["generation"]
        self.collections[generation] += 1
        self.collected[generation] += info["collected"]
        self.pause_ms_total[generation] += pause
        self.pause_ms_max[generation] = max(self.pause_ms_max[generation], pause)
        self.cpu_ms_total[generation] += cpu
        self.cpu_ms_max[generation] = max(self.cpu_ms_max[generation], cpu)
        if generation == 2:
            self.last_full_ms = pause

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def snapshot(self) -> dict[str, Any]:
        """The figures for ``statistics``: per generation, collections, objects they freed,
        and pause total/max (ms); plus the thresholds and objects frozen at start-up."""
        return {
            "thresholds": list(gc.get_threshold()),
            "frozen": gc.get_freeze_count(),
            "generations": [
                {
                    "collections": self.collections[g],
                    "collected": self.collected[g],
                    "pause ms total": round(self.pause_ms_total[g], 1),
                    "pause ms max": round(self.pause_ms_max[g], 2),
                    "cpu ms total": round(self.cpu_ms_total[g], 1),
                    "cpu ms max": round(self.cpu_ms_max[g], 2),
                }
                for g in range(3)
            ],
        }


# The daemon's (installed by ctl/daemon.py); None in tests and tools that embed the engine.
monitor: GcMonitor | None = None


def tune_for_server() -> GcMonitor:
    """Start-up: collect what start-up left, freeze the rest, set the thresholds, watch."""
    global monitor
    gc.collect()
    gc.freeze()
    # RTPAI_GC_THRESHOLDS=700,10,10 (CPython's defaults) is for measuring the choice (bench/run.py).
    override = os.environ.get("RTPAI_GC_THRESHOLDS")
    gc.set_threshold(*(int(v) for v in override.split(",")) if override else THRESHOLDS)
    monitor = GcMonitor()
    monitor.install()
    return monitor

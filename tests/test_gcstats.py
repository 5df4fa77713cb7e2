"""The cycle collector's figures for operators: collections, what they freed, their pauses."""

from __future__ import annotations

import gc
import itertools

from ctl.gcstats import GcMonitor


def test_monitor_counts_collections_freed_objects_and_pauses():
    ticks = itertools.count(0, 0.004)  # each reading 4 ms after the last: a 4 ms pause
    cpu_ticks = itertools.count(0, 0.001)  # and 1 ms of CPU: descheduled for the rest
    monitor = GcMonitor(clock=lambda: next(ticks), cpu_clock=lambda: next(cpu_ticks))
    monitor.install()
    try:
        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: only the collector frees it
        del a, b
        gc.collect()
    finally:
        monitor.uninstall()
    figures = monitor.snapshot()
    full = figures["generations"][2]
    assert full["collections"] == 1 and full["collected"] >= 2
    assert full["pause ms max"] == 4.0 and monitor.last_full_ms == 4.0
    assert full["cpu ms max"] == 1.0
    assert figures["thresholds"] == list(gc.get_threshold())
    assert monitor not in gc.callbacks


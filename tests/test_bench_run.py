"""bench/run.py's process accounting: rtpai's CPU includes every thread, and the one-core
pinning holds every thread, also one started after the process did (a media thread)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from bench import run

# A child whose second thread, started after the process, burns CPU until its own clock
# says 0.3 s, says so, and stays until stdin closes; the main thread only waits for it.
BUSY_THREAD = textwrap.dedent("""
    import sys, threading, time
    def burn():
        while time.thread_time() < 0.3:
            pass
        print(threading.get_native_id(), flush=True)
        sys.stdin.read()
    thread = threading.Thread(target=burn)
    thread.start()
    thread.join()
""")


@pytest.fixture
def busy_child():
    child = subprocess.Popen(run.pinned([sys.executable, "-c", BUSY_THREAD]),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        tid = int(child.stdout.readline())  # the thread has burned its 0.3 s (bounded loop)
        yield child, tid
    finally:
        child.stdin.close()
        child.wait(10)


def test_the_process_cpu_time_counts_its_other_threads(busy_child):
    child, tid = busy_child
    with open(f"/proc/{child.pid}/task/{tid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    thread_s = (int(fields[11]) + int(fields[12])) / run.CLK_TCK
    main_s = sum(run.cpu_times(child.pid)) - thread_s
    assert thread_s >= 0.25  # it ran on the second thread ...
    assert sum(run.cpu_times(child.pid)) >= thread_s  # ... and the process's figure has it
    assert run.cpu_seconds(child.pid) >= 0.25
    assert main_s < thread_s


def test_pinning_holds_every_thread_also_one_started_late(monkeypatch):
    monkeypatch.setattr(run, "RTPAI_CPUS", {min(os.sched_getaffinity(0))})
    child = subprocess.Popen(run.pinned([sys.executable, "-c", BUSY_THREAD]),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()  # the late thread exists and has run
        seen = run.thread_affinity(child.pid)
    finally:
        child.stdin.close()
        child.wait(10)
    assert seen == {"threads": 2, "cpus_allowed": run.cpu_list(run.RTPAI_CPUS)}


def test_without_pinning_the_command_is_unchanged(monkeypatch):
    monkeypatch.setattr(run, "RTPAI_CPUS", None)
    assert run.pinned(["rtpai"]) == ["rtpai"]
    monkeypatch.setattr(run, "RTPAI_CPUS", {0, 2})
    assert run.pinned(["rtpai"]) == ["taskset", "-c", "0,2", "rtpai"]


def test_cpu_lists_read_as_taskset_and_proc_write_them():
    assert run.parse_cpus("0") == {0}
    assert run.parse_cpus("0,2-4\n") == {0, 2, 3, 4}
    assert run.cpu_list({3, 0, 1}) == "0,1,3"


@pytest.mark.parametrize(("cpus", "spec", "workers", "rtpai", "load"), [
    ({0, 1}, "auto", 1, {0}, {1}),          # the "one core", the rest for the load
    ({0, 1, 2, 3}, "auto", 1, {0}, {1, 2, 3}),
    ({0, 1}, "auto", 2, None, None),        # workers: the machine's figure, not a core's
    ({0}, "auto", 1, None, None),           # nothing to hold apart
    ({0, 1}, "none", 1, None, None),
    ({0, 1}, "1", 1, {1}, {0}),
    ({0, 1}, "0-1", 1, {0, 1}, {0, 1}),     # everything asked for: shared, and said
])
def test_choose_pinning(monkeypatch, cpus, spec, workers, rtpai, load):
    monkeypatch.setattr(run.os, "sched_getaffinity", lambda pid: set(cpus))
    mine, rest, detail = run.choose_pinning(spec, workers)
    assert (mine, rest) == (rtpai, load)
    assert ("not pinned" in detail) == (rtpai is None)


def test_a_cpu_this_process_may_not_use_is_refused(monkeypatch):
    monkeypatch.setattr(run.os, "sched_getaffinity", lambda pid: {0, 1})
    with pytest.raises(SystemExit, match="--rtpai-cpus 5"):
        run.choose_pinning("5", 1)


def test_the_search_after_the_list_stays_within_its_budget(monkeypatch):
    """bench/run.py's loop around targets.next_search_n, on a machine that holds 860 calls."""
    from argparse import Namespace

    from tests.test_bench_targets import run as result

    ran = []

    def fake_run(n, args):
        ran.append(n)
        return result(n) if n <= 860 else result(n, lost_out=1)

    monkeypatch.setattr(run, "calls_or_failure", fake_run)
    listed = [result(n) if n <= 860 else result(n, lost_out=1) for n in (50, 200, 500, 1000)]
    found = run.search_top_out(Namespace(search_runs=2, search_cap=2000), listed)
    assert ran == [750, 875]  # bisecting 500..1000, then 750..1000
    assert found["closed"] is False  # 750..875 is wider than 5 % of 750: the budget ended it
    assert (found["largest_healthy_n"], found["first_unhealthy_above"]) == (750, 875)

    ran.clear()
    found = run.search_top_out(Namespace(search_runs=10, search_cap=2000), listed)
    assert ran == [750, 875, 800, 850]
    assert found["closed"] is True
    assert (found["largest_healthy_n"], found["first_unhealthy_above"]) == (850, 875)
    assert [r["calls"] for r in found["runs"]] == ran

    ran.clear()
    assert run.search_top_out(Namespace(search_runs=0, search_cap=2000), listed)["runs"] == []
    assert ran == []

"""bench/targets.py: what counts as a healthy run, the search for the largest healthy N, and
issue 14's table of verdicts, from reports built here (no benchmark is run)."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import targets

LIST = (50, 100, 200, 300, 500, 700, 1000)  # bench/run.py's default --calls


def run(calls: int, **changes) -> dict:
    """One N-calls result as bench/run.py records it, healthy unless changed."""
    result = {
        "calls": calls,
        "rtpai_cpu_ms_per_call_s": 1.5,
        "server_cpu_percent": 20.0, "loadgen_cpu_percent": 5.0,
        "rtpai_run_queue_wait_percent": 0.5, "rtpai_cpus_allowed": "0",
        "gap_err_us": {"n": 1000, "p50_us": 40, "p99_us": 900, "max_us": 3000},
        "lost_out": 0, "lost_in": 0,
        "caller_packets_sent": 5000, "caller_speech_frames_sent": 5000,
        "caller_frames_at_server": 5000,
        "loadgen": {"silent_calls": 0},
        "rtp_to_ws_us": {"n": 100, "p50_us": 300, "p99_us": 1800, "max_us": 2000},
        "rtp_to_ws_arrival_us": {"n": 100, "p50_us": 200, "p99_us": 800, "max_us": 1900},
        "delta_to_first_rtp_us": {"n": 100, "p50_us": 10000, "p99_us": 19800},
        "delta_to_first_rtp_excess_us": {"n": 100, "p50_us": 10, "p99_us": 700},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = {**result[key], **value}
        else:
            result[key] = value
    return result


# --- healthy -----------------------------------------------------------------------------------


def test_a_run_within_every_bar_is_healthy():
    assert targets.health_failures(run(500)) == []
    assert targets.healthy(run(500))


@pytest.mark.parametrize(("changes", "reason"), [
    ({"gap_err_us": {"p99_us": 5000}}, "p99 gap error 5 ms"),
    ({"gap_err_us": {"p99_us": None}}, "no return audio measured"),
    ({"lost_out": 3}, "loss out/in 3/0"),
    ({"lost_in": 1}, "loss out/in 0/1"),
    ({"loadgen": {"silent_calls": 2}}, "2 calls got no audio"),
    ({"caller_frames_at_server": 4999}, "1 caller frames not at the AI"),
    ({"error": "TimeoutError('AI sessions did not all open')"}, "run failed"),
    ({"rtp_to_ws_arrival_us": {"p99_us": 20000}}, "RTP->WS p99 20 ms"),
    ({"delta_to_first_rtp_excess_us": {"p99_us": 25000}}, "delta->RTP p99 25 ms"),
])
def test_each_bar_broken_alone_makes_the_run_unhealthy_and_says_why(changes, reason):
    failures = targets.health_failures(run(500, **changes))
    assert len(failures) == 1
    assert failures[0].startswith(reason)


def test_without_the_arrival_stamp_the_servers_read_judges_the_latency():
    old = run(500, rtp_to_ws_us={"p99_us": 30000})
    del old["rtp_to_ws_arrival_us"]
    assert targets.health_failures(old) == ["RTP->WS p99 30 ms (the AI hears the caller late)"]


def test_only_speech_frames_are_owed_to_the_ai_server():
    # With --continuous the callers also send silence, which carries no marker.
    assert targets.healthy(run(200, caller_packets_sent=15000))
    # A report from before the speech count: every packet was speech (DTX).
    old = run(200)
    del old["caller_speech_frames_sent"]
    assert not targets.healthy({**old, "caller_packets_sent": 5001})


# --- the search --------------------------------------------------------------------------------


def test_every_listed_n_healthy_grows_past_the_list_up_to_the_cap():
    outcomes = dict.fromkeys(LIST, True)
    assert targets.next_search_n(outcomes, cap=2000) == 1500
    assert targets.next_search_n({**outcomes, 1500: True}, cap=2000) == 2000
    assert targets.next_search_n({**outcomes, 1500: True, 2000: True}, cap=2000) is None
    assert targets.next_search_n(outcomes, cap=1000) is None


def test_bisects_between_the_last_healthy_and_the_first_unhealthy_n():
    outcomes = {50: True, 100: True, 200: True, 300: True, 500: True, 700: True, 1000: False}
    assert targets.next_search_n(outcomes, cap=2000) == 850
    assert targets.next_search_n({**outcomes, 850: True}, cap=2000) in (925, 900, 950)
    assert targets.next_search_n({**outcomes, 850: False}, cap=2000) in (775, 750, 800)


def test_stops_when_the_bracket_is_within_the_resolution():
    # 5 % of 850 is 42 calls: 850..875 is closed, 850..900 is not.
    assert targets.next_search_n({850: True, 875: False}, cap=2000) is None
    assert targets.next_search_n({850: True, 900: False}, cap=2000) == 875
    assert targets.next_search_n({100: True, 125: False}, cap=2000) is None


def test_nothing_healthy_searches_down_from_the_smallest_n():
    assert targets.next_search_n({50: False, 100: False}, cap=2000) == 25
    assert targets.next_search_n({25: False, 50: False}, cap=2000) is None


def test_an_unhealthy_run_below_a_healthy_one_does_not_hide_the_top_out():
    outcomes = {300: False, 500: True, 700: False}
    assert targets.bracket(outcomes) == (500, 700)
    assert targets.next_search_n(outcomes, cap=2000) == 600
    assert targets.inconsistent(outcomes) == [300]


@given(top=st.integers(min_value=1, max_value=2500))
def test_the_search_finds_any_top_out_within_its_resolution(top):
    """A machine that holds exactly ``top`` calls: the list, then the search unbounded."""
    outcomes = {n: n <= top for n in LIST}
    for _ in range(40):
        n = targets.next_search_n(outcomes, cap=2000)
        if n is None:
            break
        assert n not in outcomes
        outcomes[n] = n <= top
    else:
        pytest.fail("the search did not end")
    low, high = targets.bracket(outcomes)
    if top >= 2000:
        assert (low, high) == (2000, None)
        return
    assert (low or 0) <= top < high
    assert high - (low or 0) <= targets.resolution(low or 0)
    assert len(outcomes) - len(LIST) <= 6  # a handful of runs, not a sweep


# --- the table ---------------------------------------------------------------------------------


def report(**changes) -> dict:
    """A whole report: the list, a search that closed at 1050, a baseline, offers."""
    base = {
        "date": "2026-12-06T17:00:00+00:00", "command": "python -m bench.run",
        "pinning": {"rtpai_cpus": "0", "load_cpus": "1", "short": "on one core (CPU 0)",
                    "detail": "rtpai on CPU 0"},
        "calls": [run(n) for n in LIST],
        "search": {"runs": [run(1500, gap_err_us={"p99_us": 40000}), run(1250, lost_out=4),
                            run(1100, gap_err_us={"p99_us": 6000}), run(1050)],
                   "closed": True},
        "baseline": {"ref": "a38b145", "calls": 200, "ratio": 0.40,
                     "cpu_ms_per_call_s": {"baseline": 2.0, "this": 0.8},
                     "runs": {"baseline": [run(200)] * 2, "this": [run(200)] * 2}},
        "offers": {"rtpai": {"sequential_p50_us": 180.0},
                   "rtpengine": {"sequential_p50_us": 200.0}},
    }
    base.update(changes)
    return base


def verdicts(rep: dict) -> list[str]:
    return [row["verdict"] for row in targets.rows(rep)]


def test_every_target_met():
    rows = targets.rows(report())
    assert [r["verdict"] for r in rows] == ["met"] * 5
    assert rows[1]["figure"].startswith("1050; not 1100 (p99 gap error 6 ms)")
    assert "on one core (CPU 0)" in rows[1]["target"]
    assert rows[0]["figure"].startswith("0.800 vs 2.000 CPU-ms (a38b145) = 0.40x")


def test_each_target_missed_alone_is_the_only_not_met():
    rep = report()
    rep["baseline"]["ratio"] = 0.42
    assert verdicts(rep) == ["NOT met", "met", "met", "met", "met"]

    rep = report()
    rep["search"]["runs"][-1] = run(1050, lost_in=1)
    rep["calls"][-1] = run(1000, gap_err_us={"p99_us": 5001})
    assert verdicts(rep) == ["met", "NOT met", "met", "met", "met"]
    assert targets.rows(rep)[1]["figure"].startswith("700; not 1000")

    rep = report(calls=[*report()["calls"][:4], run(500, rtp_to_ws_arrival_us={"p99_us": 1000}),
                        *report()["calls"][5:]])
    assert verdicts(rep) == ["met", "met", "NOT met", "met", "met"]

    rep = report(calls=[*report()["calls"][:4],
                        run(500, delta_to_first_rtp_excess_us={"p99_us": 1200}),
                        *report()["calls"][5:]])
    assert verdicts(rep) == ["met", "met", "met", "NOT met", "met"]

    rep = report(offers={"rtpai": {"sequential_p50_us": 201.0},
                         "rtpengine": {"sequential_p50_us": 200.0}})
    assert verdicts(rep) == ["met", "met", "met", "met", "NOT met"]


def test_the_latencies_are_read_at_500_calls_not_elsewhere():
    slow_elsewhere = [run(n, rtp_to_ws_arrival_us={"p99_us": 50000},
                          delta_to_first_rtp_excess_us={"p99_us": 50000})
                      for n in LIST if n != 500]
    rep = report(calls=[*slow_elsewhere, run(500)])
    assert verdicts(rep)[2:4] == ["met", "met"]


def test_rtp_to_ws_is_judged_at_the_arrival_not_the_fake_servers_read():
    row = targets.rows(report())[2]
    assert row["verdict"] == "met"  # arrival 0.8 ms, read 1.8 ms
    assert row["figure"] == "0.8 ms to the AI server (p50 0.2 ms; to its read 1.8 ms)"
    # A report from before the arrival stamp: the read is all there is.
    older = report(calls=[run(n, rtp_to_ws_arrival_us=None) for n in LIST])
    row = targets.rows(older)[2]
    assert row["verdict"] == "NOT met"
    assert row["figure"].startswith("1.8 ms to the AI server's read")


def test_a_quick_report_says_which_n_its_latencies_are_from_and_what_it_lacks():
    rep = report(calls=[run(50), run(200)], search={"runs": [run(300, lost_out=1)],
                                                     "closed": True})
    del rep["baseline"]
    rows = targets.rows(rep)
    assert rows[0]["verdict"] == "not measured"
    assert "no --baseline" in rows[0]["figure"]
    assert rows[2]["verdict"] == "met (at 300 calls, not 500)"
    assert rows[1]["verdict"] == "NOT met"
    assert rows[1]["figure"].startswith("200; not 300 (loss out/in 1/0)")


def test_a_failed_run_is_reported_not_fatal():
    rep = report(calls=[run(50), {"calls": 500, "error": "TimeoutError()"}],
                 search={"runs": [], "closed": True}, offers={"error": "OSError()"})
    rows = targets.rows(rep)
    assert rows[1]["figure"].startswith("50; not 500 (run failed: TimeoutError())")
    assert rows[2]["verdict"] == "not measured"
    assert rows[4] == {"target": "offer → reply p50 vs rtpengine", "figure": "OSError()",
                       "bar": "≤ 1x", "verdict": "not measured"}


def test_the_highest_n_tried_healthy_meets_the_bar_as_a_lower_bound():
    rep = report(search={"runs": [run(1500), run(2000)], "closed": True})
    row = targets.rows(rep)[1]
    assert row["figure"].startswith("2000; the largest tried")
    assert row["verdict"] == "met (a lower bound)"


def test_a_starved_baseline_run_is_flagged():
    rep = report()
    rep["baseline"]["runs"]["baseline"] = [run(200, gap_err_us={"p99_us": 90000}), run(200)]
    assert targets.rows(rep)[0]["verdict"] == "met (some runs unhealthy: starved?)"


def test_the_table_is_printed_again_from_the_saved_json(tmp_path, capsys):
    rep = report()
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps(rep))
    assert targets.main([str(saved)]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == targets.render(copy.deepcopy(rep)).strip()
    assert printed.startswith("Issue 14 targets")
    assert "5 of 5 met." in printed
    for row in targets.rows(rep):
        assert row["figure"] in printed


def test_a_thread_that_left_the_pinned_core_voids_the_one_core_figure():
    rep = report()
    assert targets.rows(rep)[1]["verdict"] == "met"
    rep["search"]["runs"][-1] = run(1050, rtpai_cpus_allowed="0,1")
    row = targets.rows(rep)[1]
    assert row["verdict"] == "not measured (not held to one core)"
    assert "allowed CPUs 0,1, not 0" in row["figure"]


def test_contention_on_rtpai_core_is_shown_beside_the_figures():
    rep = report()
    rep["baseline"]["runs"]["this"] = [run(200, rtpai_run_queue_wait_percent=12.0)]
    rep["search"]["runs"][2] = run(1100, lost_out=2, rtpai_run_queue_wait_percent=30.0)
    rows = targets.rows(rep)
    assert "rtpai waited for its core up to 12 % of a run" in rows[0]["figure"]
    assert "rtpai waited for its core 30 % of the time at 1100" in rows[1]["figure"]

"""`make demo` stays true: the demo runs a whole call through the real daemon and says so."""

import sys

import trio


async def test_demo_runs_a_whole_call_and_prints_its_timeline():
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-m", "tests.demo"], capture_stdout=True, capture_stderr=True
        )
    out = result.stdout.decode()
    for line in ("offer -> answer: PCMU", "greeting fully played", "answer fully played",
                 "first_caller_rtp", "first_rtp_to_caller", "end reason       deleted by the proxy",
                 "caller audio at the Realtime server"):
        assert line in out, out

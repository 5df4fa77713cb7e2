"""Call detail records (ctl/cdr.py): the JSON-lines file, the POST with retries, a slow and a
failing receiver, and the drain at shutdown."""

from __future__ import annotations

import json
import logging

import pytest
import trio

from ctl import cdr
from ctl.cdr import CallRecords
from tests.fakes.webhook import FakeWebhook


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr(cdr, "BACKOFF_FIRST", 0.01)


def sink(**overrides) -> CallRecords:
    options = dict(path=None, url=None, timeout=2.0, retries=2, queue=100, drain_timeout=2.0)
    options.update(overrides)
    return CallRecords(**options)


def record(n: int) -> dict:
    return {"call-id": f"call-{n}", "from-tag": "f", "transcript": [{"text": "héllo\nworld"}]}


async def test_records_are_appended_as_json_lines_one_per_call(tmp_path):
    path = tmp_path / "cdr.jsonl"
    path.write_text('{"earlier": true}\n')  # an existing file is appended to, never truncated
    records = sink(path=str(path))
    async with trio.open_nursery() as nursery:
        await nursery.start(records.run)
        for n in range(20):
            records.submit(record(n))
        while records.statistics()["file"]["written"] < 20:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"earlier": True}] + [
        record(n) for n in range(20)]
    assert records.statistics() == {"file": {"written": 20, "dropped": 0, "failed": 0}}


async def test_records_are_posted_and_a_failing_receiver_is_retried_then_given_up(caplog):
    answers = iter([(503, b""), (200, b"")] + [(500, b"")] * 10)
    hook = FakeWebhook(answer=lambda payload: next(answers))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(hook.serve)
        records = sink(url=url, retries=2)
        await nursery.start(records.run)
        with caplog.at_level(logging.INFO, logger="rtpai.cdr"):
            records.submit(record(1))  # 503, then 200
            records.submit(record(2))  # 500 three times: given up
            while sum(records.statistics()["url"].values()) < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert [r["json"]["call-id"] for r in hook.requests] == ["call-1"] * 2 + ["call-2"] * 3
    assert records.statistics()["url"] == {"written": 1, "dropped": 0, "failed": 1}
    assert [r.getMessage() for r in caplog.records] == [
        "call records: POST to [cdr] url failed after 3 attempt(s): HTTP 500 (counted; logged "
        "again when it works)"]
    assert "token" not in caplog.text  # the URL's secret is never logged


async def test_a_refusal_is_not_retried():
    hook = FakeWebhook(answer=lambda payload: (400, b"bad"))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(hook.serve)
        records = sink(url=url, retries=5)
        await nursery.start(records.run)
        records.submit(record(1))
        while not records.statistics()["url"]["failed"]:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert len(hook.requests) == 1


async def test_a_slow_receiver_costs_records_never_waits_and_never_grows(caplog):
    hook = FakeWebhook(hang=True)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(hook.serve)
        records = sink(url=url, timeout=0.2, retries=0, queue=3, drain_timeout=0.3)
        async with trio.open_nursery() as inner:
            await inner.start(records.run)
            records.submit(record(0))  # taken at once, and it hangs
            while not records.destinations["url"].in_flight:
                await trio.sleep(0)
            with trio.fail_after(0.05):  # submit never waits, whatever the receiver does
                for n in range(1, 10):
                    records.submit(record(n))
            inner.cancel_scope.cancel()
        # Shutdown: the one in flight and the three queued get 0.3 s, then are counted.
        with caplog.at_level(logging.WARNING, logger="rtpai.cdr"):
            await records.drain()
        nursery.cancel_scope.cancel()
    counts = records.statistics()["url"]
    assert counts["written"] == 0
    assert counts["dropped"] + counts["failed"] == 10
    assert counts["dropped"] >= 6  # 6 at submit (queue of 3 full), the rest at shutdown
    assert "not delivered to the url at shutdown" in caplog.text


async def test_what_is_queued_at_shutdown_is_written_within_the_bound(tmp_path):
    path = tmp_path / "cdr.jsonl"
    records = sink(path=str(path))
    for n in range(5):  # submitted as the engine's calls end, after its tasks stopped
        records.submit(record(n))
    await records.drain()
    assert len(path.read_text().splitlines()) == 5
    assert records.statistics()["file"]["written"] == 5


async def test_a_file_that_cannot_be_written_is_counted_and_logged_once(tmp_path, caplog):
    records = sink(path=str(tmp_path / "missing-dir" / "cdr.jsonl"))
    with caplog.at_level(logging.WARNING, logger="rtpai.cdr"):
        for n in range(3):
            records.submit(record(n))
            await records.drain()
    assert records.statistics()["file"] == {"written": 0, "dropped": 0, "failed": 3}
    assert len(caplog.records) == 1 and "No such file or directory" in caplog.text

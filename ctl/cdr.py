"""Call detail records: one JSON record per ended call, appended to ``[cdr] file`` (JSON lines)
and/or POSTed to ``[cdr] url``, off the media path and off the call's end.

A call's end hands its record to :meth:`CallRecords.submit`, which never waits: the record is
encoded once and put on each destination's bounded queue; a full queue drops it and counts it
(``dropped``), so a slow receiver costs records, never memory or calls. Each destination has
one task in the engine nursery:

* the file: what is queued is appended by a worker thread (``trio.to_thread``), one ``write``
  per record on an ``O_APPEND`` descriptor: concurrent writers (a second rtpai on the same
  file) never interleave inside a line, and a reader never sees half a record unless the disk
  filled mid-write (then counted in ``failed``);
* the URL: one POST per record, each attempt bounded by ``[cdr] timeout``, retried
  ``[cdr] retries`` times with doubling back-off (0.5 s, 1 s, 2 s, ... at most 8 s) on a
  connection failure, a 5xx, 408 or 429; any other answer is final. Delivery is at least once:
  a record whose POST was cut by shutdown is sent again (a receiver dedupes on call-id,
  from-tag and end).

At shutdown (:meth:`drain`, after the engine's calls have ended and submitted theirs) what is
still queued gets ``[cdr] drain_timeout`` seconds; the rest is counted as dropped, and said in
one log line.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import trio

from media.http import HttpError, HttpRequest, http_request

log = logging.getLogger("rtpai.cdr")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 8.0
RETRYABLE_STATUS = frozenset({408, 429})


@dataclass
class CdrCounters:
    """Per destination ("file", "url"): records delivered, dropped (queue full, or left at
    shutdown) and failed (the disk refused; the URL never took it)."""

    written: int = 0
    dropped: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"written": self.written, "dropped": self.dropped, "failed": self.failed}


class _Destination:
    def __init__(self, name: str, queue: int) -> None:
        self.name = name
        self.counters = CdrCounters()
        self.send, self.receive = trio.open_memory_channel[bytes](queue)
        self.in_flight: list[bytes] = []  # taken off the queue, not yet delivered


class CallRecords:
    """The engine's CDR sinks; ``run`` in the engine nursery, ``drain`` after it."""

    def __init__(self, *, path: str | None, url: str | None, timeout: float, retries: int,
                 queue: int, drain_timeout: float) -> None:
        self.path = path
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.drain_timeout = drain_timeout
        self.destinations: dict[str, _Destination] = {}
        if path:
            self.destinations["file"] = _Destination("file", queue)
        if url:
            self.destinations["url"] = _Destination("url", queue)
        self._file_failing = False  # one log line when a destination fails, one when it works
        self._url_failing = False

    @classmethod
    def from_config(cls, cdr: dict[str, Any]) -> CallRecords:
        return cls(path=cdr["file"], url=cdr["url"], timeout=cdr["timeout"],
                   retries=cdr["retries"], queue=cdr["queue"],
                   drain_timeout=cdr["drain_timeout"])

    @property
    def enabled(self) -> bool:
        return bool(self.destinations)

    def statistics(self) -> dict[str, dict[str, int]]:
        return {name: d.counters.as_dict() for name, d in self.destinations.items()}

    def submit(self, record: dict[str, Any]) -> None:
        """Queue a call's record for every destination; never waits (full: dropped)."""
        if not self.destinations:
            return
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"),
                          default=str).encode() + b"\n"
        for destination in self.destinations.values():
            try:
                destination.send.send_nowait(line)
            except trio.WouldBlock:
                destination.counters.dropped += 1
                if destination.counters.dropped == 1 or destination.counters.dropped % 100 == 0:
                    log.warning("call records: the %s queue is full, %d dropped so far",
                                destination.name, destination.counters.dropped)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if "file" in self.destinations:
                nursery.start_soon(self._append_forever, self.destinations["file"])
            if "url" in self.destinations:
                nursery.start_soon(self._post_forever, self.destinations["url"])
            task_status.started()

    async def drain(self) -> None:
        """Deliver what is still queued within ``drain_timeout`` (shielded: it runs while the
        engine shuts down); count and log what is left."""
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.drain_timeout
            for destination in self.destinations.values():
                pending = destination.in_flight + _take_all(destination.receive)
                destination.in_flight = pending
                if not pending:
                    continue
                if destination.name == "file":
                    await self._append(destination)
                else:
                    while destination.in_flight and not scope.cancel_called:
                        await self._post(destination, destination.in_flight[0], retry=False)
                        destination.in_flight.pop(0)
        for destination in self.destinations.values():
            left = len(destination.in_flight) + len(_take_all(destination.receive))
            destination.in_flight = []
            if left:
                destination.counters.dropped += left
                log.warning("call records: %d not delivered to the %s at shutdown "
                            "([cdr] drain_timeout)", left, destination.name)

    # --- the file --------------------------------------------------------------------------------

    async def _append_forever(self, destination: _Destination) -> None:
        async for line in destination.receive:
            destination.in_flight = [line, *_take_all(destination.receive)]
            await self._append(destination)

    async def _append(self, destination: _Destination) -> None:
        lines = destination.in_flight
        written, error = await trio.to_thread.run_sync(_append_lines, self.path, lines)
        destination.in_flight = []
        destination.counters.written += written
        destination.counters.failed += len(lines) - written
        if error is not None and not self._file_failing:
            self._file_failing = True
            log.warning("call records: cannot write to [cdr] file: %s (counted; logged "
                        "again when it works)", error)
        elif error is None and self._file_failing:
            self._file_failing = False
            log.info("call records: [cdr] file written again")

    # --- the URL ---------------------------------------------------------------------------------

    async def _post_forever(self, destination: _Destination) -> None:
        async for line in destination.receive:
            destination.in_flight = [line]
            await self._post(destination, line, retry=True)
            destination.in_flight = []

    async def _post(self, destination: _Destination, line: bytes, *, retry: bool) -> None:
        assert self.url is not None
        request = HttpRequest("POST", self.url, body=line.rstrip(b"\n"))
        attempts = 1 + (self.retries if retry else 0)
        delay = BACKOFF_FIRST
        why = ""
        for attempt in range(attempts):
            if attempt:
                await trio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
            try:
                status, _ = await http_request(request, timeout=self.timeout)
            except trio.TooSlowError:
                why = f"no answer within {self.timeout:g} s"
                continue
            except HttpError as exc:
                why = str(exc)
                continue
            if 200 <= status < 300:
                destination.counters.written += 1
                if self._url_failing:
                    self._url_failing = False
                    log.info("call records: [cdr] url takes records again")
                return
            why = f"HTTP {status}"
            if status < 500 and status not in RETRYABLE_STATUS:
                break  # the receiver refuses this record; sending it again will not help
        destination.counters.failed += 1
        if not self._url_failing:
            self._url_failing = True
            # The URL may carry a token: never logged, only what went wrong.
            log.warning("call records: POST to [cdr] url failed after %d attempt(s): %s "
                        "(counted; logged again when it works)", attempt + 1, why)


def _take_all(receive: trio.MemoryReceiveChannel[bytes]) -> list[bytes]:
    taken = []
    while True:
        try:
            taken.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return taken


def _append_lines(path: str | None, lines: list[bytes]) -> tuple[int, str | None]:
    """Append each line with one ``write`` (worker thread); (lines written, error or None)."""
    assert path is not None
    written = 0
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        return 0, exc.strerror or str(exc)
    try:
        for line in lines:
            if os.write(fd, line) != len(line):
                return written, "short write (disk full?)"
            written += 1
    except OSError as exc:
        return written, exc.strerror or str(exc)
    finally:
        os.close(fd)
    return written, None

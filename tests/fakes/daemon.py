"""Run the real ``rtpai`` daemon as a child process, ready when it says so."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

READY_LINE = b"rtpai ready"


class DaemonLog(bytearray):
    """The daemon's stderr so far; ``wait_for`` blocks until a text appears in it (no polling:
    the reader wakes waiters on every chunk)."""

    def __init__(self) -> None:
        super().__init__()
        self._grew = trio.Event()

    def append_chunk(self, chunk: bytes) -> None:
        self.extend(chunk)
        self._grew.set()
        self._grew = trio.Event()

    async def wait_for(self, needle: bytes, *, start: int = 0, count: int = 1) -> int:
        """Wait until ``needle`` occurs ``count`` times after offset ``start``; returns the
        offset just past the last of them (to wait for the next line after it)."""
        while True:
            position = start
            for _ in range(count):
                found = self.find(needle, position)
                if found < 0:
                    break
                position = found + len(needle)
            else:
                return position
            await self._grew.wait()


@asynccontextmanager
async def running_daemon(
    env: Mapping[str, str], *args: str, ready_timeout: float = 15.0, **popen: Any
) -> AsyncIterator[tuple[trio.Process, DaemonLog]]:
    """Start ``python -m ctl.daemon`` and wait for its ready line on stderr (LOG_LEVEL info).

    Yields the process and its stderr so far (kept growing by a drain task so the pipe never
    fills). On exit: SIGTERM, then the exit code is awaited. ``popen``: more of
    ``subprocess.Popen``'s options (e.g. a ``preexec_fn`` that sets a resource limit).
    """
    env = {**env, "LOG_LEVEL": env.get("LOG_LEVEL", "info")}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "ctl.daemon", *args], env=env, stderr=subprocess.PIPE, **popen
    )
    log = DaemonLog()
    ready = trio.Event()

    async def drain() -> None:
        assert process.stderr is not None
        async for chunk in process.stderr:
            log.append_chunk(chunk)
            if READY_LINE in log:
                ready.set()
        ready.set()  # exited: let the waiter see it

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            with trio.fail_after(ready_timeout):
                await ready.wait()
            if READY_LINE not in log:
                raise RuntimeError(f"rtpai did not start:\n{log.decode(errors='replace')}")
            yield process, log
            process.terminate()
            await process.wait()
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

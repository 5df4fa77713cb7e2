"""A real Prometheus (Debian's ``prometheus`` package) for the metrics tests.

``start_prometheus(tmpdir, targets)`` runs one on 127.0.0.1 with a private port and storage
directory, scraping ``targets`` every second; ``Prometheus.query`` asks its HTTP API in PromQL
and ``Prometheus.wait_for`` polls it, bounded, until a result satisfies a condition (a scrape
lands on Prometheus's schedule, not ours: there is no event to wait on but its API).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

from tests.peers import LOOPBACK, _read_http_response, require_tool, supervised, unused_port

SCRAPE_INTERVAL = "1s"
# Between two polls of the query API while waiting for a scrape to show something.
POLL_INTERVAL = 0.25


async def http_get(port: int, path: str) -> bytes:
    """The body of a 200 answer to ``GET path`` on 127.0.0.1:port (else RuntimeError)."""
    stream = await trio.open_tcp_stream(LOOPBACK, port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
                              "Connection: close\r\n\r\n".encode())
        return await _read_http_response(stream)


@dataclass
class Prometheus:
    process: trio.Process
    port: int
    log_path: Path

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector: ``[{"metric": {...}, "value": [ts, "v"]}]``."""
        reply = json.loads(await http_get(self.port, f"/api/v1/query?query={quote(promql)}"))
        if reply.get("status") != "success":
            raise RuntimeError(f"{promql}: {reply}")
        return reply["data"]["result"]

    async def value(self, promql: str) -> float | None:
        """The single value of a query whose result is one sample, or None when empty."""
        result = await self.query(promql)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    async def wait_for(self, promql: str, accept: Callable[[float | None], bool],
                       timeout: float = 30.0) -> float | None:
        """Poll ``promql`` until ``accept(value)``; raises TimeoutError naming the last value."""
        last: float | None = None
        try:
            with trio.fail_after(timeout):
                while True:
                    last = await self.value(promql)
                    if accept(last):
                        return last
                    await trio.sleep(POLL_INTERVAL)
        except trio.TooSlowError:
            raise TimeoutError(f"{promql} was {last} after {timeout} s") from None


def config_text(targets: Sequence[str]) -> str:
    listed = ", ".join(f"'{target}'" for target in targets)
    return (
        "global:\n"
        f"  scrape_interval: {SCRAPE_INTERVAL}\n"
        f"  scrape_timeout: {SCRAPE_INTERVAL}\n"
        f"  evaluation_interval: {SCRAPE_INTERVAL}\n"
        "scrape_configs:\n"
        "  - job_name: rtpai\n"
        "    static_configs:\n"
        f"      - targets: [{listed}]\n"
    )


@asynccontextmanager
async def start_prometheus(
    tmpdir: str | os.PathLike[str], targets: Sequence[str], *, ready_timeout: float = 30.0
) -> AsyncIterator[Prometheus]:
    """Run Prometheus scraping ``targets`` (``host:port``) until the block ends."""
    binary = require_tool("prometheus")
    tmp = Path(tmpdir)
    config = tmp / "prometheus.yml"
    config.write_text(config_text(targets))
    storage = tmp / "prometheus-data"
    storage.mkdir(exist_ok=True)
    port = unused_port(socket.SOCK_STREAM)
    command = [
        binary, f"--config.file={config}", f"--storage.tsdb.path={storage}",
        f"--web.listen-address={LOOPBACK}:{port}", "--log.level=warn",
    ]

    async def ready() -> None:
        while True:
            try:
                await http_get(port, "/-/ready")
                return
            except (OSError, RuntimeError):
                await trio.sleep(POLL_INTERVAL)

    log_path = tmp / "prometheus.log"
    async with supervised("prometheus", command, log_path, ready, ready_timeout) as process:
        yield Prometheus(process, port, log_path)

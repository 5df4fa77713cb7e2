"""``[metrics] listen``: the ``/metrics`` endpoint, served by a task of the engine nursery.

Why in the trio loop rather than prometheus-client's own thread server (measured:
docs/performance.md, "Metrics"): the collector reads the engine's plain counters and its
registry of calls, which only the trio thread changes. From another thread a scrape would race
every offer and delete (a dict changing size while it is iterated) and would need locks on
the media path, or copies made in the trio thread anyway; and a second thread contends for the
GIL with the media clock in 5 ms slices. In the loop a scrape is one synchronous render
(~1 ms at 200 calls) between two clock wake-ups, and costs no thread.

A scraper is a peer: everything it can hold is bounded. At most :data:`MAX_CONNECTIONS` at once
(more are closed unanswered), one request per connection, :data:`MAX_REQUEST_BYTES` of request
head, and :data:`CONNECTION_DEADLINE` for the whole exchange, however slowly it reads or writes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import h11
import trio

log = logging.getLogger("rtpai.metrics")

# Prometheus scrapes with one connection per target; a few more allow a second Prometheus
# (HA pairs) and a person's curl. Past this, connections are closed at once.
MAX_CONNECTIONS = 4
# A scrape's request head is ~200 bytes; h11 refuses a head larger than this.
MAX_REQUEST_BYTES = 8192
# The whole exchange, request to last byte: Prometheus's default scrape timeout is 10 s.
CONNECTION_DEADLINE = 10.0
RECEIVE_CHUNK = 4096
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsServer:
    """The endpoint's connection handling, over any stream (tests use memory streams)."""

    def __init__(self, render: Callable[[], bytes]) -> None:
        self.render = render
        self.limiter = trio.CapacityLimiter(MAX_CONNECTIONS)
        self.refused = 0  # connections closed because MAX_CONNECTIONS were busy

    async def handle(self, stream: trio.abc.Stream) -> None:
        async with stream:
            try:
                self.limiter.acquire_nowait()
            except trio.WouldBlock:
                self.refused += 1
                return  # too many scrapers at once: this one gets its connection closed
            try:
                with trio.move_on_after(CONNECTION_DEADLINE):
                    await exchange(stream, self.render)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # the scraper went away; nothing of it is kept
            finally:
                self.limiter.release()


async def serve_metrics(
    address: tuple[str, int],
    render: Callable[[], bytes],
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` (``render()``'s bytes) on TCP ``address`` until cancelled;
    ``task_status.started`` gets the bound address."""
    listeners = await trio.open_tcp_listeners(address[1], host=address[0])
    bound = listeners[0].socket.getsockname()[:2]
    log.info("metrics: serving /metrics on http://%s:%s", *_shown(bound))
    server = MetricsServer(render)
    task_status.started(bound)
    await trio.serve_listeners(server.handle, listeners)


def _shown(address: tuple[str, int]) -> tuple[str, int]:
    host, port = address
    return (f"[{host}]" if ":" in host else host), port


async def exchange(stream: trio.abc.Stream, render: Callable[[], bytes]) -> None:
    """One request, one response, then close (the caller bounds the time)."""
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    request = None
    while request is None:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as exc:
            await _send_error(stream, exc.error_status_hint or 400)
            return
        if event is h11.NEED_DATA:
            data = await stream.receive_some(RECEIVE_CHUNK)
            connection.receive_data(data)
            if not data:
                return
        elif isinstance(event, h11.Request):
            request = event
        else:
            return
    target = request.target.split(b"?", 1)[0]
    if request.method not in (b"GET", b"HEAD"):
        status, body = 405, b"only GET /metrics\n"
    elif target != b"/metrics":
        status, body = 404, b"see /metrics\n"
    else:
        status, body = 200, render()
    headers = [("Content-Type", CONTENT_TYPE if status == 200 else "text/plain"),
               ("Content-Length", str(len(body))), ("Connection", "close")]
    data = connection.send(h11.Response(status_code=status, headers=headers))
    if request.method != b"HEAD":
        data += connection.send(h11.Data(data=body))
    data += connection.send(h11.EndOfMessage())
    await stream.send_all(data)


async def _send_error(stream: trio.abc.Stream, status: int) -> None:
    reason = b"Request Header Fields Too Large" if status == 431 else b"Bad Request"
    await stream.send_all(b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                          % (status, reason))

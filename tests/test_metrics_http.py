"""The /metrics endpoint's HTTP handling: answers, and the bounds a hostile scraper meets.

Over memory streams with trio's MockClock: a scraper that never finishes its request is cut
off at CONNECTION_DEADLINE, one with a huge head gets 431, and past MAX_CONNECTIONS at once
the next connection is closed unanswered. One test over a real TCP socket (serve_metrics).
"""

from __future__ import annotations

import trio
import trio.testing

from ctl.metrics_http import (
    CONNECTION_DEADLINE,
    CONTENT_TYPE,
    MAX_CONNECTIONS,
    MAX_REQUEST_BYTES,
    MetricsServer,
    serve_metrics,
)

BODY = b"# HELP rtpai_up test\nrtpai_up 1\n"


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def exchange(request: bytes) -> bytes:
    client, server_side = trio.testing.memory_stream_pair()
    server = MetricsServer(lambda: BODY)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, server_side)
        await client.send_all(request)
        return await read_all(client)


async def test_get_metrics_is_the_rendered_body():
    response = await exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert f"content-type: {CONTENT_TYPE}".encode() in head.lower()
    assert body == BODY


async def test_other_paths_and_methods_are_refused():
    assert (await exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
    assert (await exchange(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            ).startswith(b"HTTP/1.1 405 ")
    assert (await exchange(b"NOT HTTP\r\n\r\n")).startswith(b"HTTP/1.1 400 ")


async def test_an_oversized_request_head_is_refused():
    huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (MAX_REQUEST_BYTES * 2) + b"\r\n\r\n"
    assert (await exchange(huge)).startswith(b"HTTP/1.1 431 ")


async def test_a_scraper_that_never_finishes_is_cut_off_at_the_deadline(autojump_clock):
    client, server_side = trio.testing.memory_stream_pair()
    server = MetricsServer(lambda: BODY)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, server_side)
        await client.send_all(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
        started = trio.current_time()
        with trio.fail_after(2 * CONNECTION_DEADLINE):  # (virtual time: fails, never hangs)
            assert await read_all(client) == b""  # closed, unanswered
        assert trio.current_time() - started == CONNECTION_DEADLINE


async def test_connections_past_the_limit_are_closed_at_once(autojump_clock):
    server = MetricsServer(lambda: BODY)
    async with trio.open_nursery() as nursery:
        idle = []
        for _ in range(MAX_CONNECTIONS):  # slow scrapers holding every slot
            client, server_side = trio.testing.memory_stream_pair()
            idle.append(client)
            nursery.start_soon(server.handle, server_side)
        await trio.testing.wait_all_tasks_blocked()
        client, server_side = trio.testing.memory_stream_pair()
        nursery.start_soon(server.handle, server_side)
        started = trio.current_time()
        assert await read_all(client) == b""
        assert trio.current_time() == started  # not after a deadline: at once
        assert server.refused == 1
        nursery.cancel_scope.cancel()


async def test_served_over_tcp():
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_metrics, ("127.0.0.1", 0), lambda: BODY)
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            with trio.fail_after(10):
                response = await read_all(stream)
        assert response.endswith(BODY)
        nursery.cancel_scope.cancel()

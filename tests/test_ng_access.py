"""Who may talk to the ng socket ([ng] allow), and from which address it answers (IP_PKTINFO).

Linux routes all of 127.0.0.0/8 to the loopback interface, so 127.0.0.2 is a second local
address to send to (or from) without any set-up.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
import trio

from ctl.acl import ACL_MEMO_SIZE, SourceFilter, parse_networks
from ctl.config import ConfigError, load_config
from ctl.dispatcher import Dispatcher, Ignored
from ctl.ng import decode_reply, encode_request
from ctl.ng_server import serve_ng


class Client:
    """A proxy's ng socket as Kamailio and OpenSIPS have it: UDP, *connected* to the engine,
    so the kernel hands it only datagrams from exactly the address it sends to."""

    def __init__(self, engine: tuple[str, int], *, source: str = "127.0.0.1",
                 family: int = socket.AF_INET) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((source, 0))
        self.sock.connect(engine)

    def send(self, cookie: bytes, command: str, **params: Any) -> None:
        self.sock.send(encode_request(cookie, command, params))

    def queued(self) -> bool:
        try:
            self.sock.recv(65535, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        return True

    async def reply(self) -> tuple[bytes, dict[str, Any]]:
        await trio.lowlevel.wait_readable(self.sock)
        return decode_reply(self.sock.recv(65535))

    def close(self) -> None:
        self.sock.close()


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")


def ping_dispatcher(**kwargs) -> Dispatcher:
    return Dispatcher({"ping": lambda request: {"result": "pong"}}, **kwargs)


@pytest.mark.parametrize("listen", ["0.0.0.0", pytest.param("::", marks=needs_ipv6)])
async def test_a_wildcard_bind_answers_from_the_address_the_request_reached(listen):
    """The proxy sends to 127.0.0.2; the primary address is 127.0.0.1. Without IP_PKTINFO
    the reply left from 127.0.0.1 and the proxy's connected socket never saw it."""
    dispatcher = ping_dispatcher()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(serve_ng, (listen, 0), dispatcher)
            for target in ("127.0.0.2", "127.0.0.1"):
                client = Client((target, port))
                client.send(b"p1", "ping")
                assert await client.reply() == (b"p1", {"result": "pong"})
                client.send(b"p1", "ping")  # a retransmit: the cached reply, same address
                assert await client.reply() == (b"p1", {"result": "pong"})
                client.close()
            nursery.cancel_scope.cancel()


@needs_ipv6
async def test_an_ipv6_wildcard_bind_answers_ipv6_clients():
    dispatcher = ping_dispatcher()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(serve_ng, ("::", 0), dispatcher)
            client = Client(("::1", port), source="::1", family=socket.AF_INET6)
            client.send(b"p6", "ping")
            assert await client.reply() == (b"p6", {"result": "pong"})
            client.close()
            nursery.cancel_scope.cancel()


async def test_start_up_says_which_mode_and_warns_of_an_open_wildcard(caplog):
    caplog.set_level(logging.INFO, logger="rtpai.ng")
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_ng, ("0.0.0.0", 0), ping_dispatcher())
        await nursery.start(serve_ng, ("127.0.0.1", 0), ping_dispatcher())
        await nursery.start(
            serve_ng, ("0.0.0.0", 0), ping_dispatcher(allow=parse_networks("10.0.0.0/8"))
        )
        nursery.cancel_scope.cancel()
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("IP_PKTINFO" in line for line in infos) == 2
    assert len(warnings) == 1 and "NG_ALLOW is empty" in warnings[0]


async def test_sources_outside_the_allow_list_get_nothing_and_are_counted(caplog):
    caplog.set_level(logging.DEBUG, logger="rtpai.ng")
    dispatcher = ping_dispatcher(allow=parse_networks("127.0.0.2"))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(serve_ng, ("0.0.0.0", 0), dispatcher)
            stranger = Client(("127.0.0.1", port), source="127.0.0.1")
            proxy = Client(("127.0.0.1", port), source="127.0.0.2")
            for n in range(3):
                stranger.send(b"s%d" % n, "ping")
            proxy.send(b"p", "ping")  # read after the stranger's: one socket, in order
            assert await proxy.reply() == (b"p", {"result": "pong"})
            assert not stranger.queued()
            assert dispatcher.denied == 3
            assert len(dispatcher.cache) == 1  # nothing of the stranger's is kept
            stranger.close()
            proxy.close()
            nursery.cancel_scope.cancel()
    denied_lines = [r for r in caplog.records if "not in [ng] allow" in r.getMessage()]
    assert len(denied_lines) == 1  # rate-limited: one line for the burst


def test_the_allow_list_reads_addresses_and_networks_of_both_families():
    acl = SourceFilter(parse_networks("192.0.2.7, 10.0.0.0/8  2001:db8::/32,fe80::1"))
    assert acl.allows("192.0.2.7") and acl.allows("10.1.2.3")
    assert acl.allows("::ffff:10.1.2.3")  # IPv4 through a dual-stack socket
    assert acl.allows("2001:db8::99") and acl.allows("fe80::1%eth0")
    assert not acl.allows("192.0.2.8") and not acl.allows("2001:db9::1")
    assert not acl.allows("not an address")
    assert SourceFilter(()).allows("anything")  # empty: everyone
    for n in range(ACL_MEMO_SIZE * 2):  # spoofed sources: the memo stays bounded
        acl.allows(f"198.51.{n // 256}.{n % 256}")
    assert len(acl._memo) <= ACL_MEMO_SIZE


def test_ng_allow_is_a_validated_setting():
    config = load_config(None, environ={"NG_ALLOW": "192.0.2.0/24 2001:db8::1"})
    assert [str(n) for n in config["ng"]["allow"]] == ["192.0.2.0/24", "2001:db8::1/128"]
    assert load_config(None, environ={})["ng"]["allow"] == ()
    with pytest.raises(ConfigError, match=r"\[ng\] allow / NG_ALLOW: expected IPv4/IPv6"):
        load_config(None, environ={"NG_ALLOW": "proxy.example.com"})


async def test_statistics_count_the_denied(tmp_path):
    from tests.fakes.engine import engine_for_test

    engine = engine_for_test("ws://127.0.0.1:9", NG_ALLOW="127.0.0.2")
    dispatcher = engine.dispatcher
    assert dispatcher.begin(b"x " + encode_request(b"", "ping")[1:], ("127.0.0.1", 5), 0.0) is (
        Ignored.DENIED)
    stats = engine.statistics(None)["statistics"]["controlstatistics"]
    assert stats["denied"] == 1

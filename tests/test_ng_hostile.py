"""Hostile ng datagrams: each is confined to itself (issue 11).

Every datagram with a cookie gets exactly one reply that decodes; a bad one gets an error with
a reason; nothing it carries can take the engine down, grow a table without bound or make a
later reply (``list``, ``statistics``) unanswerable.
"""

from __future__ import annotations

import json
import logging

import bencode
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ctl.config import load_config
from ctl.dispatcher import (
    MAX_REASON_LENGTH,
    MAX_REPLY,
    Dispatcher,
    Handle,
    Ignored,
)
from ctl.engine import Engine
from ctl.ng import (
    MAX_COOKIE_LENGTH,
    MAX_FIELD_LENGTHS,
    MAX_FLAGS,
    MAX_SDP_LENGTH,
    NgError,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)
from tests.fakes.ng import handle
from tests.fakes.proxy import FakeProxy
from tests.fakes.realtime import FakeRealtimeServer

SDP = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\na=sendrecv\r\n"
)


async def run_engine(nursery, **env) -> tuple[Engine, tuple[str, int]]:
    server = FakeRealtimeServer(respond_after_ms=None)
    url = await nursery.start(server.serve)
    engine = Engine(load_config(None, environ={
        "NG_LISTEN": "127.0.0.1:0", "RTP_MIN_PORT": "45000", "RTP_MAX_PORT": "45099",
        "OPENAI_URL": url, "OPENAI_API_KEY": "test-key", **env,
    }))
    return engine, await nursery.start(engine.run)


def json_datagram(cookie: bytes, text: str) -> bytes:
    return cookie + b" " + text.encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("delay", [int("9" * 400), "9" * 400, "-" + "9" * 400, "1e400", 2**63])
async def test_a_huge_delete_delay_is_refused_or_clamped_and_the_engine_lives_on(delay):
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            engine, address = await run_engine(nursery)
            async with FakeProxy(address) as proxy:
                assert (await proxy.command("offer", sdp=SDP, **{"call-id": "c", "from-tag": "f"}))[
                    "result"] == "ok"
                reply = await proxy.command("delete", **{"call-id": "c", "delete-delay": delay})
                assert reply["result"] in ("ok", "error")
                if reply["result"] == "error":
                    assert "delete-delay" in reply["error-reason"] or "bencode" in reply[
                        "error-reason"]
                # The engine still answers, and the call can still be deleted.
                assert (await proxy.command("ping"))["result"] == "pong"
                reply = await proxy.command("delete", **{"call-id": "c"})
                assert reply["result"] == "ok"
                assert (await proxy.command("ping"))["result"] == "pong"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("key", ["call-id", "from-tag", "command", "via-branch", "profile",
                                 "label", "sdp", "flags"])
async def test_a_lone_surrogate_in_json_is_refused_and_nothing_later_breaks(key):
    """JSON may carry ``\\ud800``, which no UTF-8 reply can encode: refused at decode, so it
    never reaches a table (the registry, the command counts) that a later reply encodes."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            engine, address = await run_engine(nursery)
            async with FakeProxy(address) as proxy:
                message = {"command": "offer", "call-id": "c", "from-tag": "f", "sdp": SDP}
                message[key] = ["\ud800"] if key == "flags" else "x\ud800"
                text = json.dumps(message)  # ensure_ascii: the surrogate travels as \ud800
                assert "\\ud800" in text
                reply = await proxy.send_raw(json_datagram(b"j1", text), b"j1")
                assert reply["result"] == "error"
                assert reply["error-reason"] == "Invalid UTF-8 in string"
                # Raw (surrogatepass) bytes are not UTF-8 either.
                raw = json.dumps(message, ensure_ascii=False)
                reply = await proxy.send_raw(json_datagram(b"j2", raw), b"j2")
                assert reply["result"] == "error"
                for command in ("list", "statistics", "ping"):
                    assert (await proxy.command(command))["result"] in ("ok", "pong")
            nursery.cancel_scope.cancel()


async def test_unknown_command_names_are_counted_under_one_bucket():
    dispatcher = Dispatcher({"ping": lambda request: {"result": "pong"}})
    for n in range(300):
        body = encode_request(b"", f"cmd{n}")[1:]
        await handle(dispatcher, b"%d" % n, body, ("h", 1), lambda: 0.0)
    await handle(dispatcher, b"p", encode_request(b"", "ping")[1:], ("h", 1), lambda: 0.0)
    assert dict(dispatcher.commands) == {"unknown": 300, "ping": 1}


async def test_error_reasons_are_bounded_in_length_in_the_reply_and_the_counts():
    def quoting(request):
        raise NgError("Unknown profile '" + "p" * 5000 + "'")

    dispatcher = Dispatcher({"offer": quoting})
    datagram, copies = await handle(dispatcher, b"1", encode_request(b"", "offer")[1:], ("h", 1), lambda: 0.0)
    _, reply = decode_reply(datagram)
    assert reply["result"] == "error"
    assert len(reply["error-reason"]) <= MAX_REASON_LENGTH
    assert all(len(reason) <= MAX_REASON_LENGTH for reason in dispatcher.errors)


async def test_a_reply_too_big_for_a_datagram_is_answered_with_a_short_error():
    def query(request):
        return {"big": "x" * (MAX_REPLY + 10)}

    dispatcher = Dispatcher({"query": query})
    datagram, copies = await handle(dispatcher, b"7", encode_request(b"", "query")[1:], ("h", 1), lambda: 0.0)
    assert len(datagram) <= MAX_REPLY
    cookie, reply = decode_reply(datagram)
    assert cookie == b"7"
    assert reply == {"result": "error",
                     "error-reason": f"Reply too large for one datagram ({MAX_REPLY} bytes)"}


async def test_a_reply_that_cannot_be_encoded_is_answered_with_an_error():
    dispatcher = Dispatcher({"query": lambda request: {"oops": "\udcff"},
                             "list": lambda request: {"oops": object()}})
    for command in ("query", "list"):
        datagram, _ = await handle(dispatcher, b"8", encode_request(b"", command)[1:], ("h", command), lambda: 0.0)
        assert decode_reply(datagram) == (
            b"8", {"result": "error", "error-reason": "Internal error"})


@pytest.mark.parametrize("key", sorted(MAX_FIELD_LENGTHS))
def test_every_field_has_a_length_limit_with_an_rtpengine_like_reason(key):
    limit = MAX_FIELD_LENGTHS[key]
    ok = decode_request(bencode.bencode({"command": "offer", key: "a" * limit}))
    assert ok.text(key) == "a" * limit
    with pytest.raises(NgError) as refused:
        decode_request(bencode.bencode({"command": "offer", key: "a" * (limit + 1)}))
    assert refused.value.reason == f"Value too long for key '{key}' (max {limit})"


def test_limits_on_flags_sdp_and_numbers():
    with pytest.raises(NgError, match="Too many flags"):
        decode_request(bencode.bencode({"command": "offer", "flags": ["f"] * (MAX_FLAGS + 1)}))
    with pytest.raises(NgError, match="Value too long for key 'sdp'"):
        decode_request(bencode.bencode({"command": "offer", "sdp": "v" * (MAX_SDP_LENGTH + 1)}))
    with pytest.raises(NgError, match="Could not decode bencode dictionary"):
        decode_request(b"d7:command6:delete12:delete-delayi" + b"9" * 400 + b"ee")
    with pytest.raises(NgError, match="Could not decode bencode dictionary"):
        decode_request(b'{"command":"delete","delete-delay":' + b"9" * 400 + b"}")
    for text in ("9" * 400, "9" * 20, "-" + "9" * 20, "1e400", " " * 40 + "1"):
        request = decode_request(bencode.bencode({"command": "delete", "delete-delay": text}))
        with pytest.raises(NgError, match="Invalid integer for key 'delete-delay'"):
            request.integer("delete-delay")
    request = decode_request(bencode.bencode({"command": "delete", "delete-delay": " 30 "}))
    assert request.integer("delete-delay") == 30
    with pytest.raises(NgError):
        decode_request(b'{"command":"delete","delete-delay":NaN}')
    with pytest.raises(NgError):  # reads as float inf, which no encoder takes
        decode_request(b'{"command":"delete","x":[1e400]}')


async def test_a_cookie_too_long_is_not_a_cookie():
    dispatcher = Dispatcher({"ping": lambda request: {"result": "pong"}})
    datagram = b"c" * (MAX_COOKIE_LENGTH + 1) + b" " + encode_request(b"", "ping")[1:]
    assert dispatcher.begin(datagram, ("h", 1), 0.0) is Ignored.NO_COOKIE
    datagram = b"c" * MAX_COOKIE_LENGTH + b" " + encode_request(b"", "ping")[1:]
    assert isinstance(dispatcher.begin(datagram, ("h", 1), 0.0), Handle)


async def test_statistics_stay_answerable_after_hostile_datagrams():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            engine, address = await run_engine(nursery)
            async with FakeProxy(address) as proxy:
                for n in range(200):
                    await proxy.command(f"nonsense-{n}-" + "z" * 40)
                    await proxy.command(f"nonsense-{n}-" + "z" * 500)  # too long: an error
                    await proxy.command("offer", sdp=SDP, profile="q" * 120 + str(n),
                                        **{"call-id": f"c{n}", "from-tag": "f"})
                stats = await proxy.command("statistics")
                assert stats["result"] == "ok"
                control = stats["statistics"]["controlstatistics"]
                assert control["commands"]["unknown"] == 200
            nursery.cancel_scope.cancel()




async def test_a_second_offer_with_a_new_from_tag_is_a_second_leg_and_delete_ends_both():
    """Same call-id, new from-tag (no via-branch): rtpengine makes it a new monologue of the
    call. It used to replace the first call in the registry, which kept its port and its RTP
    after the delete and could never be deleted."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            engine, address = await run_engine(nursery)
            async with FakeProxy(address) as proxy:
                first = await proxy.command("offer", sdp=SDP, **{"call-id": "c", "from-tag": "a"})
                second = await proxy.command("offer", sdp=SDP, **{"call-id": "c", "from-tag": "b"})
                assert first["result"] == second["result"] == "ok"
                assert first["sdp"] != second["sdp"]  # two legs, two ports
                legs = list(engine.calls)
                assert sorted(call.from_tag for call in legs) == ["a", "b"]
                assert engine.ports.in_use == 2
                # A re-offer of the first leg still updates it in place.
                again = await proxy.command("offer", sdp=SDP, **{"call-id": "c", "from-tag": "a"})
                assert again["sdp"] == first["sdp"] and len(engine.calls) == 2

                reply = await proxy.command("delete", **{"call-id": "c"})
                assert reply["result"] == "ok" and "warning" not in reply
                assert len(engine.calls) == 0  # answered at once; the legs close in their tasks
                for call in legs:
                    await call.ended.wait()
                    assert all(sock.fileno() == -1 for sock in call._sockets)  # nothing sends
            nursery.cancel_scope.cancel()


async def test_delete_with_a_from_tag_ends_only_that_leg():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            engine, address = await run_engine(nursery)
            async with FakeProxy(address) as proxy:
                for tag in ("a", "b"):
                    await proxy.command("offer", sdp=SDP, **{"call-id": "c", "from-tag": tag})
                first, second = engine.calls
                await proxy.command("delete", **{"call-id": "c", "from-tag": "b"})
                assert [call.from_tag for call in engine.calls] == ["a"]
                await second.ended.wait()  # its ports are free once its sockets are closed
                assert engine.ports.in_use == 1 and not first.ended.is_set()
                await proxy.command("delete", **{"call-id": "c"})
                assert len(engine.calls) == 0
                await first.ended.wait()
                assert engine.ports.in_use == 0
            nursery.cancel_scope.cancel()


async def test_big_offers_are_refused_with_rtpengine_reasons(caplog):
    from media.sdp import MAX_SDP_LINES

    caplog.set_level(logging.INFO, logger="rtpai.engine")
    head = SDP.split("m=")[0]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            engine, address = await run_engine(nursery)
            async with FakeProxy(address) as proxy:
                ids = {"call-id": "big", "from-tag": "f"}
                huge = head + "m=video 0 RTP/AVP 96\r\n" * 1700  # ~37 KB
                reply = await proxy.command("offer", sdp=huge, **ids)
                assert reply == {"result": "error",
                                 "error-reason": f"Value too long for key 'sdp' (max {MAX_SDP_LENGTH})"}
                many = head + "m=video 0 RTP/AVP 96\r\n" * (MAX_SDP_LINES + 1)
                reply = await proxy.command("offer", sdp=many, **ids)
                assert reply == {"result": "error", "error-reason": "Failed to parse SDP"}
                assert f"more than {MAX_SDP_LINES} lines" in caplog.text  # the detail: our log
                assert engine.ports.in_use == 0 and len(engine.calls) == 0
            nursery.cancel_scope.cancel()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
    | st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["command", "call-id", "sdp", "flags", "x", "limit"]),
                       _json_values, max_size=5), st.booleans())
def test_whatever_decodes_can_be_encoded_again(message, ensure_ascii):
    """The policy that keeps replies encodable: what the decoder accepts, both encoders take.
    (Lone surrogates, non-finite floats, integers past 64 bits are refused at decode.)"""
    message.setdefault("command", "ping")
    text = json.dumps(message, ensure_ascii=ensure_ascii, allow_nan=True)
    try:
        request = decode_request(text.encode("utf-8", "surrogatepass"))
    except NgError:
        return
    for as_json in (False, True):
        encode_reply(b"c", dict(request.params), as_json=as_json)

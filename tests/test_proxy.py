"""Talking back to the proxy: request bodies, the HTTP client, retries, drain on shutdown."""

from __future__ import annotations

import json
import socket

import pytest
import trio

from ctl.config import load_config
from ctl.engine import Engine
from ctl.proxy import ProxyError, ProxyEvent, ProxyNotifier, build_request, check_response
from tests.fakes.caller import FakeCaller
from tests.fakes.http import FakeHttpServer
from tests.fakes.proxy import FakeProxy
from tests.fakes.realtime import FakeRealtimeServer

HANGUP = ProxyEvent("hangup", "c1@h", "ft", "tt", "media timeout (60 s without RTP)")
TRANSFER = ProxyEvent("transfer", "c1@h", "ft", "tt", "caller asked", target="sip:a&b@h")


def test_kamailio_hangup_is_dlg_terminate_dlg():
    request = build_request("kamailio", "http://127.0.0.1:5080/RPC", HANGUP, 7)
    assert request.method == "POST" and request.url == "http://127.0.0.1:5080/RPC"
    assert json.loads(request.body) == {
        "jsonrpc": "2.0", "method": "dlg.terminate_dlg", "params": ["c1@h", "ft", "tt"], "id": 7}


def test_kamailio_transfer_is_the_xhttp_route_with_encoded_values():
    request = build_request("kamailio", "http://127.0.0.1:5080/RPC", TRANSFER)
    assert request.method == "GET"
    assert request.url == ("http://127.0.0.1:5080/rtpai/transfer?callid=c1%40h&ftag=ft&ttag=tt"
                           "&target=sip%3Aa%26b%40h")


def test_kamailio_needs_the_to_tag():
    with pytest.raises(ProxyError, match="to-tag"):
        build_request("kamailio", "http://h/RPC", ProxyEvent("hangup", "c", "f", None, "r"))


def test_opensips_hangup_is_dlg_end_dlg():
    request = build_request("opensips", "http://127.0.0.1:8888/mi", HANGUP, 3)
    assert json.loads(request.body) == {
        "jsonrpc": "2.0", "method": "dlg_end_dlg", "params": {"dialog_id": "c1@h"}, "id": 3}


def test_opensips_transfer_is_an_in_dialog_refer_through_dlg_send_sequential():
    event = ProxyEvent("transfer", "c1@h", "ft", "tt", "caller asked", target="sip:agent@h")
    request = build_request("opensips", "http://127.0.0.1:8888/mi", event, 4)
    assert json.loads(request.body) == {
        "jsonrpc": "2.0", "method": "dlg_send_sequential", "id": 4, "params": {
            "callid": "c1@h", "method": "REFER", "body": "none", "mode": "caller",
            "headers": "Refer-To: <sip:agent@h>\r\nReferred-By: <sip:rtpai@127.0.0.1>\r\n"}}
    # A target that would break out of the header is never sent.
    for bad in ("sip:a@h>\r\nX-Evil: 1", "", 'sip:"a"@h'):
        with pytest.raises(ProxyError, match="REFER"):
            build_request("opensips", "http://127.0.0.1:8888/mi",
                          ProxyEvent("transfer", "c", "f", "t", "r", target=bad))


def test_opensips_reports_the_callers_answer_to_the_refer():
    check_response("opensips", 200, b'{"jsonrpc":"2.0","result":{"Code":202,'
                                    b'"Reason":"Accepted"},"id":1}')
    with pytest.raises(ProxyError, match="the caller answered 603 Declined"):
        check_response("opensips", 200, b'{"jsonrpc":"2.0","result":{"Code":603,'
                                        b'"Reason":"Declined"},"id":1}')
    with pytest.raises(ProxyError) as gone:
        check_response("opensips", 200, b'{"jsonrpc":"2.0","error":{"code":404,'
                                        b'"message":"Requested Dialog not found"},"id":1}')
    assert gone.value.gone


def test_webhook_body():
    request = build_request("webhook", "https://example.invalid/hook", TRANSFER)
    assert json.loads(request.body) == {
        "event": "transfer", "call_id": "c1@h", "from_tag": "ft", "to_tag": "tt",
        "reason": "caller asked", "target": "sip:a&b@h"}


def test_json_rpc_errors_are_failures():
    check_response("kamailio", 200, b'{"jsonrpc":"2.0","result":"ok","id":1}')
    with pytest.raises(ProxyError, match="No such dialog"):
        check_response("kamailio", 200, b'{"jsonrpc":"2.0","error":{"code":404,'
                                         b'"message":"No such dialog"},"id":1}')
    with pytest.raises(ProxyError, match="HTTP 500"):
        check_response("webhook", 500, b"boom")


async def test_notifier_retries_then_succeeds():
    server = FakeHttpServer(statuses=[500, 503])
    async with trio.open_nursery() as nursery:
        base = await nursery.start(server.serve)
        notifier = ProxyNotifier("webhook", f"{base}/hook", timeout=2, retries=2,
                                 retry_delay=0.01)
        assert await notifier.notify(HANGUP)
        assert len(server.requests) == 3
        last = server.requests[-1]
        assert last.method == "POST" and last.target == "/hook"
        assert last.headers["content-type"] == "application/json"
        assert json.loads(last.body)["reason"].startswith("media timeout")
        assert notifier.sent == [HANGUP]
        nursery.cancel_scope.cancel()


NOT_FOUND = b'{"jsonrpc":"2.0","error":{"code":404,"message":"Requested Dialog not found"},"id":1}'


async def test_a_retry_that_finds_the_dialog_gone_counts_as_done():
    # OpenSIPS answered 500 to dlg_end_dlg yet sent the BYE: the retry finds no dialog.
    server = FakeHttpServer(statuses=[500], reply_body=NOT_FOUND)
    async with trio.open_nursery() as nursery:
        base = await nursery.start(server.serve)
        notifier = ProxyNotifier("opensips", f"{base}/mi", retries=2, retry_delay=0.01)
        outcome = await notifier.carry_out(HANGUP)
        assert outcome.ok and "gone" in outcome.detail
        assert len(server.requests) == 2  # not three failures
        # Not so at the first attempt: nothing says that dialog was ever there.
        server.statuses = []
        assert not await notifier.notify(HANGUP)
        assert len(server.requests) == 5
        nursery.cancel_scope.cancel()


DECLINED = b'{"jsonrpc":"2.0","result":{"Code":603,"Reason":"Declined"},"id":1}'


async def test_a_declined_refer_is_not_sent_again():
    server = FakeHttpServer(reply_body=DECLINED)
    async with trio.open_nursery() as nursery:
        base = await nursery.start(server.serve)
        notifier = ProxyNotifier("opensips", f"{base}/mi", retries=2, retry_delay=0.01)
        outcome = await notifier.carry_out(TRANSFER)
        assert not outcome.ok and outcome.detail == "the caller answered 603 Declined"
        assert len(server.requests) == 1
        nursery.cancel_scope.cancel()


async def test_a_transfer_that_timed_out_is_not_sent_again():
    silent = socket.socket()  # accepts (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    with silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/mi"
        notifier = ProxyNotifier("opensips", url, timeout=0.2, retries=2, retry_delay=0.01)
        outcome = await notifier.carry_out(TRANSFER)
        assert not outcome.ok and "did not answer in 0.2 s" in outcome.detail
        assert notifier.asked == [TRANSFER]
        # One connection only: a second REFER could transfer the caller twice.
        silent.settimeout(0)
        silent.accept()[0].close()
        with pytest.raises(BlockingIOError):
            silent.accept()


async def test_notifier_gives_up_after_its_retries():
    server = FakeHttpServer(statuses=[500, 500, 500])
    async with trio.open_nursery() as nursery:
        base = await nursery.start(server.serve)
        notifier = ProxyNotifier("webhook", base, timeout=2, retries=1, retry_delay=0.01)
        assert not await notifier.notify(HANGUP)
        assert len(server.requests) == 2 and notifier.sent == []
        nursery.cancel_scope.cancel()


async def test_notifier_without_proxy_only_logs(caplog):
    assert not await ProxyNotifier("none", None).notify(HANGUP)
    assert "no [proxy] configured" in caplog.text


async def test_drain_refuses_new_calls_then_hangs_up_the_rest():
    http = FakeHttpServer()
    realtime = FakeRealtimeServer(respond_after_ms=None)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            hook = await nursery.start(http.serve)
            url = await nursery.start(realtime.serve)
            engine = Engine(load_config(None, environ={
                "NG_LISTEN": "127.0.0.1:0", "RTP_MIN_PORT": "45000", "RTP_MAX_PORT": "45099",
                "OPENAI_URL": url, "OPENAI_API_KEY": "test-key", "PROXY_TYPE": "webhook",
                "PROXY_URL": hook}))
            address = await nursery.start(engine.run)
            caller = FakeCaller()
            await caller.bind()
            async with FakeProxy(address) as proxy:
                offer = {"from-tag": "ft", "to-tag": "tt", "sdp": caller.sdp_offer()}
                assert (await proxy.command("offer", **{"call-id": "up"}, **offer))["result"] == "ok"
                drained = trio.Event()

                async def drain():
                    await engine.drain(grace=0.2)
                    drained.set()

                nursery.start_soon(drain)
                await trio.testing.wait_all_tasks_blocked()
                refused = await proxy.command("offer", **{"call-id": "new"}, **offer,
                                              supports=["load limit"])
                assert refused["result"] == "load limit"
                await drained.wait()
            (request,) = http.requests
            event = json.loads(request.body)
            assert event["event"] == "hangup" and event["call_id"] == "up"
            assert event["reason"] == "engine shutdown"
            nursery.cancel_scope.cancel()


async def test_without_a_to_tag_rtpai_says_why_it_cannot_hang_up(caplog):
    """Kamailio needs all three dialog ids; without to-tag=$ltt(t) rtpai ends its side only."""
    realtime = FakeRealtimeServer(respond_after_ms=None)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(realtime.serve)
            engine = Engine(load_config(None, environ={
                "NG_LISTEN": "127.0.0.1:0", "RTP_MIN_PORT": "45100", "RTP_MAX_PORT": "45199",
                "RTP_TIMEOUT": "1", "OPENAI_URL": url, "OPENAI_API_KEY": "test-key",
                "PROXY_TYPE": "kamailio", "PROXY_URL": "http://127.0.0.1:9/RPC"}))
            address = await nursery.start(engine.run)
            caller = FakeCaller()
            await caller.bind()
            async with FakeProxy(address) as proxy:
                await proxy.command("offer", **{"call-id": "c", "from-tag": "ft",
                                                "sdp": caller.sdp_offer()})
                (call,) = engine.calls
                await call.ended.wait()  # no RTP at all: the media timeout
                await trio.testing.wait_all_tasks_blocked()
            assert call.end_reason.startswith("media timeout")
            assert "cannot hangup: no To-tag known for the call" in caplog.text
            assert engine.ports.in_use == 0
            nursery.cancel_scope.cancel()


async def test_an_unreachable_ai_makes_the_proxy_hang_up_with_the_reason():
    http = FakeHttpServer()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            hook = await nursery.start(http.serve)
            engine = Engine(load_config(None, environ={
                "NG_LISTEN": "127.0.0.1:0", "RTP_MIN_PORT": "45200", "RTP_MAX_PORT": "45299",
                # Nothing listens there; no reconnect window: the AI is unreachable at once.
                "OPENAI_URL": "ws://127.0.0.1:9/v1/realtime", "OPENAI_API_KEY": "test-key",
                "OPENAI_RECONNECT_TIMEOUT": "0",
                "PROXY_TYPE": "webhook", "PROXY_URL": hook}))
            address = await nursery.start(engine.run)
            caller = FakeCaller()
            await caller.bind()
            async with FakeProxy(address) as proxy:
                await proxy.command("offer", **{"call-id": "lost", "from-tag": "ft",
                                                "to-tag": "tt", "sdp": caller.sdp_offer()})
                await http.wait_for(1)
                # The call stays until the proxy's BYE reaches rtpai as a delete.
                (call,) = engine.calls
                await trio.testing.wait_all_tasks_blocked()
                assert call.hangup["status"] == "sent" and engine.ports.in_use == 1
                stats = await proxy.command("delete", **{"call-id": "lost", "from-tag": "ft"})
            event = json.loads(http.requests[0].body)
            assert event["event"] == "hangup" and event["call_id"] == "lost"
            assert event["reason"].startswith("AI session failed")
            # The end reason is why rtpai asked, not "deleted by the proxy".
            assert stats["rtpai"]["end reason"].startswith("AI session failed")
            await call.ended.wait()  # the delete is answered at once; the call closes after
            assert engine.ports.in_use == 0
            nursery.cancel_scope.cancel()


async def test_credentials_in_the_url_are_basic_auth_never_the_host_header():
    """A management interface behind an authenticating front end: user:password@ in the URL
    becomes an Authorization header; Host names only the server (RFC 9110 s7.2)."""
    from media.http import HttpRequest, http_request

    server = FakeHttpServer()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        authority = url.removeprefix("http://")
        status, _ = await http_request(
            HttpRequest("POST", f"http://ops:s%40cret@{authority}/RPC", b"{}"), timeout=5)
        nursery.cancel_scope.cancel()
    assert status == 200
    (received,) = server.requests
    assert received.headers["host"] == authority
    assert received.headers["authorization"] == "Basic b3BzOnNAY3JldA=="  # ops:s@cret

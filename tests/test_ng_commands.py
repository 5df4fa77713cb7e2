"""Every ng command as the proxy modules send it, against the engine on real sockets."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import bencode
import pytest
import trio

from ctl.config import load_config
from ctl.engine import Engine
from ctl.ng import decode_reply, decode_request
from ctl.ng_requests import codec_exclusions
from media.sdp import parse_sdp
from tests.fakes.caller import FakeCaller
from tests.fakes.proxy import FakeProxy
from tests.fakes.realtime import FakeRealtimeServer
from tests.peers import GOLDEN

OFFER = (
    "v=0\r\no=phone 10 10 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP {formats}\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=ptime:20\r\na={direction}\r\n"
)


def offer_sdp(port=4000, ip="127.0.0.1", formats="0 8", direction="sendrecv"):
    return OFFER.format(port=port, ip=ip, formats=formats, direction=direction)


@asynccontextmanager
async def engine_and_proxy(tmp_path=None, config_text: str = "", **env):
    server = FakeRealtimeServer(respond_after_ms=None)
    path = None
    if config_text:
        path = tmp_path / "rtpai.conf"
        path.write_text(config_text)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            environ = {"NG_LISTEN": "127.0.0.1:0", "RTP_MIN_PORT": "44000",
                       "RTP_MAX_PORT": "44199", "OPENAI_URL": url, "OPENAI_API_KEY": "test-key",
                       **env}
            engine = Engine(load_config(str(path) if path else None, environ=environ))
            address = await nursery.start(engine.run)
            async with FakeProxy(address) as proxy:
                proxy.server = server
                proxy.engine_obj = engine
                yield proxy
            nursery.cancel_scope.cancel()


def ids(call_id="c1", from_tag="ft", **more):
    return {"call-id": call_id, "from-tag": from_tag, **more}


def origin_version(sdp_text: str) -> int:
    return int(parse_sdp(sdp_text).origin.session_version)


async def test_reinvite_hold_and_resume_keep_the_port_and_bump_the_version():
    async with engine_and_proxy() as proxy:
        first = await proxy.command("offer", sdp=offer_sdp(), **ids(**{"to-tag": "ours"}))
        port = parse_sdp(first["sdp"]).media[0].port
        call = next(iter(proxy.engine_obj.calls))

        same = await proxy.command("offer", sdp=offer_sdp(), **ids(**{"to-tag": "ours"}))
        assert same["sdp"] == first["sdp"]  # nothing changed: same version

        hold = await proxy.command("offer", sdp=offer_sdp(direction="sendonly"),
                                   **ids(**{"to-tag": "ours", "via-branch": "z9hG4bK-2"}))
        held = parse_sdp(hold["sdp"])
        assert held.media[0].port == port
        assert held.media[0].direction == "recvonly"
        assert origin_version(hold["sdp"]) == origin_version(first["sdp"]) + 1
        assert held.origin.session_id == parse_sdp(first["sdp"]).origin.session_id
        assert call.stream.sending is False
        assert len(proxy.engine_obj.calls) == 1  # a re-INVITE, not a new call

        resume = await proxy.command("offer", sdp=offer_sdp(),
                                     **ids(**{"to-tag": "ours", "via-branch": "z9hG4bK-3"}))
        assert parse_sdp(resume["sdp"]).media[0].direction == "sendrecv"
        assert origin_version(resume["sdp"]) == origin_version(first["sdp"]) + 2
        assert call.stream.sending is True


async def test_reinvite_to_a_new_address_moves_our_audio_there():
    async with engine_and_proxy() as proxy:
        old, new = FakeCaller(), FakeCaller()
        await old.bind()
        await new.bind()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(new.receive)
            offered = await proxy.command("offer", sdp=old.sdp_offer(), **ids(**{"to-tag": "ours"}))
            # The caller's media has flowed (we send idle silence only from then on) ...
            port = parse_sdp(offered["sdp"]).media[0].port
            nursery.start_soon(old.receive)
            await old.stream(("127.0.0.1", port), [b"\xff" * 160])
            await old.wait_for(lambda got: len(got) >= 1)
            # ... then a re-INVITE moves it: our silence frames follow to the new port.
            await proxy.command("offer", sdp=new.sdp_offer(), **ids(**{"to-tag": "ours"}))
            await new.wait_for(lambda got: len(got) >= 3)
            nursery.cancel_scope.cancel()


async def test_codec_change_mid_call_is_refused_clearly():
    async with engine_and_proxy() as proxy:
        await proxy.command("offer", sdp=offer_sdp(formats="0"), **ids())
        reply = await proxy.command("offer", sdp=offer_sdp(formats="8"), **ids())
        assert reply["result"] == "error"
        assert "codec change mid-call is not supported" in reply["error-reason"]


async def test_answer_returns_the_current_sdp_or_unknown_call():
    async with engine_and_proxy() as proxy:
        offered = await proxy.command("offer", sdp=offer_sdp(), **ids())
        answered = await proxy.command("answer", sdp=offer_sdp(), **ids(**{"to-tag": "tt"}))
        assert answered["sdp"] == offered["sdp"]
        unknown = await proxy.command("answer", sdp=offer_sdp(), **ids("nope", **{"to-tag": "t"}))
        assert unknown == {"result": "error", "error-reason": "Unknown call-id"}
        no_to_tag = await proxy.command("answer", sdp=offer_sdp(), **ids())
        assert no_to_tag == {"result": "error", "error-reason": "No to-tag in message"}


async def test_via_branches_are_separate_calls_under_one_call_id():
    async with engine_and_proxy() as proxy:
        a = await proxy.command("offer", sdp=offer_sdp(), **ids(**{"via-branch": "b1"}))
        b = await proxy.command("offer", sdp=offer_sdp(), **ids(**{"via-branch": "b2"}))
        port_a, port_b = (parse_sdp(r["sdp"]).media[0].port for r in (a, b))
        assert port_a != port_b
        assert (await proxy.command("list"))["calls"] == ["c1"]
        deleted = await proxy.command("delete", **ids(**{"via-branch": "b1"}))
        assert deleted["tags"]["ft"]["medias"][0]["streams"][0]["local port"] == port_a
        remaining = await proxy.command("query", **{"call-id": "c1"})
        assert remaining["tags"]["ft"]["medias"][0]["streams"][0]["local port"] == port_b


@pytest.mark.parametrize(
    "delete_keys",
    [
        {"call-id": "c1"},  # no tags at all
        {"call-id": "c1", "from-tag": "ft"},
        {"call-id": "c1", "from-tag": "ours"},  # a BYE from our side names our tag first
        {"call-id": "c1", "to-tag": "ours"},
        {"call-id": "c1", "from-tag": "ft", "to-tag": "ours"},
    ],
)
async def test_delete_by_any_party_tag(delete_keys):
    async with engine_and_proxy() as proxy:
        await proxy.command("offer", sdp=offer_sdp(), **ids(**{"to-tag": "ours"}))
        deleted = await proxy.command("delete", **delete_keys)
        assert deleted["result"] == "ok" and "warning" not in deleted
        assert len(proxy.engine_obj.calls) == 0


async def test_delete_unknown_call_or_tags_warns_and_fatal_errors():
    async with engine_and_proxy() as proxy:
        await proxy.command("offer", sdp=offer_sdp(), **ids())
        wrong_tag = await proxy.command("delete", **{"call-id": "c1", "from-tag": "stranger"})
        assert wrong_tag == {"result": "ok", "warning": "Call-ID not found or tags didn't match"}
        assert len(proxy.engine_obj.calls) == 1
        fatal = await proxy.command("delete", **{"call-id": "zz", "flags": ["fatal"]})
        assert fatal == {"result": "error",
                         "error-reason": "Call-ID not found or tags didn't match"}
        missing = await proxy.command("delete")
        assert missing == {"result": "error", "error-reason": "No call-id in message"}


@pytest.mark.parametrize("delay", [0, "0"])
async def test_delete_delay_zero_deletes_now(delay):
    async with engine_and_proxy() as proxy:
        await proxy.command("offer", sdp=offer_sdp(), **ids())
        await proxy.command("delete", **ids(**{"delete delay": delay, "delete-delay": str(delay)}))
        assert len(proxy.engine_obj.calls) == 0


async def test_delete_delay_keeps_the_call_then_ends_it():
    async with engine_and_proxy() as proxy:
        await proxy.command("offer", sdp=offer_sdp(), **ids())
        call = next(iter(proxy.engine_obj.calls))
        reply = await proxy.command("delete", **ids(**{"delete-delay": "1"}))
        assert reply["result"] == "ok" and "totals" in reply
        assert (await proxy.command("query", **ids()))["result"] == "ok"  # still there
        await call.ended.wait()
        assert "after 1 s delay" in call.end_reason


@pytest.mark.parametrize("command", ["play media", "play DTMF", "block DTMF", "silence media",
                                     "stop forwarding"])
async def test_other_module_commands_get_a_clear_error(command):
    async with engine_and_proxy() as proxy:
        reply = await proxy.command(command, **ids())
        assert reply["result"] == "error"
        assert "not supported by rtpai" in reply["error-reason"]


@pytest.mark.parametrize(
    "params, codec",
    [
        ({"codec": {"strip": ["PCMU"]}}, "PCMA"),  # Kamailio codec-strip=PCMU
        ({"flags": ["codec-strip-PCMU"]}, "PCMA"),  # OpenSIPS
        ({"codec": {"mask": "PCMU"}}, "PCMA"),
        ({}, "PCMU"),  # the offer's order
    ],
)
async def test_codec_strip_and_mask(params, codec):
    async with engine_and_proxy() as proxy:
        reply = await proxy.command("offer", sdp=offer_sdp(formats="0 8"), **ids(), **params)
        assert parse_sdp(reply["sdp"]).media[0].codecs[0].encoding == codec


async def test_stripping_everything_is_no_common_codec():
    async with engine_and_proxy() as proxy:
        reply = await proxy.command("offer", sdp=offer_sdp(), **ids(),
                                    codec={"strip": ["all"]})
        assert reply == {"result": "error", "error-reason": "No common codec"}
        garbage = await proxy.command("offer", sdp="hello", **ids("c2"))
        assert garbage["result"] == "error" and "SDP" in garbage["error-reason"]


def test_codec_exclusions_read_both_spellings():
    request = decode_request(b"d7:command5:offer5:codecd5:stripl4:PCMAee5:flagsl12:codec-mask-0ee")
    assert codec_exclusions(request) == {"PCMA", "0"}


@pytest.mark.parametrize("strip", [b"i5e", b"d1:xi1ee", b"li5ed1:xi1ee4:PCMAe"])
def test_codec_exclusions_ignore_what_names_no_codec(strip):
    """A number or a dictionary where codec names belong is ignored, not a TypeError."""
    request = decode_request(b"d7:command5:offer5:codecd5:strip" + strip + b"ee")
    assert codec_exclusions(request) <= {"PCMA"}


async def test_profile_selects_its_section(tmp_path):
    config = "[openai]\nvoice = alloy\n[openai:sales]\nvoice = ash\ninstructions = Sell.\n"
    async with engine_and_proxy(tmp_path, config) as proxy:
        await proxy.command("offer", sdp=offer_sdp(), **ids(), profile="sales")
        session = await proxy.server.wait_for_session(1)
        await session.wait_for_client_event("session.update")
        assert session.session["audio"]["output"]["voice"] == "ash"
        assert session.session["instructions"] == "Sell."
        unknown = await proxy.command("offer", sdp=offer_sdp(), **ids("c2"), profile="nope")
        assert unknown == {"result": "error", "error-reason": "Unknown profile 'nope'"}


async def test_json_request_gets_a_json_reply():
    async with engine_and_proxy() as proxy:
        reply = await proxy.send_raw(b'j1 {"command": "ping"}', b"j1")
        assert reply == {"result": "pong"}
        sock = proxy._sock
        await sock.send(b'j2 {"command": "list"}')
        datagram = await sock.recv(65535)
        assert json.loads(datagram.split(b" ", 1)[1]) == {"result": "ok", "calls": []}


async def test_a_retransmit_gets_the_identical_reply_and_no_second_call():
    async with engine_and_proxy() as proxy:
        datagram = b"r1 " + bencode.bencode(
            {"command": "offer", "call-id": "c1", "from-tag": "ft", "sdp": offer_sdp()})
        sock = proxy._sock
        await sock.send(datagram)
        await sock.send(datagram)  # the module's resend after 1 s, here at once
        first, second = await sock.recv(65535), await sock.recv(65535)
        assert first == second and decode_reply(first)[1]["result"] == "ok"
        assert len(proxy.engine_obj.calls) == 1


async def test_kamailio_56_golden_datagrams_replay():
    """The offer and delete exactly as Kamailio 5.6.3's module sent them (captured)."""
    async with engine_and_proxy() as proxy:
        sock = proxy._sock
        await sock.send((GOLDEN / "kamailio56_offer.bin").read_bytes())
        cookie, reply = decode_reply(await sock.recv(65535))
        assert cookie == b"0_6855_0" and reply["result"] == "ok"
        assert "m=audio" in reply["sdp"]
        (call,) = proxy.engine_obj.calls
        assert call.to_tag == "93e08d299683efda7b332e7fc3d7c538-e6481516"
        await sock.send((GOLDEN / "kamailio56_delete.bin").read_bytes())
        cookie, deleted = decode_reply(await sock.recv(65535))
        assert cookie == b"0_6856_0" and deleted["result"] == "ok" and "warning" not in deleted
        assert deleted["totals"]["RTP"]["packets"] >= 0


async def test_statistics_count_commands_and_calls():
    async with engine_and_proxy() as proxy:
        await proxy.command("offer", sdp=offer_sdp(), **ids())
        await proxy.command("ping")
        stats = (await proxy.command("statistics"))["statistics"]
        assert stats["currentstatistics"]["sessionsown"] == 1
        assert stats["totalstatistics"]["managedsessions"] == 1
        assert stats["controlstatistics"]["commands"]["offer"] == 1
        assert stats["controlstatistics"]["commands"]["ping"] == 1


async def test_list_limit():
    async with engine_and_proxy() as proxy:
        for n in range(3):
            await proxy.command("offer", sdp=offer_sdp(), **ids(f"c{n}"))
        assert (await proxy.command("list", limit="2"))["calls"] == ["c0", "c1"]
        assert (await proxy.command("list"))["calls"] == ["c0", "c1", "c2"]



@pytest.mark.parametrize(
    "setting, formats, codec",
    [
        ("offer", "8 0", "PCMA"),  # the caller's order
        ("PCMU,PCMA", "8 0", "PCMU"),  # ours
        ("PCMA", "0 8", "PCMA"),
        ("PCMA", "0", None),  # only PCMA configured, only PCMU offered
    ],
)
async def test_configured_codec_preference(setting, formats, codec):
    async with engine_and_proxy(RTP_CODECS=setting) as proxy:
        reply = await proxy.command("offer", sdp=offer_sdp(formats=formats), **ids())
        if codec is None:
            assert reply == {"result": "error", "error-reason": "No common codec"}
        else:
            assert parse_sdp(reply["sdp"]).media[0].codecs[0].encoding == codec

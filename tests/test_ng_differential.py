"""rtpai beside Debian's rtpengine 10.5: the same ng datagrams, compared reply by reply.

Both engines get the datagrams of `SEQUENCE`, in order, on 127.0.0.1: rtpengine as a daemon
(tests/peers/rtpengine.py), rtpai in-process with the fake Realtime server. Each test then
compares one step: error reasons must be rtpengine's, word for word; successful replies must
have rtpengine's *shape* (keys, recursively, and value types), not its values.

rtpai is an endpoint, not a relay, so some of rtpengine's shape cannot apply. Every such
difference is named, with its reason, in `RTPENGINE_ONLY` / `RTPAI_ONLY` / `OPTIONAL` below
and in docs/ng-protocol.md ("Intended differences from rtpengine"). Anything else that differs
is a gap in rtpai: the test asserts rtpengine's behaviour and fails.

rtpengine's replies are kept in tests/peers/golden/rtpengine105_replies.json (written when
missing, or rewritten with RTPAI_UPDATE_GOLDEN=1) so a later test can compare without the daemon;
`test_golden_replies_match_the_live_daemon` keeps that file honest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import bencode
import pytest
import trio

from ctl.config import load_config
from ctl.engine import Engine
from tests.fakes.realtime import FakeRealtimeServer
from tests.peers import GOLDEN, LOOPBACK, require_tool, unused_port
from tests.peers.rtpengine import bound_addresses, ng_exchange, start_rtpengine

pytestmark = pytest.mark.realpeers

GOLDEN_REPLIES = GOLDEN / "rtpengine105_replies.json"

# Port ranges of their own, away from the other tests' (41000.., 43000..).
RTPENGINE_PORTS = (46000, 46099)
RTPAI_PORTS = (45000, 45099)

# A plain phone's offer (RFC 5737 would be nicer, but rtpai really sends media to it).
SDP_PCMU = (
    "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=call\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 2000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)
SDP_PCMU_PCMA = SDP_PCMU.replace("RTP/AVP 0 101", "RTP/AVP 0 8 101").replace(
    "a=rtpmap:101", "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101"
)
SDP_CALLEE = SDP_PCMU.replace("caller", "callee").replace("audio 2000", "audio 2002")

CALL = "diff-1@127.0.0.1"
# What Kamailio 5.6 adds to every offer (see tests/peers/golden/kamailio56_offer.bin).
KAMAILIO_EXTRAS = {"supports": ["load limit"], "received-from": ["IP4", LOOPBACK]}


@dataclass(frozen=True)
class Step:
    name: str
    datagram: bytes
    compared: bool = True  # False: rtpengine's reply is recorded, rtpai's is not judged


def ng(cookie: str, **message: Any) -> bytes:
    return cookie.encode() + b" " + bencode.bencode(message)


def offer(cookie: str, call_id: str, sdp: str = SDP_PCMU, **extra: Any) -> bytes:
    return ng(cookie, command="offer", **{"call-id": call_id, "from-tag": "ft", "sdp": sdp},
              **KAMAILIO_EXTRAS, **extra)


SEQUENCE = [
    Step("ping", ng("s01", command="ping")),
    Step("ping_json", b's02 {"command":"ping"}'),
    Step("no_cookie", b"d7:command4:pinge"),
    Step("bad_bencode", b"s04 d7:command4:pin"),
    Step("not_a_dictionary", b"s05 l4:pinge"),
    Step("no_command", ng("s06", **{"call-id": CALL})),
    Step("unknown_command", ng("s07", command="frobnicate")),
    Step("offer_no_call_id", ng("s08", command="offer", **{"from-tag": "ft", "sdp": SDP_PCMU})),
    Step("offer_no_from_tag", ng("s09", command="offer", **{"call-id": CALL, "sdp": SDP_PCMU})),
    Step("offer_no_sdp", ng("s10", command="offer", **{"call-id": CALL, "from-tag": "ft"})),
    Step("offer_garbage_sdp", offer("s11", "diff-garbage", sdp="this is not SDP")),
    Step("offer", offer("s12", CALL)),
    Step("offer_retransmit", offer("s12", CALL)),  # same cookie: the cached reply
    Step("offer_again", offer("s14", CALL)),  # a new cookie: the same call, the same ports
    Step("query_after_offer", ng("s15", command="query", **{"call-id": CALL})),
    Step("answer_unknown_call", ng("s16", command="answer", **{
        "call-id": "diff-nope", "from-tag": "ft", "to-tag": "tt", "sdp": SDP_CALLEE})),
    Step("answer_no_to_tag", ng("s17", command="answer", **{
        "call-id": CALL, "from-tag": "ft", "sdp": SDP_CALLEE})),
    Step("answer", ng("s18", command="answer", **{
        "call-id": CALL, "from-tag": "ft", "to-tag": "tt", "sdp": SDP_CALLEE})),
    Step("query", ng("s19", command="query", **{"call-id": CALL})),
    Step("query_unknown_call", ng("s20", command="query", **{"call-id": "diff-nope"})),
    Step("query_no_call_id", ng("s21", command="query")),
    Step("list", ng("s22", command="list")),
    Step("statistics", ng("s23", command="statistics")),
    Step("delete_unknown_call", ng("s24", command="delete", **{
        "call-id": "diff-nope", "from-tag": "ft"})),
    Step("delete_unknown_call_fatal", ng("s25", command="delete", **{
        "call-id": "diff-nope", "from-tag": "ft", "flags": ["fatal"]})),
    Step("delete_no_call_id", ng("s26", command="delete")),
    Step("delete", ng("s27", command="delete", **{"call-id": CALL, "from-tag": "ft"})),
    Step("list_after_delete", ng("s28", command="list")),
    Step("query_after_delete", ng("s29", command="query", **{"call-id": CALL})),
    # Tags that name nobody in the call.
    Step("offer_tags", offer("s30", "diff-tags")),
    Step("query_foreign_tag", ng("s31", command="query", **{
        "call-id": "diff-tags", "from-tag": "someone-else"})),
    Step("delete_foreign_tag", ng("s32", command="delete", **{
        "call-id": "diff-tags", "from-tag": "someone-else"})),
    Step("query_after_foreign_delete", ng("s33", command="query", **{"call-id": "diff-tags"})),
    # delete with a delay, the way Kamailio sends it (both spellings, int and string).
    Step("offer_delay", offer("s34", "diff-delay")),
    Step("list_limit", ng("s35", command="list", limit="1")),
    Step("delete_with_delay", ng("s36", command="delete", **{
        "call-id": "diff-delay", "from-tag": "ft", "delete delay": 5, "delete-delay": "5"})),
    Step("query_during_delay", ng("s37", command="query", **{"call-id": "diff-delay"})),
    Step("list_during_delay", ng("s38", command="list")),
    # codec-strip, Kamailio's dictionary form and OpenSIPS's flag form.
    Step("offer_strip_dict", offer("s39", "diff-strip-1", SDP_PCMU_PCMA, codec={"strip": ["PCMU"]})),
    Step("offer_strip_flag", offer("s40", "diff-strip-2", SDP_PCMU_PCMA, flags=["codec-strip-PCMU"])),
    # Commands an AI endpoint does not implement: rtpengine's answers, for the record.
    Step("play_dtmf", ng("s41", command="play DTMF", **{
        "call-id": "diff-strip-1", "from-tag": "ft", "code": "1"}), compared=False),
    Step("play_dtmf_unknown_call", ng("s42", command="play DTMF", **{
        "call-id": "diff-nope", "from-tag": "ft", "code": "1"}), compared=False),
    # Recording (rtpai with [recording] mode = on-request): rtpengine's bare "ok".
    Step("start_recording", ng("s43", command="start recording", **{
        "call-id": "diff-strip-1"})),
    Step("block_dtmf", ng("s44", command="block DTMF", **{"call-id": "diff-strip-1"}),
         compared=False),
]


# --------------------------------------------------------------------------- running both


def decode(datagram: bytes | None) -> Any:
    """A reply datagram as Python data (bencode or JSON), independent of rtpai's codec."""
    if datagram is None:
        return None
    _, _, body = datagram.partition(b" ")
    if body.startswith(b"{"):
        return json.loads(body)

    def text(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, dict):
            return {text(k): text(v) for k, v in value.items()}
        if isinstance(value, list):
            return [text(v) for v in value]
        return value

    return text(bencode.bdecode(body))


@dataclass
class Run:
    raw: dict[str, bytes | None]
    replies: dict[str, Any]


@dataclass
class Both:
    rtpengine: Run
    rtpai: Run
    rtpengine_version: str
    rtpengine_sockets: set[tuple[str, str, int]]


async def _play(address: tuple[str, int], sequence: list[Step]) -> Run:
    raw: dict[str, bytes | None] = {}
    for step in sequence:
        # Datagrams without a cookie get no answer: wait less for that silence.
        timeout = 0.3 if step.name == "no_cookie" else 2.0
        raw[step.name] = await ng_exchange(address, step.datagram, timeout=timeout)
    return Run(raw, {name: decode(datagram) for name, datagram in raw.items()})


async def _run_both(tmp: Path) -> Both:
    server = FakeRealtimeServer(respond_after_ms=None)  # the AI listens and never speaks
    with trio.fail_after(20):
        async with start_rtpengine(
            tmp, ng_port=unused_port(), port_min=RTPENGINE_PORTS[0], port_max=RTPENGINE_PORTS[1]
        ) as daemon:
            rtpengine = await _play(daemon.ng, SEQUENCE)
            sockets = bound_addresses(daemon.process.pid)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            config = load_config(None, environ={
                "NG_LISTEN": f"{LOOPBACK}:0",
                "RTP_MIN_PORT": str(RTPAI_PORTS[0]),
                "RTP_MAX_PORT": str(RTPAI_PORTS[1]),
                "OPENAI_URL": url,
                "OPENAI_API_KEY": "test-key",
                "RECORDING_MODE": "on-request",
                "RECORDING_DIR": str(tmp),
            })
            address = await nursery.start(Engine(config).run)
            rtpai = await _play(address, SEQUENCE)
            nursery.cancel_scope.cancel()
    return Both(rtpengine, rtpai, daemon.version, sockets)


def _write_golden(both: Both) -> None:
    """One step per line: a diff of two captures shows which replies changed."""
    head = {
        "about": "rtpengine's replies to tests/test_ng_differential.py's SEQUENCE, in order; "
        "reply null = no reply datagram",
        "rtpengine": both.rtpengine_version,
        "config": "tests/peers/rtpengine.py CONFIG_TEMPLATE (userspace, delete-delay = 0)",
    }
    steps = [
        json.dumps(
            {
                "name": step.name,
                "compared": step.compared,
                "datagram": step.datagram.decode("latin-1"),
                "reply": both.rtpengine.replies[step.name],
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        for step in SEQUENCE
    ]
    text = json.dumps(head, indent=1)[:-2] + ',\n "steps": [\n  ' + ",\n  ".join(steps) + "\n ]\n}\n"
    json.loads(text)  # still one JSON document
    GOLDEN_REPLIES.write_text(text)


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> Both:
    require_tool("rtpengine")
    result = trio.run(_run_both, tmp_path_factory.mktemp("rtpengine"))
    if os.environ.get("RTPAI_UPDATE_GOLDEN") == "1" or not GOLDEN_REPLIES.exists():
        _write_golden(result)
    return result


# --------------------------------------------------------------------------- shapes

# Keys rtpengine sends that rtpai leaves out on purpose, as glob patterns over reply paths:
# "tags.*" is any party's tag, ".#" any item of a list.
RTPENGINE_ONLY = {
    # A relay subscribes each party's media to the other's; rtpai *is* the other party.
    "tags.*.subscribers": "relay: one party's media is subscribed to the other's",
    "tags.*.subscriptions": "relay: one party's media is subscribed to the other's",
}
# Keys rtpai adds.
RTPAI_ONLY = {
    "rtpai": "the AI side of the call: state, end reason, timeline, transcript, token usage",
}
# Keys rtpengine itself sends only sometimes: either side may have them.
OPTIONAL = {
    "tags.*.label",  # when the offer carried a label
    "tags.*.via-branch",  # when the offer carried a via-branch
    "tags.*.in dialogue with",  # rtpengine < 10
    "tags.*.medias.#.codec",  # rtpengine: once a codec handler is set up; rtpai: always
    "tags.*.medias.#.streams.#.SSRC",  # rtpengine: once an SSRC was seen; rtpai: 0 until then
    "tags.*.medias.#.streams.#.crypto suite",  # SRTP only
}


def _kind(value: Any) -> str:
    return type(value).__name__


def compare_shape(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Where `actual` (rtpai) does not have the shape of `expected` (rtpengine).

    Dicts are compared key by key; the tags dictionary only for the tags both have (rtpai
    answers one party, `test_query_*` check which); lists of dicts element-wise against
    rtpengine's first element; an empty dict on either side is state, not shape.
    """
    problems: list[str] = []
    if _kind(expected) != _kind(actual):
        return [f"{path or '.'}: rtpengine has {_kind(expected)}, rtpai {_kind(actual)}"]
    if isinstance(expected, dict):
        if not expected or not actual:
            return []
        is_tags = path.endswith("tags")
        keys = set(actual) & set(expected) if is_tags else set(expected) | set(actual)
        for key in sorted(keys):
            sub = f"{path}.{'*' if is_tags else key}".lstrip(".")
            if key not in actual:
                if not _listed(sub, RTPENGINE_ONLY.keys() | OPTIONAL):
                    problems.append(f"{sub}: missing in rtpai")
            elif key not in expected:
                if not _listed(sub, RTPAI_ONLY.keys() | OPTIONAL):
                    problems.append(f"{sub}: rtpai has it, rtpengine does not")
            else:
                problems += compare_shape(expected[key], actual[key], sub)
    elif isinstance(expected, list) and expected and actual and isinstance(expected[0], dict):
        for item in actual:
            problems += compare_shape(expected[0], item, f"{path}.#")
    return problems


def _listed(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(path, pattern) for pattern in patterns)


def key_tree(value: Any) -> Any:
    """Keys and value types, recursively (lists: the distinct shapes of their items)."""
    if isinstance(value, dict):
        return {key: key_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        shapes = []
        for item in value:
            shape = key_tree(item)
            if shape not in shapes:
                shapes.append(shape)
        return shapes
    return _kind(value)


def sdp_structure(sdp: str) -> dict[str, Any]:
    """An SDP's structure: session line types, the m= line without its port, attribute names."""
    lines = [line for line in sdp.replace("\r\n", "\n").split("\n") if line]
    first_m = next(i for i, line in enumerate(lines) if line.startswith("m="))
    media_type, _port, proto, *formats = lines[first_m][2:].split()
    media = lines[first_m + 1 :]
    attributes = [line[2:].partition(":")[0] for line in media if line.startswith("a=")]
    return {
        "session": [line[0] for line in lines[:first_m]],
        "m": (media_type, proto, formats),
        "attributes": set(attributes),
        "rtpmap": sorted(line for line in media if line.startswith("a=rtpmap:")),
        "fmtp": sorted(line for line in media if line.startswith("a=fmtp:")),
    }


def m_port(sdp: str) -> int:
    line = next(line for line in sdp.splitlines() if line.startswith("m="))
    return int(line.split()[1])


# --------------------------------------------------------------------------- the comparisons

# Steps whose replies must be the same, byte for byte once decoded: pongs, errors, warnings.
IDENTICAL = [
    "ping",
    "ping_json",
    "no_cookie",  # no answer from either
    "bad_bencode",
    "not_a_dictionary",
    "no_command",
    "unknown_command",
    "offer_no_call_id",
    "offer_no_from_tag",
    "offer_no_sdp",
    "offer_garbage_sdp",
    "answer_unknown_call",
    "answer_no_to_tag",
    "query_unknown_call",
    "query_no_call_id",
    "delete_unknown_call",
    "delete_unknown_call_fatal",
    "delete_no_call_id",
    "query_after_delete",
    "delete_foreign_tag",
]


@pytest.mark.parametrize("step", IDENTICAL)
def test_same_reply(both: Both, step: str):
    assert both.rtpai.replies[step] == both.rtpengine.replies[step]


def test_offer_reply_keys_and_answer_sdp_structure(both: Both):
    theirs, ours = both.rtpengine.replies["offer"], both.rtpai.replies["offer"]
    assert set(ours) == set(theirs) == {"result", "sdp"}
    assert ours["result"] == theirs["result"] == "ok"
    expected, actual = sdp_structure(theirs["sdp"]), sdp_structure(ours["sdp"])
    # RFC 3605: rtpengine always writes a=rtcp; rtpai's RTCP is on RTP + 1, the default
    # without one, so it leaves it out.
    expected["attributes"].discard("rtcp")
    assert actual == expected


def test_offer_retransmit_gets_the_cached_reply(both: Both):
    for run in (both.rtpengine, both.rtpai):
        assert run.raw["offer_retransmit"] == run.raw["offer"]


def test_offer_again_keeps_the_call_and_its_ports(both: Both):
    for run in (both.rtpengine, both.rtpai):
        again, first = run.replies["offer_again"], run.replies["offer"]
        assert again["result"] == "ok"
        assert m_port(again["sdp"]) == m_port(first["sdp"])


def test_answer_reply_keys(both: Both):
    theirs, ours = both.rtpengine.replies["answer"], both.rtpai.replies["answer"]
    assert set(ours) == set(theirs) == {"result", "sdp"}
    assert ours["result"] == "ok"


@pytest.mark.parametrize("step", ["query_after_offer", "query", "delete", "delete_with_delay"])
def test_statistics_reply_shape(both: Both, step: str):
    theirs, ours = both.rtpengine.replies[step], both.rtpai.replies[step]
    assert ours["result"] == theirs["result"] == "ok"
    assert compare_shape(theirs, ours) == []


@pytest.mark.parametrize("step", ["query_after_offer", "query", "delete"])
def test_statistics_reply_names_the_caller(both: Both, step: str):
    theirs, ours = both.rtpengine.replies[step], both.rtpai.replies[step]
    # rtpengine lists both parties (the callee as "<untagged N>" until it answers); rtpai is
    # the callee and lists the caller only.
    assert "ft" in theirs["tags"]
    assert set(ours["tags"]) == {"ft"}
    assert ours["tags"]["ft"]["tag"] == "ft"


def test_statistics_reply_lists_the_rtcp_stream(both: Both):
    # Without rtcp-mux rtpengine lists each media's RTP and RTCP streams (flags "RTP", "RTCP").
    # rtpai binds RTP + 1 for RTCP and counts what arrives there (totals.RTCP), so it can too.
    theirs = both.rtpengine.replies["query"]["tags"]["ft"]["medias"][0]["streams"]
    ours = both.rtpai.replies["query"]["tags"]["ft"]["medias"][0]["streams"]
    assert [s["flags"][0] for s in theirs] == ["RTP", "RTCP"]
    assert [s["flags"][0] for s in ours] == ["RTP", "RTCP"]
    assert ours[1]["local port"] == ours[0]["local port"] + 1


def test_statistics_reply_address_family_spelling(both: Both):
    theirs = both.rtpengine.replies["query"]["tags"]["ft"]["medias"][0]["streams"][0]
    ours = both.rtpai.replies["query"]["tags"]["ft"]["medias"][0]["streams"][0]
    assert theirs["family"] == theirs["endpoint"]["family"] == "IPv4"
    assert ours["family"] == theirs["family"]
    assert ours["endpoint"]["family"] == theirs["endpoint"]["family"]


@pytest.mark.parametrize("step", ["list", "list_after_delete", "list_limit", "list_during_delay"])
def test_list_reply_shape(both: Both, step: str):
    theirs, ours = both.rtpengine.replies[step], both.rtpai.replies[step]
    assert set(ours) == set(theirs) == {"result", "calls"}
    assert all(isinstance(call_id, str) for call_id in ours["calls"])


def test_list_contents(both: Both):
    for run in (both.rtpengine, both.rtpai):
        assert run.replies["list"]["calls"] == [CALL]
        assert CALL not in run.replies["list_after_delete"]["calls"]
        assert len(run.replies["list_limit"]["calls"]) == 1  # limit "1", a numeric string


def test_statistics_top_level_keys(both: Both):
    theirs = both.rtpengine.replies["statistics"]
    ours = both.rtpai.replies["statistics"]
    assert set(ours) == set(theirs) == {"result", "statistics"}
    # rtpai keeps no per-interval request timings, computes no MOS and transcodes nothing.
    intended = {"intervalstatistics", "mos", "transcoders"}
    # rtpai's own figures (the cycle collector's) live under a key of their own.
    assert set(ours["statistics"]) - {"rtpai"} == set(theirs["statistics"]) - intended
    for section in ("currentstatistics", "totalstatistics"):
        assert isinstance(ours["statistics"][section], dict)
    current = {"sessionsown", "sessionstotal"}
    assert current <= set(theirs["statistics"]["currentstatistics"])
    assert current <= set(ours["statistics"]["currentstatistics"])


def test_query_with_a_tag_of_nobody(both: Both):
    # rtpengine finds the call and lists no party: tags is empty, totals are zero.
    theirs, ours = both.rtpengine.replies["query_foreign_tag"], both.rtpai.replies["query_foreign_tag"]
    assert theirs["result"] == "ok" and theirs["tags"] == {}
    assert ours["result"] == "ok"
    assert ours["tags"] == {}


def test_delete_with_a_tag_of_nobody_keeps_the_call(both: Both):
    # delete_foreign_tag answered a warning (test_same_reply); the call must live on.
    for run in (both.rtpengine, both.rtpai):
        assert run.replies["query_after_foreign_delete"]["result"] == "ok"


def test_delete_delay_keeps_the_call_queryable(both: Both):
    for run in (both.rtpengine, both.rtpai):
        assert run.replies["delete_with_delay"]["result"] == "ok"
        assert run.replies["query_during_delay"]["result"] == "ok"
        assert "diff-delay" in run.replies["list_during_delay"]["calls"]


@pytest.mark.parametrize("step", ["offer_strip_dict", "offer_strip_flag"])
def test_codec_strip(both: Both, step: str):
    for run in (both.rtpengine, both.rtpai):
        reply = run.replies[step]
        assert reply["result"] == "ok"
        formats = sdp_structure(reply["sdp"])["m"][2]
        assert "0" not in formats and "8" in formats  # PCMU stripped, PCMA left


def test_rtpengine_binds_only_loopback(both: Both):
    addresses = {address for _, address, _ in both.rtpengine_sockets}
    assert addresses == {LOOPBACK}
    ports = {port for _, _, port in both.rtpengine_sockets}
    media = {port for port in ports if RTPENGINE_PORTS[0] <= port <= RTPENGINE_PORTS[1]}
    assert media, "rtpengine should hold media ports of its own range for the live calls"


def test_golden_replies_match_the_live_daemon(both: Both):
    record = json.loads(GOLDEN_REPLIES.read_text())
    golden = {step["name"]: step for step in record["steps"]}
    assert list(golden) == [step.name for step in SEQUENCE]
    for step in SEQUENCE:
        assert golden[step.name]["datagram"] == step.datagram.decode("latin-1")
        live, kept = both.rtpengine.replies[step.name], golden[step.name]["reply"]
        if isinstance(kept, dict) and kept.get("result") != "error":
            assert key_tree(live) == key_tree(kept), step.name
        else:
            assert live == kept, step.name

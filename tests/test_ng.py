"""The ng codec, the reply cache and the dispatcher, without sockets."""

import contextlib
import json

import bencode
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctl.bencode import BencodeError, bdecode
from ctl.dispatcher import MAX_ERROR_REASONS, Dispatcher, Handle, Ignored, Resend
from ctl.ng import (
    NgError,
    NgFramingError,
    NgLoadLimit,
    canonical_name,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    split_cookie,
)
from ctl.ng import bencode as bencode_value
from ctl.reply_cache import REPLY_CACHE_ENTRY_OVERHEAD, REPLY_CACHE_MAX_BYTES, ReplyCache
from tests.fakes.ng import handle

# The codec's tests run on both of its paths (ctl/bencode.py, its compiled twin ctl._fast).
pytestmark = pytest.mark.usefixtures("native_path")

# What Kamailio 5.6's rtpengine module sends for rtpengine_offer("... to-tag=$ltt(t)"): note the
# int and string forms of the same key and the flags list.
KAMAILIO_OFFER = b"1_2603_5 " + bencode.bencode(
    {
        "command": "offer", "supports": ["load limit"], "flags": ["trust-address"],
        "call-id": "abc@host1", "from-tag": "ft1", "to-tag": "tt1", "sdp": "v=0\r\n",
        "delete delay": 0, "delete-delay": "0",
    }
)


def test_split_cookie_and_decode_kamailio_offer():
    cookie, body = split_cookie(KAMAILIO_OFFER)
    assert cookie == b"1_2603_5"
    request = decode_request(body)
    assert request.command == "offer"
    assert request.text("call-id") == "abc@host1"
    assert request.text("from-tag") == "ft1"
    assert request.supports("load limit")
    assert "trust-address" in request.flags
    # "delete delay" and "delete-delay" fold to one key; the int and the string both read.
    assert request.integer("delete-delay") == 0


def test_key_and_flag_spellings_are_folded():
    request = decode_request(b"d7:command6:delete7:call_id1:x5:flagsl5:Fatalee")
    assert request.text("call-id") == "x"
    assert "fatal" in request.flags


def test_numbers_as_strings_and_lists_as_strings():
    request = decode_request(b"d7:command5:query5:limit2:103:ICE6:removee")
    assert request.integer("limit") == 10
    assert request.string_list("ICE") == ["remove"]
    with pytest.raises(NgError):
        decode_request(b"d7:command5:query5:limit3:tene").integer("limit")


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"garbage", "Could not decode bencode dictionary"),
        (b"li1ee", "Invalid NG data format"),  # bencode, but not a dictionary
        (b"d3:fooi1ee", 'Dictionary contains no key "command"'),
        (b"{not json", "Could not decode bencode dictionary"),
    ],
)
def test_bad_bodies_get_rtpengine_reasons(body, reason):
    with pytest.raises(NgError) as info:
        decode_request(body)
    assert info.value.reason == reason


def test_no_cookie_is_a_framing_error():
    with pytest.raises(NgFramingError):
        split_cookie(b"d7:command4:pinge")


def test_json_request_reads_like_bencode():
    request = decode_request(b'{"command": "ping"}')
    assert request.command == "ping" and request.is_json


def test_reply_round_trip_golden_bytes():
    datagram = encode_reply(b"c1", {"result": "pong"})
    assert datagram == b"c1 d6:result4:ponge"
    assert decode_reply(datagram) == (b"c1", {"result": "pong"})
    assert encode_reply(b"c1", {"result": "ok", "x": None, "f": 1.6, "b": True}) == (
        b"c1 d1:bi1e1:fi2e6:result2:oke"
    )
    assert json.loads(encode_reply(b"c", {"result": "pong"}, as_json=True)[2:]) == {
        "result": "pong"
    }


@given(st.binary(max_size=200))
def test_decode_request_never_raises_anything_else(body):
    with contextlib.suppress(NgError):
        decode_request(body)


def test_reply_cache_answers_retransmits_and_expires():
    cache = ReplyCache(ttl=45, max_entries=3)
    key = (("127.0.0.1", 5060), b"c1")
    assert cache.begin(key, now=0) is True
    assert cache.begin(key, now=0.5) is None  # still being handled
    assert cache.complete(key, b"reply", now=1) == 1  # one duplicate arrived meanwhile
    assert cache.begin(key, now=2) == b"reply"
    assert cache.begin(key, now=100) is True  # expired: a new request
    for n in range(10):
        cache.begin((("h", 1), str(n).encode()), now=101)
    assert len(cache) <= 3  # bounded whatever a peer sends


def test_a_forgotten_request_is_new_again_and_costs_nothing():
    # The front begins a host-wide request, then cannot take it (too many under way): its
    # retransmit must be handled, not wait for a reply that never comes.
    cache = ReplyCache()
    key = (("127.0.0.1", 5060), b"c1")
    assert cache.begin(key, now=0) is True
    cache.forget(key)
    assert (len(cache), cache.bytes) == (0, 0)
    assert cache.begin(key, now=1) is True


def test_same_cookie_from_another_source_is_another_request():
    cache = ReplyCache()
    assert cache.begin((("a", 1), b"c"), 0) is True
    assert cache.begin((("b", 1), b"c"), 0) is True


async def test_dispatcher_routes_and_reports_errors():
    calls = []

    async def ping(request):
        calls.append(request.command)
        return {"result": "pong"}

    async def full(request):
        raise NgLoadLimit()

    async def broken(request):
        raise RuntimeError("bug")

    dispatcher = Dispatcher({"ping": ping, "offer": full, "delete": broken})

    async def ask(datagram, source=("127.0.0.1", 9)):
        arrival = dispatcher.begin(datagram, source, 0.0)
        assert isinstance(arrival, Handle)
        reply, copies = await handle(dispatcher, arrival.cookie, arrival.body, source,
                                     lambda: 0.0)
        return decode_reply(reply)[1]

    assert await ask(b"a d7:command4:pinge") == {"result": "pong"}
    assert await ask(b"b d7:command4:xyzze") == {
        "result": "error", "error-reason": "Unrecognized command"}
    assert await ask(b"c d7:command5:offer8:supportsl10:load limitee") == {
        "result": "load limit", "message": "Parallel session limit reached"}
    assert await ask(b"d d7:command5:offere") == {
        "result": "error", "error-reason": "Parallel session limit reached"}
    assert (await ask(b"e d7:command6:deletee"))["result"] == "error"
    assert await ask(b"f not bencode") == {
        "result": "error", "error-reason": "Could not decode bencode dictionary"}
    # A retransmit is answered from the cache, not handled again.
    resent = dispatcher.begin(b"a d7:command4:pinge", ("127.0.0.1", 9), 1.0)
    assert isinstance(resent, Resend) and decode_reply(resent.datagram)[1] == {"result": "pong"}
    assert calls == ["ping"]
    assert dispatcher.begin(b"nocookie", ("127.0.0.1", 9), 1.0) is Ignored.NO_COOKIE


def test_encode_request_is_what_a_proxy_sends():
    assert encode_request(b"k", "ping") == b"k d7:command4:pinge"


async def test_unknown_keys_are_ignored_and_logged_at_debug(caplog):
    async def ping(request):
        return {"result": "pong"}

    dispatcher = Dispatcher({"ping": ping})
    caplog.set_level("DEBUG", logger="rtpai.ng")
    body = b"d7:command4:ping12:custom-thing1:xe"
    reply, _ = await handle(dispatcher, b"k", body, ("h", 1), lambda: 0.0)
    assert decode_reply(reply)[1] == {"result": "pong"}
    assert "ignoring keys ['custom-thing']" in caplog.text


# --- the bencode codec, against bencode.py (what rtpai used before its own) -------------------


def _old_bencodable(value):
    """What encode_reply made of a reply before handing it to bencode.py."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return round(value)
    if isinstance(value, dict):
        return {str(k): _old_bencodable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_old_bencodable(v) for v in value if v is not None]
    return value


def _old_text(value, fold):
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {(canonical_name(k) if fold else k): _old_text(v, fold) for k, v in value.items()}
    if isinstance(value, list):
        return [_old_text(v, fold) for v in value]
    return value


_keys = st.text(max_size=12)
_scalars = st.one_of(
    st.integers(-(2**70), 2**70), st.text(max_size=30), st.booleans(), st.none(),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9),
)
_replies = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys, inner, max_size=6),
    max_leaves=40,
)


@given(st.dictionaries(_keys, _replies, max_size=8))
def test_bencode_matches_bencode_py_byte_for_byte(reply):
    assert bencode_value(reply) == bencode.bencode(_old_bencodable(reply))


_wire = st.recursive(
    # (rtpengine's integers are 64-bit, and so are ours: past that, test_bdecode_refuses_...)
    st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=20) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.text(alphabet="ab -_c", max_size=6), inner, max_size=6),
    max_leaves=40,
)


@given(st.dictionaries(st.text(alphabet="ab -_cD", max_size=8), _wire, max_size=8))
def test_bdecode_reads_what_bencode_py_read(message):
    """Also where folded keys collide ("a b" and "a-b"): the key sorting last wins."""
    data = bencode.bencode(message)
    for fold in (True, False):
        assert bdecode(data, fold_keys=canonical_name if fold else None) == _old_text(bencode.bdecode(data), fold)


@pytest.mark.parametrize("data", [
    b"", b"i03e", b"i-0e", b"i-e", b"ie", b"i1", b"03:abc", b"4:abc", b"3:abcx", b"d1:ae",
    b"di1e1:ae", b"l", b"d", b"x", b"-1:a", b"d3:\xff\xfe\xfdi1ee", b"l" * 40 + b"e" * 40,
    b"i9223372036854775808e", b"i-9223372036854775809e", b"i" + b"9" * 400 + b"e",
])
def test_bdecode_refuses_what_is_not_one_well_formed_value(data):
    with pytest.raises(BencodeError):
        bdecode(data)


def test_bdecode_golden():
    assert bdecode(b"d3:bar4:spam3:fooi42e4:listli-3e0:ee") == {
        "bar": "spam", "foo": 42, "list": [-3, ""]}
    assert bdecode(b"d3:sdp2:\xe9\xe9e") == {"sdp": "\xe9\xe9"}  # not UTF-8: latin-1
    assert bdecode(b"d12:delete delayi0e12:delete_delay1:5e", fold_keys=canonical_name) == {
        "delete-delay": "5"}


# --- the reply cache's byte budget ------------------------------------------------------------


def test_reply_cache_is_bounded_by_bytes_too_oldest_first():
    overhead = REPLY_CACHE_ENTRY_OVERHEAD
    cache = ReplyCache(max_bytes=3 * (overhead + 1000))  # three 1000-byte replies
    keys = [(("127.0.0.1", 5060), b"c%d" % n) for n in range(10)]
    for key in keys:
        assert cache.begin(key, now=0) is True
        cache.complete(key, b"x" * 1000, now=0)
        assert cache.bytes <= cache.max_bytes
    assert len(cache) == 3 and cache.bytes == 3 * (overhead + 1000)
    assert cache.begin(keys[-1], now=1) == b"x" * 1000  # the newest are still answered
    assert cache.begin(keys[0], now=1) is True  # the oldest went first
    # Small replies: many more fit in the same budget.
    for n in range(10):
        key = (("127.0.0.1", 5060), b"s%d" % n)
        cache.begin(key, now=2)
        cache.complete(key, b"d6:result4:ponge", now=2)
    assert len(cache) == 10


def test_reply_cache_default_budget_holds_the_retransmit_window_of_a_busy_engine():
    """6 s of 1000 commands a second (half offers, half deletes) stay answerable."""
    offer_reply, delete_reply = b"o" * 400, b"d" * 1800
    cache = ReplyCache()
    per_second, seconds = 1000, 6
    for n in range(per_second * seconds):
        key = (("198.51.100.7", 22222), b"%d" % n)
        cache.begin(key, now=n / per_second)
        cache.complete(key, delete_reply if n % 2 else offer_reply, now=n / per_second)
    assert len(cache) == per_second * seconds
    assert cache.bytes <= REPLY_CACHE_MAX_BYTES <= 10 << 20


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 3000), st.booleans()), max_size=200))
def test_reply_cache_accounts_every_byte(operations):
    cache = ReplyCache(ttl=5, max_entries=12, max_bytes=12_000)
    now = 0.0
    for cookie, size, finish in operations:
        now += 0.25
        key = (("h", 1), str(cookie).encode())
        if cache.begin(key, now) is True and finish:
            cache.complete(key, b"r" * size, now)
        expected = sum(
            REPLY_CACHE_ENTRY_OVERHEAD + (len(state) if isinstance(state, bytes) else 0)
            for _, state in cache._entries.values()
        )
        assert cache.bytes == expected
        assert len(cache) <= 12 and cache.bytes <= 12_000 + REPLY_CACHE_ENTRY_OVERHEAD


async def test_error_counts_stay_bounded_whatever_the_reasons_quote():
    async def offer(request):
        raise NgError(f"Unknown profile '{request.text('profile')}'")

    dispatcher = Dispatcher({"offer": offer})
    for n in range(500):
        body = encode_request(b"", "offer", {"profile": f"p{n}"})[1:]
        await handle(dispatcher, b"%d" % n, body, ("h", 1), lambda: 0.0)
    assert len(dispatcher.errors) <= MAX_ERROR_REASONS + 1
    assert sum(dispatcher.errors.values()) == 500
    assert dispatcher.errors["Unknown profile 'p0'"] == 1

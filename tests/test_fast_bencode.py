"""The compiled ng codec (ctl/_fast_bencode.c, ctl/_fast_bdecode.c) against its Python reference
(ctl/bencode.py's py_bdecode, py_bencode), and both against bencode.py, an independent codec.

Value for value (types and dictionary order included) and error for error (class and
message): random values encoded and decoded on both paths; random, mutated and truncated
bytes decoded on both (the C reads what any peer of the ng port sends: this is its fuzz test,
bounded for CI by RTPAI_FUZZ_EXAMPLES; `make asan` runs it under ASan and UBSan).
"""

from __future__ import annotations

import enum
import os
from collections import OrderedDict
from types import MappingProxyType

import bencode as reference_codec  # bencode.py: the dev dependency, an independent codec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import ctl.bencode
import ctl.ng
from ctl.bencode import MAX_INTEGER, MIN_INTEGER, BencodeError, py_bdecode, py_bencode
from ctl.ng import canonical_name
from media import native
from tests.native_paths import require_compiled, without_builds

FUZZ_EXAMPLES = int(os.environ.get("RTPAI_FUZZ_EXAMPLES", "150"))
bounded = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

FOLDS = (None, canonical_name)


@pytest.fixture(scope="module")
def fast():
    require_compiled()
    return native.load("ctl._fast")


def shape(value):
    """A value with its types and its dictionaries' order spelled out (== alone would take
    True for 1 and ignore the order)."""
    if isinstance(value, dict):
        return ("dict", type(value), tuple((shape(k), shape(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", tuple(shape(v) for v in value))
    return (type(value), value)


def outcome(function, *args, **kwargs):
    """What ``function`` makes of its arguments: the result's shape, or the error's class and
    message."""
    try:
        return ("ok", shape(function(*args, **kwargs)))
    except RecursionError:
        return ("error", RecursionError)  # the depth it is raised at is the interpreter's
    except Exception as exc:  # noqa: BLE001 - the class and message are what is compared
        return ("error", type(exc), str(exc))


def same_decode(fast, data: bytes) -> None:
    for fold in FOLDS:
        expected = outcome(py_bdecode, data, fold_keys=fold)
        assert outcome(fast.bdecode, data, fold_keys=fold) == expected, (data[:200], fold)


def test_the_bounds_are_the_pythons(fast):
    assert fast.MAX_DEPTH == ctl.bencode.MAX_BENCODE_DEPTH
    assert fast.MAX_DIGITS == ctl.bencode._MAX_INTEGER_DIGITS


def test_the_compiled_codec_is_what_ng_uses(fast):
    if native.FORCED_PURE:
        pytest.skip("RTPAI_PURE_PYTHON is set")
    assert ctl.bencode.bdecode is fast.bdecode and ctl.bencode.bencode is fast.bencode
    assert ctl.ng.bdecode is fast.bdecode and ctl.ng.bencode is fast.bencode


# --- valid values: the same bytes, the same values back -----------------------------------------

keys = st.text(max_size=12) | st.sampled_from(["call-id", "call_id", "call id", "from-tag", "a"])
leaves = (st.integers(MIN_INTEGER, MAX_INTEGER) | st.text(max_size=30)
          | st.binary(max_size=30))
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(keys, inner, max_size=6), max_leaves=40)


def as_reference_decodes(value):
    """Our decoding of what bencode.py decodes: its bytes that are not UTF-8 read as latin-1
    (as ours), its OrderedDict a dict."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {k: as_reference_decodes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_reference_decodes(v) for v in value]
    return value


@bounded
@given(values)
@example({"command": "offer", "sdp": "v=0\r\n", "flags": ["trust-address"], "x": -(2**63)})
@example({"é": "\U0001f600", "": b"\xff\xfe", "z": [[], {}], "a": 2**63 - 1})
def test_valid_values_encode_and_decode_alike_on_both_paths_and_as_bencode_py(fast, value):
    encoded = py_bencode(value)
    assert fast.bencode(value) == encoded
    assert reference_codec.bencode(value) == encoded
    for fold in FOLDS:
        assert shape(fast.bdecode(encoded, fold_keys=fold)) == shape(
            py_bdecode(encoded, fold_keys=fold))
    assert py_bdecode(encoded) == as_reference_decodes(reference_codec.bdecode(encoded))


# --- untrusted bytes: the same value or the same error ------------------------------------------

TOKENS = [b"e", b"d", b"l", b"i", b"0:", b"1:", b":", b"-", b"99999:", b"i-0e", b"i03e", b"ie",
          b"\xff", b"\xed\xa0\x80", b"\xc3", b"i9223372036854775808e", b"i-9223372036854775808e",
          b"i-9223372036854775809e", b"12345678901234567890:", b"9999999999999999999:",
          b"0" * 30 + b":", b"d" * 40, b"l" * 40, b"e" * 40, b"3:a_b", b"3:a-b", b"3:a b"]


@st.composite
def mutated(draw):
    """A valid value's bytes, edited a few times: the malformed input a peer could send."""
    data = bytearray(py_bencode(draw(values)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.integers(0, 5))
        if edit == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif edit == 1:
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif edit == 2:
            del data[at:at + draw(st.integers(1, 8))]
        elif edit == 3:
            del data[at:]  # truncated
        elif edit == 4:
            data[at:at] = data[at:at + draw(st.integers(1, 30))] * draw(st.integers(1, 5))
        elif data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
    return bytes(data)


@bounded
@given(mutated() | st.binary(max_size=120)
       | st.lists(st.sampled_from(TOKENS), max_size=12).map(b"".join))
@example(b"")
@example(b"d")
@example(b"d1:a")
@example(b"d1:ai1e")
@example(b"d1:\xffi1ee")  # a key that is not UTF-8
@example(b"d2:\xc3\xa9i1ee")
@example(b"d3:a_b1:x3:a-b1:y3:a b1:ze")  # three spellings of one folded key
@example(b"d1:b1:x1:a1:y1:b1:ze")  # the same key twice, unfolded
@example(b"1" * 5000 + b":x")  # int() of it would raise a ValueError of its own
@example(b"d" + b"1" * 25 + b":xe")
@example(b"d1:x" + b"l" * 31 + b"e" * 31 + b"e")  # 32 deep: the most allowed
@example(b"d1:x" + b"l" * 32 + b"e" * 32 + b"e")
@example(b"l" * 10_000 + b"e" * 10_000)
@example(b"i" + b"9" * 400 + b"e")
@example(b"i-9223372036854775808e")
@example(b"i9223372036854775807e")
@example(b"i-e")
@example(b"i00e")
@example(b"i1e ")
@example(b"i1")
@example(b"01:a")
@example(b"\x00")
def test_untrusted_bytes_decode_alike(fast, data):
    same_decode(fast, data)


def test_the_python_says_runs_past_the_end_for_any_length_too_long(fast):
    """Before, int() of a 4300-digit length raised its own ValueError, in the message."""
    for data in (b"1" * 5000 + b":x", b"d" + b"9" * 5000 + b":x1:ye", b"d1:a" + b"7" * 20 + b":"):
        for decode in (py_bdecode, fast.bdecode):
            with pytest.raises(BencodeError, match="^string runs past the end$"):
                decode(data)


def test_a_folding_that_fails_fails_alike(fast):
    def fold(key):
        if key == "bad":
            raise ValueError("no such key")
        return key.upper()

    for data in (b"d3:badi1ee", b"d1:ai1e1:Ai2ee", b"d1:ad3:badi1eee"):
        assert outcome(fast.bdecode, data, fold_keys=fold) == outcome(
            py_bdecode, data, fold_keys=fold)
    assert outcome(fast.bdecode, b"d3:badi1ee", fold_keys=fold)[1] is BencodeError
    for data, fold in ((b"d1:ai1ee", lambda key: []), (b"d1:ai1ee", 5)):
        assert outcome(fast.bdecode, data, fold_keys=fold)[:2] == outcome(
            py_bdecode, data, fold_keys=fold)[:2]


# --- encoding what the control plane hands it ---------------------------------------------------


class Code(enum.IntEnum):
    OK = 200


class Word(enum.StrEnum):
    PING = "ping"


class Items(dict):
    def items(self):
        return [("b", 1), ("a", None), ("c", "x")]


ENCODED_ALIKE = [
    True, False, 1.5, 2.5, -0.5, 1e300, float("nan"), float("inf"), None, (1, None, "x"),
    bytearray(b"\x00\xff"), Code.OK, Word.PING, MappingProxyType({"b": 1, "a": 2}),
    OrderedDict([("z", 1), ("a", 2)]), Items(x=1), {1: "x", "1": "y", 0.5: "z"},
    {"a": None, "b": [None, 1, None]}, "\ud800", {"\ud800": 1}, ["ok", "x\udfff"], {"k": "\udc80"},
    object(), {1, 2}, [1, {2, 3}], {"a": object()}, 2**63, -(2**64), 10**5000, b"", "", [], {},
    {"é": 1, "z": 2, "a": 3, "\U0001f600": 4, "\uffff": 5}, type("MyList", (list,), {})([1]),
]


@pytest.mark.parametrize("value", ENCODED_ALIKE, ids=range(len(ENCODED_ALIKE)))
def test_odd_values_encode_alike(fast, value):
    assert outcome(fast.bencode, value) == outcome(py_bencode, value)


def test_a_value_that_contains_itself_is_a_recursion_error_on_both(fast):
    looped: list = []
    looped.append(looped)
    for encode in (py_bencode, fast.bencode):
        with pytest.raises(RecursionError):
            encode({"x": looped})


anything = st.recursive(
    st.integers() | st.floats() | st.booleans() | st.none() | st.binary(max_size=10)
    | st.text(st.characters(exclude_categories=()) | st.sampled_from("\ud800\udfff"),
              max_size=10),  # surrogates included
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5) | st.integers(-9, 9), inner, max_size=4),
    max_leaves=20,
)


@bounded
@given(anything)
def test_any_value_encodes_alike(fast, value):
    assert outcome(fast.bencode, value) == outcome(py_bencode, value)


# --- no build: the Python runs, and the start-up line says why ------------------------------------


def test_a_missing_build_falls_back_to_the_python_codec():
    out = without_builds(
        "name == 'ctl._fast'",
        "import ctl.ng, ctl.bencode\n"
        "from media import native\n"
        "assert ctl.ng.bdecode is ctl.bencode.py_bdecode\n"
        "assert ctl.ng.bencode is ctl.bencode.py_bencode\n"
        "print(native.describe()[1])\n",
    )
    assert out.startswith("per-packet work in pure Python for ")
    assert "ctl._fast: not built (no compiled module here)" in out

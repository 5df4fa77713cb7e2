"""The compiled SDP line splitter (media/_fast_sdp.c) against its Python reference
(media/sdp_parse.py's py_split_sdp): the same lines and attributes, or the same SdpError, on
offers, SDP-like text and random and mutated ASCII text (the C reads every offer a peer sends:
this is its fuzz test, bounded for CI by RTPAI_FUZZ_EXAMPLES; make asan runs it under ASan
and UBSan). tests/test_sdp.py runs the whole parser's tests on both paths.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import media.sdp_parse
from media import native, sdp_limits
from media.sdp_model import SdpError
from media.sdp_parse import parse_sdp, py_split_sdp
from tests.native_paths import require_compiled
from tests.test_sdp import _OFFER, _SDP_ISH

FUZZ_EXAMPLES = int(os.environ.get("RTPAI_FUZZ_EXAMPLES", "150"))
bounded = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# What a phone behind Kamailio offers (sipp's and a pjsip softphone's lines).
PHONE = (
    "v=0\r\no=- 3912345678 3912345678 IN IP4 192.0.2.10\r\ns=pjmedia\r\nb=AS:84\r\nt=0 0\r\n"
    "a=X-nat:0\r\nm=audio 4000 RTP/AVP 8 0 101\r\nc=IN IP4 192.0.2.10\r\nb=TIAS:64000\r\n"
    "a=rtcp:4001 IN IP4 192.0.2.10\r\na=sendrecv\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
    "a=ptime:20\r\na=ssrc:123456789 cname:4a1b2c3d4e5f6789\r\n"
)
ASCII = st.characters(max_codepoint=127)
# Line ends, the blanks str.strip() takes (\x1c-\x1f too) and what a line must start with.
PIECES = ["\r\n", "\n", "\r", "\r\r\n", " ", "\t", "\x0b", "\x0c", "\x1c", "\x1f", "\x00", "=",
          ":", " : ", "a=", "m=", "m=audio 1 RTP/AVP 0", "A=x", "v=0", "1=x", "'", '"', "\\",
          "x" * 50]


@pytest.fixture(scope="module")
def split():
    require_compiled()
    return native.load("media._fast_sdp").split_sdp


def outcome(function, text):
    try:
        return ("ok", function(text))
    except SdpError as exc:
        return ("error", type(exc), exc.reason, str(exc))


@st.composite
def mutated(draw):
    """An offer's text, edited a few times."""
    text = draw(st.sampled_from([PHONE, PHONE.replace("\r\n", "\n")]) | _OFFER)
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.integers(0, 3))
        if edit == 0:
            text = text[:at] + draw(st.sampled_from(PIECES)) + text[at:]
        elif edit == 1:
            text = text[:at] + text[at + draw(st.integers(1, 10)):]
        elif edit == 2:
            text = text[:at]
        else:
            text = text[:at] + draw(st.text(ASCII, max_size=5)) + text[at:]
    return text


@bounded
@given(mutated().filter(str.isascii) | _SDP_ISH.filter(str.isascii) | _OFFER.filter(str.isascii)
       | st.text(ASCII, max_size=200)
       | st.lists(st.sampled_from(PIECES), max_size=30).map("".join))
@example(PHONE)
@example("")
@example(" \r\n\t")
@example("v=0")
@example("v=0 \r\n\x1co=- 1 1 IN IP4 192.0.2.1\x1f")
@example("v=1\r\n")
@example("\r\n\r\nv=0\r\nx\r\n")
@example("v=0\r\na= sendrecv : x \r\na=:\r\na=\r\na\r\n")
@example("v=0\r\n" + "Z=" + "'\"\\" * 30)  # the error quotes 40 characters, as repr() does
@example("v=0\r\n" + "m=audio 1 RTP/AVP 0\r\n" * (sdp_limits.MAX_MEDIA_SECTIONS + 1))
def test_the_twins_split_alike(split, text):
    assert outcome(split, text) == outcome(py_split_sdp, text)


def test_the_parser_uses_the_compiled_splitter_for_ascii_only(split, monkeypatch):
    if native.FORCED_PURE:
        pytest.skip("RTPAI_PURE_PYTHON is set")
    assert media.sdp_parse.split_sdp is split
    calls = []
    monkeypatch.setattr(media.sdp_parse, "split_sdp", lambda text: calls.append(text) or split(text))
    parse_sdp(PHONE)
    parse_sdp(PHONE.replace("s=pjmedia", "s=Café"))  # not ASCII: the Python reads it
    assert calls == [PHONE]
    with pytest.raises(ValueError, match="ASCII"):
        split("v=0\r\ns=Café\r\n")

"""The compiled WebSocket framing (openai_flavor/_fast.c) against the Python reference.

``encode_frame`` (openai_flavor/websocket/framing.py) masks every client frame; the C twin must give
the same bytes for the same key, for every payload size class (7-bit, 16-bit, 64-bit
lengths), and the frames must unmask to the payload. tests/test_websocket.py runs the client
on both paths against an independent server (trio-websocket), which unmasks what it sends.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media import native
from openai_flavor.websocket import framing
from tests.native_paths import require_compiled

EXAMPLES = int(os.environ.get("RTPAI_FUZZ_EXAMPLES", "150"))


@pytest.fixture(scope="module")
def fast():
    require_compiled()
    return native.load("openai_flavor._fast")


def python_frame(opcode, payload, key, monkeypatch):
    """The reference: framing.py's Python encode_frame with its masking key fixed."""
    with monkeypatch.context() as patch:
        patch.setattr(framing._mask_keys, "next", lambda: key)
        return framing.py_encode_frame(opcode, payload)


def unmask(frame):
    """(opcode, payload) of one masked frame."""
    size, at = frame[1] & 0x7F, 2
    if size == 126:
        size, at = int.from_bytes(frame[2:4], "big"), 4
    elif size == 127:
        size, at = int.from_bytes(frame[2:10], "big"), 10
    key, body = frame[at:at + 4], frame[at + 4:]
    assert frame[1] & 0x80 and len(body) == size
    return frame[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(body))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.sampled_from([0x1, 0x2, 0x8, 0x9, 0xA]), st.binary(min_size=4, max_size=4),
       st.one_of(st.binary(max_size=300), st.sampled_from([b"x" * 125, b"x" * 126,
                                                            b"y" * 65535, b"z" * 65536])))
def test_encode_frame_matches_the_reference(fast, opcode, key, payload):
    with pytest.MonkeyPatch.context() as monkeypatch:
        expected = python_frame(opcode, payload, key, monkeypatch)
    assert fast.encode_frame(opcode, payload, key) == expected
    assert unmask(expected) == (opcode, payload)


def test_bad_arguments_are_errors_not_frames(fast):
    with pytest.raises(ValueError):
        fast.encode_frame(1, b"x", b"abc")  # a key is 4 bytes
    with pytest.raises(ValueError):
        fast.encode_frame(16, b"x", b"abcd")
    with pytest.raises(TypeError):
        fast.encode_frame(1, "text", b"abcd")

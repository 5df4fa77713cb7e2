"""Run a test against both per-packet paths: the Python reference and the compiled twins.

rtpai picks one path per process at import (media/native.py). The ``native_path`` fixture
(tests/conftest.py) runs a test twice, once per path, by rebinding every module-level name
that refers to one path's object to the other's twin, in every rtpai and test module already
imported (``from media.rtp import parse_rtp`` copies the name, so the defining module alone
would not do), and putting them back afterwards.

Without the extensions (not built here) the compiled run is skipped, and fails in CI, where
``pip install -e '.[dev]'`` builds them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

import media.rtp
from media import native

PREFIXES = ("media.", "ctl.", "openai_flavor.", "tests.", "bench.")


def twins() -> list[tuple[Any, Any]]:
    """(Python reference, compiled twin) for every object media/native.py may swap."""
    fast = native.load("media._fast")
    pairs: list[tuple[Any, Any]] = []
    if fast is not None:
        pairs += [
            (media.rtp.PyRtpPacket, fast.RtpPacket),
            (media.rtp.py_parse_rtp, fast.parse_rtp),
            (media.rtp.PyRtpPacketizer, fast.RtpPacketizer),
        ]
    ws_fast = native.load("openai_flavor._fast")
    if ws_fast is not None:
        from openai_flavor.websocket import framing

        pairs += [(framing.py_encode_frame, framing.fast_encode_frame)]
    sdp_fast = native.load("media._fast_sdp")
    if sdp_fast is not None:
        from media import sdp_parse

        pairs += [(sdp_parse.py_split_sdp, sdp_fast.split_sdp)]
    ng_fast = native.load("ctl._fast")
    if ng_fast is not None:
        from ctl import bencode

        pairs += [(bencode.py_bdecode, ng_fast.bdecode), (bencode.py_bencode, ng_fast.bencode)]
    return pairs


def require_compiled() -> None:
    missing = [name for name in native.EXTENSIONS if native.load(name) is None]
    if missing:
        reason = f"compiled twins not available: {native.describe()[1]}"
        if os.environ.get("CI") == "true" and not native.FORCED_PURE:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def select(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every imported module use ``path`` ("python" or "compiled")."""
    if path == "compiled":
        require_compiled()
    swap = {}
    for python, compiled in twins():
        if path == "python":
            swap[id(compiled)] = python
        else:
            swap[id(python)] = compiled
    extensions = {id(module) for module in map(native.load, native.EXTENSIONS) if module}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(PREFIXES):
            continue
        for attr, value in list(vars(module).items()):
            if path == "python" and attr == "_fast" and id(value) in extensions:
                # A module that asks the extension itself (media/clock.py: the timer).
                monkeypatch.setattr(module, attr, None)
                continue
            if id(value) in swap and not attr.startswith(("py_", "Py", "fast_")):
                monkeypatch.setattr(module, attr, swap[id(value)])


def without_builds(condition: str, checks: str) -> str:
    """Run ``checks`` (Python source) in a fresh interpreter where every module whose name
    satisfies ``condition`` (a Python expression over ``name``) fails to import, as on a
    machine without a compiler; returns what it printed."""
    import subprocess

    program = (
        "import sys\n"
        "class NoBuild:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if {condition}:\n"
        "            raise ImportError('no compiled module here')\n"
        "sys.meta_path.insert(0, NoBuild())\n"
        + checks
    )
    env = {k: v for k, v in os.environ.items() if k != "RTPAI_PURE_PYTHON"}
    return subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                          text=True, check=True).stdout

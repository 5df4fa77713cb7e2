"""Which per-packet path runs: the compiled twins (C extensions) or the Python reference.

Decided once, when this module is first imported, for the whole process (issue 14,
docs/performance.md round 4):

* ``RTPAI_PURE_PYTHON=1`` (any value but empty or ``0``) forces the Python path (tests compare
  the two; an operator can rule the C out while investigating);
* otherwise each extension (``media._fast``, ``openai_flavor._fast``, ``ctl._fast``,
  ``media._fast_sdp``) is used if it imports: ``pip install`` builds them where a C compiler
  and Python's headers exist, and installs without them where not (setup.py: ``optional``);
* a missing or broken build falls back to Python. :func:`describe` is the one start-up log
  line that says which path runs and why (ctl/daemon.py logs it).

The Python modules stay the reference: each C function has a Python twin of the same name
that does the same thing byte for byte (tests/test_fast_*.py hold them to it).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

FORCED_PURE = os.environ.get("RTPAI_PURE_PYTHON", "") not in ("", "0")

# What each extension does, for the log line.
EXTENSIONS = ("media._fast", "openai_flavor._fast", "ctl._fast", "media._fast_sdp")

_loaded: dict[str, ModuleType | None] = {}
_why: dict[str, str] = {}


def load(name: str) -> ModuleType | None:
    """The compiled module ``name`` (one of EXTENSIONS), or None: use the Python twin."""
    if name in _loaded:
        return _loaded[name]
    module = None
    if FORCED_PURE:
        _why[name] = "RTPAI_PURE_PYTHON is set"
    else:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            # Not built (no compiler at install time), or built for another Python.
            _why[name] = f"not built ({exc})"
    _loaded[name] = module
    return module


def describe() -> tuple[bool, str]:
    """(every extension in use, one line saying which path runs and why)."""
    for name in EXTENSIONS:
        load(name)
    missing = [name for name in EXTENSIONS if _loaded[name] is None]
    if not missing:
        return True, ("per-packet media, WebSocket framing, the ng codec and SDP lines: compiled ("
                      + ", ".join(EXTENSIONS) + ")")
    reasons = "; ".join(f"{name}: {_why[name]}" for name in missing)
    return False, f"per-packet work in pure Python for {', '.join(missing)}: {reasons}"

"""The compiled fast path (issue 14, docs/performance.md): optional C extensions.

Everything else about the package is in pyproject.toml; setuptools reads both. The
extensions are *optional*: where there is no compiler or no Python headers the build says so
and installs the pure-Python package, whose twins of the same functions (media/rtp.py,
openai_flavor/websocket.py, ctl/bencode.py) then run, and rtpai logs one line at start-up
saying so (media/native.py). Warnings are errors: a warning in code that parses untrusted bytes
is a bug.
"""

import os
import shlex

from setuptools import Extension, setup

# -O2 as CPython's own modules; the warnings as errors (issue 14). RTPAI_CFLAGS adds to these
# (the ASan build of docs/performance.md: RTPAI_CFLAGS="-fsanitize=address -O1 -g").
FLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=c11", "-D_GNU_SOURCE"]
FLAGS += shlex.split(os.environ.get("RTPAI_CFLAGS", ""))
LINK = shlex.split(os.environ.get("RTPAI_LDFLAGS", ""))

setup(
    ext_modules=[
        Extension("media._fast", ["media/_fast.c", "media/_fast_packet.c",
                                  "media/_fast_packetizer.c", "media/_fast_timer.c",
                                  "media/_fast_sendthread.c", "media/_fast_sendengine.c",
                                  "media/_fast_sendstream.c"],
                  depends=["media/_fast.h", "media/_fast_sendthread.h"],
                  # -pthread: the media send thread (media/_fast_sendthread.c).
                  extra_compile_args=FLAGS + ["-pthread"],
                  extra_link_args=LINK + ["-pthread"], optional=True),
        Extension("openai_flavor._fast", ["openai_flavor/_fast.c"], extra_compile_args=FLAGS,
                  extra_link_args=LINK, optional=True),
        Extension("ctl._fast", ["ctl/_fast_bencode.c", "ctl/_fast_bdecode.c"],
                  depends=["ctl/_fast.h"], extra_compile_args=FLAGS, extra_link_args=LINK,
                  optional=True),
        Extension("media._fast_sdp", ["media/_fast_sdp.c"], extra_compile_args=FLAGS,
                  extra_link_args=LINK, optional=True),
    ],
)

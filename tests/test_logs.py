"""``[log] format = json``, the call fields, ``[log] levels``: ctl/logs.py.

The redacting net must hold in JSON as in text: a key in the message, its arguments, an
exception's text or a peer-chosen field never reaches the line.
"""

from __future__ import annotations

import io
import json
import logging
from contextlib import contextmanager

import pytest

from ctl.config import ConfigError, load_config
from ctl.logs import CALLS, REDACTED, apply_levels, configure_logging, logger_levels, set_format

KEY = "sk-json-secret-0123456789"


@contextmanager
def daemon_logging(**options):
    """configure_logging on a string stream, the root logger restored afterwards."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    named = {name: logging.getLogger(name).level for name in ("rtpai.media", "rtpai.ng")}
    try:
        redactor = configure_logging(options.pop("level", "info"), [KEY], stream, **options)
        yield stream, redactor
    finally:
        logging.captureWarnings(False)
        root.handlers[:], root.level = saved
        for name, level in named.items():
            logging.getLogger(name).setLevel(level)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class FakeCall:
    def __init__(self, call_id: str, from_tag: str) -> None:
        self.call_id, self.from_tag = call_id, from_tag


def test_json_lines_carry_the_call_id_and_from_tag_of_a_call_line():
    call = FakeCall("c-1@example.net", "tag-a")
    CALLS[call.call_id] = call
    with daemon_logging(format="json") as (stream, _):
        logging.getLogger("rtpai.media").warning("call %s: RTP from %s dropped", call.call_id,
                                                 "192.0.2.7")
        logging.getLogger("rtpai.engine").info("draining: %d calls", 3)
        logging.getLogger("rtpai.ng").info("a line for a call", extra={"call_id": "c-2"})
    first, second, third = lines(stream)
    assert first["call_id"] == "c-1@example.net" and first["from_tag"] == "tag-a"
    assert first["message"] == "call c-1@example.net: RTP from 192.0.2.7 dropped"
    assert first["level"] == "warning" and first["logger"] == "rtpai.media"
    assert first["ts"].endswith("Z")
    assert "call_id" not in second and "from_tag" not in second
    assert third["call_id"] == "c-2" and "from_tag" not in third  # an unknown call


def test_json_lines_are_redacted_everywhere():
    call = FakeCall(KEY, f"tag-{KEY}")  # a peer that guessed the key as a call-id
    CALLS[KEY] = call  # (held weakly: the test holds the call)
    with daemon_logging(format="json") as (stream, _):
        log = logging.getLogger("rtpai.openai")
        log.warning("call %s: server said Bearer %s", KEY, KEY)
        try:
            raise RuntimeError(f"header Authorization: Bearer {KEY}")
        except RuntimeError:
            log.exception("the handshake failed")
    text = stream.getvalue()
    assert KEY not in text
    first, second = lines(stream)
    assert first["message"] == f"call {REDACTED}: server said Bearer {REDACTED}"
    assert first["call_id"] == REDACTED and first["from_tag"] == f"tag-{REDACTED}"
    assert f"Bearer {REDACTED}" in second["exc"]


def test_text_format_keeps_the_classic_line():
    with daemon_logging() as (stream, _):
        logging.getLogger("rtpai.call").info("call %s: ending (%s)", "c-3", "deleted")
    assert stream.getvalue().rstrip().endswith("INFO rtpai.call: call c-3: ending (deleted)")


def test_a_reload_switches_the_format():
    with daemon_logging() as (stream, redactor):
        set_format("json", redactor)
        logging.getLogger("rtpai.engine").info("now %s", "json")
    assert json.loads(stream.getvalue().splitlines()[-1])["message"] == "now json"


def test_levels_per_logger_over_the_root_level():
    with daemon_logging(level="info", levels={"media": "debug", "ng": "warning"}) as (stream, _):
        logging.getLogger("rtpai.media").debug("media debug shown")
        logging.getLogger("rtpai.ng").info("ng info hidden")
        logging.getLogger("rtpai.engine").debug("engine debug hidden")
        logging.getLogger("rtpai.engine").info("engine info shown")
        apply_levels("info", {})  # a reload without [log] levels: back to the root's
        logging.getLogger("rtpai.media").debug("media debug hidden now")
    text = stream.getvalue()
    assert "media debug shown" in text and "engine info shown" in text
    assert "hidden" not in text


def test_the_levels_setting_is_validated_with_its_name():
    assert logger_levels("media=debug, ng=WARNING") == {"media": "debug", "ng": "warning"}
    assert logger_levels("") == {}
    config = load_config(None, environ={"LOG_LEVELS": "media=debug openai=error",
                                        "LOG_FORMAT": "json"})
    assert config["log"]["levels"] == {"media": "debug", "openai": "error"}
    assert config["log"]["format"] == "json"
    for bad in ("media", "nosuch=debug", "media=loud"):
        with pytest.raises(ConfigError, match=r"\[log\] levels / LOG_LEVELS"):
            load_config(None, environ={"LOG_LEVELS": bad})
    with pytest.raises(ConfigError, match=r"\[log\] format / LOG_FORMAT"):
        load_config(None, environ={"LOG_FORMAT": "xml"})

"""The API key (and every other secret) never reaches a log line, an ng reply or an error text.

Issue 11: an ``OPENAI_API_KEY`` with a trailing newline made h11 refuse the upgrade request,
and its error, quoting the whole ``Authorization`` header, went to the log. The key is now
validated at start-up (surrounding whitespace dropped, anything else refused without showing
it), the WebSocket client names no header value in its errors, and the daemon's log handler
redacts every configured secret whatever the message (ctl/logs.py).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import warnings

import pytest
import trio

from ctl.client import send_command
from ctl.config import ConfigError, load_config
from ctl.engine import Engine
from ctl.logs import REDACTED, RedactSecrets, configure_logging
from ctl.ng import NgRequest, bencode
from tests.fakes.daemon import running_daemon
from tests.fakes.engine import handle, reply_of
from tests.fakes.realtime import FakeRealtimeServer

KEY = "sk-proj-Zr9secretKEY0123456789"
# What people paste: the key with its newline, Windows line end, a leading space, a tab.
WHITESPACE_VARIANTS = [f" {KEY}", f"{KEY}\n", f"{KEY}\r\n", f"\t{KEY}", f"{KEY} \n"]
OFFER = (
    "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
)


# --- start-up validation ------------------------------------------------------------------------


@pytest.mark.parametrize("raw", WHITESPACE_VARIANTS)
def test_surrounding_whitespace_is_dropped_from_the_key(raw):
    assert load_config(None, environ={"OPENAI_API_KEY": raw})["openai"]["key"] == KEY


@pytest.mark.parametrize(
    "raw", ["sk-proj Zr9", "sk-proj\nZr9", "sk-proj\tZr9", "sk-pröj-Zr9", "sk-\x00proj", "sk\x7f"]
)
def test_a_key_with_whitespace_control_or_non_ascii_inside_is_refused_unseen(raw):
    with pytest.raises(ConfigError) as refused:
        load_config(None, environ={"OPENAI_API_KEY": raw})
    message = str(refused.value)
    assert message.startswith("[openai] key / OPENAI_API_KEY: ")
    assert raw not in message and "proj" not in message


def test_a_profile_key_is_validated_and_named_too(tmp_path):
    path = tmp_path / "rtpai.conf"
    path.write_text("[openai:sales]\nkey = sk-sales key\n")
    with pytest.raises(ConfigError) as refused:
        load_config(str(path), environ={})
    assert str(refused.value).startswith("[openai:sales] key: ") and "sales key" not in str(
        refused.value
    )


def test_blank_key_means_no_key():
    assert load_config(None, environ={"OPENAI_API_KEY": " \n"})["openai"]["key"] is None


def test_config_lists_every_secret_for_redaction(tmp_path):
    path = tmp_path / "rtpai.conf"
    path.write_text("[openai:sales]\nkey = sk-sales-key\n")
    config = load_config(str(path), environ={
        "OPENAI_API_KEY": KEY,
        "OPENAI_TOOL_WEBHOOK": "https://hooks.example/run?token=tok-abcdef",
        "PROXY_TYPE": "webhook",
        "PROXY_URL": "https://rtpai:pa55word@proxy.example/hangup",
    })
    secrets = config.secrets()
    for secret in (KEY, "sk-sales-key", "https://hooks.example/run?token=tok-abcdef",
                   "token=tok-abcdef", "pa55word"):
        assert secret in secrets


# --- the logging layer --------------------------------------------------------------------------


def record_of(logger: logging.Logger, *args, **kwargs) -> logging.LogRecord:
    captured = []

    class Keep(logging.Handler):
        def emit(self, record):
            captured.append(record)

    handler = Keep()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error(*args, **kwargs)
    finally:
        logger.removeHandler(handler)
    return captured[0]


def formatted(record: logging.LogRecord) -> str:
    text = logging.Formatter("%(message)s").format(record)
    return text + (record.stack_info or "")


def test_the_filter_redacts_message_arguments_exception_and_stack():
    redactor = RedactSecrets([KEY, None, ""])
    logger = logging.getLogger("tests.secrets.filter")
    try:
        # h11's own complaint, as it was logged with the header it refused.
        raise ValueError(f"Illegal header value b'Bearer {KEY}\\n'")
    except ValueError:
        cases = [
            record_of(logger, "key is %s", KEY),
            record_of(logger, f"key is {KEY}"),
            record_of(logger, "headers %r", {"Authorization": f"Bearer {KEY}\n"}),
            record_of(logger, "failed", exc_info=True),
            record_of(logger, "where", stack_info=True, extra={"x": KEY}),
            record_of(logger, "broken format %d", KEY),  # a wrong format still hides it
        ]
    cases[4].stack_info = f"Stack: headers={KEY}"
    for record in cases:
        assert redactor.filter(record) is True
        text = formatted(record)
        assert KEY not in text, text
    assert REDACTED in formatted(cases[0]) and REDACTED in formatted(cases[3])


def test_the_filter_knows_escaped_spellings():
    secret = "sk-with\\backslash"
    redactor = RedactSecrets([secret])
    assert redactor.redact(repr(secret)) == f"'{REDACTED}'"
    assert redactor.redact(repr(f"Bearer {secret}".encode())) == f"b'Bearer {REDACTED}'"


def test_short_values_are_not_secrets():
    # A blank or 3-character value would turn ordinary words into [redacted].
    assert RedactSecrets(["abc"]).redact("abcdef") == "abcdef"


def test_the_daemons_logging_writes_no_secret():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        redactor = configure_logging("debug", [KEY], stream)
        logging.getLogger("rtpai.test").info("Bearer %s", KEY)
        redactor.add(["sk-rotated-key"])  # what SIGHUP does with a new key
        logging.getLogger("rtpai.test").warning("now sk-rotated-key")
        warnings.warn(f"a library warns about {KEY}", UserWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
        root.handlers[:], root.level = saved
    assert KEY not in stream.getvalue() and "sk-rotated-key" not in stream.getvalue()
    assert stream.getvalue().count(REDACTED) == 3


# --- a real call path: the Realtime server refuses the key --------------------------------------


async def _call_until_ai_fails(engine: Engine, call_id: str) -> bytes:
    """Offer, wait for the AI failure to end the call, query and delete; the replies' bytes."""
    replies = [reply_of(handle(engine, NgRequest("offer", {
        "call-id": call_id, "from-tag": "ft", "sdp": OFFER,
    })))]
    call = engine.calls[call_id]
    with trio.fail_after(10):
        await call.ended.wait()
    request = NgRequest("query", {"call-id": call_id})
    replies.append(handle(engine, request))
    replies.append(handle(engine, NgRequest("delete", {"call-id": call_id})))
    assert call.end_reason.startswith("AI session failed"), call.end_reason
    return b"".join(bencode(reply) for reply in replies)


def _all_log_text(caplog) -> str:
    texts = [caplog.text]
    for record in caplog.records:
        texts.append(record.getMessage())
        if record.exc_info:
            texts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(texts)


@pytest.mark.parametrize("raw", WHITESPACE_VARIANTS)
async def test_a_refused_key_is_in_no_log_record_nor_reply(raw, caplog):
    caplog.set_level(logging.DEBUG)
    server = FakeRealtimeServer(api_key="the-right-key")
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        engine = Engine(load_config(None, environ={
            "NG_LISTEN": "127.0.0.1:0", "RTP_MIN_PORT": "43400", "RTP_MAX_PORT": "43419",
            "OPENAI_URL": url, "OPENAI_API_KEY": raw, "OPENAI_RECONNECT_TIMEOUT": "0",
        }))
        await nursery.start(engine.run)
        replies = await _call_until_ai_fails(engine, "refused")
        nursery.cancel_scope.cancel()
    assert KEY.encode() not in replies
    assert KEY not in _all_log_text(caplog)


async def test_an_unsendable_key_past_the_config_check_is_never_quoted(caplog):
    """Belt and braces: settings built by other code, with the newline still in the key, fail
    the call with a reason that does not quote the header (h11's error did)."""
    caplog.set_level(logging.DEBUG)
    server = FakeRealtimeServer(api_key=KEY)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        engine = Engine(load_config(None, environ={
            "NG_LISTEN": "127.0.0.1:0", "RTP_MIN_PORT": "43420", "RTP_MAX_PORT": "43439",
            "OPENAI_URL": url, "OPENAI_API_KEY": KEY, "OPENAI_RECONNECT_TIMEOUT": "5",
        }))
        engine.settings = dataclasses.replace(engine.settings, api_key=f"{KEY}\n")
        await nursery.start(engine.run)
        replies = await _call_until_ai_fails(engine, "unsendable")
        nursery.cancel_scope.cancel()
    assert KEY.encode() not in replies
    assert b"not valid HTTP" in replies  # fatal at once: no retry sends a different header
    assert KEY not in _all_log_text(caplog)


@pytest.mark.parametrize("raw", [f"{KEY}\n", f" {KEY}\t"])
async def test_the_daemon_writes_no_key_to_stderr_when_it_is_refused(raw):
    server = FakeRealtimeServer(api_key="the-right-key")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            env = {**os.environ, "OPENAI_URL": url, "OPENAI_API_KEY": raw, "LOG_LEVEL": "debug",
                   "NG_LISTEN": "127.0.0.1:0", "RTP_MIN_PORT": "43440", "RTP_MAX_PORT": "43459",
                   "OPENAI_RECONNECT_TIMEOUT": "0"}
            async with running_daemon(env) as (daemon, log):
                ng = _ng_address(log)
                replies = [await trio.to_thread.run_sync(
                    send_command, ng, "offer",
                    {"call-id": "d1", "from-tag": "ft", "sdp": OFFER})]
                await log.wait_for(b"AI session failed")
                replies.append(await trio.to_thread.run_sync(
                    send_command, ng, "query", {"call-id": "d1"}))
                replies.append(await trio.to_thread.run_sync(
                    send_command, ng, "delete", {"call-id": "d1"}))
            nursery.cancel_scope.cancel()
    assert replies[1]["rtpai"]["state"] in ("ending", "ended")  # the AI failure ends it
    assert KEY.encode() not in b"".join(bencode(reply) for reply in replies)
    assert KEY.encode() not in log
    assert b"invalid_api_key" in log  # the failure itself is told


def _ng_address(log: bytes) -> tuple[str, int]:
    # "rtpai ready: ng on 127.0.0.1:PORT"
    line = log[log.index(b"rtpai ready: ng on "):].split(b"\n", 1)[0]
    host, _, port = line.rsplit(b" ", 1)[1].decode().rpartition(":")
    return host, int(port)


def test_a_crash_of_the_daemon_is_written_through_the_redacting_log(monkeypatch, capsys):
    """An exception that ends trio.run is logged, not printed by Python's hook: its text (here
    quoting the key, as h11's did) passes the redaction like every other line."""
    from ctl import daemon

    async def crash(engine, reload=None):
        raise RuntimeError(f"Illegal header value b'Bearer {KEY}'")

    monkeypatch.setattr(daemon, "serve", crash)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("NG_LISTEN", "127.0.0.1:0")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        assert daemon.main([]) == 1
    finally:
        root.handlers[:], root.level = saved
    err = capsys.readouterr().err
    assert "rtpai stopped by an internal error" in err and "Illegal header value" in err
    assert KEY not in err and REDACTED in err

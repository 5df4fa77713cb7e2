"""Logging for the daemon: one stderr handler, secrets redacted on their way out, call fields.

Every secret the configuration holds (the API keys of ``[openai]`` and its profiles, the tools'
webhook URLs, a password in a proxy URL) is replaced by ``[redacted]`` in each record before it
is written: in the message and its arguments, in the exception text and the stack. The code
that logs already avoids secrets (``Config.__repr__``, ``session.redact`` for server errors);
this filter is the net under it, for the message nobody thought of: a library's exception that
quotes a header, a traceback's local variables, a server that echoes the key back.

``[log] format = json`` writes one JSON object per line (for Loki, Elasticsearch, journald's
JSON export): every line about a call carries ``call_id`` and ``from_tag`` as fields
(:class:`CallFields`), found from the line's ``call %s:`` prefix, which every such line of
rtpai's has, whichever task logs it. In text the prefix stays as it always was.
Per-packet events are counted (the media statistics, the metrics), never logged per packet.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

REDACTED = "[redacted]"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")
# rtpai's loggers, by the short name [log] levels uses: rtpai.NAME (rtpai: the daemon's own).
LOGGERS = ("rtpai", "engine", "ng", "call", "media", "openai", "proxy", "metrics")


def logger_name(short: str) -> str:
    return "rtpai" if short == "rtpai" else f"rtpai.{short}"


def logger_levels(text: str) -> dict[str, str]:
    """``[log] levels``: ``NAME=LEVEL`` pairs, comma- or space-separated, e.g.
    ``media=debug, ng=warning``; NAME is one of :data:`LOGGERS`."""
    levels: dict[str, str] = {}
    for pair in text.replace(",", " ").split():
        name, sep, level = pair.partition("=")
        name, level = name.strip().lower(), level.strip().lower()
        if not sep or name not in LOGGERS or level not in LEVELS:
            raise ValueError(f"expected NAME=LEVEL pairs, NAME one of {', '.join(LOGGERS)}, "
                             f"LEVEL one of {', '.join(LEVELS)}")
        levels[name] = level
    return levels


def apply_levels(level: str, levels: Mapping[str, str]) -> None:
    """The root logger at ``level``, the loggers ``levels`` names at theirs, the others
    following the root again (a reload that drops a name restores it)."""
    logging.getLogger().setLevel(level.upper())
    for short in LOGGERS:
        own = levels.get(short)
        logging.getLogger(logger_name(short)).setLevel(own.upper() if own else logging.NOTSET)


# Calls by call-id, for the from-tag of a line that names only the call-id. Weak: a call
# forgotten by the engine leaves at once. (A fork's calls share a call-id: the latest wins.)
CALLS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
CALL_PREFIX = "call %s"


class CallFields(logging.Filter):
    """Adds ``call_id`` and ``from_tag`` to a record about a call (None on other records).

    A record is about a call when it was logged with ``extra={"call_id": ...}`` or its
    message starts with ``call %s`` (every call's line in rtpai: ctl/, media/, openai_flavor/);
    the from-tag is the known call's (:data:`CALLS`). Only logged lines pay for this.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        call_id = getattr(record, "call_id", None)
        if call_id is None and isinstance(record.msg, str) and record.msg.startswith(
                CALL_PREFIX) and isinstance(record.args, tuple) and record.args:
            call_id = str(record.args[0])
        record.call_id = call_id
        if getattr(record, "from_tag", None) is None:
            call = CALLS.get(call_id) if call_id is not None else None
            record.from_tag = getattr(call, "from_tag", None)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601, ms), level, logger, message, call_id,
    from_tag (on lines about a call), exc (a traceback, when there is one)."""

    def __init__(self, redactor: RedactSecrets) -> None:
        super().__init__()
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        redact = self._redactor.redact
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),  # redacted by the handler's filter already
        }
        for key in ("call_id", "from_tag"):
            value = getattr(record, key, None)
            if value is not None:
                line[key] = redact(str(value))  # peer-chosen text: through the net too
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self.formatException(record.exc_info))
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False)


# Shorter strings would redact ordinary words; no real key, token or password is this short.
MIN_SECRET_LENGTH = 4


def _spellings(secret: str) -> set[str]:
    """The secret as it may appear in text: itself, and as repr() escapes it (an exception
    that quotes a str or bytes value shows backslashes and non-ASCII escaped)."""
    return {
        secret,
        repr(secret)[1:-1],
        repr(secret.encode("utf-8", "backslashreplace"))[2:-1],
    }


class RedactSecrets(logging.Filter):
    """A handler filter that rewrites records so that no configured secret is written.

    Installed on handlers (a logger's filter would not see its children's records). The record
    is changed in place, so every handler after this one, and any that formats it later, sees
    only the redacted text. Records without a secret pass unchanged but for the cost of one
    ``getMessage`` and a substring search per secret: logging is off the media hot path.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str | None]) -> None:
        """Redact these too (a reload keeps the old ones: calls still running use them)."""
        known = set(self._secrets)
        for secret in secrets:
            if secret and len(secret) >= MIN_SECRET_LENGTH:
                known |= _spellings(secret)
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = tuple(sorted(known, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
            broken = False
        except Exception:
            # Arguments that do not fit the format: the handler's error report would print
            # the raw arguments, past this filter; write the format and arguments, redacted.
            message, broken = f"{record.msg} {record.args!r}", True
        redacted = self.redact(message)
        if broken or redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            # What Formatter.format would produce; it uses exc_text as it finds it.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def configure_logging(
    level: str,
    secrets: Iterable[str | None],
    stream: TextIO | None = None,
    *,
    format: str = "text",
    levels: Mapping[str, str] | None = None,
) -> RedactSecrets:
    """The daemon's logging: ``level`` (and ``levels`` per logger), one handler on ``stream``
    (stderr) in ``format`` (text or json), secrets redacted, call fields added.

    Returns the filter, so a reload can add secrets and tests can check it is in place.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    redactor = RedactSecrets(secrets)
    handler.addFilter(CallFields())
    handler.addFilter(redactor)  # after CallFields: the JSON line's fields are redacted too
    handler.setFormatter(JsonFormatter(redactor) if format == "json"
                         else logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    apply_levels(level, levels or {})
    # Python's warnings print to stderr themselves; through the log they pass the filter too.
    logging.captureWarnings(True)
    # Python's last-resort handler (used when no handler is configured) is not ours to filter;
    # with the one above in place it is never used.
    return redactor


def set_format(format: str, redactor: RedactSecrets) -> None:
    """``[log] format`` on a reload: the daemon's handler (the one ``redactor`` guards)
    writes in ``format`` from the next record on."""
    for handler in logging.getLogger().handlers:
        if redactor in handler.filters:
            handler.setFormatter(JsonFormatter(redactor) if format == "json"
                                 else logging.Formatter(LOG_FORMAT))

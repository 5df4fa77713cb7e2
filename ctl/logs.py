"""Logging for the daemon: one stderr handler, and secrets redacted on their way out.

Every secret the configuration holds (the API keys of ``[openai]`` and its profiles, the tools'
webhook URLs, a password in a proxy URL) is replaced by ``[redacted]`` in each record before it
is written: in the message and its arguments, in the exception text and the stack. The code
that logs already avoids secrets (``Config.__repr__``, ``session.redact`` for server errors);
this filter is the net under it, for the message nobody thought of: a library's exception that
quotes a header, a traceback's local variables, a server that echoes the key back.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TextIO

REDACTED = "[redacted]"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
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
    level: str, secrets: Iterable[str | None], stream: TextIO | None = None
) -> RedactSecrets:
    """The daemon's logging: ``level``, one handler on ``stream`` (stderr), secrets redacted.

    Returns the filter, so a reload can add secrets and tests can check it is in place.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    redactor = RedactSecrets(secrets)
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Python's warnings print to stderr themselves; through the log they pass the filter too.
    logging.captureWarnings(True)
    # Python's last-resort handler (used when no handler is configured) is not ours to filter;
    # with the one above in place it is never used.
    return redactor

"""The custom tools' webhook: one HTTP POST of JSON per tool call (over ``media/http.py``)."""

from __future__ import annotations

import json
from typing import Any

from media.http import HttpError, HttpRequest, http_request

# The session catches this name; it is the shared client's error.
WebhookError = HttpError


async def post_json(url: str, payload: Any) -> tuple[int, bytes]:
    """POST ``payload`` as JSON; returns ``(status, body)``. Bound it with a cancel scope."""
    return await http_request(HttpRequest("POST", url, json.dumps(payload).encode()))

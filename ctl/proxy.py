"""Talking back to the SIP proxy: hang a call up, transfer it.

The ng protocol has no callback, so rtpai calls the proxy's own management interface, as
rtpengine does with its XML-RPC teardown of timed-out calls:

- ``kamailio``: JSON-RPC over HTTP (jsonrpcs + xhttp). Hang-up is ``dlg.terminate_dlg
  callid from_tag to_tag``; transfer is an HTTP GET to the config's ``/rtpai/transfer`` xhttp
  route, which finds the dialog (``dlg_get``) and sends the caller a REFER (``dlg_refer``).
- ``opensips``: MI over HTTP (mi_http, JSON-RPC): ``dlg_end_dlg`` with the dialog's Call-ID;
  transfer is ``dlg_send_sequential`` with ``method=REFER``, which sends the caller an
  in-dialog REFER and answers with the caller's reply (202, or a refusal).
- ``webhook``: a JSON event ``{event, call_id, from_tag, to_tag, reason, target}`` POSTed to
  any URL, for B2BUAs and call-control services.

The request bodies are built by pure functions; ``media/http.py`` moves them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import trio

from media.http import HttpError, HttpRequest, http_request

log = logging.getLogger("rtpai.proxy")

class ProxyError(Exception):
    """The proxy could not be told; the message is safe to log.

    ``gone``: the proxy knows no such dialog (JSON-RPC 404 / "dialog not found").
    ``final``: a definitive answer (the caller declined the REFER): asking again cannot help.
    """

    def __init__(self, message: str, *, gone: bool = False, final: bool = False) -> None:
        super().__init__(message)
        self.gone = gone
        self.final = final


@dataclass(frozen=True)
class ProxyOutcome:
    """What became of one request: done or not, and why (safe to log and to tell the AI)."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class ProxyEvent:
    event: str  # "hangup" or "transfer"
    call_id: str
    from_tag: str
    to_tag: str | None
    reason: str
    target: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "call_id": self.call_id,
            "from_tag": self.from_tag,
            "to_tag": self.to_tag,
            "reason": self.reason,
            "target": self.target,
        }


# What may stand in a Refer-To / Referred-By header: a SIP URI without the characters that
# would end the header or the name-addr (the target comes from the configuration's allow-list,
# but a header is no place to trust that).
_HEADER_UNSAFE = frozenset("\r\n<>\"\0")


def _json_rpc(method: str, params: Any, request_id: int) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": request_id},
                      separators=(",", ":")).encode()


def build_request(kind: str, url: str, event: ProxyEvent, request_id: int = 1) -> HttpRequest:
    """The HTTP request that makes proxy ``kind`` carry out ``event``.

    Raises :class:`ProxyError` when the proxy cannot do it (e.g. no To-tag to name the dialog
    with Kamailio, or a transfer through OpenSIPS's MI).
    """
    if kind == "webhook":
        return HttpRequest("POST", url, json.dumps(event.as_dict()).encode())
    if kind == "kamailio":
        if not event.to_tag:
            # dlg.terminate_dlg and dlg_get need all three identifiers; the proxy must pass
            # its local To-tag in the offer (to-tag=$ltt(t)), see docs/kamailio.md.
            raise ProxyError("no To-tag known for the call: pass to-tag=$ltt(t) in the offer")
        if event.event == "hangup":
            body = _json_rpc("dlg.terminate_dlg", [event.call_id, event.from_tag, event.to_tag],
                             request_id)
            return HttpRequest("POST", url, body)
        base = url.split("?", 1)[0].rstrip("/")
        if base.endswith("/RPC"):
            base = base[: -len("/RPC")]
        query = "&".join(
            f"{name}={quote(value, safe='')}"
            for name, value in (("callid", event.call_id), ("ftag", event.from_tag),
                                ("ttag", event.to_tag), ("target", event.target or ""))
        )
        return HttpRequest("GET", f"{base}/rtpai/transfer?{query}")
    if kind == "opensips":
        if event.event == "hangup":
            return HttpRequest("POST", url, _json_rpc(
                "dlg_end_dlg", {"dialog_id": event.call_id}, request_id))
        target = event.target or ""
        if not target or _HEADER_UNSAFE & set(target):
            raise ProxyError(f"cannot REFER to {target!r}: not a plain SIP URI")
        # The dialog module sends the REFER in the dialog (mode=caller: to the caller's leg);
        # OpenSIPS 3.6 takes `headers` only together with method, body and mode.
        referred_by = f"sip:rtpai@{urlsplit(url).hostname or 'localhost'}"
        params = {
            "callid": event.call_id,
            "method": "REFER",
            "body": "none",
            "mode": "caller",
            "headers": f"Refer-To: <{target}>\r\nReferred-By: <{referred_by}>\r\n",
        }
        return HttpRequest("POST", url, _json_rpc("dlg_send_sequential", params, request_id))
    raise ProxyError(f"unknown proxy type {kind!r}")


def check_response(kind: str, status: int, body: bytes) -> None:
    """Raise :class:`ProxyError` unless the proxy says it did it."""
    if not 200 <= status < 300:
        raise ProxyError(f"HTTP {status}: {body[:200].decode(errors='replace').strip()}")
    if kind in ("kamailio", "opensips") and body.lstrip().startswith(b"{"):
        reply = json.loads(body)
        if not isinstance(reply, dict):
            return
        if reply.get("error"):
            error = reply["error"]
            message = error.get("message") if isinstance(error, dict) else error
            code = error.get("code") if isinstance(error, dict) else None
            # Kamailio: "Dialog not found"; OpenSIPS: "Requested Dialog not found" / 404.
            gone = code == 404 or "dialog not found" in str(message).lower()
            raise ProxyError(f"JSON-RPC error: {message}", gone=gone)
        result = reply.get("result")
        # OpenSIPS's dlg_send_sequential answers with the far end's final reply: a refused
        # REFER (e.g. 603 Declined) is a result too, not an error.
        code = result.get("Code") if isinstance(result, dict) else None
        if isinstance(code, int) and code >= 300:
            raise ProxyError(f"the caller answered {code} {result.get('Reason', '')}".strip(),
                             final=True)


class ProxyNotifier:
    """Carries out hang-ups and transfers through the configured proxy, with retries."""

    def __init__(self, kind: str, url: str | None, *, timeout: float = 2.0, retries: int = 2,
                 retry_delay: float = 0.5) -> None:
        self.kind = kind
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self._ids = 0
        self.sent: list[ProxyEvent] = []  # what was carried out, for statistics and tests
        # What was asked, answered or not: the proxy may carry out a hang-up (its BYE reaches
        # rtpai as a delete, ending the call and the request's task) before it answers.
        self.asked: list[ProxyEvent] = []

    @property
    def enabled(self) -> bool:
        return self.kind != "none" and bool(self.url)

    @property
    def transfer_ends_dialog(self) -> bool:
        """Whether the proxy releases the old dialog itself once a transfer is accepted:
        Kamailio's dlg_refer does (and a webhook's service decides); OpenSIPS's in-dialog
        REFER through MI does not, so rtpai hangs up after it."""
        return self.kind != "opensips"

    def cannot(self, event: str) -> str | None:
        """Why ``event`` ("hangup", "transfer") cannot be carried out here, or None."""
        if not self.enabled:
            return "no [proxy] is configured to end or transfer calls"
        return None

    async def notify(self, event: ProxyEvent) -> bool:
        """Try up to ``1 + retries`` times; log and return False when the proxy cannot be told."""
        return (await self.carry_out(event)).ok

    async def carry_out(self, event: ProxyEvent) -> ProxyOutcome:
        """:meth:`notify`, saying why when it fails."""
        if not self.enabled:
            log.warning("call %s: cannot %s (%s): no [proxy] configured", event.call_id,
                        event.event, event.reason)
            return ProxyOutcome(False, "no proxy is configured")
        assert self.url is not None
        self._ids += 1
        try:
            request = build_request(self.kind, self.url, event, self._ids)
        except ProxyError as exc:
            log.warning("call %s: cannot %s: %s", event.call_id, event.event, exc)
            return ProxyOutcome(False, str(exc))
        self.asked.append(event)
        # Logged before the request: the proxy's BYE may end the call (and this request's
        # task with it) before the proxy answers.
        log.info("call %s: asking %s to %s (%s)", event.call_id, self.kind, event.event,
                 event.reason)
        detail = ""
        # Whether an earlier attempt may have done it unseen (an error or a timeout on the way
        # back); a "dialog not found" at the first attempt proves nothing of the kind.
        maybe_done = False
        for attempt in range(1 + self.retries):
            try:
                status, body = await http_request(request, timeout=self.timeout)
                check_response(self.kind, status, body)
            except (ProxyError, HttpError, trio.TooSlowError) as exc:
                gone = isinstance(exc, ProxyError) and exc.gone
                if gone and maybe_done and event.event == "hangup":
                    # An earlier attempt failed on the way back (OpenSIPS answered 500 yet
                    # sent the BYE): the dialog being gone now means it was ended.
                    log.info("call %s: hangup through %s: the dialog is gone after attempt %d",
                             event.call_id, self.kind, attempt)
                    self.sent.append(event)
                    return ProxyOutcome(True, "the dialog was already gone")
                maybe_done = maybe_done or not gone
                detail = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
                log.warning("call %s: %s through %s failed (attempt %d): %s", event.call_id,
                            event.event, self.kind, attempt + 1, detail)
                if isinstance(exc, ProxyError) and exc.final:
                    return ProxyOutcome(False, detail)  # a REFER again would ring again
                if isinstance(exc, trio.TooSlowError) and event.event == "transfer":
                    # The REFER may be on its way (OpenSIPS answers once the caller has):
                    # sending another could transfer the caller twice.
                    return ProxyOutcome(False, f"the proxy ({self.kind}) did not answer in "
                                               f"{self.timeout:g} s")
                if attempt < self.retries:
                    await trio.sleep(self.retry_delay * 2**attempt)
                continue
            log.info("call %s: %s through %s: done", event.call_id, event.event, self.kind)
            self.sent.append(event)
            return ProxyOutcome(True, "done")
        return ProxyOutcome(False, f"the proxy ({self.kind}) failed: {detail}")

"""What rtpai asks the SIP proxy to do for a call: hang it up, transfer it, and then wait
(bounded) for the proxy's ``delete`` that follows.

Every request here runs as a task of the call it is about (``Call.follow_up`` while the call
is up, ``Call.after_end`` once it has ended), so it dies with the call and never with another;
ctl/proxy.py is the client that carries the requests, this module decides when to send which.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from ctl.call import Call, CallState
from ctl.proxy import ProxyEvent, ProxyNotifier
from media.bridge import EndReason

log = logging.getLogger("rtpai.engine")

# How long a transfer waits for the words the AI said before it to finish playing.
TRANSFER_PLAYOUT_WAIT = 15.0
# A hang-up rtpai asks for by itself (media timeout, AI failure) and the proxy refuses is asked
# again after these pauses (the last repeats), while [proxy] hangup_timeout lasts.
HANGUP_RETRY_PAUSES = (0.25, 0.5, 1.0, 2.0)


class CallControl:
    """Hang-ups and transfers through ``proxy``; failures and unanswered hang-ups are counted
    in ``totals`` (the engine's ``statistics`` counters)."""

    def __init__(self, proxy: ProxyNotifier, *, hangup_timeout: float,
                 totals: dict[str, int]) -> None:
        self.proxy = proxy
        self.hangup_timeout = hangup_timeout  # [proxy] hangup_timeout: the wait for a delete
        self._totals = totals
        # Hang-up requests for ended calls that have not finished yet (sent or given up):
        # the drain waits for them, the SIGUSR1 summary counts them.
        self.under_way: set[trio.Event] = set()

    @property
    def longest_request(self) -> float:
        """The longest one request to the proxy can take: [proxy] timeout per try, retries."""
        return self.proxy.timeout * (1 + self.proxy.retries)

    def tell_ended(self, call: Call, reason: str) -> None:
        """``call`` ended by itself (or at shutdown) while the caller is still on the line:
        ask the proxy to hang the caller up, as the ended call's own last task."""
        event = ProxyEvent("hangup", call.call_id, call.from_tag, call.to_tag, reason)
        done = trio.Event()
        self.under_way.add(done)  # from now: a drain that starts meanwhile waits for it
        call.after_end(self._notify, event, done)

    async def _notify(self, event: ProxyEvent, done: trio.Event) -> None:
        try:
            await self.proxy.notify(event)
        finally:
            self.under_way.discard(done)
            done.set()

    async def hang_up(self, call: Call, kind: EndReason, reason: str, by_ai: bool) -> None:
        """A task of ``call``: ask the proxy to end it, then wait (bounded) for the delete,
        which cancels this task with the call."""
        record = call.hangup
        assert record is not None
        event = ProxyEvent("hangup", call.call_id, call.from_tag, call.to_tag, reason)
        try:
            if by_ai:
                # The model hears a refusal at once and may go on talking to the caller.
                outcome = await self.proxy.carry_out(event)
            else:
                outcome = await self._ask_until_accepted(event)
        finally:
            if call.state is CallState.ENDING and record["status"] == "requested":
                # The proxy's BYE came back as a delete before its answer did (OpenSIPS and
                # Kamailio send it while handling the request): done, whatever it answers.
                record["status"] = "sent"
        if not outcome.ok:
            record.update(status="failed", error=outcome.detail)
            self._totals["hangup failures"] += 1
            if by_ai:
                # The caller is still there: the model says so instead of going silent.
                call.bridge.action_failed("hang-up", outcome.detail)
                return
            # No delete will come: end here; ending without the proxy forgets the call too.
            call.end(kind, reason, tell_proxy=False)
            return
        record["status"] = "sent"
        call.pending_reason = (kind, reason)
        await self._await_delete(call, reason)

    async def _ask_until_accepted(self, event: ProxyEvent) -> Any:
        """Ask for ``event`` until the proxy accepts or ``hangup_timeout`` has passed.

        A refusal may be transient, and giving up on it leaves the caller's dialog up with
        no media behind it: Kamailio cannot end a dialog that is not confirmed yet ("terminating
        non-confirmed dialogs not supported"), and a media timeout or an AI failure can come
        before the caller's ACK has reached it (a loaded proxy, a slow network)."""
        deadline = trio.current_time() + self.hangup_timeout
        pauses = iter(HANGUP_RETRY_PAUSES)
        pause = 0.0
        while True:
            outcome = await self.proxy.carry_out(event)
            pause = next(pauses, pause)
            if outcome.ok or trio.current_time() + pause >= deadline:
                return outcome
            self._totals["hangup retries"] += 1
            log.info("call %s: the proxy refused the hang-up (%s): asking again in %g s",
                     event.call_id, outcome.detail, pause)
            await trio.sleep(pause)

    async def _await_delete(self, call: Call, reason: str) -> None:
        """The proxy accepted: its delete ends the call (and this wait, a task of the call).
        Past ``[proxy] hangup_timeout`` the call ends here."""
        await trio.sleep(self.hangup_timeout)
        if call.hangup is not None:
            call.hangup["status"] = "no delete"
        self._totals["hangup timeouts"] += 1
        log.warning("call %s: no delete within %g s of the proxy's accepting (%s): ending the "
                    "call here", call.call_id, self.hangup_timeout, reason)
        call.end_unanswered(f"proxy did not hang up ({reason})")  # and forgets it

    def transfer(self, call: Call, record: dict[str, Any]) -> None:
        """The AI asked for a transfer: once what it said so far has played, REFER.

        A task of the call: if the call ends first, there is nobody left to transfer."""
        if not call.follow_up(self._transfer_after_playout, call, record):
            record.update(status="failed", error="the call has ended")

    async def _transfer_after_playout(self, call: Call, record: dict[str, Any]) -> None:
        # "I'm transferring you now" must reach the caller before the REFER moves them; a
        # bound keeps a stuck queue from holding the transfer back for ever.
        with trio.move_on_after(TRANSFER_PLAYOUT_WAIT):
            await call.bridge.wait_playout_idle()
        target = record["target"]
        event = ProxyEvent("transfer", call.call_id, call.from_tag, call.to_tag,
                           "requested by the AI", target=target)
        try:
            outcome = await self.proxy.carry_out(event)
        finally:
            if call.state is CallState.ENDING and record["status"] == "requested":
                record["status"] = "sent"  # the proxy's delete came before its answer
        if not outcome.ok:
            record.update(status="failed", error=outcome.detail)
            call.bridge.action_failed("transfer", outcome.detail)
            return
        record["status"] = "sent"
        reason = f"transferred to {target}"
        if self.proxy.transfer_ends_dialog:
            # The proxy releases the old dialog itself (Kamailio's dlg_refer BYEs it).
            call.pending_reason = (EndReason.TRANSFERRED, reason)
            await self._await_delete(call, reason)
        else:
            # OpenSIPS's in-dialog REFER leaves the dialog up: end it now that the caller
            # has accepted, as Kamailio's dlg_refer does.
            call.hang_up(EndReason.TRANSFERRED, reason)

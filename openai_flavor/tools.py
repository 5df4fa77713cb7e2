"""The model's function calls: ``end_call``, ``transfer_call`` and the webhook tools.

:meth:`ToolCalls.answer` runs one response's calls (webhooks at once, each bounded by
``tool_timeout``) and returns the outputs to send back, in the order called, and the hang-up
asked for, if any. What follows (the goodbye, the next response) is the conversation's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import trio

from media.bridge import CallBridge
from openai_flavor.settings import END_CALL_TOOL, TRANSFER_TOOL, RealtimeSettings
from openai_flavor.stats import RealtimeStats
from openai_flavor.turns import FunctionCall, ResponseDone
from openai_flavor.webhook import WebhookError, post_json

log = logging.getLogger("rtpai.openai")


@dataclass
class ToolAnswers:
    outputs: list[tuple[str, str]]  # (call id, output) for every call but end_call
    hang_up: str | None  # the model called end_call: the reason, for the statistics
    end_call_id: str | None  # that call's id (its output depends on the goodbye)


class ToolCalls:
    # Slots (issue 16's per-call cost): one per call; nothing assigns others.
    __slots__ = ("bridge", "settings", "stats")

    def __init__(self, settings: RealtimeSettings, bridge: CallBridge,
                 stats: RealtimeStats) -> None:
        self.settings = settings
        self.bridge = bridge
        self.stats = stats

    async def answer(self, done: ResponseDone) -> ToolAnswers:
        """Run a response's function calls; record each outcome in the statistics."""
        outputs: dict[str, str] = {}
        hang_up: str | None = None
        end_call_id: str | None = None
        records = []
        async with trio.open_nursery() as nursery:
            for call in done.calls:
                records.append({"name": call.name, "call id": call.call_id})
                log.info("call %s: the model calls %s(%s)", self.bridge.call_id, call.name,
                         json.dumps(call.arguments))
                if call.name == END_CALL_TOOL and self.settings.end_call_tool:
                    reason = (call.arguments or {}).get("reason")
                    hang_up = "the AI ended the call" + (f": {reason}" if reason else "")
                    end_call_id = end_call_id or call.call_id
                elif call.name == TRANSFER_TOOL and self.settings.transfer_enabled:
                    outputs[call.call_id] = self._transfer(call)
                elif any(tool.name == call.name for tool in self.settings.tools):
                    nursery.start_soon(self._call_webhook, call, outputs)
                else:
                    outputs[call.call_id] = json.dumps({"error": f"unknown tool {call.name}"})
        answered = []
        for call, record in zip(done.calls, records, strict=True):
            output = outputs.get(call.call_id)
            # The outcome only, not the output: it may carry the webhook's customer data.
            record["result"] = "hang up" if output is None else (
                "error" if output.startswith(('{"error"', '{"ok": false')) else "ok")
            self.stats.tool_calls.append(record)
            if output is not None:
                answered.append((call.call_id, output))
        return ToolAnswers(answered, hang_up, end_call_id)

    def _transfer(self, call: FunctionCall) -> str:
        target = (call.arguments or {}).get("target") or self.settings.transfer_target
        if not isinstance(target, str) or not self.settings.transfer_allowed(target):
            log.warning("call %s: transfer to %r refused: not in the allow-list",
                        self.bridge.call_id, target)
            allowed = sorted({*self.settings.transfer_allow,
                              *filter(None, [self.settings.transfer_target])})
            return json.dumps({"ok": False, "error": "this target is not allowed",
                               "allowed targets": allowed})
        self.bridge.transfer(target)
        return json.dumps({"ok": True, "target": target})

    async def _call_webhook(self, call: FunctionCall, outputs: dict[str, str]) -> None:
        url = self.settings.tool_webhook
        assert url is not None  # the configuration requires it with tools
        payload = {"call_id": self.bridge.call_id, "tool": call.name,
                   "arguments": call.arguments}
        output = None
        with trio.move_on_after(self.settings.tool_timeout):
            try:
                status, body = await post_json(url, payload)
            except WebhookError as exc:
                output = json.dumps({"error": f"the tool failed: {exc}"})
            else:
                text = body.decode("utf-8", "replace")
                output = text if 200 <= status < 300 else json.dumps(
                    {"error": f"the tool failed (HTTP {status})"})
        if output is None:
            output = json.dumps({"error": "the tool did not answer in time"})
        if output.startswith('{"error"'):
            log.warning("call %s: tool %s: %s", self.bridge.call_id, call.name, output)
        outputs[call.call_id] = output

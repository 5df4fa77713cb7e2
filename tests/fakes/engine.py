"""rtpai's Engine as the tests run it: in-process, on 127.0.0.1, with its commands observable."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import trio

from ctl.config import load_config
from ctl.dispatcher import Command, ReplyFirst
from ctl.engine import Engine
from ctl.ng import NgRequest


def engine_for_test(url: str, **env: str) -> Engine:
    """An Engine on an ephemeral ng port, talking to the (fake) Realtime server at ``url``."""
    return Engine(load_config(None, environ={
        "NG_LISTEN": "127.0.0.1:0",
        "OPENAI_URL": url,
        "OPENAI_API_KEY": "test-key",
        **env,
    }))


@dataclass
class CommandLog:
    """Every request and reply of one ng command, and an event per new one."""

    seen: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    _arrived: trio.Event = field(default_factory=trio.Event)

    async def wait_for(self, count: int = 1) -> None:
        while len(self.seen) < count:
            await self._arrived.wait()


def watch(engine: Engine, command: str) -> CommandLog:
    """Record ``command``'s requests and replies as the dispatcher handles them."""
    log = CommandLog()
    route = engine.dispatcher.handlers[command]
    parse = route.parse or (lambda request: request)

    def record(request: NgRequest, result: Any) -> Any:
        reply = result.reply if isinstance(result, ReplyFirst) else result
        log.seen.append((dict(request.params), reply))
        log._arrived.set()
        log._arrived = trio.Event()
        return result

    # The wrapper keeps the handler's kind: plain ones are answered inline, async ones in a
    # task of their own (ctl/dispatcher.py), and the tests should see the same scheduling.
    if inspect.iscoroutinefunction(route.handle):
        async def recording(request: NgRequest) -> dict[str, Any]:
            return record(request, await route.handle(parse(request)))
    else:
        def recording(request: NgRequest) -> dict[str, Any]:
            return record(request, route.handle(parse(request)))

    engine.dispatcher.handlers[command] = Command(recording)
    return log


def handle(engine: Engine, request: NgRequest) -> Any:
    """Run ``request`` through its row of the engine's dispatch table (parser, then handler),
    without the socket: the handler's result, a dict or a :class:`ReplyFirst`."""
    route = engine.dispatcher.handlers[request.command]
    return route.handle(request if route.parse is None else route.parse(request))


def reply_of(result: dict[str, Any] | ReplyFirst) -> dict[str, Any]:
    """A handler called directly, finished as the ng server does: the follow-up work of a
    :class:`ReplyFirst` (an offer's call) is done, and the reply returned."""
    if isinstance(result, ReplyFirst):
        result.then()
        return result.reply
    return result

"""One call's OpenAI Realtime session: its connections, one after the other, and reconnects.

:meth:`RealtimeSession.run` lives in the call's nursery. It opens a WebSocket at once (the
phone is still ringing) and hands it to a :class:`~openai_flavor.conversation.Conversation`,
which configures the session and runs the connection's tasks until it ends.

A lost connection is reopened with back-off while the call stays up, the new session getting
the instructions plus a recap of the conversation; a fatal failure (a refused key, a wrong API
shape) or a loss longer than ``reconnect_timeout`` raises :class:`RealtimeSessionError`, which
ends this call only. What outlives a connection is kept here: the statistics, the welcome and
the model's hang-up (openai_flavor/welcome.py), failures of actions still to tell the model,
the back-off (openai_flavor/reconnect.py), the silent caller's re-prompts and the length cap
(openai_flavor/idle.py).

Every phase of a connection is bounded (docs/reliability.md): the TCP/TLS connect and the
upgrade in :meth:`WebSocket.connect`, the rest by the conversation's watchdog: an expiry is a
lost connection like any other: reconnect, or end the call. Losses are classified in
openai_flavor/errors.py.
"""

from __future__ import annotations

import enum
import json
import logging
from typing import Any

import trio

from media.bridge import CallBridge
from media.poller import MediaPoller
from media.state import Machine, Transitions
from media.tones import reconnect_cue
from openai_flavor import events
from openai_flavor.conversation import Conversation
from openai_flavor.errors import ConnectionLost, RealtimeSessionError, api_name, lost_from, redact
from openai_flavor.idle import CallCap, Silence
from openai_flavor.reconnect import Backoff
from openai_flavor.settings import RealtimeSettings
from openai_flavor.stats import RealtimeStats
from openai_flavor.websocket import WebSocket
from openai_flavor.welcome import WelcomeAndGoodbye

__all__ = ["RealtimeSession", "RealtimeSessionError", "SessionState", "SESSION_TRANSITIONS"]

log = logging.getLogger("rtpai.openai")

# When a call ends, the close frame is written at once; this bounds the wait for the server's
# close in reply, in the call's own task (its ports are released after it). The delete's reply
# does not wait for it (ctl/engine.py): the proxy's worker is blocked until that reply.
CLOSE_ON_END = 0.05


class SessionState(enum.StrEnum):
    """The session's life across its connections; the values are the statistics' (the
    ``ai.state`` of query replies, the SIGUSR1 line), which docs and proxies read."""

    CONNECTING = "connecting"  # the first connection is being opened
    OPEN = "open"  # a connection is up (session.update sent)
    RECONNECTING = "reconnecting"  # a connection was lost; the next one is being opened
    CLOSED = "closed"  # the call ended it
    FAILED = "failed"  # it gave up (``failure`` says why); the call ends


_C, _O, _R = SessionState.CONNECTING, SessionState.OPEN, SessionState.RECONNECTING
SESSION_TRANSITIONS = Transitions("AI session", {
    _C: {_O, _R, SessionState.FAILED, SessionState.CLOSED},
    _O: {_R, SessionState.FAILED, SessionState.CLOSED},
    # A reconnect attempt that fails stays reconnecting (the next one is scheduled).
    _R: {_O, _R, SessionState.FAILED, SessionState.CLOSED},
    SessionState.CLOSED: set(),
    SessionState.FAILED: set(),
})


class RealtimeSession:
    """The AI side of one call. ``run`` is started in the call's nursery."""

    # One connection's conversation; GPT-Live's session (openai_flavor/live/) swaps in its own.
    conversation_class = Conversation

    def __init__(self, settings: RealtimeSettings, bridge: CallBridge,
                 poller: MediaPoller) -> None:
        self.settings = settings
        self.bridge = bridge
        self._poller = poller  # the engine's: reads the WebSocket as it does RTP
        self.stats = RealtimeStats(model=settings.model, dialect=settings.shape)
        self._state = Machine(SESSION_TRANSITIONS, SessionState.CONNECTING,
                              f"AI session of call {bridge.call_id}")
        self._manners = WelcomeAndGoodbye(welcome=bool(settings.welcome_message),
                                          guarded=settings.welcome_guarded)
        self._backoff = Backoff(settings.reconnect_timeout)
        # Silence and length are the call's, not a connection's (openai_flavor/idle.py).
        self._silence = Silence(settings.idle_reprompt_s, settings.idle_reprompts)
        self._cap = CallCap(settings.max_call_s)
        # The current connection's; it holds nothing of the session (no reference cycle).
        self._conversation: Conversation | None = None
        self._connect_started = 0.0  # trio time the current connection attempt began
        # Failures of actions the model asked for, to tell it once a connection is ready.
        self._untold_failures: list[str] = []
        bridge.listen_for_failures(self._action_failed)

    @property
    def state(self) -> SessionState:
        """A ``str`` (the statistics' name) as the AiSession protocol asks."""
        return self._state.state

    @property
    def ready(self) -> bool:
        """A connection is up and its session configured (``session.updated`` came)."""
        conversation = self._conversation
        return conversation is not None and conversation.ready.is_set()

    def snapshot(self) -> dict[str, Any]:
        """The session's statistics, for the ``ai`` key of the call's statistics, with what
        its tokens cost by the ``[pricing]`` table (None for a model without a price)."""
        snapshot = self.stats.snapshot(self._state.state.value)
        snapshot["cost"] = self.settings.prices.cost(self.stats.model, self.stats.usage)
        latency = self.bridge.last_response_latency
        if latency is not None:
            # The caller's last wait: speech stopped -> the answer's first frame (media/sender.py).
            snapshot["response latency ms"] = {"last": round(latency * 1000)}
        return snapshot

    def record(self) -> dict[str, Any]:
        """The snapshot with the whole transcript, for the call's record (ctl/records.py):
        a file has room the ng reply's datagram has not."""
        return self.snapshot() | {"transcript": list(self.stats.transcript),
                                  "transcript omitted": 0}

    async def run(self) -> None:
        """Connect at once, converse, reconnect on transient losses; raise when giving up."""
        backoff = self._backoff
        try:
            while True:
                try:
                    await self._connect_once()  # ends by a loss, or by the call's cancellation
                except ConnectionLost as lost:
                    reason = redact(lost.reason, self.settings.api_key)
                    self.stats.last_loss = reason
                    if lost.fatal:
                        self._fail(reason)
                    delay = backoff.failed(trio.current_time(), working_until=lost.since)
                    if delay is None:
                        self._fail(
                            f"the {api_name(self.settings.shape)} could not be reached within "
                            f"{self.settings.reconnect_timeout:g} s ({reason})"
                        )
                    self._state.to(SessionState.RECONNECTING)
                    self.stats.reconnects += 1
                    log.warning(
                        "call %s: %s connection lost (%s); reconnecting in %.1f s",
                        self.bridge.call_id, api_name(self.settings.shape), reason, delay,
                    )
                    self._play_reconnect_cue()
                    await trio.sleep(delay)
        finally:
            self.bridge.detach_caller_audio(for_good=True)
            if self._state.state is not SessionState.FAILED:
                self._state.to(SessionState.CLOSED)
            if self.stats.usage:
                log.info("call %s: AI usage %s", self.bridge.call_id, json.dumps(self.stats.usage))

    def _play_reconnect_cue(self) -> None:
        """Tell the caller the line is alive while the AI link recovers (``reconnect_tone``).

        Silence frames keep flowing regardless ([rtp] send_silence): the pacer does not
        depend on the AI link. The cue follows whatever was already queued, once per loss,
        and only once the caller is there to hear it."""
        if not self.settings.reconnect_tone or not self.bridge.media_started.is_set():
            return
        self.bridge.end_item()  # the cue starts on a frame boundary
        self.bridge.play(reconnect_cue(self.bridge.codec), "reconnect cue")

    def _fail(self, reason: str) -> None:
        self._state.to(SessionState.FAILED)
        if not self.stats.failure:
            self.stats.failure = reason
        raise RealtimeSessionError(self.stats.failure)

    async def _connect_once(self) -> None:
        """One WebSocket connection, from handshake to close; raises :class:`ConnectionLost`."""
        self.stats.connections += 1
        self._connect_started = trio.current_time()
        settings = self.settings
        try:
            ws = await WebSocket.connect(
                settings.session_url(), settings.headers(),
                connect_timeout=settings.connect_timeout,
                upgrade_timeout=settings.upgrade_timeout,
                max_message=settings.max_message_bytes,
                send_buffer=settings.send_buffer_bytes,
                send_timeout=settings.send_timeout,
            )
            try:
                await self._converse(ws)
            finally:
                self.bridge.detach_caller_audio()
                # Also when the call is deleted (cancelled): close with 1000 so the server
                # ends the session at once, shielded but bounded so delete never hangs.
                with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_ON_END):
                    await ws.aclose()
        except ConnectionLost:
            raise
        except Exception as exc:
            lost = lost_from(exc, api_name(self.settings.shape))
            if lost is None:
                raise
            raise lost from None

    async def _converse(self, ws: WebSocket) -> None:
        conversation = self.conversation_class(
            ws, settings=self.settings, bridge=self.bridge, poller=self._poller,
            stats=self.stats, manners=self._manners, backoff=self._backoff,
            untold_failures=self._untold_failures, silence=self._silence, cap=self._cap)
        self._state.to(SessionState.OPEN)
        self.bridge.mark("ai_session_open")
        figures = self.bridge.figures
        # Connect, TLS and the upgrade, to the 101: what the caller waits for (while ringing).
        figures.ai_connect.observe(trio.current_time() - self._connect_started)
        if self.stats.connections > 1:
            figures.ai_reconnects += 1
        self._conversation = conversation
        try:
            await conversation.run(reconnect=self.stats.connections > 1)
        finally:
            self._conversation = None

    def _action_failed(self, action: str, why: str) -> None:
        """A transfer or hang-up the model asked for did not happen (the proxy refused or
        failed, after the tool call was answered): the model must know, so that the caller
        hears it rather than silence."""
        log.warning("call %s: the model is told that its %s failed: %s", self.bridge.call_id,
                    action, why)
        self.stats.errors.append({"code": f"{action} failed", "message": why})
        self._untold_failures.append(events.action_failed_text(action, why))
        # While reconnecting the old connection's state lingers: wait for the new session.
        if self._state.state is SessionState.OPEN and self.ready:
            assert self._conversation is not None
            self._conversation.tell_failures()

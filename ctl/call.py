"""A call: its lifecycle state machine and its nursery (media + AI tasks); ctl/replies.py turns
it into the query/delete reply."""

from __future__ import annotations

import enum
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ctl import logs
from media.bridge import AiSessionError, CallBridge, CallerEvent, EndReason, weak_method
from media.clock import MediaClock
from media.figures import UNREAD
from media.flavor import AiSettings, Flavor
from media.options import MediaOptions
from media.playout import PlayoutQueue
from media.poller import SocketPoller
from media.recording import CallRecording, RecordingFile
from media.state import Machine, Transitions
from media.stream import MediaStream, close_socket

if TYPE_CHECKING:
    from ctl.metrics import EngineMetrics

log = logging.getLogger("rtpai.call")

# Caller events (DTMF digits) waiting for the AI session: a digit is a keypress, so a few
# dozen is far beyond any burst a person types; the media plane drops past it.
CALLER_EVENTS_QUEUE = 32
# The model speaks faster than real time; two minutes of queued speech is far more than any
# answer, and caps a runaway response at ~1 MB.
MAX_PLAYOUT_SECONDS = 120


class CallState(enum.Enum):
    OFFERED = "offered"  # ports bound, answer sent, AI session connecting; no caller RTP yet
    ACTIVE = "active"  # caller RTP latched
    ENDING = "ending"  # delete, media timeout or AI failure: tasks are being cancelled
    ENDED = "ended"  # every socket and port released; kept until the proxy's delete


CALL_TRANSITIONS = Transitions("call", {
    CallState.OFFERED: {CallState.ACTIVE, CallState.ENDING},
    CallState.ACTIVE: {CallState.ENDING},
    CallState.ENDING: {CallState.ENDED},
    CallState.ENDED: set(),
})


@dataclass(frozen=True)
class CallMedia:
    """What offer/answer settled for the call's audio stream."""

    codec: str  # PCMU / PCMA
    payload_type: int
    ptime_ms: int
    protocol: str
    local_address: str  # advertised in SDP
    local_port: int
    remote: tuple[str, int] | None  # from the SDP; None for c=0.0.0.0 (hold, or unknown)
    sending: bool  # False when the caller holds the call
    telephone_event: int | None = None  # RFC 4733 payload type, if negotiated
    rtcp_remote: tuple[str, int] | None = None  # RFC 3605 a=rtcp, else the RTP port + 1
    rtcp_mux: bool = False  # RFC 5761
    caller_sends: bool = True  # False for a=inactive / recvonly / c=0.0.0.0: no RTP expected
    # c=0.0.0.0 with sendrecv in the first offer: the caller's address is learnt by latching
    # (remote stays None until then), not hold; see ctl/offers.py call_media.
    address_unknown: bool = False


class Call:
    """One caller, one AI session. Owned by the engine's nursery; ``run`` holds its tasks."""

    # Slots (issue 16's per-call cost): ~40 attributes made the instance dict grow past a
    # resize, 1.6 KB per call; nothing assigns others. __weakref__: the log handler's call map
    # (ctl/logs.py) and the bridge's weak callbacks hold it weakly.
    __slots__ = (
        "call_id", "branch", "from_tag", "to_tag", "profile", "media", "answer_sdp",
        "sdp_origin", "settings", "_lifecycle", "created", "last_signal", "end_kind",
        "end_reason", "transfers", "hangup", "pending_reason", "ended", "_release_ports",
        "_metrics", "_on_end", "_on_transfer", "_on_hang_up", "_on_ended", "recording",
        "recording_files", "_nursery", "_after_end", "_owed", "_sockets", "_clock", "_poller",
        "_scope", "_reason_at_deadline", "bridge", "stream", "ai", "__weakref__",
    )

    def __init__(
        self,
        *,
        call_id: str,
        from_tag: str,
        to_tag: str | None,
        media: CallMedia,
        answer_sdp: str,
        branch: str = "",
        profile: str | None = None,
        sdp_origin: tuple[int, int] = (0, 1),
        on_end: Callable[[Call, str, bool], None] | None = None,
        on_transfer: Callable[[Call, dict[str, Any]], None] | None = None,
        on_hang_up: Callable[[Call, EndReason, str, bool], Awaitable[None]] | None = None,
        on_ended: Callable[[Call], None] | None = None,
        sockets: tuple[socket.socket, socket.socket],
        clock: MediaClock,
        poller: SocketPoller,
        settings: AiSettings,
        flavor: Flavor,
        release_ports: Callable[[], None],
        media_options: MediaOptions,  # [rtp]'s, built once by the engine
        metrics: EngineMetrics | None = None,  # the engine's (ctl/metrics.py)
    ) -> None:
        self.call_id = call_id
        self.branch = branch  # the offer's via-branch ("" when none: matches any)
        self.from_tag = from_tag
        self.to_tag = to_tag
        self.profile = profile
        self.media = media
        self.answer_sdp = answer_sdp
        self.sdp_origin = sdp_origin  # (o= session id, version) of our answer
        self.settings = settings
        self._lifecycle = Machine(CALL_TRANSITIONS, CallState.OFFERED, f"call {call_id}")
        self.created = time.time()
        self.last_signal = self.created
        # Why it ended: the kind (counted by the engine) and the detail (the replies' text).
        self.end_kind: EndReason | None = None
        self.end_reason: str | None = None
        self.transfers: list[dict[str, Any]] = []  # requested by the AI; CallControl REFERs
        # rtpai's latest request to the proxy to end the call: reason, status, error.
        self.hangup: dict[str, Any] | None = None
        # Why the proxy's delete is expected (a hang-up or transfer it accepted): the end
        # reason the delete records, rather than "deleted by the proxy".
        self.pending_reason: tuple[EndReason, str] | None = None
        self.ended = trio.Event()
        self._release_ports = release_ports
        # Its counters are summed into the metrics while it runs, and folded in once it has
        # closed; events (a connect, a turn's answer) are recorded into the engine's figures.
        self._metrics = metrics
        # Told when the call starts ending: (call, reason, whether the proxy must be told to
        # hang up, i.e. the end did not come from the proxy itself).
        self._on_end = on_end
        self._on_transfer = on_transfer  # carries a transfer out (the engine: the proxy)
        # Asks the proxy to end the call, as a task of this call (the engine: the proxy).
        self._on_hang_up = on_hang_up
        # Told once the call has ended and released everything (its record is final then:
        # the AI session's usage included): the engine's CDR and the recording's sidecar.
        self._on_ended = on_ended
        # The recording being made (ctl/recordings.py), and every file made for this call.
        self.recording: CallRecording | None = None
        self.recording_files: list[RecordingFile] = []
        self._nursery: trio.Nursery | None = None  # open while the call's tasks run
        # Open for as long as ``run`` runs, outside the call's scope: work the call still owes
        # once it has ended (the hang-up request to the proxy), see ``after_end``.
        self._after_end: trio.Nursery | None = None
        self._owed: list[tuple[Callable[..., Awaitable[None]], tuple[Any, ...]]] = []
        self._sockets = sockets
        self._clock = clock  # the engine's: it paces our RTP along with every other call's
        self._poller = poller  # the engine's: it receives for every call
        # The call's scope: cancelled when it ends; its deadline is a delayed delete's.
        self._scope = trio.CancelScope()
        self._reason_at_deadline = (EndReason.DELETED, "")
        events_send, events_receive = trio.open_memory_channel[CallerEvent](CALLER_EVENTS_QUEUE)
        frame_bytes = media.ptime_ms * 8
        self.bridge = CallBridge(
            call_id=call_id,
            codec=media.codec,
            ptime_ms=media.ptime_ms,
            playout=PlayoutQueue(frame_bytes, max_bytes=MAX_PLAYOUT_SECONDS * 8000),
            # Weakly: the bridge is the call's, and a bound method would be a reference cycle.
            end_call=weak_method(self.hang_up),
            hang_up=weak_method(self.hang_up_for_ai),
            transfer=weak_method(self.transfer),
            caller_events=events_receive,
            figures=metrics.figures if metrics is not None else UNREAD,
        )
        self.bridge.mark("offer")
        logs.CALLS[call_id] = self  # its log lines get its from-tag (ctl/logs.py)
        self.stream = MediaStream(
            self.bridge,
            sockets[0],
            sockets[1],
            payload_type=media.payload_type,
            remote=media.remote,
            caller_events=events_send,
            telephone_event=media.telephone_event,
            rtcp_remote=media.rtcp_remote,
            rtcp_mux=media.rtcp_mux,
            options=media_options,
            sending=media.sending,
            caller_sends=media.caller_sends,
            on_media_started=weak_method(self._media_started),
        )
        # The AI session, whatever its flavor: run, statistics, closed by cancellation.
        self.ai = flavor.new_session(settings, self.bridge, poller)
        if metrics is not None:
            metrics.ledger.opened(self)

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def state(self) -> CallState:
        return self._lifecycle.state

    def end(self, kind: EndReason, reason: str, *, tell_proxy: bool = True) -> None:
        """End the call (idempotent); the first reason given is the one recorded: its
        ``kind`` is counted, ``reason`` is the detail the replies show.

        ``tell_proxy`` is False when the proxy asked (delete): otherwise the caller is still
        on the line and the proxy must send the BYE.
        """
        if self.state in (CallState.ENDING, CallState.ENDED):
            return
        if not tell_proxy and self.pending_reason:
            kind, reason = self.pending_reason  # the delete we asked for: say what it was for
        if self.hangup is not None and self.hangup["status"] == "sent":
            tell_proxy = False  # it accepted already (e.g. shutdown while its BYE is on the way)
        self.end_kind = kind
        self.end_reason = reason
        self._lifecycle.to(CallState.ENDING)
        log.info("call %s: ending (%s)", self.call_id, reason)
        self._scope.cancel()
        # Its media stops now, not once its tasks have wound down (the AI session's close can
        # take CLOSE_ON_END): the proxy is ending the dialog, and rtpengine, too, stops
        # forwarding at the delete. Playout is unregistered from the clock; idempotent.
        self.stream.stop_pacing()
        if self._on_end is not None:
            self._on_end(self, reason, tell_proxy)

    def hang_up(self, kind: EndReason, reason: str, *, by_ai: bool = False) -> None:
        """rtpai ends the call (media timeout, AI failure, the model's ``end_call``).

        With a proxy that can end calls the call stays up while the proxy is asked, and ends
        with its ``delete`` (ctl/call_control.py bounds the wait); ``by_ai``: a refusal is told to
        the model, and the call goes on. Without one (or before the call's tasks run), the
        call ends here at once.
        """
        if self.state in (CallState.ENDING, CallState.ENDED):
            return
        if self.hangup is not None and self.hangup["status"] in ("requested", "sent"):
            return  # one request at a time; the first reason stands
        if self._on_hang_up is None or not self.follow_up(self._on_hang_up, self, kind, reason,
                                                          by_ai):
            self.end(kind, reason)
            return
        self.hangup = {"reason": reason, "status": "requested", "at": int(time.time())}

    def hang_up_for_ai(self, reason: str) -> None:
        """The model's ``end_call``, once its goodbye has played."""
        self.hang_up(EndReason.MODEL_HUNG_UP, reason, by_ai=True)

    def end_unanswered(self, reason: str) -> None:
        """The proxy accepted a hang-up but no delete came: end here, with ``reason``."""
        self.pending_reason = None
        self.end(EndReason.PROXY_DID_NOT_HANG_UP, reason, tell_proxy=False)

    def follow_up(self, async_fn: Callable[..., Awaitable[None]], *args: Any) -> bool:
        """Start work that belongs to this call (a hang-up, a transfer after playout) in its
        nursery, so that it ends with the call. False when the call's tasks are not running
        (not started yet, or ending)."""
        if self._nursery is None or self.state in (CallState.ENDING, CallState.ENDED):
            return False
        self._nursery.start_soon(async_fn, *args)
        return True

    def after_end(self, async_fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Start work the call owes once it has ended (asking the proxy to hang the caller up)
        as a task of ``run``, outside the call's scope: ending the call does not cancel it,
        and ``run`` returns once it is done. A call ended before ``run`` first ran (a drain
        right after its offer) starts it when ``run`` does; should the engine stop first, it
        is cancelled there with the rest of the call."""
        if self._after_end is not None:
            self._after_end.start_soon(async_fn, *args)
        else:
            self._owed.append((async_fn, args))

    def end_after(self, delay: float, reason: str) -> None:
        """End the call in ``delay`` seconds (a delete with ``delete-delay``): a deadline on
        the call's own scope, so the wait is the call's and dies with it; no task of its own."""
        if self.state in (CallState.ENDING, CallState.ENDED):
            return
        self._reason_at_deadline = (EndReason.DELETED, reason)
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + delay)

    def transfer(self, target: str) -> None:
        """The AI asks for the caller to be transferred: recorded in the statistics, and
        handed to ``on_transfer`` (CallControl tells the proxy, which sends the REFER)."""
        record = {"target": target, "at": int(time.time()), "status": "requested"}
        self.transfers.append(record)
        log.info("call %s: transfer to %s requested", self.call_id, target)
        if self._on_transfer is not None:
            self._on_transfer(self, record)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The whole call: its media and AI tasks until it ends (``_run_until_ended``), then
        the work it still owes (``after_end``: the hang-up request to the proxy).

        The engine starts it with ``start_soon``, after the offer's reply has gone: the call
        may have been deleted, or the engine stopped (its clock and poller with it), before
        this first runs. Then no media or AI task is started.
        """
        async with trio.open_nursery() as after_end:
            self._after_end = after_end
            for async_fn, args in self._owed:
                after_end.start_soon(async_fn, *args)
            self._owed.clear()
            try:
                await self._run_until_ended(task_status)
            finally:
                self._after_end = None  # (what is under way goes on until done)

    async def _run_until_ended(self, task_status: trio.TaskStatus[None]) -> None:
        """Hold the call's tasks, in its scope, until it ends; always release its sockets and
        ports, and mark it ended (``ended`` is set before the owed work is done)."""
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            self.stream.start_pacing(self._clock)
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._run_ai)
                    task_status.started()
                    # The media side runs as the nursery's body, in this task: one task per
                    # call fewer (issue 16's per-call cost); it ends (a media timeout) as the
                    # task did, the nursery then waiting for the AI side.
                    await self._receive_media()
        finally:
            self._nursery = None
            if self._scope.cancelled_caught and self.state in (CallState.OFFERED,
                                                              CallState.ACTIVE):
                self.end(*self._reason_at_deadline, tell_proxy=False)  # end_after's deadline
            self.stream.close()  # before the sockets close: no tick may send after
            for sock in self._sockets:
                close_socket(sock)
            self._release_ports()
            if self.state is not CallState.ENDING:
                # The engine stopped under the call (its nursery cancelled): nobody ended it.
                self.end_kind, self.end_reason = EndReason.SHUTDOWN, "engine shutdown"
                self._lifecycle.to(CallState.ENDING)
            self._lifecycle.to(CallState.ENDED)
            self.bridge.mark("ended")
            self.ended.set()
            if self._on_ended is not None:
                try:
                    self._on_ended(self)
                except Exception:  # a record is not worth the engine: log it, go on
                    log.exception("call %s: its record failed", self.call_id)
            if self._metrics is not None:
                self._metrics.ledger.closed_call(self)

    # --- recording (ctl/recordings.py decides; the media plane places the frames) -----------

    @property
    def recordings_made(self) -> int:
        return len(self.recording_files)

    def attach_recording(self, recording: CallRecording) -> None:
        self.recording = recording
        self.recording_files.append(recording.file)
        self.stream.recorder = recording

    def detach_recording(self) -> None:
        self.recording = None
        self.stream.recorder = None

    def update_media(self, media: CallMedia, answer_sdp: str) -> None:
        """A re-offer (hold, resume, moved endpoint): same ports, codec and ptime, new SDP."""
        self.media = media
        self.answer_sdp = answer_sdp
        self.stream.update(
            remote=media.remote,
            rtcp_remote=media.rtcp_remote,
            sending=media.sending,
            caller_sends=media.caller_sends,
        )

    async def _receive_media(self) -> None:
        # The engine's poller closes once the engine is cancelled; so may we have been, since
        # `run` spawned this task, and then there is nothing to register with.
        await trio.lowlevel.checkpoint_if_cancelled()
        await self.stream.run(self._poller)
        if self.stream.timed_out:
            self.hang_up(EndReason.MEDIA_TIMEOUT,
                         f"media timeout ({self.stream.options.timeout:g} s without RTP)")

    def _media_started(self) -> None:
        """The caller's first RTP latched (a callback: no task per call waits for it)."""
        if self.state is CallState.OFFERED:
            self._lifecycle.to(CallState.ACTIVE)

    async def _run_ai(self) -> None:
        # One call's AI failure ends that call alone (through the bridge, where the proxy
        # notification will hook in); the reason goes to the statistics.
        try:
            await self.ai.run()
        except AiSessionError as exc:
            log.warning("call %s: AI session failed: %s", self.call_id, exc)
            self.bridge.end_call(EndReason.AI_FAILED, f"AI session failed: {exc}")
        except Exception:
            # A bug must not escape into the engine nursery and take every other call with it.
            log.exception("call %s: AI session crashed", self.call_id)
            self.bridge.end_call(EndReason.AI_FAILED, "AI session failed: internal error")

"""Which calls are recorded, and the ng recording commands: the engine's recording policy.

``[recording] mode``: ``off`` (nothing; the commands are refused, so that a script relying on
them learns it), ``all`` (every call from its offer) or ``on-request`` (a call whose offer or
answer carries rtpengine's ``record call`` flag or ``record-call=yes``, or that gets
``start recording``). ``record-call=no`` and ``stop recording`` stop a recording in either
mode: a caller's refusal to be recorded is the proxy's to carry out, even under ``all``.

rtpengine's commands, as its ng protocol defines them: ``start recording`` (a paused
recording resumes; a stopped one starts a new file, ``-1``, ``-2``... beside the first),
``pause recording`` (the file stays open and gets silence: its timeline keeps running) and
``stop recording`` (the file is completed). Each answers ``ok``; an unknown call-id gets
rtpengine's ``Unknown call-id``.

The audio itself is placed by media/recording.py on the trio thread and written by
media/recording_writer.py's thread; this module opens and closes recordings and hands a
completed call's record (ctl/records.py) to the writer as the WAV's sidecar.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from ctl.call import CallState
from ctl.cdr import CallRecords
from ctl.dispatcher import Command
from ctl.ng import REASON_UNKNOWN_CALL, NgError
from ctl.ng_requests import CallSelector
from ctl.records import call_record
from media.recording import CallRecording, RecordingFile, RecordingStatus, recording_basename
from media.recording_writer import RecordingWriter

if TYPE_CHECKING:
    from ctl.call import Call

REASON_DISABLED = "Call recording is disabled ([recording] mode = off)"
# Bound on the writer's last writes at shutdown (queued audio, sidecars).
WRITER_STOP_TIMEOUT = 10.0


class Recordings:
    """The engine's: ``[recording]``'s policy and the one writer thread."""

    def __init__(self, mode: str, directory: str, writer: RecordingWriter | None = None) -> None:
        self.mode = mode
        self.directory = directory
        self.writer = writer or RecordingWriter()
        self._running = False

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> Recordings:
        return cls(section["mode"], section["dir"])

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def start_writer(self) -> None:
        if self.enabled and not self._running:
            self.writer.start()
            self._running = True

    async def stop_writer(self) -> bool:
        """Let the thread write what is queued (bounded), shielded from the shutdown."""
        if not self._running:
            return True
        self._running = False
        with trio.CancelScope(shield=True):
            return await trio.to_thread.run_sync(self.writer.stop, WRITER_STOP_TIMEOUT)

    def statistics(self) -> dict[str, int]:
        counters = self.writer.counters
        return {"started": counters.started, "finished": counters.finished,
                "failures": counters.failures, "batches dropped": counters.batches_dropped}

    # --- the commands and flags ---------------------------------------------------------------

    def command(self, action: str, calls: list[Call]) -> dict[str, Any]:
        """ng ``start recording`` / ``pause recording`` / ``stop recording`` for the calls a
        request names (every leg of the call-id without tags, as rtpengine)."""
        if not calls:
            raise NgError(REASON_UNKNOWN_CALL)
        if not self.enabled:
            raise NgError(REASON_DISABLED)
        for call in calls:
            if call.state in (CallState.ENDING, CallState.ENDED):
                continue  # its recording is being completed with its record
            if action == "start":
                self.start(call)
            elif action == "pause":
                self.pause(call)
            else:
                self.stop(call)
        return {}

    def offer_warning(self, requested: bool | None) -> str | None:
        """What an offer's reply says when it asks for a recording nobody will make."""
        return REASON_DISABLED if requested and not self.enabled else None

    def on_new_call(self, call: Call, requested: bool | None) -> None:
        """A new call (its offer): recorded under ``all``, or when the offer asks."""
        if not self.enabled or requested is False:
            return
        if self.mode == "all" or requested:
            self.start(call)

    def on_signal(self, call: Call, requested: bool | None) -> None:
        """A re-offer or answer with ``record call``: start or stop as it says."""
        if requested is True:
            self.start(call)
        elif requested is False:
            self.stop(call)

    def start(self, call: Call) -> None:
        recording = call.recording
        if recording is not None and recording.file.state is RecordingStatus.PAUSED:
            recording.resume()
            return
        if recording is not None and recording.file.recording:
            return  # already recording: rtpengine answers ok too
        if not self.enabled:
            return
        now = trio.current_time()
        name = recording_basename(call.call_id, call.from_tag, time.time(),
                                  call.recordings_made) + ".wav"
        file = RecordingFile(
            path=os.path.join(self.directory, name), codec=call.media.codec,
            call_id=call.call_id,
            offset_s=now - call.bridge.timeline.get("offer", now),
        )
        self.writer.open(file)
        call.attach_recording(CallRecording(file=file, started=now, writer=self.writer))

    def pause(self, call: Call) -> None:
        if call.recording is not None:
            call.recording.pause()

    def stop(self, call: Call, record: dict[str, Any] | None = None) -> None:
        """Complete the call's recording; its sidecar is ``record`` (the call's end) or what
        the call's record says so far (a stop mid-call)."""
        recording = call.recording
        if recording is None or recording.file.state is RecordingStatus.STOPPED:
            return
        if record is None:  # the record of a call still in progress
            record = call_record(call, ended_wall=time.time()) | {"end": None,
                                                                   "duration s": None}
        call.detach_recording()
        recording.stop(record)


class CallArchive:
    """What the engine keeps of its calls: recordings and call records, behind the few
    calls the engine makes (docs/recording.md)."""

    def __init__(self, config: Mapping[str, Mapping[str, Any]]) -> None:
        self.recordings = Recordings.from_config(config["recording"])
        self.call_records = CallRecords.from_config(config["cdr"])

    @asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        """Around the engine nursery: the writer thread runs; at the end (every call has
        ended and handed over its record) the records are delivered and the recordings
        completed, bounded and shielded from the shutdown."""
        self.recordings.start_writer()
        try:
            yield
        finally:
            await self.call_records.drain()
            await self.recordings.stop_writer()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The call records' senders, in the engine nursery."""
        await self.call_records.run(task_status=task_status)

    def commands(self, select: Callable[[CallSelector], list[Call]]) -> dict[str, Command]:
        """The dispatch table's rows for rtpengine's recording commands."""

        def row(action: str) -> Command:
            return Command(lambda request: self.recordings.command(action, select(request)),
                           CallSelector.parse)

        return {f"{action}-recording": row(action) for action in ("start", "pause", "stop")}

    def offer_reply(self, reply: dict[str, Any], record: bool | None) -> dict[str, Any]:
        """An offer's reply, with a warning when it asks for a recording nobody will make
        (the call goes on, unrecorded)."""
        warning = self.recordings.offer_warning(record)
        return reply | {"warning": warning} if warning else reply

    def statistics(self) -> dict[str, Any]:
        return {"recording": self.recordings.statistics(),
                "cdr": self.call_records.statistics()}

    def call_ended(self, call: Call) -> None:
        """A call has ended: its record completes its recording (the sidecar) and goes to
        the CDR destinations. Built only when someone wants it."""
        if not (call.recording_files or self.call_records.enabled):
            return
        record = call_record(call, ended_wall=time.time())
        self.recordings.stop(call, dict(record))  # the sidecar; the writer adds the WAV's figures
        # Now "stopped" (the writer is completing them) or "failed": the CDR says which.
        record["recordings"] = [file.as_dict() for file in call.recording_files]
        self.call_records.submit(record)

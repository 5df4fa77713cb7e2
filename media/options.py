"""The ``[rtp]`` settings a call's media stream runs with, read once per engine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from media.latch import Relatch
from media.settings import RTP_SETTINGS

_ROW = {row.key: row.parse(row.default) for row in RTP_SETTINGS if row.default is not None}


@dataclass(frozen=True, slots=True)
class MediaOptions:
    """How every call's media behaves (docs/configuration.md, ``[rtp]``; docs/media.md).

    Built once from the ``[rtp]`` section (:meth:`from_config`) and shared by every call, in
    place of a keyword argument per setting through the engine, the call and the stream. The
    defaults here only serve tests and benches; the configuration table's are the daemon's.
    """

    # The defaults are the [rtp] rows' own (media/settings.py), parsed: written once.
    send_silence: bool = _ROW["send_silence"]  # silence frames while the AI is quiet
    reorder_packets: int = _ROW["reorder_packets"]  # reorder depth, in packets (and ptimes)
    ai_batch_ms: int = _ROW["ai_batch_ms"]  # caller audio to the AI in batches (0: per frame)
    strict_source: bool = _ROW["strict_source"]  # only the SDP's address:port may send
    relatch: Relatch = Relatch(_ROW["relatch"])  # who may take over the latch (media/latch.py)
    # Seconds without the caller's RTP that end the call. Not the row's 60 s: an object built
    # without a configuration (tests, benches) never times out unless it asks to.
    timeout: float = 0

    @classmethod
    def from_config(cls, rtp: Mapping[str, Any]) -> MediaOptions:
        """From the parsed ``[rtp]`` section (ctl/config.py)."""
        return cls(
            send_silence=rtp["send_silence"],
            reorder_packets=rtp["reorder_packets"],
            ai_batch_ms=rtp["ai_batch_ms"],
            strict_source=rtp["strict_source"],
            relatch=Relatch(rtp["relatch"]),
            timeout=rtp["timeout"],
        )

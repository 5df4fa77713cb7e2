"""The ``[rtp]`` settings a call's media stream runs with, read once per engine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from media.latch import Relatch


@dataclass(frozen=True, slots=True)
class MediaOptions:
    """How every call's media behaves (docs/configuration.md, ``[rtp]``; docs/media.md).

    Built once from the ``[rtp]`` section (:meth:`from_config`) and shared by every call, in
    place of a keyword argument per setting through the engine, the call and the stream. The
    defaults here only serve tests and benches; the configuration table's are the daemon's.
    """

    send_silence: bool = True  # silence frames while the AI is quiet (once the caller's RTP flows)
    reorder_packets: int = 2  # reorder buffer depth, in packets (and ptimes of waiting)
    ai_batch_ms: int = 0  # caller audio to the AI in batches this long (0: frame by frame)
    strict_source: bool = False  # only the SDP's address:port may send (no NAT latching)
    relatch: Relatch = Relatch.SDP  # who may take over the latch (media/latch.py)
    timeout: float = 0  # seconds without the caller's RTP that end the call (0: never)

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

"""Configuration rows, flavor-neutral: the row type every plane declares its settings with, the
value parsers they share, and the media plane's own rows (``[rtp]``).

Each plane declares its rows once, with their defaults: ``[rtp]`` here, an AI flavor's section in
its package (openai_flavor/settings.py), ``[ng]``/``[proxy]``/``[log]`` in ctl/config.py, which
reads the file and the environment and validates them all. The row type lives in media/, the
lowest layer, so that a flavor can use it without importing ctl/.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# --- value parsers: each raises ValueError with the allowed range --------------------------------


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true/false, yes/no, on/off or 1/0")


def int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected an integer from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high}")
        return value

    return parse


def float_range(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number from {low} to {high}") from None
        if not (low <= value <= high):  # also rejects nan
            raise ValueError(f"expected a number from {low} to {high}")
        return value

    return parse


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value

    return parse


def ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError("expected an IPv4 or IPv6 address") from None


def text(value: str) -> str:
    return value


def optional_text(value: str) -> str | None:
    return value or None


def optional_http_url(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    if not value.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return value


def word_list(value: str) -> tuple[str, ...]:
    """A comma-separated list; blanks are ignored."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def codec_preference(value: str) -> tuple[str, ...] | None:
    """``offer`` (None: the offer's order) or an ordered subset of PCMU, PCMA."""
    text = value.strip()
    if text.lower() == "offer":
        return None
    codecs = tuple(part.strip().upper() for part in text.split(",") if part.strip())
    if not codecs or any(c not in ("PCMU", "PCMA") for c in codecs) or len(set(codecs)) != len(
        codecs
    ):
        raise ValueError("expected 'offer' or a list of PCMU and PCMA, e.g. 'PCMA,PCMU'")
    return codecs


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    env: str
    default: str | None
    parse: Callable[[str], Any]
    aliases: tuple[str, ...] = ()
    secret: bool = False
    help: str = ""

    @property
    def label(self) -> str:
        return f"[{self.section}] {self.key} / {self.env}"


# The media plane's rows: the RTP sockets, the media timeout and how the stream is handled.
RTP_SETTINGS: tuple[Setting, ...] = (
    Setting("rtp", "ip", "RTP_IP", None, optional_text,
            help="address advertised in SDP answers (default: bind_ip)"),
    Setting("rtp", "bind_ip", "RTP_BIND_IP", "127.0.0.1", ip_address,
            help="address the RTP/RTCP sockets bind to"),
    Setting("rtp", "min_port", "RTP_MIN_PORT", "30000", int_range(1024, 65534)),
    Setting("rtp", "max_port", "RTP_MAX_PORT", "40000", int_range(1025, 65535)),
    Setting("rtp", "port_pool", "RTP_PORT_POOL", "16", int_range(0, 1024),
            help="port pairs of the range kept bound ahead, so that an offer does not wait "
                 "for two binds (0: each offer binds its own)"),
    Setting("rtp", "timeout", "RTP_TIMEOUT", "60", int_range(0, 86400),
            help="seconds without caller RTP before the call is ended (0 = never)"),
    Setting("rtp", "codecs", "RTP_CODECS", "offer", codec_preference,
            help="'offer' (the caller's order decides between PCMU and PCMA) or our order, "
                 "e.g. 'PCMA,PCMU' or only 'PCMU'"),
    Setting("rtp", "send_silence", "RTP_SEND_SILENCE", "true", parse_bool,
            help="send G.711 silence frames while the AI is quiet (false: send nothing, the "
                 "timestamps still advance)"),
    Setting("rtp", "reorder_packets", "RTP_REORDER_PACKETS", "2", int_range(0, 16),
            help="packets held waiting for a missing one before it is counted lost"),
    Setting("rtp", "ai_batch_ms", "RTP_AI_BATCH_MS", "0", int_range(0, 200),
            help="caller audio to the AI in messages of this many ms (0: each packet as it "
                 "arrives, the least latency; 40 halves the WebSocket messages for <= 60 ms "
                 "more; see docs/performance.md)"),
    Setting("rtp", "strict_source", "RTP_STRICT_SOURCE", "false", parse_bool,
            help="accept RTP only from the address:port of the SDP (no NAT latching)"),
    Setting("rtp", "media_thread", "RTP_MEDIA_THREAD", "auto", one_of("auto", "off"),
            help="auto: every call's paced RTP is sent by one C thread off the event loop "
                 "when the compiled fast path is built (calls being recorded or with "
                 "ai_batch_ms > 0 stay in Python); off: always the Python sender"),
    Setting("rtp", "relatch", "RTP_RELATCH", "sdp", one_of("never", "sdp", "silence"),
            help="when another source may take over a latched call: never, sdp (only the "
                 "SDP's address), silence (also any, after 2 s without the latched source)"),
)


# Call recording (media/recording.py): which calls are recorded, and where.
RECORDING_SETTINGS: tuple[Setting, ...] = (
    Setting("recording", "mode", "RECORDING_MODE", "off", one_of("off", "all", "on-request"),
            help="off; all (every call, from its offer); on-request (the proxy's 'record "
                 "call' flag or 'start recording')"),
    Setting("recording", "dir", "RECORDING_DIR", "/var/lib/rtpai/recordings", text,
            help="directory of the WAV files and their JSON sidecars (must exist and be "
                 "writable when mode is not off)"),
)

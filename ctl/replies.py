"""The ng reply formats: what ``query``, ``delete`` and ``statistics`` answer, as dictionaries.

Pure functions of a call's (or the engine's) state and the time they are asked for, so that
:class:`~ctl.call.Call` and :class:`~ctl.engine.Engine` hold state and behaviour and this module
holds the wire shape: rtpengine 10.5's, key for key (tests/test_ng_differential.py compares it
with Debian's rtpengine; docs/ng-protocol.md documents it), plus rtpai's own ``rtpai`` key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from media.bridge import EndReason

if TYPE_CHECKING:
    from ctl.call import Call
    from ctl.dispatcher import Dispatcher
    from ctl.rtp_ports import PortBinder

_EMPTY_TOTALS = {"packets": 0, "bytes": 0, "errors": 0}


def call_statistics(call: Call, *, wall: float, now: float, parties: bool = True) -> dict[str, Any]:
    """The query/delete reply: rtpengine 10.5's shape, plus rtpai's own ``rtpai`` key.

    ``wall`` is the wall-clock time and ``now`` trio's clock at the same instant (packet times
    are kept on trio's clock). ``parties=False`` lists no party (rtpengine's answer when the
    tags name nobody).
    """
    stream = call.stream
    stream.sender.sync_stats()  # the media send thread's counters, as of now
    stats = stream.stats
    media = call.media
    family = "IPv6" if ":" in media.local_address else "IPv4"
    remote = stream.remote

    def endpoint(address: tuple[str, int] | None) -> dict[str, Any]:
        if address is None:
            return {}
        return {"family": family, "address": address[0], "port": address[1]}

    def rtcp_of(address: tuple[str, int] | None) -> tuple[str, int] | None:
        return (address[0], address[1] + 1) if address else None

    last_packet = int(wall - (now - stats.last_packet)) if stats.last_packet else 0
    streams = [
        {
            "local port": media.local_port,
            "local address": media.local_address,
            "family": family,
            "endpoint": endpoint(remote),
            "advertised endpoint": endpoint(media.remote),
            "last packet": last_packet,
            "SSRC": stats.last_ssrc or 0,
            "flags": ["RTP", "filled", "confirmed"] if stream.latch.latched else ["RTP"],
            "stats": stats.rtp_in.as_dict(),
        },
        {
            # RTCP on the odd port above (RFC 3550 s.11); its packets are counted.
            "local port": media.local_port + 1,
            "local address": media.local_address,
            "family": family,
            "endpoint": endpoint(stream.rtcp.latched or rtcp_of(remote)),
            "advertised endpoint": endpoint(media.rtcp_remote or rtcp_of(media.remote)),
            "last packet": last_packet,
            "flags": ["RTCP", "filled"] if stats.rtcp_in.packets else ["RTCP"],
            "stats": stats.rtcp_in.as_dict(),
        },
    ]
    tags: dict[str, Any] = {}
    if parties:
        tags[call.from_tag] = {
            "tag": call.from_tag,
            "created": int(call.created),
            "medias": [
                {
                    "index": 1,
                    "type": "audio",
                    "protocol": media.protocol,
                    "codec": f"{media.codec}/8000",
                    "flags": ["send", "recv"] if media.sending else ["recv"],
                    "streams": streams,
                }
            ],
        }
    # Totals count what the engine received on all legs, as a relay's do: the caller's
    # RTP plus the AI's audio (which we packetize), so $rtpestat reads familiar numbers.
    totals_rtp = {
        "packets": stats.rtp_in.packets + stats.rtp_out.packets,
        "bytes": stats.rtp_in.bytes + stats.rtp_out.bytes,
        "errors": stats.rtp_in.errors,
    }
    return {
        "created": int(call.created),
        "created_us": int((call.created % 1) * 1_000_000),
        "last signal": int(call.last_signal),
        # Per-SSRC quality (MOS) from the caller's RTCP reports, as Kamailio's mos_*_pv
        # read it.
        "SSRC": ssrc_statistics(call) if parties else {},
        "tags": tags,
        "totals": {
            "RTP": totals_rtp if parties else dict(_EMPTY_TOTALS),
            "RTCP": stats.rtcp_in.as_dict() if parties else dict(_EMPTY_TOTALS),
        },
        "rtpai": rtpai_statistics(call),
    }


def ssrc_statistics(call: Call) -> dict[str, Any]:
    """rtpengine's top-level ``SSRC`` dict, which Kamailio's rtpengine mos pvs read.

    Keyed by SSRC (as a decimal string: bencode keys are strings). The caller's SSRC
    carries our reception quality of its stream, one sample per report we send; ours
    carries what the caller's RTCP reports about the stream we send it.
    """
    stream = call.stream
    entries: dict[str, Any] = {}
    ssrcs = [stream.packetizer.ssrc]
    if stream.reorder.ssrc is not None:
        ssrcs.insert(0, stream.reorder.ssrc)
    for ssrc in ssrcs:
        quality = stream.rtcp.quality.get(ssrc)
        entries[str(ssrc)] = quality.as_dict() if quality else {}
    return entries


def rtpai_statistics(call: Call) -> dict[str, Any]:
    """rtpai's own key of the query/delete reply: state, timeline, drops, the AI session."""
    stream = call.stream
    stats = stream.stats
    reorder = stream.reorder
    report = stream.rtcp.caller_report
    bridge = call.bridge
    offer_at = bridge.timeline.get("offer", 0.0)
    return {
        "state": call.state.value,
        "end reason": call.end_reason,
        "codec": call.media.codec,
        "ptime": call.media.ptime_ms,
        "timeline ms": {
            name: round((at - offer_at) * 1000, 1) for name, at in bridge.timeline.items()
        },
        "rtp in": stats.rtp_in.as_dict(),
        "rtp out": stats.rtp_out.as_dict(),
        "rtcp in": stats.rtcp_in.as_dict(),
        "rtcp out": stats.rtcp_out.as_dict(),
        "dropped": {
            "malformed": stats.malformed,
            "rtcp malformed": stats.rtcp_malformed,
            "foreign source": stats.foreign_source,
            "other payload": stats.other_payload,
            "late": reorder.late,
            "duplicate": reorder.duplicates,
            "ai queue full": stats.ai_queue_full,
            "events dropped": stats.events_dropped,
            "send errors": stats.send_errors,
            "playout overflow bytes": bridge.playout.bytes_dropped,
        },
        "lost": reorder.lost,
        "jitter ms": round(stream.jitter.milliseconds, 2),
        "round-trip time us": stream.rtcp.rtt_us,
        "caller report": {
            "fraction lost": report.fraction_lost,
            "cumulative lost": report.cumulative_lost,
            "jitter ms": round(report.jitter / 8, 2),
        }
        if report
        else None,
        "ssrc changes": reorder.ssrc_changes,
        "sequence restarts": reorder.restarts,
        "relatches": stats.relatches,
        "comfort noise": stats.comfort_noise,
        "dtmf": stats.dtmf_events,
        "pacer re-anchors": stats.pacer_reanchors,
        "transfers": list(call.transfers),
        "hang-up": call.hangup,
        # The call's latest recording (docs/recording.md): status, file, figures; None if
        # none was made.
        "recording": call.recording_files[-1].as_dict() if call.recording_files else None,
        "ai": call.ai.snapshot(),
    }


def engine_statistics(
    *,
    wall: float,
    gc: dict[str, Any],
    started: float,
    sessions_own: int,
    sessions_total: int,
    ports: PortBinder,
    rtp: Mapping[str, Any],
    totals: dict[str, int],
    ended_by: Mapping[EndReason, int],
    dispatcher: Dispatcher,
    recording: dict[str, int] | None = None,
    cdr: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """The ``statistics`` reply: rtpengine's sections, rtpai's counters in their terms.

    ``wall`` is the wall-clock time (for the uptime since ``started``); ``gc`` the cycle
    collector's figures (ctl/gcstats.py), empty when it is not monitored; ``sessions_own`` the
    calls not yet ended, ``sessions_total`` every call the registry holds; ``rtp`` the [rtp]
    section; ``totals`` the engine's counters; ``ended_by`` its ended calls by EndReason;
    ``dispatcher`` counts the commands; ``recording`` and ``cdr`` the recordings' and call
    records' counters (docs/recording.md).
    """
    return {
        "statistics": {
            # rtpai's own keys under a key of their own, as in the query reply: the cycle
            # collector's collections and pauses (ctl/gcstats.py).
            # Recording and call-record counters (docs/recording.md), exported as metrics.
            "rtpai": {"gc": gc, "recording": recording or {}, "cdr": cdr or {}},
            "currentstatistics": {
                "sessionsown": sessions_own,
                "sessionstotal": sessions_total,
                "portsinuse": ports.in_use,
                "portscapacity": ports.capacity,
            },
            "totalstatistics": {
                "uptime": int(wall - started),
                "managedsessions": totals["calls"],
                "endedsessions": totals["ended"],
                "timeoutsessions": totals["timeouts"],
                "aifailures": totals["ai failures"],
                # rtpai asked the proxy to end a call: it refused or failed, or it
                # accepted but no delete came within [proxy] hangup_timeout.
                "hangupfailures": totals["hangup failures"],
                "hanguptimeouts": totals["hangup timeouts"],
                "hangupretries": totals["hangup retries"],  # refusals asked again
                # Ended calls by why, every EndReason listed (0 included) by the name the
                # metrics' `reason` label uses; timeoutsessions and aifailures above are two
                # of these under rtpengine's names.
                "endreasons": {reason.value: ended_by.get(reason, 0) for reason in EndReason},
            },
            "controlstatistics": {
                "proxies": [],
                "commands": dict(dispatcher.commands),
                "errors": dict(dispatcher.errors),
                # Datagrams from sources [ng] allow does not list (dropped, unanswered).
                "denied": dispatcher.denied,
            },
            "interfaces": [
                {
                    "name": "default",
                    "address": rtp["ip"],
                    "ports": {
                        "min": rtp["min_port"],
                        "max": rtp["max_port"],
                        "used": 2 * ports.in_use,
                        "free": 2 * (ports.capacity - ports.in_use),
                        "totals": 2 * ports.capacity,
                        "used_pct": round(100 * ports.in_use / ports.capacity, 2),
                    },
                }
            ],
        }
    }

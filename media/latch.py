"""Symmetric RTP latching (RFC 4961) and its RTP Bleed defences, sans-IO.

A :class:`LatchPolicy` decides which source address may feed a call's RTP (and so where our RTP
goes): the first valid packet latches the call to its source, which is what gets through the
caller's NAT; after that a different source is a stranger unless the ``[rtp] relatch`` policy
lets it take over. An engine that follows whoever sent last lets anyone who guesses the port
receive the call's audio ("RTP Bleed"), so a stranger never takes over on its word alone.

The policy holds no socket and reads no clock: the stream asks :meth:`LatchPolicy.accept` with
the packet's arrival time, and tells it what the SDP says (:meth:`LatchPolicy.sdp_changed`).
"""

from __future__ import annotations

import enum
import ipaddress

Endpoint = tuple[str, int]

# The `silence` re-latch policy: the latched source must have been quiet this long before
# another source may take over (a NAT rebinding or a mobile handover, not an attacker
# racing a live stream).
RELATCH_SILENCE = 2.0


class Relatch(enum.Enum):
    """When RTP from a source other than the latched one may take the call over."""

    NEVER = "never"  # the first valid packet's source holds for the whole call
    SDP = "sdp"  # only the address:port the (latest) SDP names; a re-offer that moves it re-latches
    SILENCE = "silence"  # also any source, once the latched one has been quiet RELATCH_SILENCE


class Verdict(enum.Enum):
    """What :meth:`LatchPolicy.accept` made of a packet's source."""

    LATCHED = "latched"  # the source we are latched to
    FIRST = "first"  # the call's first valid packet: latched to its source now
    MOVED = "moved"  # a different source the policy lets take over: re-latched
    FOREIGN = "foreign"  # a stranger: its packet is dropped


def same_endpoint(a: Endpoint | None, b: Endpoint | None) -> bool:
    """Address equality that survives spelling: 2001:DB8::1 vs 2001:db8::1, v4-mapped v6."""
    if a is None or b is None or a[1] != b[1]:
        return False
    return same_host(a[0], b[0])


def same_host(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return False  # a host name (never resolved) equals only its own spelling
    x = getattr(x, "ipv4_mapped", None) or x
    y = getattr(y, "ipv4_mapped", None) or y
    return x == y


class LatchPolicy:
    """Which source feeds one call's RTP and RTCP.

    ``sdp_remote`` is the address:port the latest SDP names for RTP, or None when it names
    none we can use: ``c=0.0.0.0`` (hold, or a gateway that does not know its address yet) or a
    host name (never resolved: a lookup would block the event loop). With no SDP address the
    first valid packet latches from anywhere, except under ``strict_source``, which accepts
    only the SDP's address:port, ever (no NAT traversal), and so never latches such a call.
    """

    __slots__ = ("latched", "relatch", "sdp_remote", "strict_source")

    def __init__(
        self,
        sdp_remote: Endpoint | None,
        *,
        relatch: Relatch = Relatch.SDP,
        strict_source: bool = False,
    ) -> None:
        self.sdp_remote = sdp_remote
        self.relatch = relatch
        self.strict_source = strict_source
        self.latched: Endpoint | None = None  # None until the first valid packet

    def accept(self, source: Endpoint, now: float, last_heard: float | None = None) -> Verdict:
        """May a valid RTP packet from ``source``, arriving at ``now``, feed the call?

        ``last_heard`` is when the latched source last sent a valid packet (the `silence`
        policy's measure). Latches, or re-latches, as a side effect; the caller compares
        ``source`` with ``latched`` first, so that the common case costs no call.
        """
        latched = self.latched
        if source == latched:
            return Verdict.LATCHED
        if self.strict_source and not same_endpoint(source, self.sdp_remote):
            return Verdict.FOREIGN  # only the SDP's address:port, ever
        if latched is None:
            self.latched = source
            return Verdict.FIRST
        policy = self.relatch
        if policy is Relatch.NEVER:
            return Verdict.FOREIGN
        quiet = last_heard is None or now - last_heard >= RELATCH_SILENCE
        if same_endpoint(source, self.sdp_remote) or (policy is Relatch.SILENCE and quiet):
            self.latched = source
            return Verdict.MOVED
        return Verdict.FOREIGN

    def sdp_changed(self, sdp_remote: Endpoint | None) -> bool:
        """A re-offer names ``sdp_remote``; True if that moves the media there.

        Signalling vouches for a new address (the proxy saw the re-INVITE): the call is
        unlatched, to send there at once and latch afresh on the first packet, as a new call
        does, unless `never` holds an established latch. An offer without a usable address
        (hold, unknown) moves nothing.
        """
        moved = sdp_remote is not None and not same_endpoint(sdp_remote, self.sdp_remote)
        self.sdp_remote = sdp_remote
        if moved and (self.latched is None or self.relatch is not Relatch.NEVER):
            self.latched = None
            return True
        return False

    def rtcp_source_ok(self, source: Endpoint) -> bool:
        """RTCP is taken from the latched RTP host (any port: NATs pick their own) or, before
        latching, from the SDP's host; anything else could feed us forged reports."""
        expected = self.latched or self.sdp_remote
        return expected is not None and same_host(source[0], expected[0])

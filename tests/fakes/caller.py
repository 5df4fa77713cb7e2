"""A fake caller: streams G.711 RTP on a 20 ms schedule and records what comes back."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import trio

from media.rtp import RtpPacketizer, parse_rtp


@dataclass
class Received:
    at: float  # trio clock
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    source: tuple[str, int]


@dataclass
class FakeCaller:
    """Bind with ``await caller.bind()``; then ``stream`` and ``receive`` in a nursery."""

    payload_type: int = 0
    ptime_ms: int = 20
    host: str = "127.0.0.1"
    received: list[Received] = field(default_factory=list)
    sock: trio.socket.SocketType | None = None
    _new_packet: trio.Event = field(default_factory=trio.Event)

    async def bind(self) -> int:
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await self.sock.bind((self.host, 0))
        return self.sock.getsockname()[1]

    @property
    def port(self) -> int:
        assert self.sock is not None
        return self.sock.getsockname()[1]

    def sdp_offer(self, *, codecs: str = "0 8 101") -> str:
        """What a plain SIP phone offers (PCMU, PCMA, telephone-event)."""
        return (
            "v=0\r\n"
            f"o=caller 1 1 IN IP4 {self.host}\r\n"
            "s=call\r\n"
            f"c=IN IP4 {self.host}\r\n"
            "t=0 0\r\n"
            f"m=audio {self.port} RTP/AVP {codecs}\r\n"
            "a=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:8 PCMA/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n"
            "a=fmtp:101 0-16\r\n"
            f"a=ptime:{self.ptime_ms}\r\n"
            "a=sendrecv\r\n"
        )

    async def stream(self, destination: tuple[str, int], payloads: list[bytes]) -> None:
        """Send one payload per ptime on absolute deadlines, as a phone would."""
        assert self.sock is not None
        packetizer = RtpPacketizer(self.payload_type)
        samples = self.ptime_ms * 8
        start = trio.current_time()
        for n, payload in enumerate(payloads):
            await trio.sleep_until(start + n * self.ptime_ms / 1000)
            await self.sock.sendto(packetizer.packet(payload, samples), destination)

    async def receive(self) -> None:
        """Record every RTP packet that arrives, until cancelled."""
        assert self.sock is not None
        while True:
            data, source = await self.sock.recvfrom(2048)
            packet = parse_rtp(data)
            self.received.append(
                Received(trio.current_time(), packet.payload_type, packet.marker,
                         packet.sequence, packet.timestamp, packet.ssrc, packet.payload,
                         source[:2])
            )
            self._new_packet.set()
            self._new_packet = trio.Event()

    async def wait_for(self, predicate) -> None:
        """Wait until ``predicate(self.received)`` holds (checked on every packet)."""
        while not predicate(self.received):
            await self._new_packet.wait()

    def audio(self, silence_byte: int = 0xFF) -> bytes:
        """The non-silent payload bytes received, in order."""
        silent = bytes((silence_byte,))
        return b"".join(p.payload for p in self.received if p.payload.strip(silent))

"""The RTP/RTCP port pairs an offer binds: reserved from ``[rtp]``'s range, bound on
``[rtp] bind_ip``, given back when no call takes them over."""

from __future__ import annotations

import errno
import socket

from ctl.ng import REASON_NO_PORTS, NgError
from media.ports import PortPairAllocator, PortsExhausted
from media.stream import bind_pair

# Binding retries when another process holds a port of our range.
BIND_ATTEMPTS = 16


class PortBinder:
    """Binds pairs from ``ports`` (the allocator that counts them) on ``bind_ip``."""

    def __init__(self, ports: PortPairAllocator, bind_ip: str) -> None:
        self.ports = ports
        self.bind_ip = bind_ip

    def bind(self) -> tuple[int, tuple[socket.socket, socket.socket]]:
        """Reserve a pair and bind it: its RTP port and its (RTP, RTCP) sockets. A port taken
        by another process is skipped; raises :class:`NgError` with the reason the proxy gets."""
        for _ in range(BIND_ATTEMPTS):
            try:
                port = self.ports.allocate()
            except PortsExhausted:
                raise NgError(REASON_NO_PORTS) from None
            try:
                return port, bind_pair(self.bind_ip, port)
            except OSError as exc:
                self.ports.release(port)
                if exc.errno != errno.EADDRINUSE:
                    raise NgError(f"Cannot bind RTP port: {exc.strerror}") from None
        raise NgError(REASON_NO_PORTS)

    def unbind(self, rtp_port: int, sockets: tuple[socket.socket, socket.socket]) -> None:
        """Give back a pair that no call took over."""
        for sock in sockets:
            sock.close()
        self.ports.release(rtp_port)

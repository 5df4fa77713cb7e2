"""A call's RTP/RTCP socket pair: plain non-blocking stdlib UDP sockets.

Not ``trio.socket``: the engine's poller (media/poller.py) reads them synchronously, without a
trio checkpoint per packet (python-trio/trio#1595), so they are closed with
``trio.lowlevel.notify_closing`` first (:func:`close_socket`).
"""

from __future__ import annotations

import ipaddress
import socket

import trio

MAX_DATAGRAM = 2048  # G.711 at 40 ms is 332 bytes; anything near this is not ours to take


def bind_pair(bind_ip: str, rtp_port: int) -> tuple[socket.socket, socket.socket]:
    """Bind the RTP socket on ``rtp_port`` and RTCP on ``rtp_port + 1``; OSError if taken."""
    family = socket.AF_INET6 if ":" in bind_ip else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for port in (rtp_port, rtp_port + 1):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setblocking(False)
            if family == socket.AF_INET6 and ipaddress.ip_address(bind_ip).is_unspecified:
                # `::` takes IPv4 callers too (as ::ffff:a.b.c.d): one engine, both families.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((bind_ip, port))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets[0], sockets[1]


def close_socket(sock: socket.socket) -> None:
    """Close a socket trio may be watching (the poller's epoll is not trio's, but a task
    could be waiting on it): wake such a waiter with ClosedResourceError first."""
    trio.lowlevel.notify_closing(sock)
    sock.close()

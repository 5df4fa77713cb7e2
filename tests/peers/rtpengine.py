"""Debian's rtpengine daemon (10.5) as a reference peer, userspace only, on 127.0.0.1.

- `start_rtpengine(tmpdir, ng_port=..., port_min=..., port_max=...)`: the daemon in the
  foreground with a config written into `tmpdir`; async context manager.
- `ng_exchange(address, datagram)`: one datagram out, the reply datagram (or None) back.
- `bound_addresses(pid)`: the local addresses a process's sockets are bound to (/proc).

Nothing here knows rtpai: the differential test drives this and the engine side by side.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import trio

from tests.peers import LOOPBACK, require_tool, supervised

# Userspace forwarding only (table = -1: no kernel module, which a test machine lacks); one
# interface and one ng socket, both on loopback, and nothing else that listens (no CLI, TCP,
# HTTP, Redis, recording). delete-delay = 0: a plain `delete` forgets the call at once, so a
# sequence of commands reads the same on both engines; a request's own `delete delay` still
# applies. Log level 6 (info): level 7 dumps the freshly generated DTLS private key.
CONFIG_TEMPLATE = """\
[rtpengine]
table = -1
interface = {address}
listen-ng = {address}:{ng_port}
port-min = {port_min}
port-max = {port_max}
delete-delay = 0
timeout = 60
num-threads = 2
media-num-threads = 1
log-level = 6
"""


@dataclass
class Rtpengine:
    """A running daemon from `start_rtpengine`."""

    process: trio.Process
    ng: tuple[str, int]
    version: str
    config_path: Path
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


async def ng_exchange(
    address: tuple[str, int], datagram: bytes, *, timeout: float = 1.0
) -> bytes | None:
    """Send one ng datagram from a fresh connected socket; the reply, or None after `timeout`.

    No retransmits: a datagram that gets no answer (no cookie) must get none at all.
    """
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.connect(address)
        await sock.send(datagram)
        with trio.move_on_after(timeout):
            try:
                return await sock.recv(65535)
            except ConnectionRefusedError:  # ICMP port unreachable: nothing listens (yet)
                await trio.sleep_forever()  # let the caller's deadline decide
    return None


async def _answers_ping(address: tuple[str, int]) -> None:
    """Return once `address` answers an ng ping; retried every 100 ms (the caller bounds it)."""
    cookie = b"ready"
    while True:
        reply = await ng_exchange(address, cookie + b" d7:command4:pinge", timeout=0.1)
        if reply is not None and reply.startswith(cookie + b" ") and b"pong" in reply:
            return


async def _version(rtpengine: str) -> str:
    result = await trio.run_process(
        [rtpengine, "--version"], capture_stdout=True, capture_stderr=True, check=False
    )
    text = (result.stdout + result.stderr).decode(errors="replace")
    return text.strip().rpartition("Version: ")[2] or text.strip()


@asynccontextmanager
async def start_rtpengine(
    tmpdir: str | os.PathLike[str],
    *,
    ng_port: int,
    port_min: int,
    port_max: int,
    ready_timeout: float = 5.0,
) -> AsyncIterator[Rtpengine]:
    """Run rtpengine in the foreground until the block ends.

    Ready means it answers an ng ping (it logs no "listening" line). Its stderr log is
    `<tmpdir>/rtpengine.log`; the tail is attached to any exception from the block. On exit:
    SIGTERM, then SIGKILL to the process group after 5 s.
    """
    rtpengine = require_tool("rtpengine")
    tmp = Path(tmpdir)
    tmp.mkdir(parents=True, exist_ok=True)
    config_path = tmp / "rtpengine.conf"
    config_path.write_text(
        CONFIG_TEMPLATE.format(
            address=LOOPBACK, ng_port=ng_port, port_min=port_min, port_max=port_max
        )
    )
    log_path = tmp / "rtpengine.log"
    with trio.fail_after(ready_timeout):
        version = await _version(rtpengine)
    command = [
        rtpengine, f"--config-file={config_path}", "--config-section=rtpengine",
        "--foreground", "--log-stderr", "--no-log-timestamps",
    ]
    ng = (LOOPBACK, ng_port)
    async with supervised("rtpengine", command, log_path, lambda: _answers_ping(ng),
                          ready_timeout) as process:
        yield Rtpengine(process, ng, version, config_path, log_path)


# --------------------------------------------------------------------------- /proc


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _hex_address(text: str, family: int) -> str:
    raw = bytes.fromhex(text)
    if family == socket.AF_INET:
        return socket.inet_ntop(family, raw[::-1])
    # /proc/net/*6 prints four host-order 32-bit words
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(family, words)


def bound_addresses(pid: int) -> set[tuple[str, str, int]]:
    """(protocol, address, port) for every TCP/UDP socket `pid` holds, from /proc/net."""
    inodes = _socket_inodes(pid)
    found = set()
    for proto, family in (
        ("udp", socket.AF_INET), ("udp6", socket.AF_INET6),
        ("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6),
    ):
        with suppress(FileNotFoundError):
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
            for line in lines:
                fields = line.split()
                if int(fields[9]) in inodes:
                    address, port = fields[1].split(":")
                    found.add((proto, _hex_address(address, family), int(port, 16)))
    return found

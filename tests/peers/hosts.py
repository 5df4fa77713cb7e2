"""Several "hosts" on one machine for the scale-out tests: network namespaces and veth pairs.

``hosts(3)`` makes namespace ``rtpai<pid>h<i>`` per host, each joined to the root namespace by
a veth pair on its own /24 (10.213.<i>.0/24: the root end .1, the host end .2), so each rtpai
instance has an address and a network of its own, as on separate machines: its ng socket, its
RTP ports and its loopback are its own, and killing it leaves the others' untouched.
Everything is removed in the ``finally`` (deleting a namespace deletes its end of the veth
pair, and with it the root end).

Where namespaces cannot be made (no root, no CAP_SYS_ADMIN, no iproute2) it falls back to
127.0.0.11-13 on the root namespace's loopback and says so (``Hosts.isolated`` is False and a
warning names why): the proxy's engine set is the same, only the hosts share a kernel stack.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SUBNET = "10.213"
_uses = itertools.count(1)  # names differ per use: a deleted namespace goes away asynchronously


@dataclass(frozen=True)
class Host:
    index: int  # 1-based
    address: str  # where its rtpai listens (ng) and takes RTP
    peer: str  # the root namespace's address on its link (what the host reaches us by)
    namespace: str | None  # None: the loopback fallback

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host (``ip netns exec`` keeps the pid: it execs)."""
        if self.namespace is None:
            return argv
        return ["ip", "netns", "exec", self.namespace, *argv]


@dataclass(frozen=True)
class Hosts:
    hosts: list[Host]
    isolated: bool
    why_not: str = ""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _namespaces_unavailable() -> str:
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_SYS_ADMIN)"
    return ""


@contextmanager
def hosts(count: int) -> Iterator[Hosts]:
    why_not = _namespaces_unavailable()
    made: list[str] = []
    links: list[str] = []
    use = next(_uses)
    try:
        if not why_not:
            try:
                for index in range(1, count + 1):
                    namespace = f"rtpai{os.getpid()}u{use}h{index}"
                    # (interface names: at most 15 characters)
                    outside, inside = f"ra{os.getpid() % 100000}u{use % 100}h{index}", "rb"
                    _ip("netns", "add", namespace)
                    made.append(namespace)
                    _ip("link", "add", outside, "type", "veth", "peer", "name", inside,
                        "netns", namespace)
                    links.append(outside)
                    _ip("addr", "add", f"{SUBNET}.{index}.1/24", "dev", outside)
                    _ip("link", "set", outside, "up")
                    _ip("-n", namespace, "addr", "add", f"{SUBNET}.{index}.2/24", "dev", inside)
                    _ip("-n", namespace, "link", "set", inside, "up")
                    _ip("-n", namespace, "link", "set", "lo", "up")
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
                stderr = getattr(exc, "stderr", b"") or b""
                why_not = f"ip netns failed: {stderr.decode(errors='replace').strip() or exc}"
        if why_not:
            warnings.warn(f"scale-out test on 127.0.0.11-{10 + count}, not network "
                          f"namespaces: {why_not}", stacklevel=3)
            yield Hosts([Host(i, f"127.0.0.{10 + i}", "127.0.0.1", None)
                         for i in range(1, count + 1)], False, why_not)
        else:
            yield Hosts([Host(i, f"{SUBNET}.{i}.2", f"{SUBNET}.{i}.1", made[i - 1])
                         for i in range(1, count + 1)], True)
    finally:
        # The root ends first: deleting one removes its pair at once, with its address;
        # a namespace's deletion is finished by the kernel later.
        for link in links:
            subprocess.run(["ip", "link", "delete", link], capture_output=True, timeout=10,
                           check=False)
        for namespace in made:
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True,
                           timeout=10, check=False)

"""Who may send ng commands: ``[ng] allow``, a list of addresses and networks. Sans-IO.

ng has no authentication (neither has rtpengine's): whoever reaches the port can create and
delete calls. A carrier keeps the port on a management network and lists its proxies here;
others' datagrams are dropped without a reply, and counted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Source addresses whose verdict is remembered (a dict lookup instead of parsing the address
# of every datagram). A proxy set is a handful of addresses; spoofed sources could be many, so
# the memo is emptied when full: bounded memory, and a flood only costs the parsing it saves.
ACL_MEMO_SIZE = 1024


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 192.0.2.7 2001:db8::/32"``: comma- or space-separated addresses and CIDRs
    (host bits allowed: ``192.0.2.7/24`` means 192.0.2.0/24). Raises ValueError."""
    networks = []
    for part in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(
                f"expected IPv4/IPv6 addresses or CIDRs, e.g. 10.0.0.0/8, 2001:db8::7 "
                f"(not {part!r})"
            ) from None
    return tuple(networks)


class SourceFilter:
    """Whether a datagram's source address is allowed. Empty: everyone is."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        self._memo: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def allows(self, host: str) -> bool:
        """``host`` as a socket reports it: ``192.0.2.7``, ``::ffff:192.0.2.7`` (IPv4 through a
        dual-stack socket) or ``fe80::1%eth0``. Anything unparseable is refused."""
        if not self.networks:
            return True
        verdict = self._memo.get(host)
        if verdict is None:
            verdict = self._decide(host)
            if len(self._memo) >= ACL_MEMO_SIZE:
                self._memo.clear()
            self._memo[host] = verdict
        return verdict

    def _decide(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

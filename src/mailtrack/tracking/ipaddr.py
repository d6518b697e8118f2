"""IP addresses: truncation for anonymization, and the client address behind trusted proxies."""

from __future__ import annotations

import ipaddress
from functools import lru_cache


def anonymize_ip(ip: str) -> str | None:
    """The address truncated to its network (IPv4 /24, IPv6 /48); None for something not an address."""
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


@lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def _in_any(ip: str, networks: list[str]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in _networks(tuple(networks)))


def client_ip(peer: str | None, forwarded_for: str | None, trusted_proxies: list[str]) -> str | None:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the last untrusted hop of
    X-Forwarded-For (earlier hops are whatever the client claimed and cannot be believed)."""
    if peer is None or not forwarded_for or not trusted_proxies or not _in_any(peer, trusted_proxies):
        return peer
    for hop in reversed([part.strip() for part in forwarded_for.split(",")][:32]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a malformed chain is not to be trusted
        if not _in_any(hop, trusted_proxies):
            return hop
    return peer

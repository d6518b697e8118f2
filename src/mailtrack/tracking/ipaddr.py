"""IP addresses: truncation for anonymization, and the client address behind trusted proxies."""

from __future__ import annotations

import ipaddress


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

"""Pure client-address logic: the real client IP and the tag a key binds to.

The socket peer is the client unless it belongs to a configured trusted proxy; only then
are ``X-Forwarded-For`` / ``Forwarded`` read, right to left, skipping trusted hops.
IPv6 clients bind by /64, since privacy addresses rotate inside it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from gateway.config import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(text: str) -> IPAddress | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # Forwarded: for="[2001:db8::1]:4711"
        text = text[1 : text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in trusted)


def _forwarded_chain(xff: str | None, forwarded: str | None) -> list[str]:
    if forwarded:
        hops = []
        for element in forwarded.split(","):
            for pair in element.split(";"):
                name, _, value = pair.strip().partition("=")
                if name.lower() == "for":
                    hops.append(value)
        return hops
    return [h for h in (xff or "").split(",") if h.strip()]


def client_ip(
    peer: str | None,
    trusted: Sequence[IPNetwork],
    xff: str | None = None,
    forwarded: str | None = None,
) -> IPAddress | None:
    addr = _parse(peer) if peer else None
    if addr is None or not trusted or not _trusted(addr, trusted):
        return addr
    for hop in reversed(_forwarded_chain(xff, forwarded)):
        hop_addr = _parse(hop)
        if hop_addr is None:
            return addr  # a malformed hop: stop at the last address we can vouch for
        addr = hop_addr
        if not _trusted(addr, trusted):
            break
    return addr


def ip_tag(addr: IPAddress | None) -> str:
    """What a key binds to: the IPv4 address, or the IPv6 /64 network."""
    if addr is None:
        return "unknown"
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)

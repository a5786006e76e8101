"""Client IP resolution: forwarded headers count only from trusted proxies."""

from __future__ import annotations

import ipaddress

from gateway.netaddr import client_ip, ip_tag

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


def test_untrusted_peer_cannot_spoof_forwarded_for() -> None:
    addr = client_ip("203.0.113.9", TRUSTED, xff="1.2.3.4")
    assert str(addr) == "203.0.113.9"


def test_no_trusted_networks_means_headers_are_ignored() -> None:
    assert str(client_ip("10.1.1.1", (), xff="1.2.3.4")) == "10.1.1.1"


def test_trusted_proxy_hands_over_the_rightmost_untrusted_hop() -> None:
    # The left entries are client-supplied and could be forged; only the right end is ours.
    addr = client_ip("10.0.0.2", TRUSTED, xff="6.6.6.6, 198.51.100.7, 10.0.0.5")
    assert str(addr) == "198.51.100.7"


def test_forwarded_header_with_ipv6_and_port() -> None:
    addr = client_ip("10.0.0.2", TRUSTED, forwarded='for="[2001:db8:cafe::17]:4711";proto=https')
    assert str(addr) == "2001:db8:cafe::17"


def test_malformed_hop_stops_at_last_trusted_address() -> None:
    assert str(client_ip("10.0.0.2", TRUSTED, xff="garbage")) == "10.0.0.2"


def test_ipv6_binds_by_slash_64() -> None:
    a = ip_tag(ipaddress.ip_address("2001:db8:1:2:aaaa::1"))
    b = ip_tag(ipaddress.ip_address("2001:db8:1:2:ffff:1:2:3"))
    c = ip_tag(ipaddress.ip_address("2001:db8:1:3::1"))
    assert a == b == "2001:db8:1:2::/64"
    assert c != a


def test_ipv4_mapped_ipv6_is_ipv4() -> None:
    assert ip_tag(client_ip("::ffff:192.0.2.1", ())) == "192.0.2.1"

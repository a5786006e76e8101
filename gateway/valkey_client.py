"""Opens the async Valkey client for ``ANTEX_VALKEY_URL``: one node, Cluster or Sentinel.

* ``valkey://host:6379/0``, ``valkeys://…`` (TLS), ``unix:///path/valkey.sock``: one server.
* ``valkey+cluster://host:6379``: a Valkey Cluster, discovered from any seed node.
* ``valkey+sentinel://host:26379/mymaster``: the primary named ``mymaster`` via Sentinel
  (comma-separate several sentinels: ``valkey+sentinel://s1:26379,s2:26379/mymaster``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import valkey.asyncio as avalkey
from valkey.asyncio.cluster import ValkeyCluster
from valkey.asyncio.sentinel import Sentinel

from gateway.errors import ConfigError


def is_cluster(url: str) -> bool:
    return url.startswith(("valkey+cluster://", "valkeys+cluster://"))


def open_client(url: str, **options: Any) -> Any:
    """The client for ``url``; every command-level option (e.g. decode_responses) passes on."""
    if is_cluster(url):
        plain = url.replace("+cluster", "", 1)
        options.pop("max_connections", None)
        return ValkeyCluster.from_url(plain, **options)
    if url.startswith(("valkey+sentinel://", "valkeys+sentinel://")):
        parts = urlsplit(url)
        service = parts.path.strip("/")
        if not service or not parts.netloc:
            raise ConfigError("ANTEX_VALKEY_URL: Sentinel URLs need hosts and a service name")
        hosts = []
        for hostport in parts.netloc.rsplit("@", 1)[-1].split(","):
            host, _, port = hostport.partition(":")
            hosts.append((host, int(port or 26379)))
        sentinel = Sentinel(
            hosts,
            ssl=parts.scheme.startswith("valkeys"),
            password=parts.password,
            sentinel_kwargs={"password": parts.password} if parts.password else None,
        )
        options.pop("health_check_interval", None)
        return sentinel.master_for(service, **options)
    if not url:
        raise ConfigError("ANTEX_VALKEY_URL is empty")
    return avalkey.Valkey.from_url(url, **options)

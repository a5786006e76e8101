"""The Valkey boundary: the client for ``ANTEX_VALKEY_URL``, the Lua scripts of
``ratelimit_lua`` (all loaded at start-up, called by SHA) and the one outage mapping.

Limits are enforced in Valkey or not at all (fail closed): a Valkey outage raised anywhere
below a route becomes ``errors.ServiceUnavailable`` (a 503 in the route's shape) in
``gateway.edge``, through :func:`unavailable`; nothing needs to remember a guard.

URLs: ``valkey://host:6379/0``, ``valkeys://…`` (TLS), ``unix:///path/valkey.sock`` (one
server); ``valkey+cluster://host:6379`` (a Cluster, discovered from any seed node);
``valkey+sentinel://s1:26379,s2:26379/mymaster`` (the primary named ``mymaster``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeAlias, cast
from urllib.parse import urlsplit

import valkey.asyncio as avalkey
import valkey.exceptions as vexc
from valkey.asyncio import BlockingConnectionPool, Valkey
from valkey.asyncio.cluster import ValkeyCluster
from valkey.asyncio.sentinel import Sentinel

from gateway.errors import AntexError, ConfigError, ServiceUnavailable

log = logging.getLogger("antex.valkey")

Client: TypeAlias = Valkey | ValkeyCluster
Arg: TypeAlias = str | int

# Every operation script; window_frees.lua is only ever included into others.
SCRIPT_NAMES = ("admit", "settle", "usage", "key_failure", "create_key", "release_key")

# A cluster mid-failover, a replica promoted under us or a server out of memory is as
# unusable as a dead socket. Script errors (bugs) are not in this list and stay loud.
OUTAGES: tuple[type[Exception], ...] = (
    vexc.ConnectionError,
    vexc.TimeoutError,
    vexc.ClusterDownError,
    vexc.TryAgainError,
    vexc.ReadOnlyError,
    vexc.OutOfMemoryError,
    vexc.SlotNotCoveredError,
)


# What a caller that renders its own errors (the HTML pages, the CLI) catches.
FAILURES: tuple[type[Exception], ...] = (AntexError, *OUTAGES)


def unavailable(exc: BaseException) -> ServiceUnavailable:
    """The domain error for one of ``OUTAGES`` (logged by type: the message can name hosts)."""
    log.warning("valkey unavailable: %s", type(exc).__name__)
    err = ServiceUnavailable("The gateway's usage store is unreachable; retry shortly.")
    err.__cause__ = exc
    return err


def domain_error(exc: BaseException) -> AntexError:
    """``exc`` itself if it is a domain error, else (one of ``OUTAGES``) its 503."""
    return exc if isinstance(exc, AntexError) else unavailable(exc)


@contextmanager
def fail_closed() -> Iterator[None]:
    """Maps ``OUTAGES`` to ``ServiceUnavailable`` for callers that handle that error
    themselves (admission, settlement); routes need no guard, the edge maps outages."""
    try:
        yield
    except OUTAGES as exc:
        raise unavailable(exc) from exc


def is_cluster(url: str) -> bool:
    return url.startswith(("valkey+cluster://", "valkeys+cluster://"))


def open_client(url: str, *, pool_wait: float | None = None, **options: Any) -> Any:
    """The client for ``url``; command-level options pass on. Replies are always decoded to
    ``str`` (one decode mode: every value the gateway stores is UTF-8 text).

    ``pool_wait`` (seconds) makes a one-server client's pool blocking: when all of its
    ``max_connections`` are busy, a command waits up to that long for one to come back, then
    raises ConnectionError (an outage: 503). Sentinel and Cluster keep their own pools.
    Raises ConfigError for an empty URL or a Sentinel URL without hosts or service."""
    options["decode_responses"] = True
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
    if pool_wait is not None:
        pool = BlockingConnectionPool.from_url(url, timeout=pool_wait, **options)
        return avalkey.Valkey.from_pool(pool)
    return avalkey.Valkey.from_url(url, **options)


async def open_connections(client: Client, count: int) -> int:
    """Connects up to ``count`` pooled connections now, so a burst of requests right after
    start-up finds them open rather than connecting on a loop already saturated by the
    burst (where the connect deadline passes). Returns how many opened; failures are left
    to the first commands to report."""
    if isinstance(client, ValkeyCluster):
        return 0
    pool = client.connection_pool
    got = await asyncio.gather(
        *(pool.get_connection("PING") for _ in range(count)), return_exceptions=True
    )
    opened = 0
    for conn in got:
        if isinstance(conn, BaseException):
            continue
        opened += 1
        await pool.release(conn)
    return opened


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str


_INCLUDE = "--#include "


def _source(name: str) -> str:
    return resources.files("ratelimit_lua").joinpath(f"{name}.lua").read_text("utf-8")


def _read(name: str) -> Script:
    # A line "--#include other" pastes other.lua in its place: one shared function is one
    # rule, where two copies could drift apart.
    lines = [
        _source(line[len(_INCLUDE) :].strip()) if line.startswith(_INCLUDE) else line
        for line in _source(name).splitlines(keepends=True)
    ]
    source = "".join(lines)
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


class Scripts:
    """The scripts by name. ``call`` runs one by SHA and, if the server lost its script
    cache (restart, failover, SCRIPT FLUSH), sends the source once, which reloads it."""

    def __init__(self, names: Sequence[str] = SCRIPT_NAMES) -> None:
        self._scripts = {name: _read(name) for name in names}

    def __getitem__(self, name: str) -> Script:
        return self._scripts[name]

    async def load(self, client: Client) -> None:
        """SCRIPT LOAD every script (on a cluster: on every primary); a syntax error raises
        here, at boot, rather than on a live request."""
        with fail_closed():
            for script in self._scripts.values():
                sha = await cast(Awaitable[Any], client.script_load(script.source))
                if sha != script.sha:
                    raise RuntimeError(f"{script.name}.lua loaded as {sha}, expected {script.sha}")

    async def call(
        self,
        client: Client,
        name: str,
        keys: Sequence[str],
        args: Sequence[Arg],
        *,
        readonly: bool = False,
    ) -> Any:
        script = self._scripts[name]
        argv = [*keys, *(str(a) for a in args)]
        with fail_closed():
            try:
                if readonly:
                    call = client.evalsha_ro(script.sha, len(keys), *argv)
                else:
                    call = client.evalsha(script.sha, len(keys), *argv)
                return await cast(Awaitable[Any], call)
            except vexc.NoScriptError:
                log.info("script %s missing on the server; reloading", name)
            # EVAL caches the source on whichever node answers, which SCRIPT LOAD to the
            # primaries would miss when a read lands on a replica.
            if readonly:
                call = client.eval_ro(script.source, len(keys), *argv)
            else:
                call = client.eval(script.source, len(keys), *argv)
            return await cast(Awaitable[Any], call)

    async def call_many(
        self, client: Client, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Arg]]]
    ) -> list[Any]:
        """Runs one script several times in one pipelined round trip (no transaction: each
        call is atomic on its own). Returns each call's reply, or the exception it raised.
        Raises ServiceUnavailable when the connection failed (some calls may have run)."""
        script = self._scripts[name]
        if isinstance(client, ValkeyCluster):
            # Calls on different slots live on different nodes: concurrent calls, one round
            # trip per node's share, each reloading its script on NOSCRIPT by itself.
            return list(
                await asyncio.gather(
                    *(self.call(client, name, keys, args) for keys, args in calls),
                    return_exceptions=True,
                )
            )
        with fail_closed():
            for attempt in (1, 2):
                pipe = client.pipeline(transaction=False)
                for keys, args in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *(str(a) for a in args))
                replies = list(await pipe.execute(raise_on_error=False))
                if attempt == 1 and any(isinstance(r, vexc.NoScriptError) for r in replies):
                    log.info("script %s missing on the server; reloading", name)
                    # The calls that did run are repeated: the scripts batched this way are
                    # idempotent.
                    await cast(Awaitable[Any], client.script_load(script.source))
                    continue
                return replies
        raise AssertionError("unreachable: the second attempt returns")

"""Verifies presented API keys: per-worker cache, single-flight bcrypt off the loop.

The cache only remembers that a secret matched its hash; whether the key is still active
(revoked, quarantined) is checked by the admit script on every request, so a revocation
holds at once on every worker. Pub/sub invalidation also drops cached entries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import valkey.asyncio as avalkey
from cachetools import TTLCache

from gateway import keys, keyspace
from gateway.errors import AuthenticationFailed
from gateway.limits import quarantined
from gateway.scripts import fail_closed

log = logging.getLogger("antex.auth")

_INVALID = "Invalid API key. Check the key, or create a new one on the API keys page."
_MISSING = "Missing API key: send it as x-api-key or Authorization: Bearer."
_THROTTLED = "Too many failed authentication attempts from this address; wait a minute."


@dataclass(frozen=True, slots=True)
class AuthedKey:
    account_id: str
    key_id: str


BadSecretHook = Callable[[str, str, str], Awaitable[None]]
CacheLookupHook = Callable[[bool], None]


def _ignore_lookup(hit: bool) -> None:
    return None


class Authenticator:
    def __init__(
        self,
        client: avalkey.Valkey,
        *,
        ttl: float,
        size: int,
        failures_per_minute: int = 30,
        key_failures_per_minute: int = 10,
        on_bad_secret: BadSecretHook | None = None,
    ) -> None:
        self._client = client
        self._cache: TTLCache[bytes, AuthedKey] = TTLCache(size, ttl)
        # Remembers wrong keys briefly so replaying one costs no bcrypt.
        self._rejected: TTLCache[bytes, bool] = TTLCache(size, 60)
        self._failures: TTLCache[str, int] = TTLCache(size, 60)
        self._failures_limit = failures_per_minute
        # Wrong secrets per key id: a distributed brute force on one known id gets at most
        # this many bcrypt runs a minute per worker, whatever its number of addresses.
        self._key_failures: TTLCache[str, int] = TTLCache(size, 60)
        self._key_failures_limit = key_failures_per_minute
        self._inflight: dict[bytes, asyncio.Future[AuthedKey | None]] = {}
        # A bounded pool: a flood of wrong secrets can use these threads, never the loop.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bcrypt")
        self._on_bad_secret = on_bad_secret
        self.hits = 0
        self.misses = 0
        # Called with hit=True/False on every lookup; observability counts them per worker.
        self.on_cache_lookup: CacheLookupHook = _ignore_lookup

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def authenticate(self, presented: str | None, ip_tag: str) -> AuthedKey:
        if not presented:
            raise AuthenticationFailed(_MISSING)
        digest = keys.cache_digest(presented)
        cached = self._cache.get(digest)
        if cached is not None:
            self.hits += 1
            self.on_cache_lookup(True)
            return cached
        self.misses += 1
        self.on_cache_lookup(False)
        if digest in self._rejected:
            raise AuthenticationFailed(_INVALID)
        if self._failures.get(ip_tag, 0) >= self._failures_limit:
            raise AuthenticationFailed(_THROTTLED)
        pending = self._inflight.get(digest)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._inflight[digest] = pending
            try:
                result = await self._verify(presented, ip_tag)
            except BaseException as exc:
                pending.set_exception(exc)
                pending.exception()  # mark retrieved: waiters may be none
                raise
            finally:
                del self._inflight[digest]
            pending.set_result(result)
        else:
            result = await asyncio.shield(pending)
        if result is None:
            self._rejected[digest] = True
            self._failures[ip_tag] = self._failures.get(ip_tag, 0) + 1
            raise AuthenticationFailed(_INVALID)
        self._cache[digest] = result
        return result

    async def _verify(self, presented: str, ip_tag: str) -> AuthedKey | None:
        parsed = keys.parse_key(presented)
        if parsed is None:
            return None
        with fail_closed():
            account_id = await self._client.get(keyspace.key_index(parsed.key_id))
        if account_id is None:
            return None  # unknown key ids never reach bcrypt
        account = account_id.decode() if isinstance(account_id, bytes) else str(account_id)
        record = keyspace.AccountKeys(account)
        with fail_closed():
            hashed, status, reason = await self._client.hmget(
                record.key(parsed.key_id), ["hash", "status", "quarantine_reason"]
            )
        if hashed is None or status in (b"revoked", "revoked"):
            return None
        if status in (b"quarantined", "quarantined"):
            # Locked either way: say so without spending a bcrypt on whoever is asking.
            raise quarantined(reason.decode() if isinstance(reason, bytes) else str(reason or ""))
        if self._key_failures.get(parsed.key_id, 0) >= self._key_failures_limit:
            # Unverified, so it still counts toward the key's failed-secret quarantine; raised
            # rather than returned so the key's owner is not remembered as a wrong key.
            if self._on_bad_secret is not None:
                await self._on_bad_secret(account, parsed.key_id, ip_tag)
            raise AuthenticationFailed(_INVALID)
        hashed_text = hashed.decode() if isinstance(hashed, bytes) else str(hashed)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._pool, keys.check_secret, parsed.secret, hashed_text)
        if not ok:
            self._key_failures[parsed.key_id] = self._key_failures.get(parsed.key_id, 0) + 1
            if self._on_bad_secret is not None:
                await self._on_bad_secret(account, parsed.key_id, ip_tag)
            return None
        return AuthedKey(account, parsed.key_id)

    def invalidate_key(self, key_id: str) -> None:
        """Revoked or released elsewhere: drop what this worker remembers of the key."""
        self._key_failures.pop(key_id, None)
        for digest, authed in list(self._cache.items()):
            if authed.key_id == key_id:
                self._cache.pop(digest, None)

    async def listen_for_invalidations(self, client: avalkey.Valkey) -> None:
        """Runs for the worker's life: drops cached keys that another process revoked."""
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(keyspace.INVALIDATE_CHANNEL)
        try:
            async for message in pubsub.listen():
                data = message.get("data")
                if isinstance(data, bytes | str):
                    self.invalidate_key(data.decode() if isinstance(data, bytes) else data)
        finally:
            await pubsub.aclose()

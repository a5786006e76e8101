"""Verifies presented API keys: per-worker cache, single-flight bcrypt off the loop.

The cache only remembers that a secret matched its hash; whether the key is still active
(revoked, quarantined) is checked by the admit script on every request, so a revocation
holds at once on every worker. Pub/sub invalidation also drops cached entries.

Wrong secrets throttle the address that sends them, never the key's owner: key ids are
public, so a stranger must not be able to lock a key. A throttled address may still present
a key that parses and whose id exists (a shared address with one bad client); the bcrypt
work such attempts cost is bounded per key id, per address/key pair and per address (one
bcrypt at a time), so a burst does not slow other customers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import valkey.asyncio as avalkey
from cachetools import TTLCache

from gateway import keys, keyspace
from gateway.errors import AuthenticationFailed, quarantined
from gateway.store import fail_closed

log = logging.getLogger("antex.auth")

_INVALID = "Invalid API key. Check the key, or create a new one on the API keys page."
_MISSING = "Missing API key: send it as x-api-key or Authorization: Bearer."
_THROTTLED = "Too many failed authentication attempts from this address; wait a minute."


@dataclass(frozen=True, slots=True)
class AuthedKey:
    account_id: str
    key_id: str


Pair = tuple[str, str]
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
        pair_failures_per_minute: int = 3,
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
        # Wrong secrets per (address, key id): past this, that address gets no more bcrypt
        # for that key unless the address is one the key is bound to.
        self._pair_failures: TTLCache[tuple[str, str], int] = TTLCache(size, 60)
        self._pair_failures_limit = pair_failures_per_minute
        # One bcrypt at a time per failing key id and per throttled address (see _check).
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._inflight: dict[bytes, asyncio.Future[AuthedKey | None]] = {}
        # A bounded pool: a flood of wrong secrets can use these threads, never the loop.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bcrypt")
        self._on_bad_secret = on_bad_secret
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
            self.on_cache_lookup(True)
            return cached
        self.on_cache_lookup(False)
        if digest in self._rejected:
            raise AuthenticationFailed(_INVALID)
        throttled = self._failures.get(ip_tag, 0) >= self._failures_limit
        if throttled and keys.parse_key(presented) is None:
            raise AuthenticationFailed(_THROTTLED)
        pending = self._inflight.get(digest)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._inflight[digest] = pending
            try:
                result = await self._verify(presented, ip_tag, throttled)
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
            raise AuthenticationFailed(_THROTTLED if throttled else _INVALID)
        self._cache[digest] = result
        return result

    async def _verify(self, presented: str, ip_tag: str, throttled: bool) -> AuthedKey | None:
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
        pair = (ip_tag, parsed.key_id)
        suspect = (
            self._key_failures.get(parsed.key_id, 0) >= self._key_failures_limit
            or self._pair_failures.get(pair, 0) >= self._pair_failures_limit
        )
        if suspect:
            # The key's budget is spent: only its owner's bound addresses still get a bcrypt.
            with fail_closed():
                bound = await self._client.hexists(record.key_ips(parsed.key_id), ip_tag)
            if not bound:
                await self._bad_secret(account, parsed.key_id, ip_tag, pair)
                # Raised rather than returned so a correct secret is not remembered as wrong.
                raise AuthenticationFailed(_THROTTLED if throttled else _INVALID)
        hashed_text = hashed.decode() if isinstance(hashed, bytes) else str(hashed)
        ok = await self._check(parsed.secret, hashed_text, ip_tag, parsed.key_id, throttled)
        if not ok:
            await self._bad_secret(account, parsed.key_id, ip_tag, pair)
            return None
        self._pair_failures.pop(pair, None)
        return AuthedKey(account, parsed.key_id)

    async def _check(
        self, secret: str, hashed: str, ip_tag: str, key_id: str, throttled: bool
    ) -> bool:
        """bcrypt in the pool. A key id that has failed lately and a throttled address each
        get one bcrypt at a time, so a burst against one key holds one thread, not all."""
        loop = asyncio.get_running_loop()
        gates = [f"k:{key_id}"] if key_id in self._key_failures else []
        if throttled:
            gates.append(f"a:{ip_tag}")
        async with contextlib.AsyncExitStack() as stack:
            for name in gates:
                await stack.enter_async_context(self._gate(name))
            return await loop.run_in_executor(self._pool, keys.check_secret, secret, hashed)

    @contextlib.asynccontextmanager
    async def _gate(self, name: str) -> AsyncIterator[None]:
        gate = self._gates.get(name)
        if gate is None:
            gate = self._gates[name] = asyncio.Semaphore(1)
        try:
            async with gate:
                yield
        finally:
            if not gate.locked() and self._gates.get(name) is gate:
                del self._gates[name]

    async def _bad_secret(self, account: str, key_id: str, ip_tag: str, pair: Pair) -> None:
        self._key_failures[key_id] = self._key_failures.get(key_id, 0) + 1
        self._pair_failures[pair] = self._pair_failures.get(pair, 0) + 1
        if self._on_bad_secret is not None:
            await self._on_bad_secret(account, key_id, ip_tag)

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

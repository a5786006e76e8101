"""Verifies presented API keys: per-worker cache, single-flight bcrypt off the loop.

The cache only remembers that a secret matched its hash; whether the key is still active
(revoked, quarantined) is checked by the admit script on every request, so a revocation
holds at once on every worker. Pub/sub invalidation also drops cached entries.

Wrong secrets throttle the address that sends them, never the key's owner: key ids are
public, so a stranger must not be able to lock a key. The bcrypt work wrong secrets cost is
bounded per worker by two token buckets (``SecretBudget``; a matching secret gives its token
back): one per key id, spent by addresses the key is not bound to, and one per address.
Over the key id's budget an unbound address is refused at once without hashing; over the
address's budget a pair that failed lately is refused at once, while the key's bound
addresses and keys new to the address wait (briefly, a few at a time) for a token, so a
shared address with one bad client still lets valid keys through. A key already verified
(the cache) is never refused, and bcrypt runs in a small thread pool, never on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import valkey.asyncio as avalkey
from cachetools import TTLCache

from gateway import keys, keyspace
from gateway.errors import AuthenticationFailed, quarantined
from gateway.secret_budget import SecretBudget
from gateway.store import fail_closed

log = logging.getLogger("antex.auth")

_INVALID = "Invalid API key. Check the key, or create a new one on the API keys page."
_MISSING = "Missing API key: send it as x-api-key or Authorization: Bearer."
_THROTTLED = "Too many failed authentication attempts from this address; wait a minute."
_BUSY = "Too many failed authentication attempts for this key or address; retry in a few seconds."
# A verification that must wait for its address's budget gives up after this long (s); at
# most this many wait per address, the rest are refused at once.
_MAX_WAIT_S = 2.0
_MAX_WAITERS = 4


@dataclass(frozen=True, slots=True)
class AuthedKey:
    account_id: str
    key_id: str


Pair = tuple[str, str]
BadSecretHook = Callable[[str, str, str], Awaitable[None]]
CacheLookupHook = Callable[[bool], None]
# Called once per bcrypt run with whether the secret matched, and once per verification
# refused without hashing with the budget that refused it ("key" or "address").
BcryptHook = Callable[[bool], None]
RefusedHook = Callable[[str], None]


def _ignore_lookup(hit: bool) -> None:
    return None


def _ignore_refusal(budget: str) -> None:
    return None


class Authenticator:
    def __init__(
        self,
        client: avalkey.Valkey,
        *,
        ttl: float,
        size: int,
        failures_per_minute: int = 30,
        key_rate: float = 0.5,
        key_burst: int = 5,
        address_rate: float = 4.0,
        address_burst: int = 10,
        bcrypt_threads: int = 2,
        on_bad_secret: BadSecretHook | None = None,
    ) -> None:
        self._client = client
        self._cache: TTLCache[bytes, AuthedKey] = TTLCache(size, ttl)
        # Remembers wrong keys briefly so replaying one costs no bcrypt.
        self._rejected: TTLCache[bytes, bool] = TTLCache(size, 60)
        self._failures: TTLCache[str, int] = TTLCache(size, 60)
        self._failures_limit = failures_per_minute
        # bcrypt runs for wrong secrets, per key id (from addresses the key is not bound to)
        # and per address: at most burst + rate x seconds each, per worker.
        self._key_budget = SecretBudget(key_rate, key_burst, size)
        self._address_budget = SecretBudget(address_rate, address_burst, size)
        # (address, key id) pairs that sent a wrong secret lately: over the address's budget
        # they are refused at once rather than queued.
        self._pair_failures: TTLCache[tuple[str, str], bool] = TTLCache(size, 60)
        self._waiting: dict[str, int] = {}  # address -> verifications waiting for its budget
        self._inflight: dict[bytes, asyncio.Future[AuthedKey | None]] = {}
        # A bounded pool: a flood of wrong secrets can use these threads, never the loop.
        self._pool = ThreadPoolExecutor(max_workers=bcrypt_threads, thread_name_prefix="bcrypt")
        self._on_bad_secret = on_bad_secret
        # Called with hit=True/False on every lookup; observability counts them per worker.
        self.on_cache_lookup: CacheLookupHook = _ignore_lookup
        self.on_bcrypt: BcryptHook = _ignore_lookup
        self.on_refused: RefusedHook = _ignore_refusal

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
        key_id = parsed.key_id
        hashed_text = hashed.decode() if isinstance(hashed, bytes) else str(hashed)
        now = time.monotonic()
        bound: bool | None = None  # asked of Valkey only when a budget is spent
        key_token = self._key_budget.take(key_id, now)
        if not key_token:
            # The key's budget is spent by strangers: only its owner's bound addresses still
            # get a bcrypt.
            bound = await self._bound(record, key_id, ip_tag)
            if not bound:
                await self._refuse("key", account, key_id, ip_tag, throttled)
        if not self._address_budget.take(ip_tag, now):
            if (ip_tag, key_id) in self._pair_failures and not (
                bound if bound is not None else await self._bound(record, key_id, ip_tag)
            ):
                await self._refuse("address", account, key_id, ip_tag, throttled, key_token)
            if not await self._wait_for_address(ip_tag):
                await self._refuse("address", account, key_id, ip_tag, throttled, key_token)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._pool, keys.check_secret, parsed.secret, hashed_text)
        self.on_bcrypt(ok)
        now = time.monotonic()
        if ok:
            if key_token:
                self._key_budget.give_back(key_id, now)
            self._address_budget.give_back(ip_tag, now)
            self._pair_failures.pop((ip_tag, key_id), None)
            return AuthedKey(account, key_id)
        self._pair_failures[(ip_tag, key_id)] = True
        await self._bad_secret(account, key_id, ip_tag)
        return None

    async def _bound(self, record: keyspace.AccountKeys, key_id: str, ip_tag: str) -> bool:
        with fail_closed():
            return bool(await self._client.hexists(record.key_ips(key_id), ip_tag))

    async def _wait_for_address(self, ip_tag: str) -> bool:
        """Waits (a few at a time, briefly) for a token of the address's budget."""
        waiting = self._waiting.get(ip_tag, 0)
        if waiting >= _MAX_WAITERS:
            return False
        self._waiting[ip_tag] = waiting + 1
        try:
            deadline = time.monotonic() + _MAX_WAIT_S
            while True:
                now = time.monotonic()
                if self._address_budget.take(ip_tag, now):
                    return True
                wait = self._address_budget.wait_s(ip_tag, now)
                if now + wait > deadline:
                    return False
                # Polled: a token given back by a matching secret ends the wait early.
                await asyncio.sleep(min(wait, 0.05))
        finally:
            left = self._waiting[ip_tag] - 1
            if left:
                self._waiting[ip_tag] = left
            else:
                del self._waiting[ip_tag]

    async def _refuse(
        self, budget: str, account: str, key_id: str, ip_tag: str, throttled: bool,
        key_token: bool = False,
    ) -> None:  # fmt: skip
        """Over a budget: refused without hashing. Counted as a wrong secret for the
        operator's alert (a burst is what spent the budget), never remembered as wrong: the
        secret may be right."""
        if key_token:
            self._key_budget.give_back(key_id, time.monotonic())
        self.on_refused(budget)
        await self._bad_secret(account, key_id, ip_tag)
        raise AuthenticationFailed(_THROTTLED if throttled else _BUSY)

    async def _bad_secret(self, account: str, key_id: str, ip_tag: str) -> None:
        if self._on_bad_secret is not None:
            await self._on_bad_secret(account, key_id, ip_tag)

    def invalidate_key(self, key_id: str) -> None:
        """Revoked or released elsewhere: drop what this worker remembers of the key."""
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


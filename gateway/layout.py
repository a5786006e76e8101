"""The version of the data layout in Valkey (``antex:layout``) and the steps that upgrade it.

``antex serve`` calls ``ensure_layout`` once before its workers start: the current version
passes with one GET; a newer one is refused (this code would misread it); an older one is
migrated step by step under a lock, so of several nodes starting at once one migrates and
the others wait. Every step is idempotent and the version is stamped after each, so a
step cut short by a crash simply runs again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from valkey.exceptions import LockError

from gateway import keyspace
from gateway.errors import ConfigError
from gateway.store import Client

log = logging.getLogger("antex.layout")

LAYOUT_KEY = f"{keyspace.PREFIX}:layout"
LOCK_KEY = f"{keyspace.PREFIX}:layout:lock"
# A store written before versions existed: the layout of version 1.
UNVERSIONED = 1
# Keys whose presence tells an unversioned store with data from an empty one.
_DATA_KEYS = (keyspace.ACCOUNTS, keyspace.PLANS, keyspace.ADMIN_TOKENS)
_LOCK_TTL_S = 600.0  # a migrator that died frees the lock after this


class LayoutError(ConfigError):
    """The store cannot be used by this version of Antex (start-up only)."""


@dataclass(frozen=True, slots=True)
class Step:
    version: int  # the version the store has once this step is done
    summary: str
    run: Callable[[Client], Awaitable[int]]  # returns how many records it touched



async def _index_quarantined_keys(client: Client) -> int:
    """Version 2: every quarantined key is listed in ``antex:quarantined``.

    Version 1 wrote that index after the quarantine itself and let the write fail, so a key
    could be refused without being listed for the operator.
    """
    added = 0
    for raw_account in await client.smembers(keyspace.ACCOUNTS):
        account = keyspace.AccountKeys(str(raw_account))
        for raw_key in await client.smembers(account.keys):
            key_id = str(raw_key)
            status, since = await client.hmget(account.key(key_id), ["status", "quarantined_ms"])
            if status is None or str(status) != "quarantined":
                continue
            member = f"{account.account_id}:{key_id}"
            score = int(since) if since is not None else int(time.time() * 1000)
            added += int(await client.zadd(keyspace.QUARANTINE_INDEX, {member: score}, nx=True))
    return added


STEPS: tuple[Step, ...] = (
    Step(2, "index every quarantined key for the operator's list", _index_quarantined_keys),
)
CURRENT = STEPS[-1].version if STEPS else UNVERSIONED


def pending(stored: int, steps: Sequence[Step] = STEPS) -> list[Step]:
    """The steps that take a store at ``stored`` to the newest version, in order."""
    return [step for step in steps if step.version > stored]


def refuse_newer(stored: int, current: int = CURRENT) -> None:
    if stored > current:
        raise LayoutError(
            f"The data in Valkey uses layout version {stored}, but this Antex understands "
            f"layout versions up to {current}. Run the newer Antex release that wrote it "
            "(downgrades are not supported: restore a backup taken before the upgrade)."
        )


async def stamped_version(client: Client) -> int | None:
    """The version in ``antex:layout``, None when the store carries none."""
    raw = await client.get(LAYOUT_KEY)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise LayoutError(f"{LAYOUT_KEY} holds {str(raw)!r}, not a version") from None


async def stored_version(client: Client) -> int | None:
    """The stamped version; ``UNVERSIONED`` for an old store with data; None when empty."""
    stamped = await stamped_version(client)
    if stamped is not None:
        return stamped
    return UNVERSIONED if await client.exists(*_DATA_KEYS) else None


async def ensure_layout(
    client: Client, steps: Sequence[Step] = STEPS, *, wait_s: float = _LOCK_TTL_S
) -> int:
    """Brings the store to the newest layout of ``steps``; returns that version.

    Raises ``LayoutError`` for a newer layout, or when another node's migration does not
    finish within ``wait_s`` seconds.
    """
    current = steps[-1].version if steps else UNVERSIONED
    stamped = await stamped_version(client)
    if stamped == current:
        return current
    if stamped is not None:
        refuse_newer(stamped, current)
    lock = client.lock(LOCK_KEY, timeout=_LOCK_TTL_S, blocking_timeout=wait_s)
    if not await lock.acquire():
        raise LayoutError(
            f"another node has held {LOCK_KEY} for {wait_s:.0f} s while migrating the "
            "data layout; check its log, or delete the key if that node is gone"
        )
    try:
        # Whoever held the lock before may have done the work already.
        stored = await stored_version(client)
        if stored is None:
            await client.set(LAYOUT_KEY, current)
            log.info("empty store: data layout version %d stamped", current)
            return current
        refuse_newer(stored, current)
        for step in pending(stored, steps):
            log.warning("migrating the data layout to version %d: %s", step.version,
                        step.summary)  # fmt: skip
            started = time.monotonic()
            touched = await step.run(client)
            await client.set(LAYOUT_KEY, step.version)
            log.warning("data layout version %d reached (%d records, %.1f s)",
                        step.version, touched, time.monotonic() - started)  # fmt: skip
        await client.set(LAYOUT_KEY, current)  # an unversioned store of today's layout too
        return current
    finally:
        try:
            await lock.release()
        except LockError:
            log.warning("the layout lock expired during the migration")


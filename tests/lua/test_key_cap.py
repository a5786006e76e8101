"""create_key.lua through accounts.create_key: the plan's key cap, atomically."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import valkey.asyncio as avalkey

from gateway import accounts, errors, keyspace
from gateway.clock import system_clock
from gateway.plans import Plan, set_plan

CAPPED = Plan("capped-2", 100, 1000, 1, 4, 30, max_keys=2)


async def capped_account(client: avalkey.Valkey) -> str:
    await set_plan(client, CAPPED)
    return await accounts.create_account(
        client, f"{uuid.uuid4().hex}@cap.test", CAPPED.name, now_ms=system_clock()
    )


async def test_keys_beyond_the_cap_are_refused_and_revoked_keys_do_not_count(
    async_valkey: avalkey.Valkey,
) -> None:
    account_id = await capped_account(async_valkey)
    first = await accounts.create_key(
        async_valkey, account_id, "laptop", rounds=4, now_ms=system_clock()
    )
    await accounts.create_key(async_valkey, account_id, "desktop", rounds=4, now_ms=system_clock())
    with pytest.raises(errors.KeyLimitReached) as info:
        await accounts.create_key(async_valkey, account_id, "ci", rounds=4, now_ms=system_clock())
    assert info.value.message == (
        "The plan allows 2 active API keys and the account has 2; revoke a key you no longer "
        "use, or ask your operator for a plan with more keys."
    )
    assert await async_valkey.scard(keyspace.AccountKeys(account_id).keys) == 2
    await accounts.revoke_key(async_valkey, account_id, first.key_id, now_ms=system_clock())
    await accounts.create_key(async_valkey, account_id, "ci", rounds=4, now_ms=system_clock())
    # A quarantined key still counts: an operator may release it.
    listed = await accounts.list_keys(async_valkey, account_id)
    active = next(k for k in listed if k["status"] == "active")
    await async_valkey.hset(
        keyspace.AccountKeys(account_id).key(active["key_id"]), "status", "quarantined"
    )
    with pytest.raises(errors.KeyLimitReached):
        await accounts.create_key(async_valkey, account_id, "more", rounds=4, now_ms=system_clock())


async def test_concurrent_creations_at_the_cap_let_exactly_one_through(
    async_valkey: avalkey.Valkey,
) -> None:
    for _ in range(5):
        account_id = await capped_account(async_valkey)
        await accounts.create_key(async_valkey, account_id, "one", rounds=4, now_ms=system_clock())
        results = await asyncio.gather(
            *(
                accounts.create_key(
                    async_valkey, account_id, f"k{n}", rounds=4, now_ms=system_clock()
                )
                for n in range(8)
            ),
            return_exceptions=True,
        )
        created = [r for r in results if isinstance(r, accounts.CreatedKey)]
        refused = [r for r in results if isinstance(r, errors.KeyLimitReached)]
        assert (len(created), len(refused)) == (1, 7)
        assert await async_valkey.scard(keyspace.AccountKeys(account_id).keys) == 2

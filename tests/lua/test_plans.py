"""Plans in Valkey: seeded defaults, edits, and their propagation into account snapshots."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import valkey.asyncio as avalkey

from gateway import keyspace, plans
from gateway.errors import ConfigError
from gateway.keyspace import AccountKeys
from gateway.plans import DEFAULT_PLANS, Plan, account_plan_fields

# The plan hash and the account set are global keys: give these tests a database of their own.
PLANS_DB = 7


@pytest.fixture
async def db(valkey_url: str) -> AsyncIterator[avalkey.Valkey]:
    client = avalkey.Valkey.from_url(valkey_url, db=PLANS_DB, decode_responses=True)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


async def add_account(client: avalkey.Valkey, plan: Plan, period_end_ms: int) -> str:
    account_id = uuid.uuid4().hex[:16]
    fields = account_plan_fields(plan, period_end_ms)
    await client.hset(AccountKeys(account_id).account, mapping=fields)
    await client.sadd(keyspace.ACCOUNTS, account_id)
    return account_id


async def test_defaults_are_seeded_once_and_listed_smallest_first(db: avalkey.Valkey) -> None:
    listed = await plans.list_plans(db)
    assert [p.name for p in listed] == ["starter", "pro", "max", "team"]
    pro = await plans.get_plan(db, "pro")
    assert pro is not None and (pro.credits_5h, pro.credits_7d) == (2_000, 20_000)
    assert await plans.get_plan(db, "platinum") is None
    await db.hdel(keyspace.PLANS, "starter")  # an operator deleted one: it stays deleted
    assert [p.name for p in await plans.list_plans(db)] == ["pro", "max", "team"]


def test_account_snapshot_holds_limits_in_milli_credits() -> None:
    pro = next(p for p in DEFAULT_PLANS if p.name == "pro")
    assert account_plan_fields(pro, 1_800_000_000_000) == {
        "plan": "pro", "limit_5h": "2000000", "limit_7d": "20000000", "ip_slots": "2",
        "concurrency": "8", "max_keys": "3", "period_end_ms": "1800000000000",
        "status": "active",
    }  # fmt: skip


async def test_set_plan_updates_only_accounts_on_that_plan(db: avalkey.Valkey) -> None:
    by_name = {p.name: p for p in DEFAULT_PLANS}
    on_pro = [await add_account(db, by_name["pro"], 1000 + n) for n in range(3)]
    on_max = await add_account(db, by_name["max"], 5000)
    await db.hset(AccountKeys(on_pro[0]).account, "status", "cancelled")
    bigger = Plan("pro", 3_000, 30_000, 3, 12, 30, "More room.", max_keys=4)
    assert await plans.set_plan(db, bigger) == 3
    assert await plans.get_plan(db, "pro") == bigger
    for n, account_id in enumerate(on_pro):
        fields = await db.hgetall(AccountKeys(account_id).account)
        assert (fields["limit_5h"], fields["limit_7d"]) == ("3000000", "30000000")
        assert (fields["ip_slots"], fields["concurrency"], fields["max_keys"]) == ("3", "12", "4")
        assert fields["period_end_ms"] == str(1000 + n)  # the period is the account's own
    assert (await db.hget(AccountKeys(on_pro[0]).account, "status")) == "cancelled"
    assert await db.hget(AccountKeys(on_max).account, "limit_5h") == "10000000"


def test_a_plan_saved_before_the_key_cap_reads_with_the_default_cap() -> None:
    old = b'{"name":"old","credits_5h":1,"credits_7d":1,"ip_slots":1,"concurrency":1,'
    old += b'"period_days":1}'
    assert Plan.from_json(old).max_keys == plans.DEFAULT_MAX_KEYS


async def test_set_plan_creates_a_new_plan(db: avalkey.Valkey) -> None:
    assert await plans.set_plan(db, Plan("edu", 300, 3_000, 1, 2, 90)) == 0
    assert [p.name for p in await plans.list_plans(db)][:2] == ["edu", "starter"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "has space"},
        {"credits_5h": 0},
        {"concurrency": -1},
        {"credits_7d": 10},
        {"max_keys": 0},
    ],
)
def test_invalid_plans_are_rejected(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"name": "x", "credits_5h": 100, "credits_7d": 1000,
                               "ip_slots": 1, "concurrency": 1, "period_days": 30}  # fmt: skip
    with pytest.raises(ConfigError):
        Plan(**{**base, **kwargs})  # type: ignore[arg-type]

"""Plans: credit allowances per rolling window, IP slots and concurrency, stored in Valkey.

Each account hash carries a snapshot of its plan's limits, because admit.lua (one slot on a
cluster) cannot read the global plan hash; changing a plan copies the new limits into every
account on it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from typing import Any, cast

import orjson

from gateway import keyspace
from gateway.errors import ConfigError
from gateway.keyspace import AccountKeys
from gateway.store import Client

log = logging.getLogger("antex.plans")

_BATCH = 500
# Active keys per account for plans saved before the key cap existed.
DEFAULT_MAX_KEYS = 5
# Upper bounds of a plan's numbers: credits fit signed 32 bits (milli-credits stay exact in a
# Lua double), a period keeps every date renderable, counts stay sane.
_LIMITS = {"period_days": 36_500, "ip_slots": 1_000_000, "concurrency": 1_000_000,
           "max_keys": 1_000_000}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    credits_5h: int  # whole credits (1 credit = 1 US cent of list price)
    credits_7d: int
    ip_slots: int
    concurrency: int
    period_days: int
    description: str = ""
    # Active (not revoked) keys per account: IP slots are per key, so without a cap one key
    # per machine would defeat them.
    max_keys: int = DEFAULT_MAX_KEYS

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name):
            raise ConfigError(f"plan name {self.name!r} must be non-empty without spaces")
        fields = ("credits_5h", "credits_7d", "ip_slots", "concurrency", "period_days", "max_keys")
        for field in fields:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"plan {self.name}: {field} must be a positive integer")
            if value > _LIMITS.get(field, 2**31 - 1):
                raise ConfigError(
                    f"plan {self.name}: {field} must be at most {_LIMITS.get(field, 2**31 - 1)}"
                )
        if self.credits_7d < self.credits_5h:
            raise ConfigError(f"plan {self.name}: credits_7d is below credits_5h")

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Plan:
        return cls(**orjson.loads(data))


# Sizing. A Claude Code turn on Sonnet 4.6 costs about 2-5 credits: ~50K cached context read
# (50K x 30/M = 1.5), ~2K fresh input (0.6) and ~1K output (1.5). A focused developer runs
# 100-200 turns an hour, i.e. 300-700 credits/hour. "pro" therefore covers about 3-5 hours of
# steady Sonnet work per 5-hour window (less on Opus, ~1.7x the price), and its weekly
# allowance is ten full windows, so nobody can run flat out around the clock. The other plans
# scale that: starter is a quarter of pro, max five times pro, team twenty times pro for a
# small shared fleet. Concurrency allows parallel subagents; IP slots cover home, office and
# a CI runner; the key cap allows a key per machine (laptop, desktop, CI) without letting keys
# multiply the slots.
_STARTER = "Occasional use: about an hour of Sonnet per window."
_TEAM = "A small team or CI fleet sharing one account."
DEFAULT_PLANS: tuple[Plan, ...] = (
    Plan("starter", 500, 5_000, 1, 4, 30, _STARTER, max_keys=2),
    Plan("pro", 2_000, 20_000, 2, 8, 30, "One developer, daily Claude Code use.", max_keys=3),
    Plan("max", 10_000, 100_000, 3, 24, 30, "Heavy use, Opus and parallel agents.", max_keys=5),
    Plan("team", 40_000, 400_000, 10, 64, 30, _TEAM, max_keys=20),
)


def account_plan_fields(plan: Plan, period_end_ms: int) -> dict[str, str]:
    """The plan snapshot written into an account hash; limits in milli-credits."""
    return {**_limit_fields(plan), "period_end_ms": str(period_end_ms), "status": "active"}


def _limit_fields(plan: Plan) -> dict[str, str]:
    return {
        "plan": plan.name,
        "limit_5h": str(plan.credits_5h * 1000),
        "limit_7d": str(plan.credits_7d * 1000),
        "ip_slots": str(plan.ip_slots),
        "concurrency": str(plan.concurrency),
        "max_keys": str(plan.max_keys),
    }


async def _all(client: Client) -> dict[str, Plan]:
    raw = await cast(Awaitable[dict[Any, Any]], client.hgetall(keyspace.PLANS))
    if not raw:
        # First start: seed the defaults. HSETNX keeps an operator's concurrent edit.
        pipe = client.pipeline(transaction=False)
        for plan in DEFAULT_PLANS:
            pipe.hsetnx(keyspace.PLANS, plan.name, plan.to_json())
        await pipe.execute()
        raw = await cast(Awaitable[dict[Any, Any]], client.hgetall(keyspace.PLANS))
    plans = (Plan.from_json(data) for data in raw.values())
    return {plan.name: plan for plan in plans}


async def list_plans(client: Client) -> list[Plan]:
    return sorted((await _all(client)).values(), key=lambda p: (p.credits_5h, p.name))


async def get_plan(client: Client, name: str) -> Plan | None:
    return (await _all(client)).get(name)


async def set_plan(client: Client, plan: Plan) -> int:
    """Create or update ``plan`` and copy its limits into every account on it; returns the
    number of accounts updated. Each account's period end and status are left alone.

    Not atomic across accounts: an account moved to another plan while this runs may keep
    the limits it had a moment earlier; re-assigning its plan fixes it."""
    await _all(client)  # seeds the defaults first, so an edit is not overwritten by them
    fields = _limit_fields(plan)
    updated = 0
    await cast(Awaitable[int], client.hset(keyspace.PLANS, plan.name, plan.to_json()))
    batch: list[str] = []
    async for member in client.sscan_iter(keyspace.ACCOUNTS, count=_BATCH):
        batch.append(str(member))
        if len(batch) >= _BATCH:
            updated += await _propagate(client, batch, plan.name, fields)
            batch = []
    if batch:
        updated += await _propagate(client, batch, plan.name, fields)
    log.info("plan %s saved; limits copied into %d accounts", plan.name, updated)
    return updated


async def _propagate(
    client: Client, account_ids: list[str], name: str, fields: dict[str, str]
) -> int:
    accounts = [AccountKeys(a).account for a in account_ids]
    pipe = client.pipeline(transaction=False)
    for key in accounts:
        pipe.hget(key, "plan")
    current = await pipe.execute()
    pipe = client.pipeline(transaction=False)
    targets = [
        key
        for key, value in zip(accounts, current, strict=True)
        if value is not None and value == name
    ]
    for key in targets:
        pipe.hset(key, mapping=fields)
    if targets:
        await pipe.execute()
    return len(targets)

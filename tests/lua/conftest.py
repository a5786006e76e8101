"""Helpers for the Lua window tests: a fake clock, loaded scripts, account set-up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.keyspace import AccountKeys
from gateway.limits import CreditLimiter, LimiterSettings
from gateway.store import Client, Scripts

# 2026-11-22T12:00:00Z, a whole hour: tests reason about bucket boundaries from here.
T0 = 1_795_348_800_000


class FakeClock:
    """The only fake: a plain integer of milliseconds that tests advance by hand."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@dataclass
class Account:
    account_id: str
    key_id: str
    keys: AccountKeys


async def make_account(
    client: Client,
    account_id: str,
    *,
    limit_5h_mc: int = 100_000,
    limit_7d_mc: int = 1_000_000,
    ip_slots: int = 2,
    concurrency: int = 8,
    period_end_ms: int = T0 + 30 * 86_400_000,
    status: str = "active",
    key_id: str = "k1",
    key_fields: dict[str, Any] | None = None,
) -> Account:
    keys = AccountKeys(account_id)
    await client.hset(
        keys.account,
        mapping={
            "plan": "test", "limit_5h": limit_5h_mc, "limit_7d": limit_7d_mc,
            "ip_slots": ip_slots, "concurrency": concurrency, "period_end_ms": period_end_ms,
            "status": status,
        },
    )  # fmt: skip
    await client.hset(
        keys.key(key_id), mapping={"name": "test key", "status": "active", **(key_fields or {})}
    )
    return Account(account_id, key_id, keys)


@pytest.fixture(scope="session")
def scripts() -> Scripts:
    return Scripts()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_limiter(
    async_valkey: Client, scripts: Scripts, clock: FakeClock
) -> Callable[..., CreditLimiter]:
    def make(**settings: int) -> CreditLimiter:
        return CreditLimiter(async_valkey, scripts, clock, LimiterSettings(**settings))

    return make

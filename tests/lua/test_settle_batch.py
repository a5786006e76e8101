"""settle.lua's batch semantics: idempotence by request id, releases of unknown admissions
that a late admission cannot undo, and lease renewals."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from gateway import errors
from gateway.keyspace import AccountKeys
from gateway.limits import MINUTE_MS, Charge, CreditLimiter
from gateway.store import Client
from tests.lua.conftest import FakeClock, make_account

MakeLimiter = Callable[..., CreditLimiter]


async def admit(limiter: CreditLimiter, account_id: str, request_id: str) -> None:
    await limiter.admit(account_id=account_id, key_id="k1", ip_tag="ip-a",
                        request_id=request_id, estimate_mc=1_000)  # fmt: skip


def charge(limiter: CreditLimiter, account_id: str, request_id: str, cost: int) -> Charge:
    return limiter.charge(account_id=account_id, key_id="k1", request_id=request_id,
                          cost_mc=cost, record={"model": "m", "output_tokens": 3})  # fmt: skip


async def test_a_batch_applies_each_request_once_whatever_the_repeats(
    async_valkey: Client, make_limiter: MakeLimiter
) -> None:
    limiter, account_id = make_limiter(), uuid.uuid4().hex[:12]
    await make_account(async_valkey, account_id)
    ids = [uuid.uuid4().hex for _ in range(3)]
    for rid in ids:
        await admit(limiter, account_id, rid)
    batch = [charge(limiter, account_id, rid, 100) for rid in ids]
    assert await limiter.settle_many(account_id, batch[:2]) == (2, 0)
    assert await limiter.settle_many(account_id, batch) == (1, 2)  # a retry of the batch
    view = await limiter.usage(account_id)
    assert (view.five_hour.used_mc, view.in_flight) == (300, 0)
    assert await async_valkey.xlen(AccountKeys(account_id).log) == 3


async def test_a_release_queued_before_a_late_admission_leaves_nothing_held(
    async_valkey: Client, make_limiter: MakeLimiter
) -> None:
    limiter, account_id = make_limiter(), uuid.uuid4().hex[:12]
    await make_account(async_valkey, account_id, concurrency=1)
    rid = uuid.uuid4().hex
    # Valkey hung: the caller gave up (503) and queued a release, which lands first.
    assert await limiter.settle_many(account_id, [Charge(account_id, "k1", rid, 0, None)]) == (
        1, 0,
    )  # fmt: skip
    with pytest.raises(errors.ServiceUnavailable):
        await admit(limiter, account_id, rid)  # the buffered admission, run late
    view = await limiter.usage(account_id)
    assert (view.in_flight, view.five_hour.used_mc) == (0, 0)
    await admit(limiter, account_id, uuid.uuid4().hex)  # the cap of 1 is free


async def test_a_renewed_lease_outlives_its_first_expiry_and_an_unrenewed_one_lapses(
    async_valkey: Client, make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter, account_id = make_limiter(reservation_ttl_ms=2 * MINUTE_MS), uuid.uuid4().hex[:12]
    await make_account(async_valkey, account_id, concurrency=1)
    running = uuid.uuid4().hex
    await admit(limiter, account_id, running)
    clock.advance(MINUTE_MS + 30_000)
    assert await limiter.settle_many(account_id, [], [running]) == (0, 0)
    clock.advance(MINUTE_MS)  # past the first expiry, within the renewed one
    with pytest.raises(errors.RateLimited, match="concurrent"):
        await admit(limiter, account_id, uuid.uuid4().hex)
    clock.advance(2 * MINUTE_MS)  # its worker stopped renewing it: the lease lapsed
    await admit(limiter, account_id, uuid.uuid4().hex)

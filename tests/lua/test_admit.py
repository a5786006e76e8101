"""admit.lua / key_failure.lua through CreditLimiter against a real Valkey."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
import valkey.asyncio as avalkey

from gateway import errors, keyspace
from gateway.embedded_valkey import free_port
from gateway.limits import HOUR_MS, MINUTE_MS, Admission, CreditLimiter
from gateway.plans import DEFAULT_PLANS, account_plan_fields
from gateway.store import Client, Scripts
from gateway.wire import usage_body
from tests.lua.conftest import T0, FakeClock, make_account

MakeLimiter = Callable[..., CreditLimiter]
DAY_MS = 24 * HOUR_MS


def rid() -> str:
    return uuid.uuid4().hex


async def spend(limiter: CreditLimiter, account_id: str, cost: int, *, ip: str = "ip-a") -> None:
    """One admitted and settled request costing ``cost`` milli-credits."""
    request_id = rid()
    await limiter.admit(
        account_id=account_id, key_id="k1", ip_tag=ip, request_id=request_id, estimate_mc=1
    )
    await limiter.settle(
        account_id=account_id, key_id="k1", request_id=request_id, cost_mc=cost, record={}
    )


async def admit(
    limiter: CreditLimiter,
    account_id: str,
    estimate: int = 1000,
    *,
    key_id: str = "k1",
    ip_tag: str = "ip-a",
    request_id: str | None = None,
    check_only: bool = False,
) -> Admission:
    return await limiter.admit(
        account_id=account_id, key_id=key_id, ip_tag=ip_tag, request_id=request_id or rid(),
        estimate_mc=estimate, check_only=check_only,
    )  # fmt: skip


# --- key and account status -------------------------------------------------------------


async def test_revoked_or_missing_key_is_refused_as_revoked(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str
) -> None:
    limiter = make_limiter()
    await make_account(async_valkey, account_id, key_fields={"status": "revoked"})
    with pytest.raises(errors.AuthenticationFailed, match=r"^This API key has been revoked\.$"):
        await admit(limiter, account_id)
    with pytest.raises(errors.AuthenticationFailed, match="revoked"):
        await admit(limiter, account_id, key_id="no-such-key")


async def test_quarantined_key_is_refused_with_its_reason(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str
) -> None:
    await make_account(
        async_valkey, account_id,
        key_fields={"status": "quarantined", "quarantine_reason": "seen on a paste site"},
    )  # fmt: skip
    with pytest.raises(errors.KeyQuarantined, match="seen on a paste site"):
        await admit(make_limiter(), account_id)


@pytest.mark.parametrize(
    ("status", "period_end", "match"),
    [
        ("cancelled", T0 + DAY_MS, "the account is cancelled"),
        ("active", T0, "the plan period ended at 2026-11-22T12:00:00Z"),
        ("active", T0 - 1, "ended at"),
    ],
)
async def test_account_without_active_plan_is_refused(
    async_valkey: Client,
    make_limiter: MakeLimiter,
    account_id: str,
    status: str,
    period_end: int,
    match: str,
) -> None:
    await make_account(async_valkey, account_id, status=status, period_end_ms=period_end)
    with pytest.raises(errors.PermissionDenied, match=match) as info:
        await admit(make_limiter(), account_id)
    assert info.value.code == "permission_error"


async def test_account_hash_missing_means_no_plan(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str
) -> None:
    account = await make_account(async_valkey, account_id)
    await async_valkey.delete(account.keys.account)
    with pytest.raises(errors.PermissionDenied, match="No active plan"):
        await admit(make_limiter(), account_id)


async def test_plan_expires_when_the_clock_passes_period_end(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str, clock: FakeClock
) -> None:
    limiter = make_limiter()
    await make_account(async_valkey, account_id, period_end_ms=T0 + DAY_MS)
    await admit(limiter, account_id)
    clock.advance(DAY_MS)
    with pytest.raises(errors.PermissionDenied, match="ended at 2026-11-23T12:00:00Z"):
        await admit(limiter, account_id)


async def test_plan_snapshot_fields_admit_in_milli_credits(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str
) -> None:
    pro = next(p for p in DEFAULT_PLANS if p.name == "pro")
    await make_account(async_valkey, account_id)
    await async_valkey.hset(
        f"antex:{{a:{account_id}}}:acct", mapping=account_plan_fields(pro, T0 + DAY_MS)
    )
    admission = await admit(make_limiter(), account_id)
    assert admission.limit_5h_mc == 2_000_000 and admission.limit_7d_mc == 20_000_000


# --- IP binding ----------------------------------------------------------------------------


async def test_ips_bind_up_to_the_slots_then_are_refused(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str
) -> None:
    limiter = make_limiter()
    account = await make_account(async_valkey, account_id, ip_slots=2)
    assert (await admit(limiter, account_id, ip_tag="ip-a")).ip_newly_bound
    assert not (await admit(limiter, account_id, ip_tag="ip-a")).ip_newly_bound
    assert (await admit(limiter, account_id, ip_tag="ip-b")).ip_newly_bound
    with pytest.raises(errors.IpLimitReached) as info:
        await admit(limiter, account_id, ip_tag="ip-c")
    assert info.value.message == (
        "This API key is already bound to 2 IP addresses and the account has 2 IP slots; "
        "ask your operator to rotate an IP or add slots."
    )
    # Extra slots on the account and on the key both count.
    await async_valkey.hset(account.keys.account, "extra_ip_slots", 1)
    assert (await admit(limiter, account_id, ip_tag="ip-c")).ip_newly_bound
    await async_valkey.hset(account.keys.key("k1"), "extra_ip_slots", 1)
    assert (await admit(limiter, account_id, ip_tag="ip-d")).ip_newly_bound
    assert await async_valkey.hlen(account.keys.key_ips("k1")) == 4


async def test_fifty_new_ips_racing_for_one_free_slot_bind_exactly_one(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str
) -> None:
    limiter = make_limiter(ip_quarantine_count=1000)
    account = await make_account(async_valkey, account_id, ip_slots=2, concurrency=100)
    await admit(limiter, account_id, ip_tag="ip-home")
    results = await asyncio.gather(
        *(admit(limiter, account_id, ip_tag=f"ip-{n}") for n in range(50)), return_exceptions=True
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, errors.IpLimitReached)]
    assert len(won) == 1 and won[0].ip_newly_bound
    assert len(lost) == 49
    assert await async_valkey.hlen(account.keys.key_ips("k1")) == 2


async def test_distinct_refused_ips_within_the_period_quarantine_the_key(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str, clock: FakeClock
) -> None:
    limiter = make_limiter()
    account = await make_account(async_valkey, account_id, ip_slots=1)
    await admit(limiter, account_id, ip_tag="ip-home")
    # Spread over more than ten minutes: the oldest refusal ages out, no quarantine.
    for ip in ("ip-x", "ip-y"):
        with pytest.raises(errors.IpLimitReached):
            await admit(limiter, account_id, ip_tag=ip)
        clock.advance(6 * MINUTE_MS)
    with pytest.raises(errors.IpLimitReached):
        await admit(limiter, account_id, ip_tag="ip-z")
    # A repeated IP is not a new one; a third distinct one within the period is.
    with pytest.raises(errors.IpLimitReached):
        await admit(limiter, account_id, ip_tag="ip-z")
    with pytest.raises(errors.KeyQuarantined, match="3 distinct unbound IP addresses"):
        await admit(limiter, account_id, ip_tag="ip-w")
    # From now on even the bound IP is refused.
    with pytest.raises(errors.KeyQuarantined, match="within 10 min"):
        await admit(limiter, account_id, ip_tag="ip-home")
    key = await async_valkey.hgetall(account.keys.key("k1"))
    assert key["status"] == "quarantined" and key["quarantined_ms"] == str(clock.now)
    events = await async_valkey.xrange(account.keys.events)
    assert len(events) == 1
    event = events[0][1]
    assert event["type"] == "key_quarantined" and event["key_id"] == "k1"
    assert sorted(event["ips"].split(",")) == ["ip-w", "ip-y", "ip-z"]
    assert await async_valkey.zscore(keyspace.QUARANTINE_INDEX, f"{account_id}:k1") == clock.now


async def test_an_address_bound_after_an_operator_added_a_slot_is_no_leak_evidence(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str
) -> None:
    limiter = make_limiter()
    account = await make_account(async_valkey, account_id, ip_slots=1)
    await admit(limiter, account_id, ip_tag="ip-home")
    with pytest.raises(errors.IpLimitReached):
        await admit(limiter, account_id, ip_tag="ip-office")
    # The operator adds a slot (bare, without the CLI's clearing): binding alone settles it.
    await async_valkey.hincrby(account.keys.key("k1"), "extra_ip_slots", 1)
    assert (await admit(limiter, account_id, ip_tag="ip-office")).ip_newly_bound
    for ip in ("ip-x", "ip-y"):  # two really unknown addresses: refused, not quarantined
        with pytest.raises(errors.IpLimitReached):
            await admit(limiter, account_id, ip_tag=ip)
    with pytest.raises(errors.KeyQuarantined, match="3 distinct unbound IP addresses"):
        await admit(limiter, account_id, ip_tag="ip-z")
    (_, event), *_ = await async_valkey.xrange(account.keys.events)
    assert sorted(event["ips"].split(",")) == ["ip-x", "ip-y", "ip-z"]


async def test_more_networks_than_keys_times_slots_in_a_day_flag_the_account(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str, clock: FakeClock
) -> None:
    limiter = make_limiter()
    account = await make_account(async_valkey, account_id, ip_slots=2)
    await async_valkey.hset(account.keys.account, "max_keys", 1)
    await async_valkey.hset(
        account.keys.key("k2"), mapping={"name": "two", "status": "active", "extra_ip_slots": 1}
    )
    await admit(limiter, account_id, ip_tag="ip-a")
    await admit(limiter, account_id, ip_tag="ip-b", check_only=True)
    await admit(limiter, account_id, ip_tag="ip-a")  # seen again: still two networks
    assert await async_valkey.hget(account.keys.account, "shared_flag_ms") is None
    # A second key (one more than the plan allows, say from before the cap) used elsewhere.
    await admit(limiter, account_id, key_id="k2", ip_tag="ip-c")  # a flag, never a refusal
    flagged = await async_valkey.hgetall(account.keys.account)
    assert flagged["shared_flag_ms"] == str(clock.now)
    assert flagged["shared_flag_reason"] == (
        "3 distinct networks used this account's keys within 24 h; the plan allows 2 "
        "(1 keys x 2 IP slots); the keys may be shared"
    )
    await admit(limiter, account_id, key_id="k2", ip_tag="ip-d")  # flagged once per day
    events = [e for _, e in await async_valkey.xrange(account.keys.events)]
    assert [e["type"] for e in events] == ["account_flagged"]
    assert sorted(events[0]["ips"].split(",")) == ["ip-a", "ip-b", "ip-c"]
    # A day later only the day's networks count.
    clock.advance(DAY_MS)
    await admit(limiter, account_id, ip_tag="ip-a")
    await admit(limiter, account_id, key_id="k2", ip_tag="ip-e")
    assert await async_valkey.zcard(account.keys.networks) == 2


async def test_wrong_secrets_alert_the_operator_once_and_never_lock_the_key(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str, clock: FakeClock
) -> None:
    limiter = make_limiter()
    account = await make_account(async_valkey, account_id)
    for n in range(19):
        assert not await limiter.record_key_failure(
            account_id=account_id, key_id="k1", ip_tag=f"ip-{n % 3}"
        )
    # Failures older than the period no longer count.
    clock.advance(5 * MINUTE_MS)
    for _ in range(19):
        assert not await limiter.record_key_failure(
            account_id=account_id, key_id="k1", ip_tag="ip-9"
        )
    assert await limiter.record_key_failure(account_id=account_id, key_id="k1", ip_tag="ip-8")
    # One event per burst: the next failures within the period write nothing more.
    for _ in range(5):
        assert not await limiter.record_key_failure(
            account_id=account_id, key_id="k1", ip_tag="ip-8"
        )
    assert await async_valkey.hget(account.keys.key("k1"), "status") == "active"
    [(_, event)] = await async_valkey.xrange(account.keys.events)
    assert event["type"] == "wrong_secrets" and event["key_id"] == "k1"
    assert event["reason"] == "20 wrong secrets were presented for this key within 5 min"
    assert sorted(event["ips"].split(",")) == ["ip-8", "ip-9"]
    await admit(limiter, account_id)  # the owner keeps working
    # A later burst alerts again.
    clock.advance(5 * MINUTE_MS)
    for _ in range(19):
        assert not await limiter.record_key_failure(
            account_id=account_id, key_id="k1", ip_tag="ip-7"
        )
    assert await limiter.record_key_failure(account_id=account_id, key_id="k1", ip_tag="ip-7")
    assert not await limiter.record_key_failure(account_id=account_id, key_id="nope", ip_tag="x")


# --- windows, reservations, concurrency ---------------------------------------------------


async def test_two_hundred_concurrent_admits_let_exactly_fifty_through(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str
) -> None:
    limiter = make_limiter()
    await make_account(
        async_valkey, account_id, limit_5h_mc=50 * 1234, limit_7d_mc=10**9, concurrency=1000
    )
    results = await asyncio.gather(
        *(admit(limiter, account_id, 1234) for _ in range(200)), return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, errors.RateLimited)]
    assert len(admitted) == 50 and len(refused) == 150
    assert {r.scope for r in refused} == {"in_flight"}
    view = await limiter.usage(account_id)
    assert view.five_hour.reserved_mc == 50 * 1234 and view.in_flight == 50


async def test_overshoot_is_bounded_by_the_overruns_of_requests_in_flight(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str
) -> None:
    limiter = make_limiter()
    estimate, overrun, cap = 2000, 1500, 4
    await make_account(
        async_valkey, account_id, limit_5h_mc=cap * estimate, limit_7d_mc=10**9, concurrency=cap
    )
    ids = [rid() for _ in range(cap)]
    for request_id in ids:
        await admit(limiter, account_id, estimate, request_id=request_id)
    for request_id in ids:  # every stream ran longer than its estimate
        await limiter.settle(
            account_id=account_id, key_id="k1", request_id=request_id,
            cost_mc=estimate + overrun, record={},
        )  # fmt: skip
    view = await limiter.usage(account_id)
    assert view.five_hour.used_mc == view.five_hour.limit_mc + cap * overrun
    with pytest.raises(errors.RateLimited, match="5-hour"):
        await admit(limiter, account_id, 1)


async def test_concurrency_cap_and_reservation_expiry(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str, clock: FakeClock
) -> None:
    limiter = make_limiter()
    await make_account(async_valkey, account_id, concurrency=3)
    first = rid()
    await admit(limiter, account_id, request_id=first)
    await admit(limiter, account_id)
    await admit(limiter, account_id)
    with pytest.raises(errors.RateLimited) as info:
        await admit(limiter, account_id)
    assert info.value.scope == "concurrency" and info.value.retry_after_s == 1
    assert info.value.message == (
        "Too many concurrent requests: 3 in flight and the plan allows 3; retry in 1 s."
    )
    await limiter.settle(
        account_id=account_id, key_id="k1", request_id=first, cost_mc=10, record={}
    )
    await admit(limiter, account_id)
    # Requests that died without settling free their slots when the reservation expires.
    clock.advance(20 * MINUTE_MS)
    admission = await admit(limiter, account_id)
    assert admission.in_flight == 1 and admission.account_reserved_mc == 1000


async def test_check_only_checks_key_and_ip_but_reserves_nothing(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str
) -> None:
    limiter = make_limiter()
    await make_account(async_valkey, account_id, limit_5h_mc=1000, concurrency=1)
    await spend(limiter, account_id, 1000)  # the window is full...
    admission = await admit(limiter, account_id, 10**6, check_only=True, ip_tag="ip-b")
    assert admission.check_only and admission.ip_newly_bound and admission.reserved_mc == 0
    assert (await limiter.usage(account_id)).in_flight == 0  # ...yet count_tokens still works
    with pytest.raises(errors.IpLimitReached):
        await admit(limiter, account_id, check_only=True, ip_tag="ip-c")


async def test_refusals_name_the_window_and_the_time_it_frees(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str, clock: FakeClock
) -> None:
    limiter = make_limiter()
    await make_account(async_valkey, account_id, limit_5h_mc=10_000, limit_7d_mc=15_000)
    await spend(limiter, account_id, 6000)  # bucket 12:00
    clock.advance(30 * MINUTE_MS + 10_000)
    await spend(limiter, account_id, 4000)  # bucket 12:30: the 5-hour window is full
    with pytest.raises(errors.RateLimited) as info:
        await admit(limiter, account_id, 1)
    # Freeing the 12:00 bucket (it counts until 12:00 + 5 h + 1 min) makes room.
    assert info.value.scope == "5h"
    assert info.value.resets_at_ms == T0 + 5 * HOUR_MS + MINUTE_MS
    assert info.value.retry_after_s == (5 * HOUR_MS + MINUTE_MS - 30 * MINUTE_MS - 10_000) // 1000
    assert info.value.message == (
        "5-hour usage limit reached; capacity frees at 2026-11-22T17:01:00Z (in 4 h 31 min)."
    )
    # /v1/usage and the dashboard name the very same instant.
    assert (await limiter.usage(account_id)).five_hour.resets_at_ms == info.value.resets_at_ms
    # After a 4-hour jump the wait shrinks by exactly that much.
    clock.advance(4 * HOUR_MS)
    with pytest.raises(errors.RateLimited) as info:
        await admit(limiter, account_id, 1000)
    assert info.value.retry_after_s == (31 * MINUTE_MS - 10_000) // 1000
    # Once the 12:00 bucket left, the window has room again; the weekly one remembers it all.
    clock.advance(HOUR_MS)
    first = rid()
    await admit(limiter, account_id, 4000, request_id=first)
    await limiter.settle(
        account_id=account_id, key_id="k1", request_id=first, cost_mc=5000, record={}
    )
    with pytest.raises(errors.RateLimited) as info:
        await admit(limiter, account_id, 1)
    assert info.value.scope == "7d"
    assert info.value.resets_at_ms == T0 + 7 * DAY_MS + HOUR_MS
    assert info.value.message == (
        "Weekly usage limit reached; capacity frees at 2026-11-29T13:00:00Z (in 6 d 19 h)."
    )
    assert info.value.retry_after_s == (7 * DAY_MS + HOUR_MS - (clock.now - T0) + 999) // 1000
    assert (await limiter.usage(account_id)).seven_day.resets_at_ms == info.value.resets_at_ms
    # A 7-day jump empties the 5-hour window and the weekly one of all but the last charge.
    clock.advance(7 * DAY_MS)
    admission = await admit(limiter, account_id, 10_000)
    assert (admission.used_5h_mc, admission.used_7d_mc) == (0, 5000)


async def test_a_full_window_names_the_first_time_it_is_below_its_limit_again(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str, clock: FakeClock
) -> None:
    limiter = make_limiter()
    await make_account(async_valkey, account_id, limit_5h_mc=10_000, limit_7d_mc=10**9)
    await spend(limiter, account_id, 1000)  # bucket 12:00, leaves at 17:01
    clock.advance(MINUTE_MS)
    await spend(limiter, account_id, 12_000)  # bucket 12:01: an overshoot to 130 %
    with pytest.raises(errors.RateLimited) as info:
        await admit(limiter, account_id, 1)
    # 12:00 leaving still leaves 120 %: capacity frees only when 12:01 leaves too.
    assert info.value.resets_at_ms == T0 + 5 * HOUR_MS + 2 * MINUTE_MS
    assert (await limiter.usage(account_id)).five_hour.resets_at_ms == info.value.resets_at_ms


async def test_both_windows_full_name_the_one_that_frees_later(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str
) -> None:
    limiter = make_limiter()
    await make_account(async_valkey, account_id, limit_5h_mc=1000, limit_7d_mc=1000)
    await spend(limiter, account_id, 1000)
    with pytest.raises(errors.RateLimited) as info:
        await admit(limiter, account_id, 1)
    assert info.value.scope == "7d" and "Weekly" in info.value.message


async def test_an_estimate_above_the_rest_is_admitted_reserving_the_rest(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str
) -> None:
    limiter = make_limiter()
    await make_account(async_valkey, account_id, limit_5h_mc=100_000, limit_7d_mc=10**9)
    await spend(limiter, account_id, 60_000)  # 60 %
    big = rid()
    admission = await admit(limiter, account_id, 61_000, request_id=big)
    assert admission.reserved_mc == 40_000 and admission.account_reserved_mc == 40_000
    # The rest is held in flight: a short wait, not the window's reset.
    with pytest.raises(errors.RateLimited) as info:
        await admit(limiter, account_id, 1)
    assert info.value.scope == "in_flight" and info.value.retry_after_s == 5
    assert info.value.message == (
        "5-hour usage limit nearly reached: requests still in flight hold the remaining "
        "capacity; retry in 5 s."
    )
    await limiter.settle(
        account_id=account_id, key_id="k1", request_id=big, cost_mc=61_000, record={}
    )
    view = await limiter.usage(account_id)
    assert view.five_hour.used_mc == 121_000 and view.five_hour.reserved_mc == 0
    with pytest.raises(errors.RateLimited) as info:
        await admit(limiter, account_id, 1)
    assert info.value.scope == "5h" and info.value.retry_after_s > 60
    # An estimate above the whole window on an empty one reserves the whole window.
    other = uuid.uuid4().hex[:16]
    await make_account(async_valkey, other, limit_5h_mc=5000, limit_7d_mc=10**9)
    assert (await admit(limiter, other, 99_999)).reserved_mc == 5000


async def test_the_rest_is_shared_by_what_is_in_flight_not_refused_at_the_estimate(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str
) -> None:
    limiter = make_limiter()
    await make_account(async_valkey, account_id, limit_5h_mc=10_000, limit_7d_mc=10**9)
    assert (await admit(limiter, account_id, 7000)).reserved_mc == 7000
    assert (await admit(limiter, account_id, 7000)).reserved_mc == 3000  # what was left
    with pytest.raises(errors.RateLimited) as info:
        await admit(limiter, account_id, 1)
    assert info.value.scope == "in_flight"


async def test_settle_charges_logs_metadata_and_aggregates(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str, clock: FakeClock
) -> None:
    limiter = make_limiter()
    account = await make_account(async_valkey, account_id)
    request_id = rid()
    await admit(limiter, account_id, 5000, request_id=request_id)
    clock.advance(2500)
    record = {
        "model": "claude-sonnet-4-6", "input_tokens": 12, "output_tokens": 40,
        "cache_read_input_tokens": 1800, "cache_creation_input_tokens": 1000,
        "latency_ms": 2500, "ttfb_ms": 300, "status": 200, "route": "messages",
        "prompt": "must never be stored",
    }  # fmt: skip
    await limiter.settle(
        account_id=account_id, key_id="k1", request_id=request_id, cost_mc=628, record=record
    )
    view = await limiter.usage(account_id)
    assert (view.five_hour.used_mc, view.seven_day.used_mc) == (628, 628)
    assert (view.five_hour.reserved_mc, view.in_flight) == (0, 0)
    (_, entry), *_ = await async_valkey.xrange(account.keys.log)
    assert "prompt" not in entry
    assert entry["credits_mc"] == "628" and entry["model"] == "claude-sonnet-4-6"
    assert entry["at_ms"] == str(clock.now) and entry["key_id"] == "k1"
    agg = await async_valkey.hgetall(account.keys.daily)
    hour, day = clock.now // HOUR_MS, clock.now // DAY_MS
    assert agg[f"h:{hour}"] == "628"
    prefix = f"d:{day}:claude-sonnet-4-6:"
    assert {k.removeprefix(prefix): v for k, v in agg.items() if k.startswith(prefix)} == {
        "n": "1", "in": "12", "out": "40", "cr": "1800", "cw": "1000", "mc": "628"
    }  # fmt: skip
    key = await async_valkey.hgetall(account.keys.key("k1"))
    assert key["last_used_ms"] == str(clock.now)
    # Aggregates older than seven days are pruned on the first settle of a new hour.
    clock.advance(8 * DAY_MS)
    await spend(limiter, account_id, 1)
    agg = await async_valkey.hgetall(account.keys.daily)
    assert not any(k.startswith((f"h:{hour}", f"d:{day}:")) for k in agg)


async def test_settle_after_the_reservation_expired_still_charges(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str, clock: FakeClock
) -> None:
    limiter = make_limiter()
    await make_account(async_valkey, account_id)
    request_id = rid()
    await admit(limiter, account_id, 5000, request_id=request_id)
    clock.advance(25 * MINUTE_MS)
    await admit(limiter, account_id, 1)  # prunes the expired reservation
    await limiter.settle(
        account_id=account_id, key_id="k1", request_id=request_id, cost_mc=7000, record={}
    )
    view = await limiter.usage(account_id)
    assert view.five_hour.used_mc == 7000 and view.five_hour.reserved_mc == 1


async def test_usage_body_reports_percentages_and_reset_times_only(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str, clock: FakeClock
) -> None:
    limiter = make_limiter()
    await make_account(async_valkey, account_id, limit_5h_mc=30_000, limit_7d_mc=300_000)
    await spend(limiter, account_id, 10_000)
    await admit(limiter, account_id, 500)
    body = usage_body(await limiter.usage(account_id), "pro", T0 + 30 * DAY_MS)
    assert body == {
        "five_hour": {"utilization": 33.3, "resets_at": "2026-11-22T17:01:00Z"},
        "seven_day": {"utilization": 3.3, "resets_at": "2026-11-29T13:00:00Z"},
        "plan": {"name": "pro", "period_end": "2026-12-22T12:00:00Z"},
        "requests_in_flight": 1,
    }
    clock.advance(8 * DAY_MS)
    empty = usage_body(await limiter.usage(account_id), "pro", None)
    assert empty["five_hour"] == {"utilization": 0.0, "resets_at": None}
    assert empty["requests_in_flight"] == 0


# --- the script cache and outages ----------------------------------------------------------


async def test_flushed_script_cache_is_reloaded_on_noscript(
    async_valkey: Client, make_limiter: MakeLimiter, account_id: str, scripts: Scripts
) -> None:
    limiter = make_limiter()
    await scripts.load(async_valkey)
    await make_account(async_valkey, account_id)
    await async_valkey.script_flush()
    await admit(limiter, account_id)
    assert await async_valkey.script_exists(scripts["admit"].sha) == [True]
    await async_valkey.script_flush()
    await limiter.usage(account_id)  # the read-only path reloads too
    assert await async_valkey.script_exists(scripts["usage"].sha) == [True]


async def test_unreachable_valkey_fails_closed(scripts: Scripts, clock: FakeClock) -> None:
    client = avalkey.Valkey(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    limiter = CreditLimiter(client, scripts, clock)
    try:
        with pytest.raises(errors.ServiceUnavailable, match="unreachable"):
            await admit(limiter, "acct")
        with pytest.raises(errors.ServiceUnavailable):
            await scripts.load(client)
    finally:
        await client.aclose()

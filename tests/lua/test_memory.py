"""One busy account's Valkey footprint stays bounded: a week of traffic fills every bucket.

A request every 60 s of simulated time charges every 60-s bucket of the 5-hour window and
every 1-hour bucket of the 7-day window; more requests per bucket only add to its counter,
and the log stream is capped, so denser traffic has the same footprint (and takes longer).
The one exception is the settled-id zset that makes settlement idempotent: it holds the
requests of the last ``settled_ttl_ms``, so it is measured apart, by its entry count.
"""

from __future__ import annotations

import uuid

from gateway.limits import CreditLimiter, LimiterSettings
from gateway.store import Client, Scripts
from tests.lua.conftest import T0, FakeClock, make_account

STEP_MS = 60_000
WEEK_MS = 7 * 86_400_000
BUDGET_BYTES = 64 * 1024
MODELS = ("claude-sonnet-4-6", "claude-opus-4-6", "claude-haiku-4-5")


async def account_bytes(client: Client, account_id: str) -> dict[str, int]:
    sizes = {}
    async for key in client.scan_iter(match=f"antex:{{a:{account_id}}}:*", count=1000):
        # SAMPLES 0 measures every element, not an estimate from a sample.
        sizes[key] = int(await client.execute_command("MEMORY USAGE", key, "SAMPLES", "0"))
    return sizes


async def test_a_week_of_traffic_stays_under_64_kb(
    async_valkey: Client, scripts: Scripts, clock: FakeClock
) -> None:
    account_id = uuid.uuid4().hex[:16]
    limiter = CreditLimiter(async_valkey, scripts, clock, LimiterSettings())
    await make_account(
        async_valkey, account_id, limit_5h_mc=10**12, limit_7d_mc=10**13, concurrency=64,
        period_end_ms=T0 + 30 * 86_400_000,
    )  # fmt: skip
    end = clock.now + WEEK_MS
    n = 0
    while clock.now < end:
        request_id = uuid.uuid4().hex
        await limiter.admit(account_id=account_id, key_id="k1", ip_tag="ip-home",
                            request_id=request_id, estimate_mc=20_000)  # fmt: skip
        await limiter.settle(
            account_id=account_id, key_id="k1", request_id=request_id, cost_mc=3_000 + n % 5000,
            record={
                "model": MODELS[n % 3], "input_tokens": 1200, "output_tokens": 800 + n % 700,
                "cache_read_input_tokens": 48_000, "cache_creation_input_tokens": 2_000,
                "latency_ms": 14_000, "ttfb_ms": 900, "status": 200, "route": "messages",
            },
        )  # fmt: skip
        clock.advance(STEP_MS)
        n += 1

    # Streams still running (or crashed within the reservation TTL) hold reservations.
    for stuck in range(4):
        await limiter.admit(account_id=account_id, key_id="k1", ip_tag="ip-home",
                            request_id=f"stuck-{stuck}", estimate_mc=50_000)  # fmt: skip
    view = await limiter.usage(account_id)
    assert view.five_hour.used_mc > 0 and view.in_flight == 4
    sizes = await account_bytes(async_valkey, account_id)
    settled_key = f"antex:{{a:{account_id}}}:settled"
    remembered = await async_valkey.zcard(settled_key)
    assert remembered <= limiter.settings.settled_ttl_ms // STEP_MS + 1
    sizes.pop(settled_key.encode(), None)
    sizes.pop(settled_key, None)
    total = sum(sizes.values())
    report = ", ".join(f"{k.split('}:', 1)[1]}={v}" for k, v in sorted(sizes.items()))
    print(f"\n{n} requests over 7 simulated days: {total} bytes in {len(sizes)} keys ({report})")
    assert total < BUDGET_BYTES

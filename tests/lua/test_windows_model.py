"""The Lua windows agree with a small pure-Python model over random requests and time jumps.

The model keeps every bucket and reservation and recomputes from scratch on each question;
the scripts keep running totals and prune lazily. Same bucket rule, independent bookkeeping.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import valkey.asyncio as avalkey
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from gateway import errors
from gateway.keyspace import AccountKeys
from gateway.limits import CreditLimiter, LimiterSettings
from gateway.store import Scripts
from tests.lua.conftest import T0, FakeClock, make_account

T = TypeVar("T")
SECOND, MINUTE, HOUR, DAY = 1000, 60_000, 3_600_000, 86_400_000
LIMIT_5H, LIMIT_7D, CONCURRENCY = 10_000, 14_000, 5
TTL = LimiterSettings().reservation_ttl_ms  # the lease of a request nobody renews
SETTLED_TTL = LimiterSettings().settled_ttl_ms


@dataclass
class Window:
    length: int
    bucket: int
    buckets: dict[int, int] = field(default_factory=dict)

    def live(self, now: int) -> dict[int, int]:
        # A charge counts from its bucket's start until start + window + one bucket.
        return {s: a for s, a in self.buckets.items() if now < s + self.length + self.bucket}

    def used(self, now: int) -> int:
        return sum(self.live(now).values())

    def charge(self, now: int, cost: int) -> None:
        if cost > 0:
            start = now // self.bucket * self.bucket
            self.buckets[start] = self.buckets.get(start, 0) + cost

    def frees_at(self, now: int, limit: int) -> int | None:
        """The first bucket exit after which the window is below its limit: what a full
        window's 429, /v1/usage and the dashboard all name."""
        used, freed = self.used(now), 0
        for start, amount in sorted(self.live(now).items()):
            freed += amount
            if used - freed < limit:
                return start + self.length + self.bucket
        return None


@dataclass
class Model:
    w5: Window = field(default_factory=lambda: Window(5 * HOUR, MINUTE))
    w7: Window = field(default_factory=lambda: Window(7 * DAY, HOUR))
    reservations: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (mc, expiry)
    settled: dict[str, int] = field(default_factory=dict)  # id -> remembered until (ms)

    def live_reservations(self, now: int) -> dict[str, int]:
        return {r: mc for r, (mc, expiry) in self.reservations.items() if expiry > now}

    def admit(self, now: int, request_id: str, estimate: int) -> tuple[str, int | None]:
        """Refuse only a full window (naming when it frees, the later of two) or one whose
        rest is all held in flight; otherwise reserve the estimate, or the rest if smaller."""
        live = self.live_reservations(now)
        if len(live) >= CONCURRENCY:
            return "concurrency", None
        windows = ((self.w5, LIMIT_5H, "5h"), (self.w7, LIMIT_7D, "7d"))
        full = [
            (window.frees_at(now, limit) or 0, scope)
            for window, limit, scope in windows
            if window.used(now) >= limit
        ]
        if full:
            frees, scope = max(full, key=lambda f: (f[0], f[1] == "5h"))
            return scope, frees
        held = sum(live.values())
        rests = [limit - window.used(now) - held for window, limit, _ in windows]
        if min(rests) <= 0:
            return "in_flight", None
        self.reservations[request_id] = (min(estimate, *rests), now + TTL)
        return "ok", None

    def settle(self, now: int, request_id: str, cost: int) -> bool:
        """False for a request id settled before: a repeat changes nothing."""
        if self.settled.get(request_id, 0) > now:
            return False
        self.settled[request_id] = now + SETTLED_TTL
        self.reservations.pop(request_id, None)
        self.w5.charge(now, cost)
        self.w7.charge(now, cost)
        return True


# Disconnects (nothing or part of the estimate), exact costs, and streams that overran it.
FRACTIONS = st.sampled_from([0, 0.3, 1, 1.5, 3])
JUMPS = st.one_of(
    st.sampled_from(
        [SECOND, 59 * SECOND, MINUTE, MINUTE + SECOND, 5 * MINUTE, TTL, HOUR, 5 * HOUR - MINUTE,
         5 * HOUR, 5 * HOUR + MINUTE, DAY, 7 * DAY, 7 * DAY + HOUR, 8 * DAY]
    ),
    st.integers(SECOND, HOUR),
    st.integers(5 * HOUR, 2 * DAY),
    st.integers(SECOND, 8 * DAY),
)  # fmt: skip


def make_machine(url: str) -> type[RuleBasedStateMachine]:
    class Windows(RuleBasedStateMachine):
        requests = Bundle("requests")

        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.clock = FakeClock()
            self.model = Model()
            self.account_id = uuid.uuid4().hex[:16]
            self.client = self.run(self._connect())
            self.limiter = CreditLimiter(self.client, Scripts(), self.clock, LimiterSettings())

        async def _connect(self) -> avalkey.Valkey:
            client = avalkey.Valkey.from_url(url, decode_responses=True)
            await make_account(
                client, self.account_id, limit_5h_mc=LIMIT_5H, limit_7d_mc=LIMIT_7D,
                concurrency=CONCURRENCY, period_end_ms=T0 + 365 * DAY,
            )  # fmt: skip
            return client

        def run(self, coro: Coroutine[Any, Any, T]) -> T:
            return self.loop.run_until_complete(coro)

        def teardown(self) -> None:
            self.run(self.client.aclose())
            self.loop.close()

        @initialize(offset=st.integers(0, DAY))
        def start_somewhere_in_a_day(self, offset: int) -> None:
            self.clock.advance(offset)

        @rule(target=requests, estimate=st.integers(1, 6_000))
        def admit(self, estimate: int) -> str:
            request_id = uuid.uuid4().hex
            expected, frees_at = self.model.admit(self.clock.now, request_id, estimate)
            try:
                admission = self.run(
                    self.limiter.admit(
                        account_id=self.account_id, key_id="k1", ip_tag="ip",
                        request_id=request_id, estimate_mc=estimate,
                    )
                )  # fmt: skip
            except errors.RateLimited as refusal:
                assert refusal.scope == expected
                if frees_at is not None:
                    assert refusal.resets_at_ms == frees_at
                    assert refusal.retry_after_s == max(1, -(-(frees_at - self.clock.now) // 1000))
                return "refused"
            assert expected == "ok"
            now = self.clock.now
            assert admission.reserved_mc == self.model.reservations[request_id][0]
            assert admission.used_5h_mc == self.model.w5.used(now)
            assert admission.used_7d_mc == self.model.w7.used(now)
            assert admission.account_reserved_mc == sum(self.model.live_reservations(now).values())
            return request_id

        @rule(request_id=consumes(requests), fraction=FRACTIONS)
        def settle(self, request_id: str, fraction: float) -> None:
            if request_id != "refused":
                self._settle(request_id, fraction)

        @rule(estimate=st.integers(1, 6_000), fraction=FRACTIONS)
        def quick_request(self, estimate: int, fraction: float) -> None:
            request_id = self.admit(estimate)
            if request_id != "refused":
                self._settle(request_id, fraction)

        def _settle(self, request_id: str, fraction: float) -> None:
            reserved = self.model.reservations.get(request_id, (1000, 0))[0]
            cost = int(reserved * fraction)
            expected = self.model.settle(self.clock.now, request_id, cost)
            applied = self.run(
                self.limiter.settle(
                    account_id=self.account_id, key_id="k1", request_id=request_id,
                    cost_mc=cost, record={"model": "claude-sonnet-4-6", "output_tokens": 1},
                )
            )  # fmt: skip
            assert applied == expected

        @rule(request_id=requests, fraction=FRACTIONS)
        def settle_again(self, request_id: str, fraction: float) -> None:
            """A retried or replayed settlement (possibly of a still-running request id)."""
            if request_id == "refused":
                return
            reserved = self.model.reservations.get(request_id, (1000, 0))[0]
            cost = int(reserved * fraction)
            expected = self.model.settle(self.clock.now, request_id, cost)
            applied = self.run(
                self.limiter.settle(
                    account_id=self.account_id, key_id="k1", request_id=request_id,
                    cost_mc=cost, record={"model": "claude-sonnet-4-6", "output_tokens": 1},
                )
            )  # fmt: skip
            assert applied == expected

        @rule(ms=JUMPS)
        def jump(self, ms: int) -> None:
            self.clock.advance(ms)

        @invariant()
        def usage_matches_the_model(self) -> None:
            view = self.run(self.limiter.usage(self.account_id))
            now, m = self.clock.now, self.model
            assert (view.five_hour.used_mc, view.seven_day.used_mc) == (
                m.w5.used(now),
                m.w7.used(now),
            )
            assert (view.five_hour.resets_at_ms, view.seven_day.resets_at_ms) == (
                m.w5.frees_at(now, LIMIT_5H),
                m.w7.frees_at(now, LIMIT_7D),
            )
            live = m.live_reservations(now)
            assert (view.five_hour.reserved_mc, view.in_flight) == (sum(live.values()), len(live))

        @invariant()
        def running_totals_equal_their_buckets(self) -> None:
            keys = AccountKeys(self.account_id)
            for key in (keys.window_5h_amounts, keys.window_7d_amounts):
                raw = self.run(self.client.hgetall(key))
                fields = {k: int(v) for k, v in raw.items()}
                buckets = sum(v for k, v in fields.items() if k.isdigit())
                assert fields.get("total", 0) == buckets

    return Windows


def test_lua_windows_agree_with_the_model(valkey_url: str) -> None:
    run_state_machine_as_test(
        make_machine(valkey_url),
        settings=settings(max_examples=75, stateful_step_count=50, deadline=None),
    )

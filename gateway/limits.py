"""Rolling credit windows, concurrency and per-key checks, enforced by the Lua scripts.

``admit`` is the one Valkey round trip before an upstream call, ``settle`` the one after it;
``usage`` is the read-only view behind the dashboard and the subscription-usage endpoint.

A window refuses only when it is full (settled usage >= limit) or when the requests in flight
hold all of the rest; a request whose estimate exceeds the rest is admitted reserving the
rest. Overshoot: every admission keeps used + reserved <= limit, so a window can exceed its
limit only by what the requests in flight at the last admission cost beyond their
reservations: at most ``concurrency`` x the largest single request's cost, plus the whole
cost of any stream that outlives ``reservation_ttl_ms``. While estimates cover real costs
(max_tokens <= the reserve cap) only the one request that took the last of the window can
run over, so the overshoot stays below one request's cost.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NoReturn

from gateway import errors, events, keyspace
from gateway.billing import LOG_FIELDS as LOG_FIELDS
from gateway.billing import Charge as Charge
from gateway.billing import charge_of_fields
from gateway.keyspace import AccountKeys
from gateway.plans import DEFAULT_MAX_KEYS
from gateway.scripts import Arg, Client, Scripts, fail_closed

log = logging.getLogger("antex.limits")

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


_WINDOW_WORDS = {"5h": "5-hour", "7d": "Weekly"}


@dataclass(frozen=True, slots=True)
class LimiterSettings:
    """Durations in ms, amounts in milli-credits, counts as plain integers."""

    window_5h_ms: int = 5 * HOUR_MS
    bucket_5h_ms: int = MINUTE_MS
    window_7d_ms: int = 7 * DAY_MS
    bucket_7d_ms: int = HOUR_MS
    # A reservation is a lease: the worker renews it while the request runs (every third of
    # it), so one whose worker died frees itself after this.
    reservation_ttl_ms: int = 2 * MINUTE_MS
    # How long a settled request id is remembered: a repeat within it (retry, replay) is a
    # no-op. Longer than any retry or spool replay is expected to take; memory grows with
    # requests per this period (~100 bytes each).
    settled_ttl_ms: int = HOUR_MS
    reserve_output_cap: int = 8192
    ip_quarantine_count: int = 3
    ip_quarantine_period_ms: int = 10 * MINUTE_MS
    failure_alert_count: int = 20
    failure_alert_period_ms: int = 5 * MINUTE_MS
    log_maxlen: int = 100
    events_maxlen: int = 100
    aggregate_days: int = 7
    concurrency_retry_s: int = 1
    # In-flight streams usually settle within seconds; Claude Code retries ~10 times.
    in_flight_retry_s: int = 5
    # Distinct networks per account beyond max_keys x slots within this period flag it.
    sharing_period_ms: int = DAY_MS
    default_max_keys: int = DEFAULT_MAX_KEYS

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise errors.ConfigError(f"limiter setting {f.name} must be a positive integer")


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted request. Usage fields are None for check-only admissions."""

    ip_newly_bound: bool
    check_only: bool
    reserved_mc: int  # its estimate, or the rest of the window when less (0 when check_only)
    used_5h_mc: int | None = None
    limit_5h_mc: int | None = None
    used_7d_mc: int | None = None
    limit_7d_mc: int | None = None
    account_reserved_mc: int | None = None  # all of the account's live reservations
    in_flight: int | None = None  # including this request


@dataclass(frozen=True, slots=True)
class WindowUsage:
    used_mc: int
    limit_mc: int
    reserved_mc: int  # the account's live reservations, held against every window
    # When the window frees capacity (window_frees.lua): a full window's 429 names the same.
    resets_at_ms: int | None


@dataclass(frozen=True, slots=True)
class UsageView:
    five_hour: WindowUsage
    seven_day: WindowUsage
    in_flight: int
    now_ms: int


@lru_cache(maxsize=4096)
def _keys(account_id: str) -> AccountKeys:
    return AccountKeys(account_id)


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z, the last instant datetime renders


def rfc3339(ms: int) -> str:
    # Clamped so a stored value out of datetime's range still renders (as the range's edge).
    seconds = min(max(ms // 1000, 0), _LAST_SECOND)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(ms: int) -> str:
    seconds = max(1, math.ceil(ms / 1000))
    if seconds < 60:
        return f"{seconds} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


@dataclass(frozen=True, slots=True)
class Frees:
    """When a window frees capacity, as every surface shows it: the 429 (message and
    ``retry-after``), ``GET /v1/usage`` and the dashboard read these, never their own sums.
    ``at_ms`` comes from window_frees.lua; bucket bounds are whole minutes, so the RFC 3339
    second is exact."""

    at_ms: int
    now_ms: int

    @property
    def at(self) -> str:
        return rfc3339(self.at_ms)

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil((self.at_ms - self.now_ms) / 1000))

    @property
    def wait_text(self) -> str:
        return _duration(self.at_ms - self.now_ms)


def _plural(n: int, word: str, suffix: str = "s") -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{suffix}"


class CreditLimiter:
    def __init__(
        self,
        client: Client,
        scripts: Scripts,
        clock: Callable[[], int],
        settings: LimiterSettings | None = None,
    ) -> None:
        self._client = client
        self._scripts = scripts
        self._clock = clock
        self.settings = settings or LimiterSettings()
        # The worker's alerts (set by the app): quarantines and window thresholds learnt
        # from the scripts' replies, so alerting costs no extra Valkey call per request.
        self.notify: events.Notify = events.ignore

    @property
    def client(self) -> Client:
        return self._client

    @property
    def scripts(self) -> Scripts:
        return self._scripts

    async def admit(
        self,
        *,
        account_id: str,
        key_id: str,
        ip_tag: str,
        request_id: str,
        estimate_mc: int,
        check_only: bool = False,
    ) -> Admission:
        if request_id == "total":
            raise ValueError("request id 'total' is reserved")
        k, s, now = _keys(account_id), self.settings, self._clock()
        estimate = 0 if check_only else max(0, estimate_mc)
        raw = await self._scripts.call(
            self._client,
            "admit",
            [
                k.account, k.key(key_id), k.key_ips(key_id), k.key_denied(key_id),
                k.window_5h_amounts, k.window_7d_amounts, k.inflight, k.reserved, k.events,
                k.networks, k.settled,
            ],
            [
                now, request_id, estimate, ip_tag, int(check_only), key_id,
                s.window_5h_ms, s.bucket_5h_ms, s.window_7d_ms, s.bucket_7d_ms,
                s.reservation_ttl_ms, s.ip_quarantine_period_ms, s.ip_quarantine_count,
                s.events_maxlen, s.default_max_keys, s.sharing_period_ms,
            ],
        )  # fmt: skip
        outcome = _str(raw[0])
        if outcome != "ok":
            await self._refuse(outcome, raw, now, account_id, key_id)
        bound = bool(int(raw[1]))
        if int(raw[2] if check_only else raw[9]):
            self._flagged(account_id, key_id, now)
        if check_only:
            return Admission(ip_newly_bound=bound, check_only=True, reserved_mc=0)
        used5, limit5, used7, limit7, reserved, in_flight, mine = (int(v) for v in raw[2:9])
        if used5 * 5 >= limit5 * 4 or used7 * 5 >= limit7 * 4:  # 80 %: the lowest notice
            self._window_notice(account_id, "5h", used5, limit5)
            self._window_notice(account_id, "7d", used7, limit7)
        return Admission(bound, False, mine, used5, limit5, used7, limit7, reserved, in_flight)

    async def _refuse(
        self, outcome: str, raw: list[Any], now: int, account_id: str, key_id: str
    ) -> NoReturn:
        if outcome == "revoked":
            raise errors.AuthenticationFailed("This API key has been revoked.")
        if outcome == "settled":
            # Only a request id reused after it ended gets here (the edge makes fresh ones).
            raise errors.ServiceUnavailable("This request was already settled; retry.")
        if outcome == "quarantined":
            reason = _str(raw[2])
            if int(raw[1]):
                await self._index_quarantine(account_id, key_id, now, reason)
            raise quarantined(reason)
        if outcome == "no_plan":
            why, period_end = _str(raw[1]), int(raw[2])
            if why == "expired":
                ended = rfc3339(period_end)
                detail = f"the plan period ended at {ended}; ask your operator to renew it"
            elif why in ("missing", "zero_limit"):
                detail = "ask your operator to assign one"
            else:
                detail = f"the account is {why}; ask your operator to reactivate it"
            raise errors.PermissionDenied(f"No active plan for this account: {detail}.")
        if outcome == "ip_limit":
            bound, slots = int(raw[1]), int(raw[2])
            raise errors.IpLimitReached(
                f"This API key is already bound to {_plural(bound, 'IP address', 'es')} and the "
                f"account has {_plural(slots, 'IP slot')}; ask your operator to rotate an IP "
                "or add slots."
            )
        if outcome == "concurrency":
            in_flight, cap = int(raw[1]), int(raw[2])
            wait = self.settings.concurrency_retry_s
            raise errors.RateLimited(
                f"Too many concurrent requests: {in_flight} in flight and the plan allows "
                f"{cap}; retry in {wait} s.",
                scope="concurrency",
                retry_after_s=wait,
                resets_at_ms=now + wait * SECOND_MS,
            )
        if outcome == "in_flight":
            window = _str(raw[1])
            wait = self.settings.in_flight_retry_s
            raise errors.RateLimited(
                f"{_WINDOW_WORDS[window]} usage limit nearly reached: requests still in flight "
                f"hold the remaining capacity; retry in {wait} s.",
                scope="in_flight",
                retry_after_s=wait,
                resets_at_ms=now + wait * SECOND_MS,
            )
        if outcome in _WINDOW_WORDS:
            frees = Frees(int(raw[1]), now)
            self._window_notice(account_id, outcome, int(raw[2]), int(raw[3]))
            raise errors.RateLimited(
                f"{_WINDOW_WORDS[outcome]} usage limit reached; capacity frees at "
                f"{frees.at} (in {frees.wait_text}).",
                scope=outcome,
                retry_after_s=frees.retry_after_s,
                resets_at_ms=frees.at_ms,
            )
        raise RuntimeError(f"admit.lua returned an unknown outcome {outcome!r}")

    def _flagged(self, account_id: str, key_id: str, now: int) -> None:
        """This call raised the account's key-sharing flag: tell the operator, once."""
        log.warning("account %s flagged for key sharing (key %s)", account_id, key_id)
        self.notify(
            events.KEY_FLAGGED,
            {"account_id": account_id, "key_id": key_id, "at_ms": now, "signal": "key_sharing"},
            dedupe=f"{events.KEY_FLAGGED}:{account_id}:{now}",
        )

    def _window_notice(self, account_id: str, window: str, used_mc: int, limit_mc: int) -> None:
        percent = events.threshold_crossed(used_mc, limit_mc)
        if percent is None:
            return
        window_ms = self.settings.window_5h_ms if window == "5h" else self.settings.window_7d_ms
        self.notify(
            events.WINDOW_THRESHOLD,
            {"account_id": account_id, "window": window, "percent": percent,
             "used_mc": used_mc, "limit_mc": limit_mc},
            # One notice per threshold while the window that crossed it lasts.
            dedupe=f"{events.WINDOW_THRESHOLD}:{account_id}:{window}:{percent}",
            ttl_s=window_ms // 1000,
        )  # fmt: skip

    async def _index_quarantine(self, account_id: str, key_id: str, now: int, reason: str) -> None:
        # The key is already quarantined in its own hash; the global index only feeds the
        # operator's list, so losing this write must not turn into a second error.
        log.warning("key %s of account %s quarantined: %s", key_id, account_id, reason)
        # Only the caller whose script call quarantined the key gets here: one event.
        self.notify(
            events.KEY_QUARANTINED,
            {"account_id": account_id, "key_id": key_id, "reason": reason, "at_ms": now},
            dedupe=f"{events.KEY_QUARANTINED}:{account_id}:{key_id}:{now}",
        )
        try:
            with fail_closed():
                await self._client.zadd(keyspace.QUARANTINE_INDEX, {f"{account_id}:{key_id}": now})
        except errors.ServiceUnavailable:
            log.error("quarantine of key %s not indexed; it is still enforced", key_id)

    def charge(
        self,
        *,
        account_id: str,
        key_id: str,
        request_id: str,
        cost_mc: int,
        record: Mapping[str, str | int],
    ) -> Charge:
        """The settlement of one request from loose fields (operator tools, tests): its
        cost and the log entry that may be stored (``LOG_FIELDS`` only). The request path
        settles a typed ``billing.UsageRecord`` instead."""
        return charge_of_fields(account_id, key_id, request_id, cost_mc, record)

    def settle_call(
        self, account_id: str, charges: Sequence[Charge], renewals: Sequence[str] = ()
    ) -> tuple[list[str], list[Arg]]:
        """KEYS and ARGV of one settle.lua call: one account's charges and lease renewals."""
        k, s = _keys(account_id), self.settings
        keys = [
            k.window_5h_amounts, k.window_7d_amounts, k.inflight, k.reserved, k.log, k.daily,
            k.settled,
        ]  # fmt: skip
        key_index: dict[str, int] = {}
        packed: list[Arg] = []
        for c in charges:
            index = 0
            if c.log is not None:
                index = key_index.get(c.key_id, 0)
                if not index:
                    keys.append(k.key(c.key_id))
                    index = key_index[c.key_id] = len(keys)
            packed.append(c.packed(index).decode())
        args: list[Arg] = [
            self._clock(), s.window_5h_ms, s.bucket_5h_ms, s.window_7d_ms, s.bucket_7d_ms,
            s.log_maxlen, s.aggregate_days, s.settled_ttl_ms, s.reservation_ttl_ms,
            len(renewals), *renewals, *packed,
        ]  # fmt: skip
        return keys, args

    async def settle_many(
        self, account_id: str, charges: Sequence[Charge], renewals: Sequence[str] = ()
    ) -> tuple[int, int]:
        """One call settling an account's charges; returns (applied, already settled)."""
        keys, args = self.settle_call(account_id, charges, renewals)
        raw = await self._scripts.call(self._client, "settle", keys, args)
        return int(raw[0]), int(raw[1])

    async def settle(
        self,
        *,
        account_id: str,
        key_id: str,
        request_id: str,
        cost_mc: int,
        record: Mapping[str, str | int],
    ) -> bool:
        """Settles one request at once; False when it was already settled (a no-op)."""
        charge = self.charge(
            account_id=account_id, key_id=key_id, request_id=request_id, cost_mc=cost_mc,
            record=record,
        )  # fmt: skip
        applied, _ = await self.settle_many(account_id, [charge])
        return applied == 1

    async def usage(self, account_id: str) -> UsageView:
        k, s, now = _keys(account_id), self.settings, self._clock()
        raw = await self._scripts.call(
            self._client,
            "usage",
            [k.account, k.window_5h_amounts, k.window_7d_amounts, k.inflight, k.reserved],
            [now, s.window_5h_ms, s.bucket_5h_ms, s.window_7d_ms, s.bucket_7d_ms],
            readonly=True,
        )
        used5, limit5, resets5, used7, limit7, resets7, reserved, in_flight = (int(v) for v in raw)
        return UsageView(
            WindowUsage(used5, limit5, reserved, resets5 if resets5 >= 0 else None),
            WindowUsage(used7, limit7, reserved, resets7 if resets7 >= 0 else None),
            in_flight,
            now,
        )

    async def record_key_failure(self, *, account_id: str, key_id: str, ip_tag: str) -> bool:
        """Count one wrong secret for an existing key id; True when this one crossed the
        threshold and wrote a `wrong_secrets` security event. The key is never locked."""
        k, s, now = _keys(account_id), self.settings, self._clock()
        raw = await self._scripts.call(
            self._client,
            "key_failure",
            [k.key(key_id), k.key_failures(key_id), k.events, k.key_failure_alert(key_id)],
            [
                now, secrets.token_hex(6), s.failure_alert_period_ms,
                s.failure_alert_count, key_id, ip_tag, s.events_maxlen,
            ],
        )  # fmt: skip
        if _str(raw[0]) != "alerted":
            return False
        log.warning(
            "wrong secrets for key %s of account %s: %s within the period",
            key_id, account_id, int(raw[1]),
        )  # fmt: skip
        return True


def quarantined(reason: str) -> errors.KeyQuarantined:
    return errors.KeyQuarantined(
        f"This API key has been quarantined: {reason}. "
        "Ask your operator to review it and issue a new key."
    )


def _utilization(used_mc: int, limit_mc: int) -> float:
    if limit_mc <= 0:
        return 100.0 if used_mc > 0 else 0.0
    tenths = min(1000, (used_mc * 1000 + limit_mc // 2) // limit_mc)
    if used_mc < limit_mc:
        tenths = min(tenths, 999)  # 100.0 only once the window is really full
    return tenths / 10


def usage_body(view: UsageView, plan_name: str | None, period_end_ms: int | None) -> dict[str, Any]:
    """Anthropic's subscription-usage shape: percentages and reset times, never credits."""

    def window(w: WindowUsage) -> dict[str, Any]:
        resets = None if w.resets_at_ms is None else Frees(w.resets_at_ms, view.now_ms).at
        return {"utilization": _utilization(w.used_mc, w.limit_mc), "resets_at": resets}

    return {
        "five_hour": window(view.five_hour),
        "seven_day": window(view.seven_day),
        "plan": {
            "name": plan_name,
            "period_end": None if period_end_ms is None else rfc3339(period_end_ms),
        },
        "requests_in_flight": view.in_flight,
    }

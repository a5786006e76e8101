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
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, NoReturn

from gateway import errors, events, keyspace, store
from gateway.billing import LOG_FIELDS as LOG_FIELDS
from gateway.billing import Charge as Charge
from gateway.billing import charge_of_fields
from gateway.keyspace import AccountKeys
from gateway.plans import DEFAULT_MAX_KEYS
from gateway.store import Arg, Client, Scripts

log = logging.getLogger("antex.limits")

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS




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


@dataclass(frozen=True, slots=True)
class Shape:
    """One reply of a script as its header's RETURNS documents it: the outcome tag that
    leads it (None: the reply has no tag) and the names of the values that follow."""

    outcome: str | None
    fields: tuple[str, ...] = ()


def _shape(outcome: str | None, fields: str = "") -> Shape:
    return Shape(outcome, tuple(fields.split()))


# Every script's replies, in step with its header (tests/lua/test_replies.py holds each
# header and each script's real replies to this table).
REPLIES: dict[str, tuple[Shape, ...]] = {
    "admit": (
        _shape("ok", "ip_bound_now flagged_now"),  # check_only
        _shape(
            "ok",
            "ip_bound_now used5 limit5 used7 limit7 reserved_total in_flight reservation "
            "flagged_now",
        ),
        _shape("revoked"),
        _shape("settled"),
        _shape("quarantined", "quarantined_now reason"),
        _shape("no_plan", "why period_end_ms"),
        _shape("ip_limit", "bound_ips ip_slots"),
        _shape("concurrency", "in_flight cap"),
        _shape("5h", "frees_at_ms used limit"),
        _shape("7d", "frees_at_ms used limit"),
        _shape("in_flight", "window used reserved_total limit"),
    ),
    "settle": (_shape(None, "applied repeated"),),
    "usage": (_shape(None, "used5 limit5 resets5 used7 limit7 resets7 reserved in_flight"),),
    "key_failure": (_shape(None, "outcome failures_in_period"),),
    "create_key": (
        _shape("created", "active_keys"),
        _shape("key_limit", "active_keys max_keys"),
        _shape("stale"),
        _shape("missing"),
    ),
    "release_key": (_shape(None, "outcome"),),
}


@dataclass(frozen=True, slots=True)
class Reply:
    """A script's reply by name: ``outcome`` is its tag ("" for untagged replies)."""

    outcome: str
    values: Mapping[str, Any]

    def int(self, name: str) -> int:
        return int(self.values[name])

    def text(self, name: str) -> str:
        return str(self.values[name])


def parse_reply(script: str, raw: Sequence[Any]) -> Reply:
    """``raw`` (the script's array reply) by the shape its header documents. Raises
    RuntimeError when no shape fits: the script and this table are out of step."""
    tag = str(raw[0]) if raw else ""
    for shape in REPLIES[script]:
        if shape.outcome is None and len(raw) == len(shape.fields):
            return Reply("", dict(zip(shape.fields, raw, strict=True)))
        if shape.outcome == tag and len(raw) == 1 + len(shape.fields):
            return Reply(tag, dict(zip(shape.fields, raw[1:], strict=True)))
    raise RuntimeError(f"{script}.lua replied with an undocumented shape: {tag!r}, {len(raw)}")


@lru_cache(maxsize=4096)
def _keys(account_id: str) -> AccountKeys:
    return AccountKeys(account_id)



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
        s = self.settings
        # admit.lua's ARGV 7: the settings packed once, not ten arguments on every call.
        self._admit_conf = ":".join(
            str(v)
            for v in (
                s.window_5h_ms, s.bucket_5h_ms, s.window_7d_ms, s.bucket_7d_ms,
                s.reservation_ttl_ms, s.ip_quarantine_period_ms, s.ip_quarantine_count,
                s.events_maxlen, s.default_max_keys, s.sharing_period_ms,
            )
        )  # fmt: skip
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
        k, now = _keys(account_id), self._clock()
        estimate = 0 if check_only else max(0, estimate_mc)
        raw = await self._scripts.call(
            self._client,
            "admit",
            [
                k.account, k.key(key_id), k.key_ips(key_id), k.key_denied(key_id),
                k.window_5h_amounts, k.window_7d_amounts, k.inflight, k.reserved, k.events,
                k.networks, k.settled,
            ],
            [now, request_id, estimate, ip_tag, int(check_only), key_id, self._admit_conf],
        )
        reply = parse_reply("admit", raw)
        if reply.outcome != "ok":
            await self._refuse(reply, now, account_id, key_id)
        bound = bool(reply.int("ip_bound_now"))
        if reply.int("flagged_now"):
            self._flagged(account_id, key_id, now)
        if check_only:
            return Admission(ip_newly_bound=bound, check_only=True, reserved_mc=0)
        used5, limit5 = reply.int("used5"), reply.int("limit5")
        used7, limit7 = reply.int("used7"), reply.int("limit7")
        if used5 * 5 >= limit5 * 4 or used7 * 5 >= limit7 * 4:  # 80 %: the lowest notice
            self._window_notice(account_id, "5h", used5, limit5)
            self._window_notice(account_id, "7d", used7, limit7)
        return Admission(
            bound, False, reply.int("reservation"), used5, limit5, used7, limit7,
            reply.int("reserved_total"), reply.int("in_flight"),
        )  # fmt: skip

    async def _refuse(self, reply: Reply, now: int, account_id: str, key_id: str) -> NoReturn:
        outcome = reply.outcome
        if outcome == "revoked":
            raise errors.key_revoked()
        if outcome == "settled":
            raise errors.already_settled()
        if outcome == "quarantined":
            reason = reply.text("reason")
            if reply.int("quarantined_now"):
                await self._index_quarantine(account_id, key_id, now, reason)
            raise errors.quarantined(reason)
        if outcome == "no_plan":
            raise errors.no_plan(reply.text("why"), reply.int("period_end_ms"))
        if outcome == "ip_limit":
            raise errors.ip_limit(reply.int("bound_ips"), reply.int("ip_slots"))
        if outcome == "concurrency":
            wait = self.settings.concurrency_retry_s
            raise errors.too_many_in_flight(reply.int("in_flight"), reply.int("cap"), wait, now)
        if outcome == "in_flight":
            raise errors.window_held(reply.text("window"), self.settings.in_flight_retry_s, now)
        # "5h" | "7d": the window is full.
        self._window_notice(account_id, outcome, reply.int("used"), reply.int("limit"))
        raise errors.window_full(outcome, errors.Frees(reply.int("frees_at_ms"), now))

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
            await self._client.zadd(keyspace.QUARANTINE_INDEX, {f"{account_id}:{key_id}": now})
        except store.OUTAGES:
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
        reply = parse_reply("settle", await self._scripts.call(self._client, "settle", keys, args))
        return reply.int("applied"), reply.int("repeated")

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
        reply = parse_reply("usage", raw)
        resets5, resets7 = reply.int("resets5"), reply.int("resets7")
        reserved = reply.int("reserved")
        used5, limit5 = reply.int("used5"), reply.int("limit5")
        used7, limit7 = reply.int("used7"), reply.int("limit7")
        in_flight = reply.int("in_flight")
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
        reply = parse_reply("key_failure", raw)
        if reply.text("outcome") != "alerted":
            return False
        log.warning(
            "wrong secrets for key %s of account %s: %s within the period",
            key_id, account_id, reply.int("failures_in_period"),
        )  # fmt: skip
        return True

"""Typed bodies and answers of the ``/admin`` API, as msgspec Structs.

Request models decode and check bodies (a wrong type, a missing field or a number out of
range is a 400 naming the field); response models shape the small answers the handlers build
and describe the views the account store returns. ``gateway.admin_routes`` turns both into
the OpenAPI component schemas, so the document is the code.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

# Counts stay in 32 bits: a bigger one cannot be meant and overflows period arithmetic.
INT32 = 2**31 - 1
Count = Annotated[int, Meta(ge=-INT32, le=INT32)]
Positive = Annotated[int, Meta(ge=1, le=INT32)]
Weight = Annotated[int, Meta(ge=1, le=1000)]
Ms = Annotated[int, Meta(description="milliseconds since the Unix epoch")]
Time = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
Cursor = Annotated[str | None, Meta(description="pass as `cursor` for the next page")]
ModelId = Annotated[str, Meta(min_length=1)]

# -- request bodies


class CreateAccount(Struct):
    email: str
    plan: Annotated[
        str | UnsetType | None, Meta(description="default: ANTEX_DEFAULT_PLAN; null: no plan")
    ] = UNSET


class AssignPlan(Struct):
    plan: str
    period_days: Count | None = None


class Extend(Struct):
    days: Count | None = None


class AddSlots(Struct):
    add: Annotated[Count, Meta(description="slots to add; negative removes")]


class CreateKey(Struct):
    name: str | None = None


class Unbind(Struct):
    """Either ``{"ip": "<address>"}`` (an IPv6 address frees its /64) or ``{"all": true}``."""

    ip: str | None = None
    all: bool | None = None


class PlanInput(Struct):
    credits_5h: Positive
    credits_7d: Positive
    ip_slots: Positive
    concurrency: Positive
    period_days: Positive | None = None
    description: str | None = None
    max_keys: Annotated[
        Positive | None,
        Meta(description="active keys per account; default: unchanged, 5 for a new plan"),
    ] = None


class UpstreamInput(Struct):
    name: str
    url: Annotated[str, Meta(description="base URL, e.g. https://api.anthropic.com")]
    key: Annotated[str, Meta(extra_json_schema={"writeOnly": True}, description="stored sealed")]
    weight: Weight | None = None
    models: Annotated[list[ModelId] | None, Meta(description="empty: every model")] = None
    max_concurrent: Positive | None = None


class UpstreamWeight(Struct):
    weight: Weight


# -- answers the handlers build


class CreatedKey(Struct):
    account_id: str
    key_id: str
    name: str
    key: Annotated[str, Meta(description="the full key, in this response only")]


class Unbound(Struct):
    key_id: str
    unbound: list[str]


class KeySlots(Struct):
    key_id: str
    extra_ip_slots: int
    ip_slots: int


class AccountSlots(Struct):
    account_id: str
    extra_ip_slots: int


class ClearedReservations(Struct):
    account_id: str
    email: str
    cleared: int


class UpstreamRemoved(Struct):
    id: str
    removed: Literal[True]


# -- views of the account store (dicts at run time; described here)


class Account(Struct):
    id: str
    email: str
    plan: str | None
    subscription: Literal["active", "expired", "cancelled", "none"]
    period_end_ms: int | None = None
    period_end: Time | None = None
    credits_5h: int | None = None
    credits_7d: int | None = None
    ip_slots: Annotated[int, Meta(description="IP slots per key from the plan")] = 0
    extra_ip_slots: Annotated[int, Meta(description="bought slots, added to every key")] = 0
    concurrency: int = 0
    max_keys: Annotated[int, Meta(description="active (not revoked) keys allowed")] = 0
    shared_flag_ms: int | None = None
    shared_flag_reason: str | None = None
    created_ms: Ms = 0
    created_at: Time | None = None


class Key(Struct):
    key_id: str
    name: str
    prefix: Annotated[str, Meta(description="sk_live_<key id>_…; the secret is never shown")]
    status: Literal["active", "revoked", "quarantined"]
    bound_ips: list[str]
    ip_slots: Annotated[int, Meta(description="plan + account extra + key extra")]
    account_id: str | None = None
    quarantine_reason: str | None = None
    quarantined_ms: int | None = None
    created_ms: Ms = 0
    last_used_ms: int | None = None
    extra_ip_slots: int = 0


class AccountDetail(Account, kw_only=True):
    keys: list[Key]


class QuarantinedKey(Key, kw_only=True):
    email: str | None


class IpBinding(Struct):
    ip: Annotated[str, Meta(description="an IPv4 address or an IPv6 /64")]
    bound_ms: Ms
    bound_at: Time | None = None


class IpBindings(Struct):
    key_id: str
    account_id: str
    ip_slots: int
    bound: list[IpBinding]


class Event(Struct):
    id: Annotated[str, Meta(description="stream entry id")]
    type: Literal[
        "key_quarantined",
        "wrong_secrets",
        "key_released",
        "key_revoked",
        "ip_unbound",
        "account_flagged",
        "flag_cleared",
        "deletion_requested",
    ]
    key_id: str | None = None
    at_ms: Ms | None = None
    at: Time | None = None
    reason: str | None = None
    ips: list[str] | None = None


class Window(Struct):
    utilization: Annotated[float, Meta(ge=0, le=100, description="percent used")]
    resets_at: Time | None


class PlanPeriod(Struct):
    name: str | None
    period_end: Time | None


class SubscriptionUsage(Struct):
    five_hour: Window
    seven_day: Window
    plan: PlanPeriod
    requests_in_flight: int


class Credits(Struct):
    used: float
    limit: int


class CreditWindows(Struct):
    five_hour: Credits
    seven_day: Credits
    reserved: float


class UsageReport(Struct):
    account_id: str
    usage: SubscriptionUsage
    credits: CreditWindows
    recent_requests: Annotated[
        list[dict[str, Any]],
        Meta(description="metadata only: model, route, status, tokens, credits_mc, latency_ms"),
    ]
    email: str | None = None


class Plan(Struct):
    name: str
    credits_5h: int
    credits_7d: int
    ip_slots: int
    concurrency: int
    period_days: int
    max_keys: Annotated[int, Meta(description="active (not revoked) keys per account")]
    description: str = ""


class PlanSaved(Struct):
    plan: Plan
    accounts_updated: int


class FlaggedAccount(Struct):
    account_id: str
    email: str | None
    flagged_ms: Ms
    reason: str
    flagged_at: Time | None = None


class AuditEntry(Struct):
    id: str
    at_ms: Ms
    at: Time
    actor: Annotated[str, Meta(description="operator token name, console:<name>, cli@<host>")]
    action: Annotated[str, Meta(description="e.g. account.plan, key.revoke, plan.set")]
    target: dict[str, str]
    changes: Annotated[
        dict[str, tuple[Any, Any]],
        Meta(description="changed fields: [before, after]; never a secret"),
    ]


class DeletionRequest(Struct):
    account_id: str
    email: str | None
    requested_ms: Ms
    requested_at: Time
    age_days: float
    overdue: Annotated[bool, Meta(description="older than the 7 days the policy promises")]


class AccountDeleted(Struct):
    email_sha256: str
    keys_deleted: int
    valkey_keys_deleted: int
    requested_ms: int | None


class Upstream(Struct):
    id: Annotated[str, Meta(description="up_… (or env: the environment's upstream)")]
    name: str
    enabled: bool
    weight: Weight
    state: Literal["ready", "half_open", "cooling", "circuit_open", "disabled", "unknown"]
    url: str | None = None
    models: Annotated[list[str], Meta(description="empty: every model")] = []
    max_concurrent: Annotated[int | None, Meta(description="in flight per worker")] = None
    key_fingerprint: Annotated[str | None, Meta(description="sha256:… of the key")] = None
    created_ms: int | None = None
    disabled_reason: str | None = None
    disabled_ms: int | None = None
    headroom: Annotated[float | None, Meta(description="smallest remaining/limit share")] = None
    cooling_until_ms: int | None = None
    reported_ms: Annotated[int | None, Meta(description="last health report")] = None


class AccountList(Struct):
    data: list[Account]
    next_cursor: Cursor


class AuditList(Struct):
    data: list[AuditEntry]
    next_cursor: Cursor


class DeletionList(Struct):
    data: list[DeletionRequest]
    next_cursor: Cursor


class QuarantineList(Struct):
    data: list[QuarantinedKey]
    next_cursor: Cursor
    flagged: Annotated[
        list[FlaggedAccount], Meta(description="flagged for key sharing: for review, not locked")
    ]


class KeyList(Struct):
    data: list[Key]


class EventList(Struct):
    data: list[Event]


class PlanList(Struct):
    data: list[Plan]


class UpstreamList(Struct):
    data: list[Upstream]


def encode(answer: object) -> object:
    """A Struct as plain JSON-ready builtins; anything else unchanged."""
    return msgspec.to_builtins(answer) if isinstance(answer, Struct) else answer

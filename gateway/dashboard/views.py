"""What each dashboard page shows, read for one signed-in account and nothing else.

Every function takes the account id from the session, never from the request, so a page
cannot be pointed at another account. Usage comes from the same calls as ``GET /v1/usage``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup

from gateway import accounts, keyspace
from gateway.dashboard import charts
from gateway.limits import CreditLimiter
from gateway.plans import DEFAULT_MAX_KEYS, list_plans
from gateway.wire import usage_body

RECENT_REQUESTS = 25
DELETION_REQUESTS = keyspace.DELETION_REQUESTS



def _int(value: Any, default: int = 0) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_text(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _iso_to_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Window:
    key: str  # "five_hour" | "seven_day", as in /v1/usage
    title: str
    utilization: float
    resets_at: str | None  # RFC 3339, exactly as /v1/usage reports it
    resets_at_ms: int | None
    bar: Markup


async def account_of(client: Any, account_id: str) -> dict[str, str]:
    return await accounts.get_account(client, account_id)


async def _key_names(client: Any, account_id: str) -> dict[str, dict[str, Any]]:
    return {k["key_id"]: k for k in await accounts.list_keys(client, account_id)}


async def _key_labels(client: Any, account_id: str) -> dict[str, str]:
    """Key id -> name in two round trips whatever the number of keys (the usage page
    needs names only; list_keys reads every key's whole record one by one)."""
    ak = keyspace.AccountKeys(account_id)
    ids = sorted(str(k) for k in await client.smembers(ak.keys))
    if not ids:
        return {}
    pipe = client.pipeline(transaction=False)
    for key_id in ids:
        pipe.hget(ak.key(key_id), "name")
    names = await pipe.execute()
    return {key_id: str(n) for key_id, n in zip(ids, names, strict=True) if n is not None}


def _window(key: str, title: str, data: dict[str, Any]) -> Window:
    resets = data["resets_at"]
    utilization = float(data["utilization"])
    return Window(
        key,
        title,
        utilization,
        resets,
        _iso_to_ms(resets) if resets else None,
        Markup(charts.usage_bar_svg(utilization, f"{title}: {utilization} % used")),
    )


async def usage_page(
    client: Any, limiter: CreditLimiter, account_id: str, account: dict[str, str], now_ms: int
) -> dict[str, Any]:
    view = await limiter.usage(account_id)
    period_end = _int(account.get("period_end_ms")) or None
    body = usage_body(view, account.get("plan"), period_end)
    ak = keyspace.AccountKeys(account_id)
    pipe = client.pipeline(transaction=False)
    pipe.xrevrange(ak.log, count=RECENT_REQUESTS)
    pipe.hgetall(ak.daily)
    log_entries, daily = await pipe.execute()
    names = await _key_labels(client, account_id)
    recent = []
    for _entry_id, fields in log_entries:
        f = {str(k): str(v) for k, v in fields.items()}
        cache_write = _int(f.get("cache_creation_input_tokens"))
        recent.append(
            {
                "at_ms": _int(f.get("at_ms")),
                "model": f.get("model", "unknown"),
                "input": _int(f.get("input_tokens")),
                "output": _int(f.get("output_tokens")),
                "cache_read": _int(f.get("cache_read_input_tokens")),
                "cache_write": cache_write,
                "latency_ms": _int(f.get("latency_ms")),
                "status": _int(f.get("status")),
                "error": f.get("error_type", ""),
                "key_name": names.get(f.get("key_id", ""), "deleted key"),
            }
        )
    limit_7d = _int(account.get("limit_7d"))
    agg = charts.parse_aggregates(daily, now_ms, limit_7d)
    return {
        "usage": body,
        "windows": [
            _window("five_hour", "5-hour window", body["five_hour"]),
            _window("seven_day", "Weekly window", body["seven_day"]),
        ],
        "in_flight": view.in_flight,
        "recent": recent,
        "days": agg.days,
        "models": agg.models,
        "hourly_svg": Markup(charts.hourly_svg(agg, limit_7d)),
        "models_svg": Markup(charts.models_svg(agg.models)),
    }


def _slots(account: dict[str, str], key: dict[str, Any]) -> int:
    """As admit.lua counts them: plan slots + account extras + this key's extras."""
    return (
        _int(account.get("ip_slots"))
        + _int(account.get("extra_ip_slots"))
        + _int(key.get("extra_ip_slots"))
    )


async def keys_page(client: Any, account_id: str, account: dict[str, str]) -> dict[str, Any]:
    listed = list((await _key_names(client, account_id)).values())
    rows = []
    for key in listed:
        status = key.get("status", "active")
        rows.append(
            {
                "key_id": key["key_id"],
                "name": key.get("name", ""),
                "prefix": key.get("prefix", ""),
                "created_ms": _int(key.get("created_ms")),
                "last_used_ms": _int(key.get("last_used_ms")),
                "status": status,
                "reason": key.get("quarantine_reason", "") if status == "quarantined" else "",
                "quarantined_ms": _int(key.get("quarantined_ms")),
                "bound_ips": key.get("bound_ips", []),
                "slots": _slots(account, key),
            }
        )
    order = {"active": 0, "quarantined": 1}
    rows.sort(key=lambda r: (order.get(r["status"], 2), -r["created_ms"], r["name"]))
    # The cap counts what create_key.lua counts: every key not revoked.
    in_use = sum(1 for r in rows if r["status"] != "revoked")
    return {"keys": rows, "keys_in_use": in_use, "max_keys": _max_keys(account)}


def _max_keys(account: dict[str, str]) -> int:
    return _int(account.get("max_keys"), DEFAULT_MAX_KEYS)


async def find_key(client: Any, account_id: str, key_id: str) -> dict[str, Any] | None:
    """The key only if it belongs to this account."""
    return (await _key_names(client, account_id)).get(key_id)


def _ratio(value: int, base: int) -> str:
    if base <= 0:
        return "–"
    r = value / base
    text = f"{r:.2f}".rstrip("0").rstrip(".") if r < 10 else f"{r:.0f}"
    return f"{text}×"


async def plans_page(client: Any, account_id: str, account: dict[str, str]) -> dict[str, Any]:
    plans = await list_plans(client)
    requested = await client.zscore(DELETION_REQUESTS, account_id)
    limit_5h = _int(account.get("limit_5h"))
    limit_7d = _int(account.get("limit_7d"))
    catalog = [
        {
            "name": p.name,
            "description": p.description,
            "current": p.name == account.get("plan"),
            "five_hour": _ratio(p.credits_5h * 1000, limit_5h),
            "weekly": _ratio(p.credits_7d * 1000, limit_7d),
            "windows_per_week": _ratio(p.credits_7d, p.credits_5h).rstrip("×"),
            "ip_slots": p.ip_slots,
            "concurrency": p.concurrency,
            "max_keys": p.max_keys,
            "period_days": p.period_days,
        }
        for p in plans
    ]
    return {
        "plan_name": account.get("plan", ""),
        "status": account.get("status", ""),
        "period_end_ms": _int(account.get("period_end_ms")),
        "ip_slots": _int(account.get("ip_slots")) + _int(account.get("extra_ip_slots")),
        "extra_ip_slots": _int(account.get("extra_ip_slots")),
        "concurrency": _int(account.get("concurrency")),
        "max_keys": _max_keys(account),
        "windows_per_week": _ratio(limit_7d, limit_5h).rstrip("×"),
        "catalog": catalog,
        "deletion_requested_ms": int(float(requested)) if requested is not None else 0,
    }


async def request_deletion(
    client: Any, limiter: CreditLimiter, account_id: str, now_ms: int
) -> None:
    """Records the request for the operator; nothing is deleted here."""
    ak = keyspace.AccountKeys(account_id)
    pipe = client.pipeline(transaction=False)
    pipe.zadd(DELETION_REQUESTS, {account_id: now_ms}, nx=True)
    pipe.xadd(
        ak.events,
        {"type": "deletion_requested", "at_ms": str(now_ms), "via": "dashboard"},
        maxlen=limiter.settings.events_maxlen,
        approximate=True,
    )
    await pipe.execute()

"""What the console pages show: reads only; every change goes through ``operations``."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from markupsafe import Markup
from prometheus_client.parser import text_string_to_metric_families

from gateway import accounts
from gateway.dashboard import charts
from gateway.limits import CreditLimiter, UsageView
from gateway.store import Client

TOP_ACCOUNTS = 10
# The traffic page reads every account's windows; past this many it shows the first ones.
MAX_SCANNED = 5000
_CONCURRENT = 50


def bar(used_mc: int, limit_mc: int, label: str) -> Markup:
    pct = charts.share(used_mc, limit_mc)
    return Markup(charts.usage_bar_svg(pct, f"{label}: {pct:.1f} % used"))


def windows(view: UsageView) -> list[dict[str, Any]]:
    out = []
    for title, w in (("5-hour", view.five_hour), ("7-day", view.seven_day)):
        out.append(
            {
                "title": title,
                "used": w.used_mc / 1000,
                "limit": w.limit_mc // 1000,
                "pct": charts.share(w.used_mc, w.limit_mc),
                "bar": bar(w.used_mc, w.limit_mc, title),
                "resets_at_ms": w.resets_at_ms,
            }
        )
    return out


def metric_totals(text: str) -> dict[str, Any]:
    """Requests by status, refusals by window and gateway errors by type, from /metrics."""
    requests: dict[str, float] = defaultdict(float)
    refusals: dict[str, float] = {}
    errors: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "antex_requests_total":
                requests[sample.labels["status"][:1] + "xx"] += sample.value
            elif sample.name == "antex_window_refusals_total":
                refusals[sample.labels["window"]] = sample.value
            elif sample.name == "antex_error_responses_total":
                errors[f"{sample.labels['status']} {sample.labels['type']}"] += sample.value
    return {
        "requests": dict(sorted(requests.items())),
        "requests_total": int(sum(requests.values())),
        "refusals": refusals,
        "errors": dict(sorted(errors.items())),
    }


async def top_accounts(client: Client, limiter: CreditLimiter, now_ms: int) -> dict[str, Any]:
    """The accounts using the most credits in each window right now."""
    found = (await accounts.list_accounts(client, now_ms=now_ms))[:MAX_SCANNED]
    gate = asyncio.Semaphore(_CONCURRENT)

    async def one(account: dict[str, Any]) -> tuple[dict[str, Any], UsageView]:
        async with gate:
            return account, await limiter.usage(account["id"])

    rows = await asyncio.gather(*(one(a) for a in found))

    def ranked(pick: str) -> list[dict[str, Any]]:
        scored = [
            {"id": a["id"], "email": a["email"], "plan": a["plan"],
             "used": getattr(v, pick).used_mc / 1000, "limit": getattr(v, pick).limit_mc // 1000,
             "bar": bar(getattr(v, pick).used_mc, getattr(v, pick).limit_mc, a["email"] or "")}
            for a, v in rows
            if getattr(v, pick).used_mc > 0
        ]  # fmt: skip
        return sorted(scored, key=lambda r: -r["used"])[:TOP_ACCOUNTS]

    return {
        "five_hour": ranked("five_hour"),
        "seven_day": ranked("seven_day"),
        "scanned": len(found),
    }

"""Operator event types, their JSON envelope and its signature (pure: no I/O).

A webhook body is ``{"id", "type", "created_at", "data"}``; the ``x-antex-signature``
header is ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Protocol

import orjson

KEY_QUARANTINED = "key.quarantined"
KEY_FLAGGED = "key.flagged"
VALKEY_ERROR = "valkey.error"
SETTLE_FAILED = "settle.failed"
WINDOW_THRESHOLD = "window.threshold"
UPSTREAM_DISABLED = "upstream.disabled"
POOL_CAPACITY_LOW = "pool.capacity_low"

# Type -> what it means; README "Alerts and webhooks" lists the same with payload fields.
EVENT_TYPES: Mapping[str, str] = {
    KEY_QUARANTINED: "a key was quarantined (leak or brute-force signal); it is refused now",
    KEY_FLAGGED: "a key looks shared but still works; review it",
    VALKEY_ERROR: "a worker could not reach Valkey (requests answered 503)",
    SETTLE_FAILED: "a finished request could not be charged; its charge is lost",
    WINDOW_THRESHOLD: "an account's credit window passed 80 % or 100 %",
    UPSTREAM_DISABLED: "an upstream credential was taken out of the pool",
    POOL_CAPACITY_LOW: "the upstream pool has few usable credentials left",
}

# What a payload may hold: ids, counts, reasons. Never keys, prompts, responses or emails.
PAYLOAD_FIELDS = frozenset(
    {
        "account_id", "key_id", "request_id", "reason", "at_ms", "where", "error",
        "credits_mc", "window", "percent", "used_mc", "limit_mc", "worker_pid",
        "upstream_id", "usable", "total", "signal", "ips_seen",
    }
)  # fmt: skip

SIGNATURE_HEADER = "x-antex-signature"
# Receivers should refuse a signature older than this (replay window).
SIGNATURE_TOLERANCE_S = 300

# A window notice is sent once per window crossing of each threshold, highest first.
THRESHOLDS = (100, 80)


class Notify(Protocol):
    """``notify(event_type, payload, dedupe=..., ttl_s=...)``: queue one event, never wait.

    ``dedupe`` names the event across the cluster: of all workers notifying the same name
    within ``ttl_s`` seconds, one delivers it. Without it every call is its own event.
    """

    def __call__(
        self,
        event_type: str,
        payload: Mapping[str, str | int],
        *,
        dedupe: str | None = None,
        ttl_s: int = 3600,
    ) -> None: ...


def ignore(
    event_type: str,
    payload: Mapping[str, str | int],
    *,
    dedupe: str | None = None,
    ttl_s: int = 3600,
) -> None:
    """The ``Notify`` of code built without alerts (tools, tests of one module)."""


def event_id(dedupe: str | None) -> str:
    """A deterministic id for a named event, a random one otherwise."""
    if dedupe is None:
        return "evt_" + secrets.token_hex(12)
    return "evt_" + hashlib.sha256(dedupe.encode()).hexdigest()[:24]


def per_minute(event_type: str, now_s: float | None = None) -> str:
    """A dedupe name shared by every worker during one wall-clock minute."""
    minute = int((time.time() if now_s is None else now_s) // 60)
    return f"{event_type}:{minute}"


def clean_payload(payload: Mapping[str, str | int]) -> tuple[dict[str, str | int], list[str]]:
    """The allowed fields of ``payload`` (strings capped at 300 chars) and the names dropped."""
    kept: dict[str, str | int] = {}
    dropped: list[str] = []
    for name, value in payload.items():
        if name not in PAYLOAD_FIELDS:
            dropped.append(name)
        elif isinstance(value, int):
            kept[name] = value
        else:
            kept[name] = str(value)[:300]
    return kept, dropped


def envelope(event_id_: str, event_type: str, data: Mapping[str, str | int], at_s: float) -> bytes:
    created = datetime.fromtimestamp(at_s, UTC).isoformat(timespec="milliseconds")
    doc = {"id": event_id_, "type": event_type, "created_at": created.replace("+00:00", "Z")}
    return orjson.dumps({**doc, "data": dict(data)})


def sign(secret: str, body: bytes, at_s: int) -> str:
    """The ``x-antex-signature`` value for ``body`` sent at ``at_s`` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{at_s}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at_s},v1={mac}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    *,
    now_s: float | None = None,
    tolerance_s: int = SIGNATURE_TOLERANCE_S,
) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` within ``tolerance_s`` of now."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(name, []).append(value)
    try:
        at_s = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    now = time.time() if now_s is None else now_s
    if abs(now - at_s) > tolerance_s:
        return False
    expected = sign(secret, body, at_s).rpartition("v1=")[2]
    # Several v1 values appear while a secret is being rotated; any match is enough.
    return any(hmac.compare_digest(expected, v) for v in parts.get("v1", []))


def threshold_crossed(used_mc: int, limit_mc: int) -> int | None:
    """The highest threshold (percent) that ``used_mc`` of ``limit_mc`` has reached."""
    if limit_mc <= 0:
        return None
    for percent in THRESHOLDS:
        if used_mc * 100 >= limit_mc * percent:
            return percent
    return None

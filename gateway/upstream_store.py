"""The upstream pool in Valkey: one hash per upstream (its key sealed by ``SecretBox``),
the shared cooldowns, the workers' last health reports, and the pub/sub channel that tells
every worker of a change. Shared by the CLI, the admin API and the workers.

Keys (global, read on cold paths only: start-up, resync, operator commands)::

    antex:upstreams                 set of upstream ids
    antex:upstream:<id>             hash: id name url weight enabled models max_concurrent
                                          key_ct fingerprint created_ms disabled_reason disabled_ms
    antex:upstream-cool             hash: "<id>" or "<id>|<model>" -> cooled until (epoch ms)
    antex:upstream-health           hash: id -> JSON health report of the last worker to write
    antex:upstream-events           channel: JSON {"t": "reload"|"cool"|"disable", ...}
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import InvalidRequest, NotFound
from gateway.keyspace import PREFIX
from gateway.secretbox import SecretBox, fingerprint

IDS = f"{PREFIX}:upstreams"
COOL = f"{PREFIX}:upstream-cool"
HEALTH = f"{PREFIX}:upstream-health"
CHANNEL = f"{PREFIX}:upstream-events"
ENV_ID = "env"  # the upstream of ANTEX_UPSTREAM_URL / ANTEX_UPSTREAM_KEY
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_WEIGHT = 1000


def record_key(upstream_id: str) -> str:
    return f"{PREFIX}:upstream:{upstream_id}"



@dataclass(frozen=True, slots=True)
class UpstreamRecord:
    """One configured upstream; ``key_ct`` is the sealed API key, never the key itself."""

    id: str
    name: str
    url: str
    weight: int
    enabled: bool
    models: tuple[str, ...]
    max_concurrent: int | None
    key_ct: str
    fingerprint: str
    created_ms: int
    disabled_reason: str = ""
    disabled_ms: int = 0

    @classmethod
    def from_hash(cls, raw: dict[Any, Any]) -> UpstreamRecord:
        h = {str(k): str(v) for k, v in raw.items()}
        models = tuple(m for m in h.get("models", "").split(",") if m)
        return cls(
            id=h["id"],
            name=h.get("name", h["id"]),
            url=h.get("url", ""),
            weight=int(h.get("weight") or 1),
            enabled=h.get("enabled", "1") == "1",
            models=models,
            max_concurrent=int(h["max_concurrent"]) if h.get("max_concurrent") else None,
            key_ct=h.get("key_ct", ""),
            fingerprint=h.get("fingerprint", ""),
            created_ms=int(h.get("created_ms") or 0),
            disabled_reason=h.get("disabled_reason", ""),
            disabled_ms=int(h.get("disabled_ms") or 0),
        )

    def view(self) -> dict[str, Any]:
        """The operator's view: everything but the sealed key."""
        return {
            "id": self.id,
            "name": self.name,
            "url": self.url,
            "weight": self.weight,
            "enabled": self.enabled,
            "models": list(self.models),
            "max_concurrent": self.max_concurrent,
            "key_fingerprint": self.fingerprint,
            "created_ms": self.created_ms,
            "disabled_reason": self.disabled_reason or None,
            "disabled_ms": self.disabled_ms or None,
        }


def check_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://[^\s/]+", url):
        raise InvalidRequest("url: must be an http:// or https:// base URL", param="url")
    return url


def check_weight(weight: int) -> int:
    if not 1 <= weight <= MAX_WEIGHT:
        raise InvalidRequest(f"weight: must be 1-{MAX_WEIGHT}", param="weight")
    return weight


async def list_records(client: Any) -> list[UpstreamRecord]:
    ids = sorted(str(i) for i in await client.smembers(IDS))
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for upstream_id in ids:
        pipe.hgetall(record_key(upstream_id))
    rows = await pipe.execute()
    return [UpstreamRecord.from_hash(row) for row in rows if row]


async def find_record(client: Any, ref: str) -> UpstreamRecord:
    """By id or name; NotFound otherwise."""
    for record in await list_records(client):
        if ref in (record.id, record.name):
            return record
    raise NotFound(f"upstream: {ref}")


async def add_upstream(
    client: Any,
    box: SecretBox,
    *,
    name: str,
    url: str,
    key: str,
    weight: int = 1,
    models: tuple[str, ...] = (),
    max_concurrent: int | None = None,
    now_ms: int,
) -> UpstreamRecord:
    if not _NAME.match(name) or name == ENV_ID:
        raise InvalidRequest(
            "name: 1-64 letters, digits, '.', '_' or '-' (and not 'env')", param="name"
        )
    key = key.strip()
    if not key or any(c.isspace() for c in key):
        raise InvalidRequest("key: must be a non-empty API key without spaces", param="key")
    if max_concurrent is not None and max_concurrent < 1:
        raise InvalidRequest("max_concurrent: must be >= 1", param="max_concurrent")
    url, weight = check_url(url), check_weight(weight)
    if any(r.name == name for r in await list_records(client)):
        raise InvalidRequest(f"name: an upstream named {name!r} exists", param="name")
    upstream_id = "up_" + secrets.token_hex(5)
    fields = {
        "id": upstream_id,
        "name": name,
        "url": url,
        "weight": str(weight),
        "enabled": "1",
        "models": ",".join(models),
        "max_concurrent": str(max_concurrent or ""),
        "key_ct": box.seal(key, upstream_id),
        "fingerprint": fingerprint(key),
        "created_ms": str(now_ms),
    }
    pipe = client.pipeline(transaction=False)
    pipe.hset(record_key(upstream_id), mapping=fields)
    pipe.sadd(IDS, upstream_id)
    await pipe.execute()
    await publish(client, {"t": "reload"})
    return UpstreamRecord.from_hash(fields)


async def set_enabled(
    client: Any, upstream_id: str, enabled: bool, *, reason: str = "", now_ms: int = 0
) -> None:
    """Enabling clears the reason and any cooldown; ``env`` is stored like the others."""
    fields = {"id": upstream_id, "enabled": "1" if enabled else "0"}
    fields |= {"disabled_reason": "", "disabled_ms": ""} if enabled else {
        "disabled_reason": reason or "disabled by the operator", "disabled_ms": str(now_ms)}
    cooling = [
        f for f in map(str, await client.hkeys(COOL)) if f.split("|")[0] == upstream_id
    ] if enabled else []  # fmt: skip
    pipe = client.pipeline(transaction=False)
    pipe.hset(record_key(upstream_id), mapping=fields)
    if cooling:
        pipe.hdel(COOL, *cooling)
    await pipe.execute()


async def set_weight(client: Any, upstream_id: str, weight: int) -> None:
    if upstream_id == ENV_ID:
        raise InvalidRequest("env always has weight 1")
    await client.hset(record_key(upstream_id), "weight", str(check_weight(weight)))
    await publish(client, {"t": "reload"})


async def remove_upstream(client: Any, upstream_id: str) -> None:
    if upstream_id == ENV_ID:
        raise InvalidRequest("env is ANTEX_UPSTREAM_URL/ANTEX_UPSTREAM_KEY: unset them instead")
    pipe = client.pipeline(transaction=False)
    pipe.delete(record_key(upstream_id))
    pipe.srem(IDS, upstream_id)
    pipe.hdel(HEALTH, upstream_id)
    await pipe.execute()
    await publish(client, {"t": "reload"})


async def env_override(client: Any) -> UpstreamRecord | None:
    """The stored enabled state of the environment's upstream, when it was ever changed."""
    raw = await client.hgetall(record_key(ENV_ID))
    return UpstreamRecord.from_hash(raw) if raw else None


async def publish(client: Any, event: dict[str, Any]) -> None:
    await client.publish(CHANNEL, orjson.dumps(event))


async def cooldowns(client: Any, now_ms: int) -> dict[str, int]:
    """Live cooldowns, "<id>" or "<id>|<model>" -> until (epoch ms)."""
    raw = await client.hgetall(COOL)
    live = {str(k): int(v) for k, v in raw.items()}
    return {k: v for k, v in live.items() if v > now_ms}


async def health_reports(client: Any) -> dict[str, dict[str, Any]]:
    raw = await client.hgetall(HEALTH)
    out: dict[str, dict[str, Any]] = {}
    for k, v in raw.items():
        try:
            report = orjson.loads(v)
        except orjson.JSONDecodeError:
            continue
        if isinstance(report, dict):
            out[str(k)] = report
    return out


async def resolve(client: Any, ref: str) -> str:
    """An upstream id from an id or name; ``env`` is the environment's upstream."""
    if ref == ENV_ID:
        return ENV_ID
    return (await find_record(client, ref)).id


async def enable(client: Any, ref: str, enabled: bool, *, now_ms: int) -> str:
    """Operator switch; every worker applies it within milliseconds (pub/sub)."""
    upstream_id = await resolve(client, ref)
    await set_enabled(client, upstream_id, enabled, now_ms=now_ms)
    if enabled:
        await publish(client, {"t": "reset", "id": upstream_id})
    else:
        why = "disabled by the operator"
        await publish(client, {"t": "disable", "id": upstream_id, "why": why})
    await publish(client, {"t": "reload"})
    return upstream_id


async def views(client: Any, now_ms: int) -> list[dict[str, Any]]:
    """Every upstream as operators see it: configuration, the fingerprint of its key, and
    health (state, headroom) from the workers' last reports. Never a key."""
    records = await list_records(client)
    health = await health_reports(client)
    cools = await cooldowns(client, now_ms)
    env = await env_override(client)
    out: list[dict[str, Any]] = []
    if ENV_ID in health or env is not None:
        out.append({
            "id": ENV_ID, "name": ENV_ID, "url": None, "weight": 1,
            "enabled": env.enabled if env is not None else True, "models": [],
            "max_concurrent": None, "key_fingerprint": None, "created_ms": None,
            "disabled_reason": (env.disabled_reason or None) if env is not None else None,
            "disabled_ms": (env.disabled_ms or None) if env is not None else None,
        })  # fmt: skip
    out += [r.view() for r in records]
    for view in out:
        report = health.get(view["id"], {})
        cooling = [until for field, until in cools.items() if field.split("|")[0] == view["id"]]
        state = report.get("state") or "unknown"
        if not view["enabled"]:
            state = "disabled"
        elif state in ("cooling", "circuit_open") and not cooling:
            state = "ready"  # the report is older than the cooldown's end
        view["state"] = state
        view["headroom"] = report.get("headroom")
        view["cooling_until_ms"] = max(cooling) if cooling else None
        view["reported_ms"] = report.get("at_ms")
    return out


async def view_of(client: Any, ref: str, now_ms: int) -> dict[str, Any]:
    upstream_id = await resolve(client, ref)
    for view in await views(client, now_ms):
        if view["id"] == upstream_id:
            return view
    raise NotFound(f"upstream: {ref}")

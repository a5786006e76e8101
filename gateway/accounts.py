"""Account and key administration over Valkey, shared by the CLI, admin API and dashboard.

Keys are shown once: only ``create_key`` ever returns the full key, and only a bcrypt hash
of its secret is stored.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

import valkey.asyncio as avalkey

from gateway import keys, keyspace
from gateway.clock import system_clock
from gateway.errors import InvalidRequest, NotFound
from gateway.plans import account_plan_fields, get_plan

DAY_MS = 86_400_000


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key_id: str
    key: str  # the full key: shown to the customer once, never stored


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in email):
        raise InvalidRequest(f"not an email address: {email!r}")
    return email


async def find_account(client: avalkey.Valkey, email: str) -> str | None:
    found = await client.get(keyspace.email_key(normalize_email(email)))
    return _s(found) if found is not None else None


async def require_account(client: avalkey.Valkey, email_or_id: str) -> str:
    if "@" in email_or_id:
        account_id = await find_account(client, email_or_id)
    else:
        exists = await client.exists(keyspace.AccountKeys(email_or_id).account)
        account_id = email_or_id if exists else None
    if account_id is None:
        raise NotFound(f"no account {email_or_id!r}")
    return account_id


async def create_account(
    client: avalkey.Valkey, email: str, plan_name: str, *, now_ms: int | None = None
) -> str:
    email = normalize_email(email)
    plan = await get_plan(client, plan_name)
    if plan is None:
        raise NotFound(f"no plan named {plan_name!r}")
    now = system_clock() if now_ms is None else now_ms
    account_id = secrets.token_hex(8)
    # SET NX on the email index makes concurrent creations of one email safe.
    if not await client.set(keyspace.email_key(email), account_id, nx=True):
        raise InvalidRequest(f"an account for {email} already exists")
    fields = {
        "email": email,
        "created_ms": str(now),
        "extra_ip_slots": "0",
        **account_plan_fields(plan, now + plan.period_days * DAY_MS),
    }
    ak = keyspace.AccountKeys(account_id)
    await client.hset(ak.account, mapping=fields)
    await client.sadd(keyspace.ACCOUNTS, account_id)
    return account_id


async def get_account(client: avalkey.Valkey, account_id: str) -> dict[str, str]:
    raw = await client.hgetall(keyspace.AccountKeys(account_id).account)
    if not raw:
        raise NotFound(f"no account {account_id!r}")
    return {"id": account_id, **_decode(raw)}


async def create_key(
    client: avalkey.Valkey,
    account_id: str,
    name: str,
    *,
    rounds: int,
    now_ms: int | None = None,
) -> CreatedKey:
    await get_account(client, account_id)
    key_id, secret, full = keys.new_key()
    hashed = await asyncio.to_thread(keys.hash_secret, secret, rounds)
    now = system_clock() if now_ms is None else now_ms
    ak = keyspace.AccountKeys(account_id)
    await client.hset(
        ak.key(key_id),
        mapping={
            "hash": hashed,
            "name": name or "default",
            "prefix": keys.display_prefix(key_id),
            "created_ms": str(now),
            "last_used_ms": "0",
            "status": "active",
            "extra_ip_slots": "0",
        },
    )
    await client.sadd(ak.keys, key_id)
    await client.set(keyspace.key_index(key_id), account_id)
    return CreatedKey(key_id, full)


async def list_keys(client: avalkey.Valkey, account_id: str) -> list[dict[str, Any]]:
    ak = keyspace.AccountKeys(account_id)
    out = []
    for key_id in sorted(_s(k) for k in await client.smembers(ak.keys)):
        raw = _decode(await client.hgetall(ak.key(key_id)))
        raw.pop("hash", None)  # never leaves Valkey
        ips = _decode(await client.hgetall(ak.key_ips(key_id)))
        out.append({"key_id": key_id, **raw, "bound_ips": sorted(ips)})
    return out


async def revoke_key(client: avalkey.Valkey, account_id: str, key_id: str) -> None:
    ak = keyspace.AccountKeys(account_id)
    if not await client.sismember(ak.keys, key_id):
        raise NotFound(f"no key {key_id!r} on this account")
    await client.hset(ak.key(key_id), "status", "revoked")
    await client.publish(keyspace.INVALIDATE_CHANNEL, key_id)

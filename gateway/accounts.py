"""Account, key, IP-binding and quarantine administration over Valkey, shared by the CLI,
the admin API and the dashboard. Keys are shown once: only ``create_key`` ever returns the
full key; Valkey holds a bcrypt hash of its secret, and nothing here reads it back out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import valkey.asyncio as avalkey

from gateway import keys, keyspace, netaddr
from gateway.clock import rfc3339
from gateway.errors import InvalidRequest, KeyLimitReached, NotFound
from gateway.limits import CreditLimiter, parse_reply
from gateway.plans import DEFAULT_MAX_KEYS, account_plan_fields, get_plan
from gateway.store import Scripts
from gateway.wire import usage_body

DAY_MS = 86_400_000
# Counts an operator types (slots, days) stay far inside signed 32 bits.
MAX_COUNT = 1_000_000
MAX_PERIOD_END_MS = 253_402_128_000_000  # 9999-12-30T00:00:00Z
EVENTS_MAXLEN = 100
# Concurrent creations on one account re-read its key set at most this often.
_CREATE_ATTEMPTS = 20

# Cold-path transitions; loaded lazily by EVALSHA's NOSCRIPT fallback, never on a hot path.
_SCRIPTS = Scripts()




def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


def _at(ms: int | None) -> str | None:
    return rfc3339(ms) if ms else None


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key_id: str
    key: str  # the full key: shown to the customer once, never stored


# ---------------------------------------------------------------- accounts


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in email):
        raise InvalidRequest(f"not an email address: {email!r}")
    return email


async def find_account(client: avalkey.Valkey, email: str) -> str | None:
    found = await client.get(keyspace.email_key(normalize_email(email)))
    return str(found) if found is not None else None


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
    client: avalkey.Valkey, email: str, plan_name: str | None, *, now_ms: int
) -> str:
    """A new account on ``plan_name`` for one plan period, or without a plan (None): it can
    hold keys, and every request is refused until an operator assigns one."""
    email = normalize_email(email)
    plan = None
    if plan_name is not None:
        plan = await get_plan(client, plan_name)
        if plan is None:
            raise NotFound(f"no plan named {plan_name!r}")
    now = now_ms
    account_id = secrets.token_hex(8)
    # SET NX on the email index makes concurrent creations of one email safe.
    if not await client.set(keyspace.email_key(email), account_id, nx=True):
        raise InvalidRequest(f"an account for {email} already exists")
    fields = {"email": email, "created_ms": str(now), "extra_ip_slots": "0"}
    if plan is not None:
        end = _period_end(now + plan.period_days * DAY_MS, "period_days")
        fields |= account_plan_fields(plan, end)
    await client.hset(keyspace.AccountKeys(account_id).account, mapping=fields)
    await client.sadd(keyspace.ACCOUNTS, account_id)
    return account_id


async def get_account(client: avalkey.Valkey, account_id: str) -> dict[str, str]:
    """The raw account hash, plus ``id``."""
    raw = await client.hgetall(keyspace.AccountKeys(account_id).account)
    if not raw:
        raise NotFound(f"no account {account_id!r}")
    return {"id": account_id, **dict(raw)}


def subscription(account: Mapping[str, str], now_ms: int) -> str:
    """``active``, ``expired``, ``cancelled`` or ``none``: the same rule admit.lua applies."""
    period_end = _int(account.get("period_end_ms"), -1)
    if not account.get("status") or period_end < 0 or not account.get("plan"):
        return "none"
    if account["status"] != "active":
        return account["status"]
    return "expired" if period_end <= now_ms else "active"


def account_view(account: Mapping[str, str], now_ms: int) -> dict[str, Any]:
    """What operators see of an account: whole credits, typed fields, the live state."""
    has_plan = bool(account.get("plan"))
    period_end = _int(account.get("period_end_ms")) or None
    return {
        "id": account["id"],
        "email": account.get("email"),
        "plan": account.get("plan") or None,
        "subscription": subscription(account, now_ms),
        "period_end_ms": period_end,
        "period_end": _at(period_end),
        "credits_5h": _int(account.get("limit_5h")) // 1000 if has_plan else None,
        "credits_7d": _int(account.get("limit_7d")) // 1000 if has_plan else None,
        "ip_slots": _int(account.get("ip_slots")),
        "extra_ip_slots": _int(account.get("extra_ip_slots")),
        "concurrency": _int(account.get("concurrency")),
        "max_keys": _int(account.get("max_keys"), DEFAULT_MAX_KEYS),
        "shared_flag_ms": _int(account.get("shared_flag_ms")) or None,
        "shared_flag_reason": account.get("shared_flag_reason") or None,
        "created_ms": _int(account.get("created_ms")),
        "created_at": _at(_int(account.get("created_ms"))),
    }


async def show_account(client: avalkey.Valkey, account_id: str, *, now_ms: int) -> dict[str, Any]:
    view = account_view(await get_account(client, account_id), now_ms)
    return {**view, "keys": await list_keys(client, account_id)}


async def list_accounts(client: avalkey.Valkey, *, now_ms: int) -> list[dict[str, Any]]:
    ids = sorted([str(a) async for a in client.sscan_iter(keyspace.ACCOUNTS, count=500)])
    pipe = client.pipeline(transaction=False)
    for account_id in ids:
        pipe.hgetall(keyspace.AccountKeys(account_id).account)
    views = [
        account_view({"id": account_id, **dict(raw)}, now_ms)
        for account_id, raw in zip(ids, await pipe.execute(), strict=True)
        if raw
    ]
    return sorted(views, key=lambda v: v["email"] or "")


async def assign_plan(
    client: avalkey.Valkey,
    account_id: str,
    plan_name: str,
    *,
    now_ms: int,
    period_days: int | None = None,
) -> dict[str, Any]:
    """Puts the account on ``plan_name`` for a fresh period starting now (reactivates it)."""
    plan = await get_plan(client, plan_name)
    if plan is None:
        raise NotFound(f"no plan named {plan_name!r}")
    days = plan.period_days if period_days is None else _positive(period_days, "period_days")
    await get_account(client, account_id)
    ak = keyspace.AccountKeys(account_id)
    end = _period_end(now_ms + days * DAY_MS, "period_days")
    await client.hset(ak.account, mapping=account_plan_fields(plan, end))
    await client.hdel(ak.account, "cancelled_ms")
    return account_view(await get_account(client, account_id), now_ms)


async def extend_plan(
    client: avalkey.Valkey, account_id: str, days: int, *, now_ms: int
) -> dict[str, Any]:
    """Adds ``days`` to the period (counted from now if it already ended); a cancelled
    account becomes active again: an extension is a renewal."""
    days = _positive(days, "days")
    account = await get_account(client, account_id)
    if not account.get("plan"):
        raise InvalidRequest("the account has no plan to extend; assign one first")
    end = _period_end(max(_int(account.get("period_end_ms")), now_ms) + days * DAY_MS, "days")
    ak = keyspace.AccountKeys(account_id)
    await client.hset(ak.account, mapping={"period_end_ms": str(end), "status": "active"})
    await client.hdel(ak.account, "cancelled_ms")
    return account_view(await get_account(client, account_id), now_ms)


async def cancel_plan(client: avalkey.Valkey, account_id: str, *, now_ms: int) -> dict[str, Any]:
    """Ends the subscription now; admit.lua refuses the account's next request."""
    account = await get_account(client, account_id)
    if not account.get("plan"):
        raise InvalidRequest("the account has no plan to cancel")
    ak = keyspace.AccountKeys(account_id)
    await client.hset(ak.account, mapping={"status": "cancelled", "cancelled_ms": str(now_ms)})
    return account_view(await get_account(client, account_id), now_ms)


def _positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_COUNT:
        raise InvalidRequest(f"{name} must be an integer from 1 to {MAX_COUNT}", param=name)
    return value


def _period_end(end_ms: int, name: str) -> int:
    """A period end must stay renderable (datetime stops at year 9999): refused past
    MAX_PERIOD_END_MS, so no listing, CLI view or usage report can fail on it later."""
    if end_ms > MAX_PERIOD_END_MS:
        raise InvalidRequest(
            f"{name}: the period would end after 9999-12-30, which is out of range", param=name
        )
    return end_ms


async def _add_slots(client: avalkey.Valkey, hash_key: str, n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n == 0 or abs(n) > MAX_COUNT:
        raise InvalidRequest(
            f"slots to add must be a non-zero integer within ±{MAX_COUNT}", param="add"
        )
    total = int(await client.hincrby(hash_key, "extra_ip_slots", n))
    if total < 0:
        # Removing more than were bought: undo. Operators are rare enough that the brief
        # negative value in between (one slot fewer for a moment) is harmless.
        await client.hincrby(hash_key, "extra_ip_slots", -n)
        raise InvalidRequest(f"only {total - n} extra slots to remove", param="add")
    return total


async def add_account_ip_slots(client: avalkey.Valkey, account_id: str, n: int) -> int:
    """Extra IP slots for every key of the account (negative ``n`` removes); the new total.
    The addresses refused so far stop counting as leak evidence: the operator settled them."""
    await get_account(client, account_id)
    total = await _add_slots(client, keyspace.AccountKeys(account_id).account, n)
    await _forget_refused(client, account_id, None)
    return total


async def _forget_refused(client: avalkey.Valkey, account_id: str, key_id: str | None) -> None:
    """Clears the unbound addresses refused for one key (or every key of the account)."""
    ak = keyspace.AccountKeys(account_id)
    ids = [key_id] if key_id is not None else [str(k) for k in await client.smembers(ak.keys)]
    if ids:
        await client.delete(*(ak.key_denied(k) for k in ids))


# ---------------------------------------------------------------- keys


def key_id_of(ref: str) -> str:
    """A key id from what an operator pastes: the id, the display prefix ``sk_live_<id>_…``
    or a full key (whose secret is dropped here and never echoed)."""
    text = ref.strip()
    if text.startswith(keys.KEY_PREFIX):
        text = text[len(keys.KEY_PREFIX) :].partition("_")[0]
    if not text.isalnum() or len(text) > 64:
        raise InvalidRequest("not a key id")
    return text


async def find_key(client: avalkey.Valkey, key_ref: str) -> tuple[str, str]:
    """``(account_id, key_id)`` of a key, looked up by its id alone."""
    key_id = key_id_of(key_ref)
    account_id = await client.get(keyspace.key_index(key_id))
    if account_id is None:
        raise NotFound(f"no key {key_id!r}")
    return str(account_id), key_id


async def create_key(
    client: avalkey.Valkey,
    account_id: str,
    name: str,
    *,
    rounds: int,
    now_ms: int,
) -> CreatedKey:
    """A new active key; raises ``KeyLimitReached`` when the account already holds as many
    active keys as its plan allows (revoked keys do not count), ``NotFound`` without an
    account. Two creations racing for the last place: exactly one succeeds."""
    await get_account(client, account_id)
    key_id, secret, full = keys.new_key()
    hashed = await asyncio.to_thread(keys.hash_secret, secret, rounds)
    now = now_ms
    ak = keyspace.AccountKeys(account_id)
    fields = {
        "hash": hashed,
        "name": name or "default",
        "prefix": keys.display_prefix(key_id),
        "created_ms": str(now),
        "last_used_ms": "0",
        "status": "active",
        "extra_ip_slots": "0",
    }
    pairs = [x for pair in fields.items() for x in pair]
    args: list[str | int] = [key_id, DEFAULT_MAX_KEYS, *pairs]
    for _ in range(_CREATE_ATTEMPTS):
        existing = [ak.key(str(k)) for k in await client.smembers(ak.keys)]
        raw = await _SCRIPTS.call(
            client, "create_key", [ak.account, ak.keys, ak.key(key_id), *existing], args
        )
        reply = parse_reply("create_key", raw)
        if reply.outcome == "stale":
            continue
        if reply.outcome == "missing":
            raise NotFound(f"no account {account_id!r}")
        if reply.outcome == "key_limit":
            active, cap = reply.int("active_keys"), reply.int("max_keys")
            raise KeyLimitReached(
                f"The plan allows {cap} active API key{'s' if cap != 1 else ''} and the "
                f"account has {active}; revoke a key you no longer use, or ask your operator "
                "for a plan with more keys."
            )
        await client.set(keyspace.key_index(key_id), account_id)
        return CreatedKey(key_id, full)
    raise InvalidRequest("keys are being created on this account too fast; retry")


def _key_view(
    key_id: str, raw: Mapping[str, str], ips: Mapping[str, str], account: Mapping[str, str]
) -> dict[str, Any]:
    # Built field by field (never from the whole hash), so the bcrypt hash cannot leak out.
    extra = _int(raw.get("extra_ip_slots"))
    return {
        "key_id": key_id,
        "name": raw.get("name", ""),
        "prefix": raw.get("prefix") or keys.display_prefix(key_id),
        "status": raw.get("status", "active"),
        "quarantine_reason": raw.get("quarantine_reason") or None,
        "quarantined_ms": _int(raw.get("quarantined_ms")) or None,
        "created_ms": _int(raw.get("created_ms")),
        "last_used_ms": _int(raw.get("last_used_ms")) or None,
        "bound_ips": sorted(ips),
        "extra_ip_slots": extra,
        "ip_slots": _int(account.get("ip_slots")) + _int(account.get("extra_ip_slots")) + extra,
    }


async def list_keys(client: avalkey.Valkey, account_id: str) -> list[dict[str, Any]]:
    """The account's keys: id, name, prefix, status, times, bound IPs and slots; no secret."""
    ak = keyspace.AccountKeys(account_id)
    key_ids = sorted(str(k) for k in await client.smembers(ak.keys))
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(ak.account)
    for key_id in key_ids:
        pipe.hgetall(ak.key(key_id))
        pipe.hgetall(ak.key_ips(key_id))
    account, *rest = await pipe.execute()
    acct = dict(account)
    return [
        _key_view(key_id, dict(rest[2 * i]), dict(rest[2 * i + 1]), acct)
        for i, key_id in enumerate(key_ids)
        if rest[2 * i]
    ]


async def get_key(client: avalkey.Valkey, account_id: str, key_id: str) -> dict[str, Any]:
    ak = keyspace.AccountKeys(account_id)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(ak.account)
    pipe.hgetall(ak.key(key_id))
    pipe.hgetall(ak.key_ips(key_id))
    account, raw, ips = await pipe.execute()
    if not raw or not await client.sismember(ak.keys, key_id):
        raise NotFound(f"no key {key_id!r} on this account")
    return {
        "account_id": account_id,
        **_key_view(key_id, dict(raw), dict(ips), dict(account)),
    }


async def _event(client: avalkey.Valkey, account_id: str, kind: str, **fields: str) -> None:
    await client.xadd(
        keyspace.AccountKeys(account_id).events,
        {"type": kind, **fields},
        maxlen=EVENTS_MAXLEN,
        approximate=True,
    )


async def revoke_key(
    client: avalkey.Valkey, account_id: str, key_id: str, *, now_ms: int
) -> None:
    """Refused from the next request on, on every worker: admit.lua reads the status on each
    request, and the published id drops the key from every worker's auth cache."""
    ak = keyspace.AccountKeys(account_id)
    if not await client.sismember(ak.keys, key_id):
        raise NotFound(f"no key {key_id!r} on this account")
    now = now_ms
    await client.hset(ak.key(key_id), mapping={"status": "revoked", "revoked_ms": str(now)})
    await client.publish(keyspace.INVALIDATE_CHANNEL, key_id)
    await client.zrem(keyspace.QUARANTINE_INDEX, f"{account_id}:{key_id}")
    await _event(client, account_id, "key_revoked", key_id=key_id, at_ms=str(now))


async def release_key(
    client: avalkey.Valkey, account_id: str, key_id: str, *, now_ms: int
) -> dict[str, Any]:
    """Lifts a quarantine; a key that is not quarantined (active, revoked) is refused."""
    ak = keyspace.AccountKeys(account_id)
    if not await client.sismember(ak.keys, key_id):
        raise NotFound(f"no key {key_id!r} on this account")
    now = now_ms
    raw = await _SCRIPTS.call(
        client,
        "release_key",
        [ak.key(key_id), ak.key_denied(key_id), ak.key_failures(key_id), ak.events],
        [now, key_id, EVENTS_MAXLEN],
    )
    outcome = parse_reply("release_key", raw).text("outcome")
    if outcome == "missing":
        raise NotFound(f"no key {key_id!r} on this account")
    if outcome != "released":
        raise InvalidRequest(f"key {key_id} is {outcome}, not quarantined")
    await client.zrem(keyspace.QUARANTINE_INDEX, f"{account_id}:{key_id}")
    # Workers forget the failures they counted for this key, so its owner is let back in.
    await client.publish(keyspace.INVALIDATE_CHANNEL, key_id)
    return await get_key(client, account_id, key_id)


# ---------------------------------------------------------------- IP bindings


def ip_tag_of(text: str) -> str:
    """The binding tag of an address an operator typed: IPv4 as is, IPv6 by its /64."""
    text = text.strip()
    try:
        if "/" in text:
            net = ipaddress.ip_network(text, strict=False)
            return netaddr.ip_tag(net.network_address) if net.version == 6 else str(net)
        return netaddr.ip_tag(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidRequest(f"not an IP address: {text!r}", param="ip") from None


async def list_ips(client: avalkey.Valkey, account_id: str, key_id: str) -> dict[str, Any]:
    key = await get_key(client, account_id, key_id)
    bound = dict(await client.hgetall(keyspace.AccountKeys(account_id).key_ips(key_id)))
    entries = [
        {"ip": ip, "bound_ms": _int(ms), "bound_at": _at(_int(ms))}
        for ip, ms in sorted(bound.items(), key=lambda kv: (_int(kv[1]), kv[0]))
    ]
    return {
        "key_id": key_id,
        "account_id": account_id,
        "ip_slots": key["ip_slots"],
        "bound": entries,
    }


async def unbind_ips(
    client: avalkey.Valkey,
    account_id: str,
    key_id: str,
    ip: str | None,
    *,
    now_ms: int,
) -> list[str]:
    """Frees one bound IP (``ip``) or all of them (None); the next new IP binds again."""
    await get_key(client, account_id, key_id)
    ips_key = keyspace.AccountKeys(account_id).key_ips(key_id)
    if ip is None:
        removed = sorted(str(t) for t in await client.hkeys(ips_key))
        await client.delete(ips_key)
    else:
        tag = ip.strip() if await client.hexists(ips_key, ip.strip()) else ip_tag_of(ip)
        if not await client.hdel(ips_key, tag):
            raise NotFound(f"{tag} is not bound to key {key_id}")
        removed = [tag]
    # A freed slot settles the addresses refused for want of one.
    await _forget_refused(client, account_id, key_id)
    if removed:
        now = now_ms
        await _event(
            client, account_id, "ip_unbound", key_id=key_id, at_ms=str(now), ips=",".join(removed)
        )
    return removed


async def add_key_ip_slots(client: avalkey.Valkey, account_id: str, key_id: str, n: int) -> int:
    """Extra IP slots for one key (negative ``n`` removes); the key's new extra total. The
    addresses refused so far for it stop counting as leak evidence."""
    await get_key(client, account_id, key_id)
    ak = keyspace.AccountKeys(account_id)
    total = await _add_slots(client, ak.key(key_id), n)
    # The account's sum feeds the key-sharing allowance (admit.lua cannot sum the keys).
    await client.hincrby(ak.account, "keys_extra_ip_slots", n)
    await _forget_refused(client, account_id, key_id)
    return total


# ---------------------------------------------------------------- quarantine and events


# Stream fields that are counts or flags (the rest of the names say so by their suffix).
_INT_FIELDS = frozenset({"status", "stream", "disconnected", "cache_write_5m", "cache_write_1h"})


def _entry(entry_id: Any, fields: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": str(entry_id), **dict(fields)}
    for name in list(out):
        if name.endswith(("_ms", "_tokens", "_mc")) or name in _INT_FIELDS:
            out[name] = _int(out[name])
    if "at_ms" in out:
        out["at"] = _at(out["at_ms"])
    if "ips" in out:
        out["ips"] = [ip for ip in str(out["ips"]).split(",") if ip]
    return out


async def account_events(
    client: avalkey.Valkey, account_id: str, count: int = 50
) -> list[dict[str, Any]]:
    """Security events, newest first: quarantines, releases, revocations, unbindings."""
    await get_account(client, account_id)
    rows = await client.xrevrange(keyspace.AccountKeys(account_id).events, count=count)
    return [_entry(entry_id, fields) for entry_id, fields in rows]


async def list_quarantined(
    client: avalkey.Valkey, account_id: str | None = None
) -> list[dict[str, Any]]:
    """Keys in quarantine, newest first: from the global index, or one account's keys."""
    if account_id is not None:
        listed = await list_keys(client, account_id)
        email = (await get_account(client, account_id)).get("email")
        found = [
            {"account_id": account_id, "email": email, **k}
            for k in listed
            if k["status"] == "quarantined"
        ]
        return sorted(found, key=lambda k: -(k["quarantined_ms"] or 0))
    out = []
    for member, _score in await client.zrevrange(keyspace.QUARANTINE_INDEX, 0, -1, withscores=True):
        owner, _, key_id = str(member).partition(":")
        try:
            key = await get_key(client, owner, key_id)
        except NotFound:
            key = {"status": "missing"}
        if key["status"] != "quarantined":
            # Released or revoked since, or deleted: the index is only a pointer.
            await client.zrem(keyspace.QUARANTINE_INDEX, str(member))
            continue
        email = await client.hget(keyspace.AccountKeys(owner).account, "email")
        out.append({**key, "email": str(email) if email is not None else None})
    return out


async def list_flagged(client: avalkey.Valkey) -> list[dict[str, Any]]:
    """Accounts flagged for key sharing (too many distinct networks within a day), newest
    first. A flag never blocks anything: the operator decides. A scan of the account set:
    an operator listing, not a request path."""
    ids = sorted([str(a) async for a in client.sscan_iter(keyspace.ACCOUNTS, count=500)])
    pipe = client.pipeline(transaction=False)
    for account_id in ids:
        fields = ("email", "shared_flag_ms", "shared_flag_reason")
        pipe.hmget(keyspace.AccountKeys(account_id).account, *fields)
    found = []
    for account_id, (email, flag_ms, reason) in zip(ids, await pipe.execute(), strict=True):
        if flag_ms is None:
            continue
        at = _int(str(flag_ms))
        found.append(
            {
                "account_id": account_id,
                "email": str(email) if email is not None else None,
                "flagged_ms": at,
                "flagged_at": _at(at),
                "reason": str(reason) if reason is not None else "",
            }
        )
    return sorted(found, key=lambda f: -f["flagged_ms"])


async def clear_flag(
    client: avalkey.Valkey, account_id: str, *, now_ms: int
) -> dict[str, Any]:
    """The operator looked at a key-sharing flag: it goes, and so do the networks counted so
    far, or the next new network would raise it again."""
    account = await get_account(client, account_id)
    if not account.get("shared_flag_ms"):
        raise InvalidRequest("the account is not flagged")
    ak = keyspace.AccountKeys(account_id)
    await client.hdel(ak.account, "shared_flag_ms", "shared_flag_reason")
    await client.delete(ak.networks)
    now = now_ms
    await _event(client, account_id, "flag_cleared", at_ms=str(now))
    return account_view(await get_account(client, account_id), now)


async def clear_reservations(client: avalkey.Valkey, account_id: str) -> int:
    """Drops every reservation the account holds (requests in flight stop counting against
    its windows and concurrency cap); returns how many there were. Raises NotFound.

    Their requests are still billed when they end: settlement does not need the reservation.
    """
    await get_account(client, account_id)
    ak = keyspace.AccountKeys(account_id)
    async with client.pipeline(transaction=True) as pipe:
        pipe.zcard(ak.inflight)
        pipe.delete(ak.inflight, ak.reserved)
        held, _ = await pipe.execute()
    return int(held)


# ---------------------------------------------------------------- usage


async def recent_requests(
    client: avalkey.Valkey, account_id: str, count: int = 20
) -> list[dict[str, Any]]:
    """The account's request log, newest first: usage metadata only."""
    rows = await client.xrevrange(keyspace.AccountKeys(account_id).log, count=count)
    out = []
    for entry_id, fields in rows:
        entry = _entry(entry_id, fields)
        if "at_ms" not in entry:  # written by the gateway's clock; the entry id is Valkey's
            entry["at_ms"] = _int(entry["id"].partition("-")[0])
            entry["at"] = _at(entry["at_ms"])
        out.append(entry)
    return out


async def usage_report(
    client: avalkey.Valkey, limiter: CreditLimiter, account_id: str, *, requests: int = 20
) -> dict[str, Any]:
    """The customer's view (percentages, reset times) plus the operator's: credits used."""
    account = await get_account(client, account_id)
    view = await limiter.usage(account_id)
    period_end = _int(account.get("period_end_ms")) or None
    return {
        "account_id": account_id,
        "email": account.get("email"),
        "usage": usage_body(view, account.get("plan") or None, period_end),
        "credits": {
            "five_hour": {
                "used": view.five_hour.used_mc / 1000,
                "limit": view.five_hour.limit_mc // 1000,
            },
            "seven_day": {
                "used": view.seven_day.used_mc / 1000,
                "limit": view.seven_day.limit_mc // 1000,
            },
            "reserved": view.five_hour.reserved_mc / 1000,
        },
        "recent_requests": await recent_requests(client, account_id, requests),
    }

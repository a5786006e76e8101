"""``antex export`` / ``antex import``: the store as JSON lines, one typed record per line.

Records, in this order: ``plan``, ``admin_token``, then per account (by id) ``account``,
``key`` (bcrypt hash only), ``bindings``, ``window``, ``hourly``, ``request_log``,
``events``; then ``quarantine``, ``deletion_request``, ``deletion_done``, ``audit``.
Each account's records are read in one MULTI under WATCH of its key set, so an account is
never half-exported. Transient state is left out: in-flight reservations, brute-force and
refused-IP counters, dashboard sessions, sign-in links and the CSRF secret (customers sign
in again). Export then import then export gives byte-identical output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
import valkey.asyncio as avalkey
from valkey.exceptions import WatchError

from gateway import audit, keyspace, upstream_store
from gateway.errors import InvalidRequest

FORMAT = "antex-snapshot"
VERSION = 1
_WINDOWS = {"5h": "window_5h_amounts", "7d": "window_7d_amounts"}




def line(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n"


async def _account_records(client: avalkey.Valkey, account_id: str) -> list[dict[str, Any]]:
    ak = keyspace.AccountKeys(account_id)
    while True:
        try:
            async with client.pipeline(transaction=True) as pipe:
                await pipe.watch(ak.keys)
                key_ids = sorted(str(k) for k in await pipe.smembers(ak.keys))
                pipe.multi()
                pipe.hgetall(ak.account)
                for name in _WINDOWS.values():
                    pipe.hgetall(getattr(ak, name))
                pipe.hgetall(ak.daily)
                pipe.xrange(ak.log)
                pipe.xrange(ak.events)
                for key_id in key_ids:
                    pipe.hgetall(ak.key(key_id))
                    pipe.hgetall(ak.key_ips(key_id))
                replies = await pipe.execute()
            break
        except WatchError:
            continue  # a key was created or deleted meanwhile: read again
    account, w5, w7, daily, log, events, *per_key = replies
    if not account:
        return []  # deleted between listing and reading
    out: list[dict[str, Any]] = [{"type": "account", "id": account_id, "fields": dict(account)}]
    for i, key_id in enumerate(key_ids):
        fields, ips = per_key[2 * i], per_key[2 * i + 1]
        if fields:
            out.append(
                {"type": "key", "account_id": account_id, "key_id": key_id, "fields": dict(fields)}
            )
        if ips:
            out.append(
                {"type": "bindings", "account_id": account_id, "key_id": key_id, "ips": dict(ips)}
            )
    for window, amounts in zip(_WINDOWS, (w5, w7), strict=True):
        if amounts:
            out.append(
                {"type": "window", "account_id": account_id, "window": window,
                 "buckets": dict(amounts)}
            )  # fmt: skip
    if daily:
        out.append({"type": "hourly", "account_id": account_id, "fields": dict(daily)})
    for kind, stream in (("request_log", log), ("events", events)):
        if stream:
            entries = [[str(entry_id), dict(fields)] for entry_id, fields in stream]
            out.append({"type": kind, "account_id": account_id, "entries": entries})
    return out


async def export(client: avalkey.Valkey) -> AsyncIterator[bytes]:
    """The snapshot, line by line."""
    yield line({"type": "snapshot", "format": FORMAT, "version": VERSION})
    plans = dict(await client.hgetall(keyspace.PLANS))
    for name in sorted(plans):
        yield line({"type": "plan", "name": name, "plan": orjson.loads(plans[name])})
    # The pool: each upstream's configuration with its key still sealed (restoring it
    # needs the same master key: ANTEX_SECRET_KEY or the data dir's secret.key).
    members = {str(i) for i in await client.smembers(upstream_store.IDS)}
    for upstream_id in sorted(members | {upstream_store.ENV_ID}):
        fields = dict(await client.hgetall(upstream_store.record_key(upstream_id)))
        if fields:
            yield line({"type": "upstream", "id": upstream_id, "pooled":
                        upstream_id in members, "fields": fields})  # fmt: skip
    tokens = dict(await client.hgetall(keyspace.ADMIN_TOKENS))
    for digest in sorted(tokens):
        yield line(
            {"type": "admin_token", "digest": digest, "meta": orjson.loads(tokens[digest])}
        )
    ids = sorted({str(a) async for a in client.sscan_iter(keyspace.ACCOUNTS, count=1000)})
    for account_id in ids:
        for record in await _account_records(client, account_id):
            yield line(record)
    for kind, zset, field in (
        ("quarantine", keyspace.QUARANTINE_INDEX, "member"),
        ("deletion_request", keyspace.DELETION_REQUESTS, "account_id"),
    ):
        for member, score in await client.zrange(zset, 0, -1, withscores=True):
            yield line({"type": kind, field: str(member), "at_ms": int(score)})
    done = dict(await client.hgetall(keyspace.DELETIONS_DONE))
    for digest in sorted(done):
        yield line(
            {
                "type": "deletion_done",
                "email_sha256": digest,
                "record": orjson.loads(done[digest]),
            }
        )
    for member, at_ms in await audit.all_entries(client):
        yield line({"type": "audit", "entry": member, "at_ms": at_ms})


def _dump(value: Any) -> str:
    return orjson.dumps(value).decode()


async def restore(client: avalkey.Valkey, lines: Iterable[bytes]) -> dict[str, int]:
    """Writes a snapshot into an empty store; returns the count of records by type.

    Raises ``InvalidRequest`` when the store holds any key, or a line is not a record."""
    existing = int(await client.dbsize())
    if existing:
        raise InvalidRequest(
            f"the store is not empty ({existing} keys); import only restores into an empty one"
        )
    counts: dict[str, int] = {}
    audit_entries: list[tuple[str, int]] = []
    pipe = client.pipeline(transaction=False)
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = orjson.loads(raw)
            kind = record["type"]
            if kind == "audit":
                audit_entries.append((record["entry"], int(record["at_ms"])))
            else:
                _write(pipe, kind, record)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InvalidRequest(f"line {number}: not a snapshot record ({exc})") from None
        counts[kind] = counts.get(kind, 0) + 1
        if len(pipe) >= 1000:
            await pipe.execute()
    await pipe.execute()
    await audit.restore(client, audit_entries)
    return counts


def _write(pipe: Any, kind: str, r: dict[str, Any]) -> None:
    if kind == "snapshot":
        if r["format"] != FORMAT or r["version"] != VERSION:
            raise ValueError(f"unsupported snapshot {r['format']} v{r['version']}")
        return
    ak = keyspace.AccountKeys(r.get("account_id") or r.get("id") or "-")
    if kind == "plan":
        pipe.hset(keyspace.PLANS, r["name"], _dump(r["plan"]))
    elif kind == "upstream":
        pipe.hset(upstream_store.record_key(r["id"]), mapping=r["fields"])
        if r["pooled"]:
            pipe.sadd(upstream_store.IDS, r["id"])
    elif kind == "admin_token":
        pipe.hset(keyspace.ADMIN_TOKENS, r["digest"], _dump(r["meta"]))
    elif kind == "account":
        pipe.hset(ak.account, mapping=r["fields"])
        pipe.sadd(keyspace.ACCOUNTS, r["id"])
        if r["fields"].get("email"):
            pipe.set(keyspace.email_key(r["fields"]["email"]), r["id"])
    elif kind == "key":
        pipe.hset(ak.key(r["key_id"]), mapping=r["fields"])
        pipe.sadd(ak.keys, r["key_id"])
        pipe.set(keyspace.key_index(r["key_id"]), r["account_id"])
    elif kind == "bindings":
        pipe.hset(ak.key_ips(r["key_id"]), mapping=r["ips"])
    elif kind == "window":
        pipe.hset(getattr(ak, _WINDOWS[r["window"]]), mapping=r["buckets"])
    elif kind == "hourly":
        pipe.hset(ak.daily, mapping=r["fields"])
    elif kind in ("request_log", "events"):
        stream = ak.log if kind == "request_log" else ak.events
        for entry_id, fields in r["entries"]:
            pipe.xadd(stream, fields, id=entry_id)
    elif kind == "quarantine":
        pipe.zadd(keyspace.QUARANTINE_INDEX, {r["member"]: r["at_ms"]})
    elif kind == "deletion_request":
        pipe.zadd(keyspace.DELETION_REQUESTS, {r["account_id"]: r["at_ms"]})
    elif kind == "deletion_done":
        pipe.hset(keyspace.DELETIONS_DONE, r["email_sha256"], _dump(r["record"]))
    else:
        raise ValueError(f"unknown record type {kind!r}")

"""The operator audit trail: who changed what, when, and the changed fields before and after.

Entries live in one sorted set (score: the gateway clock's ms, member: the entry as JSON),
trimmed to ``ANTEX_AUDIT_RETENTION_DAYS`` on every write. A sorted set rather than a stream
because the injectable clock may move backwards in tests and stream ids cannot. Entries
never hold a secret: callers pass views (no bcrypt hash, no key, no token).
"""

from __future__ import annotations

import hashlib
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import keyspace
from gateway.clock import rfc3339
from gateway.store import Client

AUDIT = f"{keyspace.PREFIX}:audit"  # zset: entry JSON -> at ms
DAY_MS = 86_400_000
MAX_ENTRIES = 1_000_000  # a hard cap under the retention period, against runaway scripts
_SCAN_BATCH = 500


def cli_actor() -> str:
    return f"cli@{socket.gethostname()}"


def email_digest(email: str) -> str:
    """What remains of a deleted account's email: enough to answer "was X deleted?"."""
    return "sha256:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()


def changes(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{field: [before, after]}`` for every field whose value differs."""
    old, new = before or {}, after or {}
    return {
        name: [old.get(name), new.get(name)]
        for name in sorted(set(old) | set(new))
        if old.get(name) != new.get(name)
    }


@dataclass(frozen=True, slots=True)
class Trail:
    """Writes entries for one actor; ``retention_days`` bounds how long they are kept."""

    client: Client
    actor: str
    retention_days: int = 400

    async def record(
        self,
        action: str,
        now_ms: int,
        *,
        target: Mapping[str, str | None],
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The one writer of audit entries; returns the entry written."""
        entry = {
            "id": secrets.token_hex(6),
            "at_ms": now_ms,
            "actor": self.actor,
            "action": action,
            "target": {k: v for k, v in target.items() if v is not None},
            "changes": changes(before, after),
        }
        horizon = now_ms - self.retention_days * DAY_MS
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(AUDIT, {_dump(entry): now_ms})
        pipe.zremrangebyscore(AUDIT, "-inf", f"({horizon}")
        pipe.zremrangebyrank(AUDIT, 0, -MAX_ENTRIES - 1)
        await pipe.execute()
        return entry


def _dump(entry: Mapping[str, Any]) -> str:
    return orjson.dumps(entry, option=orjson.OPT_SORT_KEYS).decode()


def _view(raw: Any) -> dict[str, Any]:
    entry = dict(orjson.loads(raw))
    entry["at"] = rfc3339(int(entry["at_ms"]))
    return entry


async def query(
    client: Client,
    *,
    actor: str | None = None,
    action: str | None = None,
    since_ms: int | None = None,
    account: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int | None]:
    """Entries newest first matching every filter given (``action`` matches a prefix, so
    ``key`` finds every key action); returns ``(page, next_offset or None)``."""
    wanted, skipped = offset, 0
    page: list[dict[str, Any]] = []
    start = 0
    low = "-inf" if since_ms is None else str(since_ms)
    while True:
        raw = await client.zrevrangebyscore(AUDIT, "+inf", low, start=start, num=_SCAN_BATCH)
        for member in raw:
            entry = _view(member)
            if actor is not None and entry["actor"] != actor:
                continue
            if action is not None and not (
                entry["action"] == action or entry["action"].startswith(action + ".")
            ):
                continue
            if account is not None and entry["target"].get("account") != account:
                continue
            if skipped < wanted:
                skipped += 1
                continue
            if len(page) == limit:
                return page, offset + limit
            page.append(entry)
        if len(raw) < _SCAN_BATCH:
            return page, None
        start += _SCAN_BATCH


async def all_entries(client: Client) -> list[tuple[str, int]]:
    """Every entry as stored, oldest first: ``(member JSON, at ms)`` (for export)."""
    raw = await client.zrange(AUDIT, 0, -1, withscores=True)
    out = [(str(m), int(s)) for m, s in raw]
    return sorted(out, key=lambda e: (e[1], e[0]))


async def restore(client: Client, entries: list[tuple[str, int]]) -> None:
    if entries:
        await client.zadd(AUDIT, dict(entries))


def _redact(value: Any, names: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for name, replacement in names.items():
            value = value.replace(name, replacement)
        return value
    if isinstance(value, list):
        return [_redact(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _redact(v, names) for k, v in value.items()}
    return value


async def redact_account(client: Client, account_id: str, email: str, key_ids: list[str]) -> int:
    """Rewrites the entries about a deleted account so that none names it: its id, email and
    key ids become the email's digest. Returns the number of entries rewritten."""
    digest = email_digest(email)
    names = {account_id: digest, email: digest, **{k: f"{digest}:key" for k in key_ids}}
    needles = tuple(names)
    rewritten = 0
    raw = await client.zrange(AUDIT, 0, -1, withscores=True)
    pipe = client.pipeline(transaction=True)
    for member, score in raw:
        text = str(member)
        if not any(n in text for n in needles):
            continue
        pipe.zrem(AUDIT, text)
        pipe.zadd(AUDIT, {_dump(_redact(orjson.loads(text), names)): score})
        rewritten += 1
    if rewritten:
        await pipe.execute()
    return rewritten

"""Account deletion as the Privacy Policy promises it: customers' requests listed with their
age, and an erasure that removes everything of the account across the whole keyspace.

What remains afterwards is the email's SHA-256 (in the request's "done" record and the
audit trail), so an operator can answer "was X deleted, and when?" without keeping X.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import orjson
from valkey.exceptions import ValkeyError

from gateway import accounts, audit, keyspace
from gateway.clock import rfc3339
from gateway.dashboard.sessions import SESSION_PREFIX
from gateway.dashboard.signin import LINK_PREFIX, RATE_PREFIX
from gateway.store import Client

log = logging.getLogger("antex.erasure")

DAY_MS = 86_400_000
OVERDUE_AFTER_MS = 7 * DAY_MS  # the Privacy Policy's promise
_SCAN = 1000



async def list_requests(client: Client, now_ms: int) -> list[dict[str, Any]]:
    """Open deletion requests, oldest first: account id, email, age in days, overdue flag."""
    raw = await client.zrange(keyspace.DELETION_REQUESTS, 0, -1, withscores=True)
    pipe = client.pipeline(transaction=False)
    for member, _ in raw:
        pipe.hget(keyspace.AccountKeys(str(member)).account, "email")
    emails = await pipe.execute() if raw else []
    out = []
    for (member, score), email in zip(raw, emails, strict=True):
        asked = int(score)
        out.append(
            {
                "account_id": str(member),
                "email": str(email) if email is not None else None,
                "requested_ms": asked,
                "requested_at": rfc3339(asked),
                "age_days": round((now_ms - asked) / DAY_MS, 1),
                "overdue": now_ms - asked > OVERDUE_AFTER_MS,
            }
        )
    return out


async def _scan(client: Client, pattern: str) -> list[str]:
    return [str(k) async for k in client.scan_iter(match=pattern, count=_SCAN)]


async def _rewrite_persistence(client: Client) -> None:
    """Valkey's append-only file and snapshot still hold what was just deleted until they
    are rewritten: ask for both now, so the erasure reaches the disk too. A managed Valkey
    may refuse (or already be rewriting); the data is gone from memory either way."""
    for command in (("BGREWRITEAOF",), ("BGSAVE", "SCHEDULE")):
        try:
            await client.execute_command(*command)
        except (OSError, ValkeyError) as exc:  # a refusal must not undo a finished erasure
            log.warning("erasure: %s not run: %s", command[0], type(exc).__name__)


async def erase_account(client: Client, account_id: str, now_ms: int) -> dict[str, Any]:
    """Deletes the account's keys, IP bindings, usage windows and records, events, sessions
    and sign-in links and tokens, its index entries, and rewrites its audit entries to name
    only the email's digest. Marks its deletion request (if any) done.

    Returns ``{"email_sha256", "keys_deleted", "valkey_keys_deleted", "requested_ms"}``.
    Raises ``NotFound`` for an unknown account."""
    account = await accounts.get_account(client, account_id)
    email = account.get("email", "")
    ak = keyspace.AccountKeys(account_id)
    key_ids = {str(k) for k in await client.smembers(ak.keys)}
    # Every key of the account shares its tag, whatever future code adds under it.
    tagged = await _scan(client, f"{keyspace.PREFIX}:{{a:{account_id}}}:*")
    key_ids |= {name.rsplit(":", 1)[1] for name in tagged if name.startswith(ak.key(""))}
    doomed = set(tagged)
    doomed |= {keyspace.key_index(k) for k in key_ids}
    doomed.add(keyspace.email_key(email))
    doomed.add(f"{RATE_PREFIX}email:{hashlib.sha256(email.encode()).hexdigest()}")
    # Sessions and sign-in links are keyed by token digests: find them by their contents.
    for name in await _scan(client, SESSION_PREFIX + "*"):
        owner = await client.hget(name, "account")
        if owner is not None and str(owner) == account_id:
            doomed.add(name)
    for name in await _scan(client, LINK_PREFIX + "*"):
        value = await client.get(name)
        if value is not None and str(value).partition(" ")[0] == account_id:
            doomed.add(name)
    requested = await client.zscore(keyspace.DELETION_REQUESTS, account_id)
    quarantined = [
        str(m)
        for m in await client.zrange(keyspace.QUARANTINE_INDEX, 0, -1)
        if str(m).startswith(account_id + ":")
    ]
    pipe = client.pipeline(transaction=False)
    for name in sorted(doomed):
        pipe.delete(name)
    pipe.srem(keyspace.ACCOUNTS, account_id)
    pipe.zrem(keyspace.DELETION_REQUESTS, account_id)
    if quarantined:
        pipe.zrem(keyspace.QUARANTINE_INDEX, *quarantined)
    digest = audit.email_digest(email)
    done = {"requested_ms": int(requested) if requested is not None else None,
            "done_ms": now_ms}  # fmt: skip
    pipe.hset(keyspace.DELETIONS_DONE, digest, orjson.dumps(done))
    deleted = await pipe.execute()
    # Workers drop the keys from their auth caches at once.
    for key_id in sorted(key_ids):
        await client.publish(keyspace.INVALIDATE_CHANNEL, key_id)
    await audit.redact_account(client, account_id, email, sorted(key_ids))
    await _rewrite_persistence(client)
    return {
        "email_sha256": digest,
        "keys_deleted": len(key_ids),
        "valkey_keys_deleted": sum(int(n) for n in deleted[: len(doomed)]),
        "requested_ms": done["requested_ms"],
    }

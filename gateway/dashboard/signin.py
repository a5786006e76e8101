"""One-time sign-in links and the rate limits on asking for them.

A link carries a random token; Valkey keeps only its SHA-256 with the account id and an
expiry 15 minutes out (judged by the injectable clock), and redeeming deletes it in the
same command, so a link works once. Requests are counted per email (hashed) and per client
address whether or not the email has an account, so the answer reveals nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from gateway import keyspace

LINK_PREFIX = f"{keyspace.PREFIX}:dash:link:"  # + sha256(token) -> "<account id> <expires ms>"
RATE_PREFIX = f"{keyspace.PREFIX}:dash:signin:"  # + "email:<sha256>" | "ip:<ip tag>" -> count
LINK_TTL_MS = 15 * 60_000
# Valkey's own expiry only collects garbage; the stored expiry decides, so it may lag.
_LINK_GC_MS = LINK_TTL_MS + 3_600_000
LINK_PATH = "/dashboard/signin/link"


@dataclass(frozen=True, slots=True)
class SigninLimits:
    per_email: int = 5
    email_period_ms: int = 15 * 60_000
    per_ip: int = 30
    ip_period_ms: int = 3_600_000


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()



def link_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}{LINK_PATH}?token={quote(token)}"


async def issue_link(client: Any, account_id: str, base_url: str, now_ms: int) -> str:
    """Stores a new single-use link for ``account_id`` and returns its URL (never logged)."""
    token = secrets.token_urlsafe(32)
    await client.set(
        LINK_PREFIX + _digest(token), f"{account_id} {now_ms + LINK_TTL_MS}", px=_LINK_GC_MS
    )
    return link_url(base_url, token)


def _valid(raw: Any, now_ms: int) -> str | None:
    if raw is None:
        return None
    account_id, _, expires = str(raw).partition(" ")
    if not expires.isdigit() or int(expires) <= now_ms:
        return None
    return account_id


def plausible(token: str | None) -> bool:
    return bool(token) and len(token or "") <= 100


async def peek(client: Any, token: str, now_ms: int) -> str | None:
    """The account a link would sign in to, without using it up (mail scanners fetch
    links; only the confirming POST redeems)."""
    raw = await client.get(LINK_PREFIX + _digest(token))
    return _valid(raw, now_ms)


async def redeem(client: Any, token: str, now_ms: int) -> str | None:
    """Uses the link up whatever its state: an expired link is deleted as well."""
    raw = await client.getdel(LINK_PREFIX + _digest(token))
    return _valid(raw, now_ms)


async def over_limit(client: Any, email: str, ip_tag: str, limits: SigninLimits) -> int | None:
    """Counts one sign-in request; returns the seconds to wait when over a limit."""
    email_key = f"{RATE_PREFIX}email:{_digest(email)}"
    ip_key = f"{RATE_PREFIX}ip:{ip_tag}"
    pipe = client.pipeline(transaction=True)
    pipe.incr(email_key)
    pipe.pexpire(email_key, limits.email_period_ms, nx=True)
    pipe.pttl(email_key)
    pipe.incr(ip_key)
    pipe.pexpire(ip_key, limits.ip_period_ms, nx=True)
    pipe.pttl(ip_key)
    email_n, _, email_ttl, ip_n, _, ip_ttl = await pipe.execute()
    waits = []
    if int(email_n) > limits.per_email:
        waits.append(int(email_ttl))
    if int(ip_n) > limits.per_ip:
        waits.append(int(ip_ttl))
    if not waits:
        return None
    return max(1, (max(waits) + 999) // 1000)

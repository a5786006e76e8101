"""Operator tokens for the admin API: printed once at creation, stored as SHA-256 digests.

A token carries 256 random bits, so a fast unsalted digest is as safe as bcrypt here and
costs nothing per admin request.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import orjson
import valkey.asyncio as avalkey

from gateway import keyspace
from gateway.errors import InvalidRequest, NotFound

TOKEN_PREFIX = "antex_op_"
# "full" may change state; "read" may only read (GET). Tokens from before scopes are full.
SCOPES = ("full", "read")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_id(token_digest: str) -> str:
    """A short public handle for listing and revoking, derived from the digest."""
    return token_digest[:12]


async def create_token(
    client: avalkey.Valkey, name: str, *, now_ms: int, scope: str = "full"
) -> tuple[str, str]:
    """``(token_id, token)``; the token itself is never stored and cannot be shown again.
    ``scope`` is one of ``SCOPES``."""
    if scope not in SCOPES:
        raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}", param="scope")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    d = digest(token)
    meta = {"name": name or "operator", "created_ms": now_ms, "scope": scope}
    await client.hset(keyspace.ADMIN_TOKENS, d, orjson.dumps(meta))
    return token_id(d), token


async def check_token(client: avalkey.Valkey, token: str) -> dict[str, Any] | None:
    """The token's metadata, or None when it is unknown or revoked."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        return None
    raw = await client.hget(keyspace.ADMIN_TOKENS, digest(token))
    return None if raw is None else {"scope": "full", **orjson.loads(raw)}


async def list_tokens(client: avalkey.Valkey) -> list[dict[str, Any]]:
    raw = await client.hgetall(keyspace.ADMIN_TOKENS)
    out = []
    for d, meta in raw.items():
        text = str(d)
        out.append({"token_id": token_id(text), "scope": "full", **orjson.loads(meta)})
    return sorted(out, key=lambda t: t["created_ms"])


async def revoke_token(client: avalkey.Valkey, tid: str) -> dict[str, Any]:
    """Removes the token; returns its metadata (name, scope, created_ms)."""
    raw = await client.hgetall(keyspace.ADMIN_TOKENS)
    for d, meta in raw.items():
        text = str(d)
        if token_id(text) == tid:
            await client.hdel(keyspace.ADMIN_TOKENS, text)
            return {"scope": "full", **orjson.loads(meta)}
    raise NotFound(f"no operator token {tid!r}")

"""Per-session CSRF tokens: an HMAC of the session cookie under a deployment-wide secret.

The token changes whenever the session id does (sign-in rotates it), needs no storage per
session, and cannot be computed by a site that can plant a cookie but not read Valkey.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from gateway import keyspace

# Global, untagged: one random secret shared by every worker and node.
SECRET_KEY = f"{keyspace.PREFIX}:dash:csrf_secret"
FIELD = "csrf"


class Csrf:
    def __init__(self, client: Any) -> None:
        self._client = client
        self._secret: bytes | None = None

    async def _key(self) -> bytes:
        if self._secret is None:
            mine = secrets.token_hex(32)
            # SET NX GET: the first worker wins and every other one reads its value.
            found = await self._client.set(SECRET_KEY, mine, nx=True, get=True)
            raw = mine if found is None else found
            self._secret = str(raw).encode()
        return self._secret

    async def token(self, session_token: str) -> str:
        key = await self._key()
        return hmac.new(key, b"csrf|" + session_token.encode(), hashlib.sha256).hexdigest()

    async def check(self, session_token: str | None, presented: str | None) -> bool:
        if not session_token or not presented:
            return False
        return hmac.compare_digest(await self.token(session_token), presented)

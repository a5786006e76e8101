"""API key format, generation, parsing and bcrypt hashing.

A key is ``sk_live_<key id>_<secret>``. The key id finds the record without bcrypt; only a
bcrypt hash of the secret is ever stored, and the full key is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass

import bcrypt

KEY_PREFIX = "sk_live_"
_ID_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits
_ID_LEN = 12
_SECRET_LEN = 40  # ~238 bits; well under bcrypt's 72-byte limit


@dataclass(frozen=True, slots=True)
class ParsedKey:
    key_id: str
    secret: str


def new_key() -> tuple[str, str, str]:
    """A fresh ``(key_id, secret, full_key)``."""
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LEN))
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(_SECRET_LEN))
    return key_id, secret, f"{KEY_PREFIX}{key_id}_{secret}"


def parse_key(presented: str) -> ParsedKey | None:
    """The parts of a well-formed key, or None; never raises on garbage input."""
    if not presented.startswith(KEY_PREFIX) or len(presented) > 128:
        return None
    key_id, sep, secret = presented[len(KEY_PREFIX) :].partition("_")
    if not sep or len(key_id) != _ID_LEN or not secret or len(secret.encode()) > 72:
        return None
    if not key_id.isalnum() or not secret.isalnum():
        return None
    return ParsedKey(key_id, secret)


def display_prefix(key_id: str) -> str:
    """What the dashboard and CLI show in place of a key."""
    return f"{KEY_PREFIX}{key_id}_…"


def hash_secret(secret: str, rounds: int) -> str:
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds)).decode()


def check_secret(secret: str, hashed: str) -> bool:
    """CPU-bound (tens of ms): call it off the event loop."""
    try:
        return bcrypt.checkpw(secret.encode(), hashed.encode())
    except ValueError:
        return False


def cache_digest(presented: str) -> bytes:
    """In-memory cache key for a presented key, so the cache never holds the key itself."""
    return hashlib.blake2b(presented.encode(), digest_size=20).digest()

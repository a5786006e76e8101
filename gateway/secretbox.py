"""Upstream API keys at rest: AES-256-GCM under the operator's master key.

The master key comes from ``ANTEX_SECRET_KEY`` (32 bytes, URL-safe base64), else from
``<data dir>/secret.key``, created with 0600 permissions on first use. Every node of one
deployment needs the same master key: set ``ANTEX_SECRET_KEY`` when nodes share a Valkey.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import ConfigError

SECRET_ENV = "ANTEX_SECRET_KEY"
KEY_FILE = "secret.key"
_NONCE = 12


def _decode(text: str, where: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.strip().encode() + b"==")
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: not URL-safe base64") from None
    if len(raw) != 32:
        raise ConfigError(f"{where}: must decode to 32 bytes, got {len(raw)}")
    return raw


def new_master_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def load_master_key(env_value: str | None, data_dir: Path) -> bytes:
    """The 32-byte master key; creates the key file (0600) when neither source exists.

    Raises ConfigError for a malformed key, or for a key file others may read.
    """
    if env_value:
        return _decode(env_value, SECRET_ENV)
    path = data_dir / KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting at once agree on the first one's key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as out:
            out.write(new_master_key() + "\n")
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path}: permissions must be 0600 (chmod 600 {path})")
    text = path.read_text().strip()
    if not text:
        raise ConfigError(f"{path}: empty key file")
    return _decode(text, str(path))


def fingerprint(secret: str) -> str:
    """A short, non-reversible name for a key: what lists and logs show instead of it."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


class SecretBox:
    """Encrypts and decrypts short secrets; ``context`` binds a ciphertext to its record."""

    def __init__(self, master_key: bytes) -> None:
        self._aead = AESGCM(master_key)

    def seal(self, secret: str, context: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, secret.encode(), context.encode())
        return base64.b64encode(nonce + sealed).decode()

    def open(self, token: str, context: str) -> str:
        """The secret; ConfigError when the master key is not the one that sealed it."""
        try:
            raw = base64.b64decode(token)
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], context.encode()).decode()
        except (InvalidTag, binascii.Error, ValueError):
            raise ConfigError(
                "an upstream key cannot be decrypted: the master key differs from the one "
                f"that stored it (check {SECRET_ENV} / {KEY_FILE})"
            ) from None

"""Upstream keys at rest: sealed under the master key, bound to their record, key file 0600."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.secretbox import KEY_FILE, SecretBox, fingerprint, load_master_key, new_master_key


def test_a_sealed_key_opens_only_with_its_master_key_and_record(tmp_path: Path) -> None:
    box = SecretBox(load_master_key(None, tmp_path))
    token = box.seal("sk-ant-canary-123", "up_1")
    assert "canary" not in token
    assert box.open(token, "up_1") == "sk-ant-canary-123"
    with pytest.raises(ConfigError) as wrong_record:
        box.open(token, "up_2")  # a ciphertext copied onto another record
    assert "canary" not in wrong_record.value.message
    other = SecretBox(load_master_key(new_master_key(), tmp_path))
    with pytest.raises(ConfigError):
        other.open(token, "up_1")


def test_the_key_file_is_created_once_with_0600(tmp_path: Path) -> None:
    first = load_master_key(None, tmp_path / "data")
    path = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(None, tmp_path / "data") == first


def test_a_readable_key_file_or_a_malformed_key_is_refused(tmp_path: Path) -> None:
    load_master_key(None, tmp_path)
    (tmp_path / KEY_FILE).chmod(0o644)
    with pytest.raises(ConfigError, match="0600"):
        load_master_key(None, tmp_path)
    with pytest.raises(ConfigError, match="ANTEX_SECRET_KEY"):
        load_master_key("too-short", tmp_path)


def test_fingerprints_name_keys_without_revealing_them() -> None:
    fp = fingerprint("sk-ant-api03-secret")
    assert fp.startswith("sha256:") and len(fp) == 19
    assert "secret" not in fp and fp != fingerprint("sk-ant-api03-secres")

"""Settings: each declared once (type, default, variable), read from the environment, and
documented in the README's configuration table with the same names and defaults."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.errors import ConfigError

README = Path(__file__).resolve().parents[2] / "README.md"
_ROW = re.compile(r"^\| `(ANTEX_[A-Z0-9_]+)`(?: / `ANTEX_[A-Z0-9_]+`)? \| ([^|]+) \|", re.M)


def declared() -> dict[str, dataclasses.Field[object]]:
    return {
        f.metadata["env"]: f for f in dataclasses.fields(Settings) if "env" in f.metadata
    }


def documented() -> dict[str, str]:
    return {name: default.strip() for name, default in _ROW.findall(README.read_text("utf-8"))}


def test_every_setting_is_in_the_readme_table() -> None:
    missing = sorted((set(declared()) | {"ANTEX_WEBHOOK_URL"}) - set(documented()))
    assert missing == []


def test_literal_defaults_in_the_readme_match_the_fields() -> None:
    docs = documented()
    checked = 0
    for name, f in declared().items():
        shown = docs[name]
        if not (shown.startswith("`") and shown.endswith("`")) or f.default is None:
            continue  # "unset", "CPU count", "a short note": described, not a literal
        literal = shown.strip("`")
        value = f.default
        if isinstance(value, bool):
            assert literal == ("on" if value else "off"), name
        elif isinstance(value, int | float):
            assert float(literal) == float(value), name
        elif isinstance(value, Path):
            assert Path(literal) == value, name
        else:
            assert literal == str(value), name
        checked += 1
    assert checked >= 30


def test_an_empty_environment_gives_the_declared_defaults() -> None:
    settings = Settings.from_env({})
    for f in dataclasses.fields(Settings):
        if f.name != "workers":  # CPU count when read from the environment
            assert getattr(settings, f.name) == f.default, f.name


def test_values_are_parsed_and_bad_ones_name_their_variable() -> None:
    settings = Settings.from_env(
        {
            "ANTEX_PORT": "9000",
            "ANTEX_VALKEY_TIMEOUT": "0.25",
            "ANTEX_PUBLIC_URL": "https://gw.example/",
            "ANTEX_CUSTOMER_NOTICES": "on",
            "ANTEX_TRUSTED_PROXIES": "10.0.0.0/8",
            "ANTEX_MAX_TOKENS": "",
        }
    )
    assert (settings.port, settings.valkey_timeout) == (9000, 0.25)
    assert settings.public_url == "https://gw.example" and settings.customer_notices
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8"]
    assert settings.max_tokens_limit is None
    for name, value in (
        ("ANTEX_PORT", "0"),
        ("ANTEX_BCRYPT_ROUNDS", "3"),
        ("ANTEX_VALKEY_TIMEOUT", "-1"),
        ("ANTEX_LOG_FORMAT", "xml"),
        ("ANTEX_MAX_TOKENS", "0"),
    ):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})

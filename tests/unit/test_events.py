"""Webhook envelopes and signatures: what a receiver verifies, and the payload allow-list."""

from __future__ import annotations

import orjson
import pytest

from gateway import events
from gateway.config import Settings
from gateway.errors import ConfigError

SECRET = "whsec_0123456789abcdef"


def test_a_signature_verifies_for_its_body_and_secret_only() -> None:
    body = events.envelope("evt_1", events.KEY_QUARANTINED, {"key_id": "abc"}, 1_800_000_000)
    header = events.sign(SECRET, body, 1_800_000_000)
    assert header.startswith("t=1800000000,v1=")
    assert events.verify(SECRET, header, body, now_s=1_800_000_010)
    assert not events.verify(SECRET, header, body + b" ", now_s=1_800_000_010)
    assert not events.verify("another-secret-000", header, body, now_s=1_800_000_010)
    assert not events.verify(SECRET, header, body, now_s=1_800_000_000 + 301)  # replayed late
    assert not events.verify(SECRET, "v1=deadbeef", body, now_s=1_800_000_000)


def test_any_of_several_v1_values_may_match_during_secret_rotation() -> None:
    body = b'{"id":"evt_2"}'
    good = events.sign(SECRET, body, 1_800_000_000)
    header = f"t=1800000000,v1={'0' * 64},{good.split(',')[1]}"
    assert events.verify(SECRET, header, body, now_s=1_800_000_000)


def test_the_envelope_names_id_type_time_and_data() -> None:
    body = events.envelope("evt_3", events.SETTLE_FAILED, {"credits_mc": 5}, 1_800_000_000.5)
    assert orjson.loads(body) == {
        "id": "evt_3",
        "type": "settle.failed",
        "created_at": "2027-01-15T08:00:00.500Z",
        "data": {"credits_mc": 5},
    }


def test_payloads_keep_metadata_and_drop_anything_else() -> None:
    kept, dropped = events.clean_payload(
        {"account_id": "a1", "key_id": "k1", "prompt": "secret words", "api_key": "sk_live_x"}
    )
    assert kept == {"account_id": "a1", "key_id": "k1"}
    assert sorted(dropped) == ["api_key", "prompt"]


def test_named_events_get_one_id_everywhere_and_unnamed_ones_differ() -> None:
    assert events.event_id("x:1") == events.event_id("x:1") != events.event_id("x:2")
    assert events.event_id(None) != events.event_id(None)
    assert events.per_minute("valkey.error", 120.0) == events.per_minute("valkey.error", 179.9)


@pytest.mark.parametrize(
    ("used", "limit", "expected"),
    [(0, 100, None), (79, 100, None), (80, 100, 80), (99, 100, 80), (100, 100, 100),
     (150, 100, 100), (5, 0, None)],
)  # fmt: skip
def test_window_thresholds(used: int, limit: int, expected: int | None) -> None:
    assert events.threshold_crossed(used, limit) == expected


def test_webhook_urls_need_a_signing_secret() -> None:
    with pytest.raises(ConfigError, match="ANTEX_WEBHOOK_SECRET"):
        Settings.from_env({"ANTEX_WEBHOOK_URL": "https://hooks.example/antex"})
    with pytest.raises(ConfigError, match="not an http"):
        Settings.from_env({"ANTEX_WEBHOOK_URLS": "ftp://x", "ANTEX_WEBHOOK_SECRET": SECRET})
    settings = Settings.from_env(
        {
            "ANTEX_WEBHOOK_URL": "https://a.example/h",
            "ANTEX_WEBHOOK_URLS": "https://b.example/h, https://a.example/h",
            "ANTEX_WEBHOOK_SECRET": SECRET,
        }
    )
    assert settings.webhook_urls == ("https://a.example/h", "https://b.example/h")

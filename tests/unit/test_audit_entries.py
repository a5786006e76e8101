"""The pure parts of the audit trail: which fields count as changed, and how a deleted
account's identifiers are rewritten."""

from __future__ import annotations

from gateway import audit


def test_changes_lists_only_the_fields_that_differ() -> None:
    before = {"plan": "pro", "credits_5h": 2000, "ip_slots": 2}
    after = {"plan": "max", "credits_5h": 10000, "ip_slots": 2, "concurrency": 24}
    assert audit.changes(before, after) == {
        "concurrency": [None, 24],
        "credits_5h": [2000, 10000],
        "plan": ["pro", "max"],
    }
    assert audit.changes(None, {"name": "ci"}) == {"name": [None, "ci"]}
    assert audit.changes({"a": 1}, {"a": 1}) == {}


def test_redaction_replaces_every_occurrence_of_the_account_identifiers() -> None:
    digest = audit.email_digest("Dev@Example.com ")
    assert digest == audit.email_digest("dev@example.com")
    names = {"acc123": digest, "dev@example.com": digest, "key9": f"{digest}:key"}
    entry = {
        "target": {"account": "acc123", "email": "dev@example.com", "key": "key9"},
        "changes": {"prefix": ["sk_live_key9_…", None], "plan": ["pro", "max"]},
    }
    redacted = audit._redact(entry, names)
    text = str(redacted)
    assert "acc123" not in text and "dev@example.com" not in text and "key9" not in text
    assert redacted["changes"]["plan"] == ["pro", "max"]
    assert redacted["target"]["email"] == digest

"""The usage record is the log's allow-list, and charges keep their spool format."""

from __future__ import annotations

from dataclasses import fields

import orjson

from gateway.billing import LOG_FIELDS, Charge, Meta, Outcome, UsageRecord, settlement
from gateway.pipeline import Ticket
from gateway.upstream import Route
from gateway.usage import Rates, Usage

RATES = Rates(input=300, cache_write_5m=375, cache_write_1h=600, cache_read=30, output=1500)
META = Meta("acct", "k1", "req_1", "messages", "claude-sonnet-4-6", RATES, "ip-a", True, 900)


def test_the_record_carries_metadata_only_and_keeps_stop_reason_and_upstream_id() -> None:
    usage = Usage(input_tokens=10, output_tokens=20, cache_write_5m=4, cache_write_1h=2,
                  cache_creation_input_tokens=6)  # fmt: skip
    end = Outcome(200, "ok", 120, 30, "req_upstream_9", "end_turn")
    record, charge = settlement(META, usage, end)
    entry = dict(zip(charge.log[::2], charge.log[1::2], strict=True)) if charge.log else {}
    assert set(entry) <= LOG_FIELDS | {"request_id"}
    assert entry["stop_reason"] == "end_turn"
    assert entry["upstream_request_id"] == "req_upstream_9"
    assert entry["cache_creation_input_tokens"] == 6
    assert "error_type" not in entry  # an ok request names no error
    assert charge.cost_mc == record.credits_mc == entry["credits_mc"] > 0
    assert (charge.account_id, charge.key_id, charge.request_id) == ("acct", "k1", "req_1")


def test_an_outcome_other_than_ok_is_the_error_type() -> None:
    record, _ = settlement(META, Usage(), Outcome(499, "client_disconnected", 5, 5))
    assert record.error_type == "client_disconnected" and record.disconnected == 1
    assert record.credits_mc == 0


def test_every_record_field_is_allowed_in_the_log() -> None:
    assert {f.name for f in fields(UsageRecord)} == LOG_FIELDS


def test_a_spool_line_written_before_the_typed_record_still_replays() -> None:
    old = orjson.loads(
        b'{"a":"acct","k":"k1","r":"req_1","c":42,"l":["request_id","req_1","key_id","k1",'
        b'"model","m","route","messages","status",200,"credits_mc",42,"credits_mc",42]}'
    )
    charge = Charge.from_json(old)
    assert charge.cost_mc == 42 and charge.log is not None and "model" in charge.log
    assert Charge.from_json(orjson.loads(charge.to_json())) == charge
    _, fresh = settlement(META, Usage(input_tokens=3), Outcome(200, "ok", 1, 1))
    assert Charge.from_json(orjson.loads(fresh.to_json())) == fresh


def test_a_tickets_provisional_charge_follows_its_stream() -> None:
    ticket = Ticket(META, 1000, Route("acct", {"messages": []}, META.model), b"x" * 400, 400)
    before = ticket.provisional()
    assert before.log is not None and "gateway_killed" in before.log
    _, input_only = settlement(META, Usage(input_tokens=100), Outcome(200, "ok", 0, 0))
    assert before.cost_mc == input_only.cost_mc  # a quarter of the body's bytes, as input
    ticket.progress = lambda: Usage(input_tokens=100, output_tokens=50)
    assert ticket.provisional().cost_mc > before.cost_mc


def test_a_stream_killed_before_its_input_count_bills_the_input_estimate() -> None:
    ticket = Ticket(META, 1000, Route("acct", {"messages": []}, META.model), b"x" * 400, 400)
    ticket.progress = lambda: Usage(output_tokens=50)  # deltas, no message_start usage yet
    _, expected = settlement(
        META, Usage(input_tokens=100, output_tokens=50), Outcome(200, "ok", 0, 0)
    )
    assert ticket.provisional().cost_mc == expected.cost_mc

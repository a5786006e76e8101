"""The spool's replay rule: the newest line of a request id wins, an ack drops it."""

from __future__ import annotations

from pathlib import Path

import orjson

from gateway.limits import Charge
from gateway.spool import Spool, claim_orphans, drop_orphan, read_unacked


def charge(request_id: str, cost_mc: int, output_tokens: int) -> Charge:
    log = ("request_id", request_id, "output_tokens", output_tokens, "credits_mc", cost_mc)
    return Charge("acct", "key", request_id, cost_mc, log)


def lines(*charges: Charge | list[str]) -> bytes:
    return b"".join(
        (c.to_json() if isinstance(c, Charge) else orjson.dumps({"ack": c})) + b"\n"
        for c in charges
    )


def test_the_newest_checkpoint_of_a_request_is_what_a_replay_bills() -> None:
    data = lines(charge("a", 10, 0), charge("b", 10, 0), charge("a", 30, 12), charge("a", 50, 24))
    assert read_unacked(data) == [charge("a", 50, 24), charge("b", 10, 0)]


def test_a_final_charge_after_checkpoints_wins_and_its_ack_drops_the_id() -> None:
    data = lines(charge("a", 10, 0), charge("a", 30, 12), charge("a", 45, 20))
    assert read_unacked(data) == [charge("a", 45, 20)]
    assert read_unacked(data + lines(["a"])) == []


def test_a_line_cut_by_a_kill_leaves_the_previous_checkpoint() -> None:
    data = lines(charge("a", 10, 0), charge("a", 30, 12)) + charge("a", 50, 24).to_json()[:20]
    assert read_unacked(data) == [charge("a", 30, 12)]


def test_a_dead_workers_file_is_claimed_with_its_newest_lines(tmp_path: Path) -> None:
    dead = tmp_path / "settle-1.jsonl"
    dead.write_bytes(lines(charge("a", 10, 0), charge("b", 10, 0), charge("a", 30, 12), ["b"]))
    own = Spool(tmp_path)
    try:
        claimed = claim_orphans(tmp_path, own.path)
        assert [(path, found) for path, _, found in claimed] == [(dead, [charge("a", 30, 12)])]
        for path, fd, _ in claimed:
            drop_orphan(path, fd)
        assert not dead.exists()
    finally:
        own.close()

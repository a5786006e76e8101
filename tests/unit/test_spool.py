"""The spool's replay rule: the newest line of a request id wins, an ack drops it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
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


def fill(spool: Spool, size: int) -> None:
    """Settled lines (each with its ack) until the file holds ``size`` bytes."""
    n = 0
    while spool.size < size:
        spool.append([charge(f"filler{n}", 10, 0)])
        spool.ack([f"filler{n}"])
        spool.write()
        n += 1


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
        own.close(settled=True)


def test_a_loop_turns_appends_and_the_previous_acks_go_out_in_one_write(tmp_path: Path) -> None:
    deferred: list[Callable[[], None]] = []
    spool = Spool(tmp_path, deferred.append)
    try:
        spool.append([charge("a", 10, 0)])
        spool.ack(["a"])
        spool.append([charge("b", 10, 0)])
        spool.append([charge("c", 10, 0)])
        assert spool.path.read_bytes() == b""  # nothing before the turn ends
        assert len(deferred) == 1  # one write scheduled for the whole turn
        deferred.pop()()
        # The ack follows the lines it may cover.
        assert spool.path.read_bytes() == lines(
            charge("a", 10, 0), charge("b", 10, 0), charge("c", 10, 0), ["a"]
        )
        assert read_unacked(spool.path.read_bytes()) == [charge("b", 10, 0), charge("c", 10, 0)]
    finally:
        spool.close(settled=False)


async def test_the_background_step_fsyncs_only_what_was_written_since_the_last(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path)
    try:
        await spool.maintain(list)
        assert spool.syncs == 0  # nothing written
        spool.append([charge("a", 10, 0)])
        spool.append([charge("b", 10, 0)])
        await spool.maintain(list)
        assert spool.syncs == 1
        await spool.maintain(list)
        assert spool.syncs == 1
    finally:
        await spool.idle()
        spool.close(settled=True)
    assert not spool.path.exists()


async def test_acks_accumulate_until_the_size_threshold_then_a_settled_file_is_emptied(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, truncate_bytes=2000, compact_bytes=10_000)
    try:
        spool.append([charge("r0", 10, 0)])
        spool.ack(["r0"])
        await spool.maintain(list)
        below = spool.path.read_bytes()
        assert below == lines(charge("r0", 10, 0), ["r0"])  # acked, kept, not truncated
        fill(spool, 2000)
        await spool.maintain(list)  # past the threshold with nothing live: emptied
        assert spool.size == 0 and spool.path.read_bytes() == b""
        # A line written while a step runs survives it, truncation or not.
        fill(spool, 2000)
        step = asyncio.ensure_future(spool.maintain(list))
        await asyncio.sleep(0)
        spool.append([charge("late", 7, 0)])
        await step
        assert read_unacked(spool.path.read_bytes()) == [charge("late", 7, 0)]
        spool.ack(["late"])
        await spool.maintain(list)
        assert read_unacked(spool.path.read_bytes()) == [] and spool.size < 2000
    finally:
        await spool.idle()
        spool.close(settled=True)


async def test_a_grown_file_is_compacted_to_what_is_live_and_stays_locked(tmp_path: Path) -> None:
    spool = Spool(tmp_path, truncate_bytes=1000, compact_bytes=2000)
    try:
        live = [charge("open", 10, 0), charge("queued", 20, 3)]
        spool.append(live)
        fill(spool, 2000)
        await spool.maintain(lambda: live)
        assert spool.path.read_bytes() == lines(*live)
        spool.append([charge("after", 5, 0)])  # the new file takes the next lines
        assert read_unacked(spool.path.read_bytes()) == [*live, charge("after", 5, 0)]
        # A line written while a compaction runs is in the file that replaces the old one.
        live.append(charge("after", 5, 0))
        fill(spool, 2000)
        step = asyncio.ensure_future(spool.maintain(lambda: live))
        await asyncio.sleep(0)
        spool.append([charge("during", 6, 0)])
        await step
        assert spool.size < 2000
        assert read_unacked(spool.path.read_bytes()) == [*live, charge("during", 6, 0)]
        assert not (tmp_path / f"settle-{os.getpid()}.tmp").exists()
        assert claim_orphans(tmp_path, tmp_path / "elsewhere") == []  # still this worker's
    finally:
        await spool.idle()
        spool.close(settled=False)
    assert read_unacked(spool.path.read_bytes()) == [*live, charge("during", 6, 0)]

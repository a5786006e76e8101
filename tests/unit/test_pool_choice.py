"""Weighted rendezvous choice: affinity, minimal movement, weights, and the attempt order."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pool_choice import (
    Standing,
    attempt_order,
    conversation_key,
    is_new_conversation,
    rendezvous_order,
)

ids = st.lists(st.text("abcdefghij0123456789", min_size=1, max_size=8), min_size=2,
               max_size=8, unique=True)  # fmt: skip
weights = st.integers(min_value=1, max_value=20)
keys = st.lists(st.binary(min_size=1, max_size=24), min_size=1, max_size=60)


def best(key: bytes, members: list[tuple[bytes, float]]) -> bytes:
    return members[rendezvous_order(key, members)[0]][0]


@settings(max_examples=150, deadline=None)
@given(ids, st.data(), keys)
def test_removing_an_upstream_moves_only_its_own_conversations(
    names: list[str], data: st.DataObject, conversations: list[bytes]
) -> None:
    members = [(n.encode(), float(data.draw(weights))) for n in names]
    gone = data.draw(st.sampled_from(members))
    rest = [m for m in members if m != gone]
    for key in conversations:
        before, after = best(key, members), best(key, rest)
        if before != gone[0]:
            assert after == before
        else:
            # Its conversations go where their own second choice was.
            assert after == members[rendezvous_order(key, members)[1]][0]


@settings(max_examples=150, deadline=None)
@given(ids, st.data(), keys)
def test_adding_an_upstream_only_takes_conversations_to_itself(
    names: list[str], data: st.DataObject, conversations: list[bytes]
) -> None:
    members = [(n.encode(), float(data.draw(weights))) for n in names]
    added, rest = members[-1], members[:-1]
    for key in conversations:
        before, after = best(key, rest), best(key, members)
        assert after in (before, added[0])


@settings(max_examples=100, deadline=None)
@given(ids, st.data(), st.binary(max_size=24))
def test_order_is_a_permutation_that_does_not_depend_on_listing_order(
    names: list[str], data: st.DataObject, key: bytes
) -> None:
    members = [(n.encode(), float(data.draw(weights))) for n in names]
    shuffled = data.draw(st.permutations(members))
    a = [members[i][0] for i in rendezvous_order(key, members)]
    b = [shuffled[i][0] for i in rendezvous_order(key, shuffled)]
    assert a == b
    assert sorted(a) == sorted(m[0] for m in members)


def test_conversations_spread_in_proportion_to_weight() -> None:
    members = [(b"a", 1.0), (b"b", 2.0), (b"c", 5.0)]
    wins = collections.Counter(best(f"conv-{i}".encode(), members) for i in range(16_000))
    for member_id, weight in members:
        assert abs(wins[member_id] / 16_000 - weight / 8) < 0.02, wins


def test_the_conversation_key_follows_the_claude_code_session() -> None:
    turn1 = {"metadata": {"user_id": "user_ab_account_1_session_s1"}, "system": "sys",
             "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    turn9 = {**turn1, "messages": [*turn1["messages"], {"role": "assistant", "content": "x"},
                                   {"role": "user", "content": "more"}]}  # fmt: skip
    assert conversation_key("acct", turn1) == conversation_key("acct", turn9)
    assert conversation_key("acct", turn1) != conversation_key("other", turn1)
    other_session = {**turn1, "metadata": {"user_id": "user_ab_account_1_session_s2"}}
    assert conversation_key("acct", other_session) != conversation_key("acct", turn1)


def test_without_a_session_the_key_is_a_hash_of_system_and_first_turn() -> None:
    first = {"system": "You are terse.", "messages": [{"role": "user", "content": "task A"}]}
    later = {**first, "messages": [*first["messages"], {"role": "assistant", "content": "ok"},
                                   {"role": "user", "content": "go on"}]}  # fmt: skip
    other = {**first, "messages": [{"role": "user", "content": "task B"}]}
    key = conversation_key("acct", first)
    assert key == conversation_key("acct", later)
    assert key != conversation_key("acct", other)
    assert b"task A" not in key and b"terse" not in key
    assert is_new_conversation(first) and not is_new_conversation(later)


def test_attempt_order_keeps_affinity_and_skips_cooling_disabled_and_full() -> None:
    order = [2, 0, 1, 3]
    standings = [Standing(True), Standing(True, ready_at=50.0), Standing(True),
                 Standing(False)]  # fmt: skip
    assert attempt_order(order, standings, 10.0, new_conversation=False) == [2, 0]
    assert attempt_order(order, standings, 60.0, new_conversation=False) == [2, 0, 1]
    full = [Standing(True), Standing(True), Standing(True, full=True), Standing(True)]
    assert attempt_order(order, full, 10.0, new_conversation=False) == [0, 1, 3]


def test_new_conversations_avoid_upstreams_about_to_run_out() -> None:
    order = [0, 1, 2]
    standings = [Standing(True, low=True), Standing(True), Standing(True)]
    assert attempt_order(order, standings, 0.0, new_conversation=True) == [1, 2, 0]
    assert attempt_order(order, standings, 0.0, new_conversation=False) == [0, 1, 2]


def test_when_every_upstream_cools_the_soonest_ready_comes_first() -> None:
    standings = [Standing(True, ready_at=30.0), Standing(True, ready_at=20.0),
                 Standing(False)]  # fmt: skip
    assert attempt_order([0, 1, 2], standings, 10.0, new_conversation=False) == [1, 0]


def test_the_choice_and_the_pool_view_import_no_io_libraries() -> None:
    code = (
        "import sys, gateway.pool_choice, gateway.pool_state\n"
        "io = ('valkey', 'aiohttp', 'blacksheep', 'granian', 'httpx', 'socket')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in io]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])

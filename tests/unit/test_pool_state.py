"""A worker's pool view: what each upstream signal does to the choice, and what it shares."""

from __future__ import annotations

from gateway.pool_state import Member, PoolPolicy, PoolView

MODEL = "claude-sonnet-4-6"


def pool(n: int = 3, **policy: float) -> PoolView:
    view = PoolView(PoolPolicy(**policy))  # type: ignore[arg-type]
    view.set_members([Member(f"up_{i}", f"u{i}", f"http://u{i}", f"k{i}", 1) for i in range(n)])
    return view


def first(view: PoolView, key: bytes, now: float, model: str = MODEL, new: bool = False) -> str:
    return view.order(key, model, new_conversation=new, now=now)[0].id


def test_a_429_cools_that_upstream_for_its_retry_after_and_that_model_only() -> None:
    view = pool()
    home = view.order(b"conv", MODEL, new_conversation=False, now=0.0)[0]
    event = view.answered(home, 429, {"retry-after": "7"}, MODEL, 100.0)
    assert event == {"t": "cool", "id": home.id, "model": MODEL, "until": 107.0, "why": "429"}
    assert first(view, b"conv", 106.0) != home.id
    assert first(view, b"conv", 106.0, model="claude-opus-4-5") == home.id
    assert first(view, b"conv", 107.5) == home.id  # back home: its cache is still warm


def test_a_529_cools_the_whole_upstream_briefly() -> None:
    view = pool(overload_cooldown_s=5.0)
    home = view.order(b"c", MODEL, new_conversation=False, now=0.0)[0]
    assert view.answered(home, 529, {}, MODEL, 10.0) == {
        "t": "cool", "id": home.id, "until": 15.0, "why": "overloaded"}  # fmt: skip
    assert first(view, b"c", 14.0, model="claude-opus-4-5") != home.id
    assert first(view, b"c", 15.1) == home.id


def test_a_401_disables_the_upstream_and_says_why() -> None:
    view = pool()
    home = view.order(b"c", MODEL, new_conversation=False, now=0.0)[0]
    event = view.answered(home, 401, {}, MODEL, 1.0)
    assert event == {"t": "disable", "id": home.id, "why": "upstream answered 401"}
    assert home.id not in [m.id for m in view.order(b"c", MODEL, new_conversation=False,
                                                    now=1e9)]  # fmt: skip
    assert view.capacity(2.0) == 2 / 3


def test_client_errors_change_nothing() -> None:
    view = pool()
    home = view.order(b"c", MODEL, new_conversation=False, now=0.0)[0]
    for status in (400, 404, 413):
        assert view.answered(home, status, {}, MODEL, 1.0) is None
    assert first(view, b"c", 1.0) == home.id


def test_repeated_failures_open_the_circuit_then_one_probe_closes_it() -> None:
    view = pool(breaker_failures=3, breaker_open_s=30.0)
    home = view.order(b"c", MODEL, new_conversation=False, now=0.0)[0]
    assert view.failed(home, 1.0) is None
    assert view.answered(home, 502, {}, MODEL, 1.0) is None
    event = view.failed(home, 2.0)
    assert event == {"t": "cool", "id": home.id, "until": 32.0, "why": "circuit"}
    assert home.state(10.0) == "circuit_open"
    assert first(view, b"c", 10.0) != home.id
    # Half-open: one request may probe; while it runs, others go elsewhere.
    assert first(view, b"c", 33.0) == home.id
    home.probing = True
    assert first(view, b"c", 33.0) != home.id
    # A failed probe re-opens at once; a good one closes the circuit.
    assert view.failed(home, 34.0) == {"t": "cool", "id": home.id, "until": 64.0,
                                       "why": "circuit"}  # fmt: skip
    view.answered(home, 200, {}, MODEL, 65.0)
    assert home.state(65.0) == "ready" and home.fails == 0


def test_low_headroom_steers_new_conversations_until_the_reset() -> None:
    view = pool(low_headroom=0.05)
    home = view.order(b"new", MODEL, new_conversation=True, now=0.0)[0]
    headers = {
        "anthropic-ratelimit-requests-limit": "1000",
        "anthropic-ratelimit-requests-remaining": "900",
        "anthropic-ratelimit-input-tokens-limit": "100000",
        "anthropic-ratelimit-input-tokens-remaining": "2000",
        "anthropic-ratelimit-input-tokens-reset": "1970-01-01T00:01:40Z",  # epoch 100
    }
    assert view.answered(home, 200, headers, MODEL, 50.0) is None
    assert home.headroom == 0.02
    assert first(view, b"new", 60.0, new=True) != home.id
    assert first(view, b"new", 60.0, new=False) == home.id  # an existing one keeps its cache
    assert first(view, b"new", 101.0, new=True) == home.id


def test_events_from_other_workers_apply_to_the_same_members() -> None:
    view = pool()
    target = view.members[1]
    view.apply({"t": "cool", "id": target.id, "model": MODEL, "until": 50.0})
    assert target.ready_at(MODEL) == 50.0 and target.ready_at("other") == 0.0
    view.apply({"t": "cool", "id": target.id, "until": 40.0, "why": "circuit"})
    assert target.state(30.0) == "circuit_open" and target.half_open
    view.apply({"t": "disable", "id": target.id, "why": "upstream answered 403"})
    assert target.state(0.0) == "disabled"
    view.apply({"t": "disable", "id": "up_unknown"})  # ignored


def test_a_single_upstream_pool_still_filters_by_model_and_state() -> None:
    view = pool(1)
    only = view.members[0]
    only.models = frozenset({"claude-opus-4-5"})
    assert view.order(b"", MODEL, new_conversation=True, now=0.0) == []
    only.models = frozenset()
    assert view.order(b"", MODEL, new_conversation=True, now=0.0) == [only]
    assert "k0" not in repr(only)


def test_a_probe_answered_with_a_429_leaves_the_circuit_half_open_for_the_next_probe() -> None:
    view = pool(breaker_failures=1, breaker_open_s=10.0)
    home = view.order(b"c", MODEL, new_conversation=False, now=0.0)[0]
    view.failed(home, 0.0)
    home.probing = True  # the probe after the circuit's 10 s
    view.answered(home, 429, {"retry-after": "5"}, MODEL, 11.0)
    assert home.half_open and not home.probing
    assert first(view, b"c", 17.0) == home.id  # the next probe, once the 429 cooled

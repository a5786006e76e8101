"""Pricing: Anthropic usage shapes -> milli-credits, exact and rounded up once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.catalog import load_catalog
from gateway.usage import Rates, Usage, cost_mc, estimate_mc

CATALOG = load_catalog()


def rates(model: str) -> Rates:
    info = CATALOG.lookup(model)
    assert info is not None
    return info.rates


SONNET = rates("claude-sonnet-4-6")


def test_sonnet_46_rates_are_list_price_in_cents_per_million() -> None:
    assert (SONNET.input, SONNET.cache_write_5m, SONNET.cache_write_1h) == (300, 375, 600)
    assert (SONNET.cache_read, SONNET.output) == (30, 1500)


def test_response_usage_with_cache_creation_split_bills_each_ttl_at_its_rate() -> None:
    usage = Usage.from_anthropic(
        {
            "input_tokens": 12,
            "cache_creation_input_tokens": 1000,
            "cache_read_input_tokens": 1800,
            "cache_creation": {"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 600},
            "output_tokens": 40,
            "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
            "service_tier": "standard",
        }
    )
    assert (usage.cache_write_5m, usage.cache_write_1h) == (400, 600)
    # 12*300 + 400*375 + 600*600 + 1800*30 + 40*1500 = 627_600 micro -> 627.6 -> 628
    assert cost_mc(usage, SONNET) == 628


def test_usage_without_split_bills_all_cache_creation_as_five_minute_writes() -> None:
    usage = Usage.from_anthropic(
        {"input_tokens": 12, "cache_creation_input_tokens": 1000,
         "cache_read_input_tokens": 1800, "output_tokens": 40}
    )  # fmt: skip
    assert (usage.cache_write_5m, usage.cache_write_1h) == (1000, 0)
    assert cost_mc(usage, SONNET) == 493  # 492_600 micro


def test_null_counters_and_zero_split_bill_what_was_reported() -> None:
    usage = Usage.from_anthropic(
        {"input_tokens": 5, "cache_creation_input_tokens": None, "cache_read_input_tokens": None,
         "cache_creation": None, "output_tokens": 2}
    )  # fmt: skip
    assert usage == Usage(input_tokens=5, output_tokens=2)
    # A split that under-reports the total: the remainder is billed at the 5-minute rate.
    partial = Usage.from_anthropic(
        {"cache_creation_input_tokens": 900,
         "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 300}}
    )  # fmt: skip
    assert (partial.cache_write_5m, partial.cache_write_1h) == (600, 300)
    # A split larger than the stated total wins.
    larger = Usage.from_anthropic(
        {"cache_creation_input_tokens": 10,
         "cache_creation": {"ephemeral_5m_input_tokens": 50, "ephemeral_1h_input_tokens": 20}}
    )  # fmt: skip
    assert larger.cache_creation_input_tokens == 70


def test_streaming_usage_is_cumulative_last_delta_wins() -> None:
    start = {"input_tokens": 25, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0, "output_tokens": 1}  # fmt: skip
    deltas = [{"output_tokens": 7}, {"output_tokens": 15}]
    snapshot = dict(start)
    for delta in deltas:
        snapshot.update(delta)  # replace, never add
    usage = Usage.from_anthropic(snapshot)
    assert usage.output_tokens == 15
    assert cost_mc(usage, SONNET) == 30  # 25*300 + 15*1500 = 30_000 micro
    summed = Usage.from_anthropic({**start, "output_tokens": 1 + 7 + 15})
    assert cost_mc(summed, SONNET) > cost_mc(usage, SONNET)


def test_newer_message_delta_may_restate_input_side_counts() -> None:
    snapshot = {"input_tokens": 25, "cache_read_input_tokens": 0, "output_tokens": 1}
    snapshot.update({"output_tokens": 300, "input_tokens": 20, "cache_read_input_tokens": 5000})
    assert cost_mc(Usage.from_anthropic(snapshot), SONNET) == 606  # 6000 + 150000 + 450000


@pytest.mark.parametrize(
    ("opus", "sonnet", "haiku"),
    [
        ("claude-opus-4-6", "claude-sonnet-4-6", "claude-haiku-4-5"),
        ("claude-opus-4-5", "claude-sonnet-4-5", "claude-haiku-4-5"),
        ("claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5"),
        ("claude-opus-5", "claude-sonnet-5", "claude-haiku-5-5"),
    ],
)
def test_same_tokens_cost_opus_more_than_sonnet_more_than_haiku(
    opus: str, sonnet: str, haiku: str
) -> None:
    usage = Usage(input_tokens=2000, cache_creation_input_tokens=3000, cache_write_5m=3000,
                  cache_read_input_tokens=50_000, output_tokens=1500)  # fmt: skip
    costs = [cost_mc(usage, rates(model)) for model in (opus, sonnet, haiku)]
    assert costs[0] > costs[1] > costs[2]


def test_rounding_is_one_ceiling_over_the_exact_sum() -> None:
    haiku55 = rates("claude-haiku-5-5")
    assert cost_mc(Usage(), SONNET) == 0
    assert cost_mc(Usage(cache_read_input_tokens=1), haiku55) == 1  # 0.001 mc rounds up
    assert cost_mc(Usage(cache_read_input_tokens=1000), haiku55) == 1
    assert cost_mc(Usage(cache_read_input_tokens=1001), haiku55) == 2
    # 0.3 mc + 1.5 mc = 1.8 mc -> 2, not ceil(0.3) + ceil(1.5) = 3
    assert cost_mc(Usage(input_tokens=1, output_tokens=1), SONNET) == 2


def test_haiku_55_long_prompt_tier_reprices_every_token() -> None:
    haiku55 = rates("claude-haiku-5-5")
    short = Usage(input_tokens=60_000, cache_read_input_tokens=40_000, output_tokens=1000)
    long = Usage(input_tokens=60_001, cache_read_input_tokens=40_000, output_tokens=1000)
    assert cost_mc(short, haiku55) == 60_000 * 10 // 1000 + 40 + 50  # 690
    assert cost_mc(long, haiku55) == -(-(60_001 * 50 + 40_000 * 5 + 1000 * 250) // 1000)  # 3451


def test_estimate_prices_a_quarter_of_the_body_and_capped_output() -> None:
    assert estimate_mc(4000, 32_000, SONNET, 8192) == (1000 * 300 + 8192 * 1500) // 1000
    assert estimate_mc(4000, 100, SONNET, 8192) == (1000 * 300 + 100 * 1500) // 1000
    assert estimate_mc(0, 0, SONNET, 8192) == 1  # one input token, rounded up


usages = st.builds(
    Usage,
    input_tokens=st.integers(0, 10**7),
    cache_read_input_tokens=st.integers(0, 10**7),
    output_tokens=st.integers(0, 10**6),
)


@given(usages, usages)
def test_cost_is_additive_within_one_rounding(a: Usage, b: Usage) -> None:
    both = Usage(
        input_tokens=a.input_tokens + b.input_tokens,
        cache_read_input_tokens=a.cache_read_input_tokens + b.cache_read_input_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
    )
    split = cost_mc(a, SONNET) + cost_mc(b, SONNET)
    assert split - 1 <= cost_mc(both, SONNET) <= split

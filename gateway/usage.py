"""Pure pricing: Anthropic usage counts -> milli-credits, from integer catalog rates.

Units: rates are integer credits per million tokens (1 credit = 1 US cent of list price), so
tokens x rate / 1000 is milli-credits. Every sum is exact integer arithmetic, rounded up once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Rates:
    """Credits per million tokens. ``long_context`` replaces every rate of a request whose
    total input (uncached + cache writes + cache reads) exceeds ``long_context_threshold``."""

    input: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int
    output: int
    long_context_threshold: int | None = None
    long_context: Rates | None = None

    def for_input(self, total_input_tokens: int) -> Rates:
        if (
            self.long_context is not None
            and self.long_context_threshold is not None
            and total_input_tokens > self.long_context_threshold
        ):
            return self.long_context
        return self


def _count(d: Mapping[str, Any], name: str) -> int:
    # Upstreams send null for absent counters; a negative or non-integer count is never billed.
    value = d.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one request. ``cache_creation_input_tokens`` always equals
    ``cache_write_5m + cache_write_1h``."""

    input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read_input_tokens: int = 0
    output_tokens: int = 0

    @classmethod
    def from_anthropic(cls, d: Mapping[str, Any]) -> Usage:
        """From an Anthropic ``usage`` object (a response's, or a stream's merged snapshot)."""
        created = _count(d, "cache_creation_input_tokens")
        split = d.get("cache_creation")
        w1h = 0
        if isinstance(split, Mapping):
            w5m_split = _count(split, "ephemeral_5m_input_tokens")
            w1h = _count(split, "ephemeral_1h_input_tokens")
            # Never bill less than either figure: a split larger than the total wins, and a
            # total larger than the split bills the remainder at the 5-minute rate.
            created = max(created, w5m_split + w1h)
        return cls(
            input_tokens=_count(d, "input_tokens"),
            cache_creation_input_tokens=created,
            cache_write_5m=created - w1h,
            cache_write_1h=w1h,
            cache_read_input_tokens=_count(d, "cache_read_input_tokens"),
            output_tokens=_count(d, "output_tokens"),
        )

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def cost_mc(usage: Usage, rates: Rates) -> int:
    """Milli-credits for one request: ceil(sum(tokens_i x rate_i) / 1000)."""
    r = rates.for_input(usage.total_input_tokens)
    micro = (
        usage.input_tokens * r.input
        + usage.cache_write_5m * r.cache_write_5m
        + usage.cache_write_1h * r.cache_write_1h
        + usage.cache_read_input_tokens * r.cache_read
        + usage.output_tokens * r.output
    )
    return _ceil_div(micro, 1000)


def estimate_tokens(body_len: int) -> int:
    """The input estimate the shipped simulator also reports: a quarter of the body bytes."""
    return max(1, body_len // 4)


def estimate_mc(body_len: int, max_tokens: int, rates: Rates, reserve_output_cap: int) -> int:
    """What to reserve before the upstream call: the whole body at the uncached input rate plus
    ``min(max_tokens, reserve_output_cap)`` output tokens."""
    input_tokens = estimate_tokens(body_len)
    output_tokens = max(0, min(max_tokens, reserve_output_cap))
    r = rates.for_input(input_tokens)
    return _ceil_div(input_tokens * r.input + output_tokens * r.output, 1000)

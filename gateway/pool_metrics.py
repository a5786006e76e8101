"""Per-upstream metrics of the pool: attempts by status, failovers, state, headroom, tokens.

Built by ``observability.Metrics`` into its registry (so they sum over workers the same way);
the gauges are per worker views of shared state, so the scrape takes their max or min.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.usage import Usage

STATE_CODES = {"ready": 0, "half_open": 1, "cooling": 2, "circuit_open": 3, "disabled": 4}


class PoolMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self._attempts = Counter(
            "antex_upstream_attempts",
            "Attempts sent to each upstream, by the upstream's status (or connect, timeout).",
            ("upstream", "status"),
            registry=registry,
        )
        self._failovers = Counter(
            "antex_upstream_failovers",
            "Attempts on an upstream that failed before the first byte and moved on.",
            ("upstream",),
            registry=registry,
        )
        self._tokens = Counter(
            "antex_upstream_tokens",
            "Tokens each upstream reported, by kind (input, cache_read, cache_write, output).",
            ("upstream", "kind"),
            registry=registry,
        )
        self._state = Gauge(
            "antex_upstream_state",
            "0 ready, 1 half-open, 2 cooling, 3 circuit open, 4 disabled (worst worker view).",
            ("upstream",),
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._headroom = Gauge(
            "antex_upstream_headroom_ratio",
            "Smallest remaining/limit share in the upstream's last anthropic-ratelimit-* headers.",
            ("upstream",),
            registry=registry,
            multiprocess_mode="livemin",
        )
        self._disabled = Gauge(
            "antex_pool_upstreams_disabled",
            "Upstreams disabled because they refused their own credentials (401/403).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._capacity = Gauge(
            "antex_pool_capacity_ratio",
            "Share of the pool's configured weight that is enabled and not cooling (0-1).",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self._disabled.set(0)
        self._capacity.set(1)
        self._children: dict[tuple[int, str, str], Any] = {}

    def _child(self, family: Any, upstream: str, other: str = "") -> Any:
        """Label lookups cost more than the increment: each child is made once."""
        key = (id(family), upstream, other)
        child = self._children.get(key)
        if child is None:
            child = family.labels(upstream, other) if other else family.labels(upstream)
            self._children[key] = child
        return child

    def attempt(self, upstream: str, status: str) -> None:
        self._child(self._attempts, upstream, status).inc()

    def failover(self, upstream: str) -> None:
        self._child(self._failovers, upstream).inc()

    def usage(self, upstream: str, usage: Usage) -> None:
        for kind, count in (
            ("input", usage.input_tokens),
            ("cache_read", usage.cache_read_input_tokens),
            ("cache_write", usage.cache_creation_input_tokens),
            ("output", usage.output_tokens),
        ):
            if count:
                self._child(self._tokens, upstream, kind).inc(count)

    def pool_state(
        self, members: list[tuple[str, str, float]], auto_disabled: int, capacity: float
    ) -> None:
        """``members``: (name, state, headroom) for every upstream of the worker's view."""
        for name, state, headroom in members:
            self._child(self._state, name).set(STATE_CODES.get(state, 0))
            self._child(self._headroom, name).set(headroom)
        self._disabled.set(auto_disabled)
        self._capacity.set(capacity)

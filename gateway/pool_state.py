"""One worker's view of the upstream pool: members, cooldowns, circuit breakers, headroom.

No I/O: the upstream layer reports each attempt's outcome here and gets back the event to
share with the other workers (``{"t": "cool" | "disable", ...}``); events from the others
come back in through ``apply``. Times are epoch seconds (cooldowns cross nodes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.pool_choice import Standing, attempt_order, rendezvous_order

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
DISABLE_STATUSES = frozenset({401, 403})
_BREAKER_STATUSES = frozenset({500, 502, 503, 504})
_HEADROOM = ("requests", "input-tokens", "output-tokens")


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    """Failover and cooldown rules (settings ANTEX_UPSTREAM_*)."""

    attempts: int = 3
    budget_s: float = 30.0  # no new attempt starts later than this after the first
    first_byte_timeout_s: float = 30.0  # streams only: a non-stream's first byte is its end
    overload_cooldown_s: float = 5.0  # 529 without retry-after
    rate_limit_cooldown_s: float = 10.0  # 429 without retry-after
    breaker_failures: int = 3  # consecutive connect failures/5xx that open the circuit
    breaker_open_s: float = 30.0
    low_headroom: float = 0.05  # below this share left, new conversations go elsewhere


class Member:
    """One upstream as this worker sees it. Config fields change in place on reload, so
    requests in flight keep a valid reference."""

    __slots__ = (
        "base", "cool_reason", "cool_until", "disabled_reason", "enabled", "fails",
        "fingerprint", "half_open", "headroom", "id", "id_bytes", "in_flight", "key",
        "low_until", "max_concurrent", "model_cool", "models", "name", "probing", "weight",
    )  # fmt: skip

    def __init__(self, upstream_id: str, name: str, base: str, key: str, weight: int) -> None:
        self.id = upstream_id
        self.id_bytes = upstream_id.encode()
        self.name = name
        self.base = base
        self.key = key
        self.fingerprint = ""
        self.weight = weight
        self.enabled = True
        self.disabled_reason = ""
        self.models: frozenset[str] = frozenset()
        self.max_concurrent = 0  # 0: no cap
        self.in_flight = 0
        self.cool_until = 0.0
        self.cool_reason = ""
        self.model_cool: dict[str, float] = {}
        self.fails = 0
        self.half_open = False
        self.probing = False
        self.headroom = 1.0  # the smallest remaining/limit share the upstream last reported
        self.low_until = 0.0

    def __repr__(self) -> str:  # never the key
        return f"Member({self.id!r}, {self.name!r})"

    def ready_at(self, model: str) -> float:
        until = self.cool_until
        model_until = self.model_cool.get(model)
        if model_until is not None and model_until > until:
            until = model_until
        return until

    def state(self, now: float) -> str:
        """disabled, cooling, circuit_open, half_open or ready."""
        if not self.enabled:
            return "disabled"
        if self.cool_until > now:
            return "circuit_open" if self.cool_reason == "circuit" else "cooling"
        return "half_open" if self.half_open else "ready"


def _retry_after(headers: Mapping[str, str], default: float) -> float:
    raw = headers.get("retry-after")
    if raw:
        try:
            return min(3600.0, max(1.0, float(raw)))
        except ValueError:
            pass
    return default


def _epoch(rfc3339: str | None) -> float:
    if not rfc3339:
        return 0.0
    try:
        return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


class PoolView:
    """The members and the rules applied to them."""

    def __init__(self, policy: PoolPolicy) -> None:
        self.policy = policy
        self.members: list[Member] = []
        self._pairs: list[tuple[bytes, float]] = []

    def set_members(self, members: list[Member]) -> None:
        self.members = members
        self._pairs = [(m.id_bytes, float(m.weight)) for m in members]

    def by_id(self, upstream_id: str) -> Member | None:
        for m in self.members:
            if m.id == upstream_id:
                return m
        return None

    # -- choosing

    def order(self, key: bytes, model: str, *, new_conversation: bool, now: float) -> list[Member]:
        """The members to try for one request, best first (see ``attempt_order``)."""
        members = self.members
        if len(members) == 1:  # the single-upstream path skips the hashing
            only = members[0]
            usable = only.enabled and (not only.models or model in only.models)
            return [only] if usable else []
        ranked = rendezvous_order(key, self._pairs)
        standings = []
        for m in members:
            ready_at = m.ready_at(model)
            if m.half_open and m.probing:
                ready_at = max(ready_at, now + 1.0)  # one probe at a time per worker
            standings.append(Standing(
                usable=m.enabled and (not m.models or model in m.models),
                ready_at=ready_at,
                low=m.low_until > now,
                full=0 < m.max_concurrent <= m.in_flight,
            ))  # fmt: skip
        chosen = attempt_order(ranked, standings, now, new_conversation=new_conversation)
        return [members[i] for i in chosen]

    # -- outcomes

    def answered(
        self, m: Member, status: int, headers: Mapping[str, str], model: str, now: float
    ) -> dict[str, Any] | None:
        """Records an upstream's answer; returns the event other workers must learn of."""
        if headers.get("anthropic-ratelimit-requests-remaining") is not None:
            self._headroom(m, headers, now)
        m.probing = False  # a probe that got any answer is over
        if status < 400:
            m.fails = 0
            m.half_open = False
            return None
        policy = self.policy
        if status == 429:
            until = now + _retry_after(headers, policy.rate_limit_cooldown_s)
            m.model_cool[model] = until
            return {"t": "cool", "id": m.id, "model": model, "until": until, "why": "429"}
        if status == 529:
            until = now + _retry_after(headers, policy.overload_cooldown_s)
            m.cool_until, m.cool_reason = until, "overloaded"
            return {"t": "cool", "id": m.id, "until": until, "why": "overloaded"}
        if status in DISABLE_STATUSES:
            m.enabled = False
            m.disabled_reason = f"upstream answered {status}"
            return {"t": "disable", "id": m.id, "why": m.disabled_reason}
        if status in _BREAKER_STATUSES:
            return self.failed(m, now)
        m.half_open = False  # a client error says the upstream is alive
        return None

    def failed(self, m: Member, now: float) -> dict[str, Any] | None:
        """A connect failure, first-byte timeout or 5xx; opens the circuit when repeated."""
        m.fails += 1
        if m.half_open or m.fails >= self.policy.breaker_failures:
            until = now + self.policy.breaker_open_s
            m.cool_until, m.cool_reason = until, "circuit"
            m.half_open, m.probing, m.fails = True, False, 0
            return {"t": "cool", "id": m.id, "until": until, "why": "circuit"}
        return None

    def _headroom(self, m: Member, headers: Mapping[str, str], now: float) -> None:
        share = 1.0
        tightest = ""
        for name in _HEADROOM:
            remaining = headers.get(f"anthropic-ratelimit-{name}-remaining")
            limit = headers.get(f"anthropic-ratelimit-{name}-limit")
            if not remaining or not limit:
                continue
            try:
                part = int(remaining) / max(1, int(limit))
            except ValueError:
                continue
            if part < share:
                share, tightest = part, name
        m.headroom = share
        if share < self.policy.low_headroom:
            reset = _epoch(headers.get(f"anthropic-ratelimit-{tightest}-reset"))
            m.low_until = reset if reset > now else now + 1.0
        else:
            m.low_until = 0.0

    # -- events from other workers

    def apply(self, event: Mapping[str, Any]) -> None:
        m = self.by_id(str(event.get("id", "")))
        if m is None:
            return
        kind = event.get("t")
        if kind == "reset":  # the operator enabled it: forget what it signalled so far
            m.cool_until, m.model_cool, m.fails = 0.0, {}, 0
            m.half_open = m.probing = False
            m.low_until, m.headroom = 0.0, 1.0
        elif kind == "disable":
            m.enabled = False
            m.disabled_reason = str(event.get("why") or "disabled")
        elif kind == "cool":
            until = float(event.get("until") or 0)
            model = event.get("model")
            if isinstance(model, str) and model:
                m.model_cool[model] = max(until, m.model_cool.get(model, 0.0))
            elif until > m.cool_until:
                m.cool_until, m.cool_reason = until, str(event.get("why") or "cooling")
                m.half_open = m.cool_reason == "circuit"

    def capacity(self, now: float) -> float:
        """Share (0-1) of the configured weight that is enabled and not cooling."""
        total = sum(m.weight for m in self.members)
        if not total:
            return 0.0
        up = sum(m.weight for m in self.members if m.enabled and m.cool_until <= now)
        return up / total


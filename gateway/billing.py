"""Pure billing: one request's usage record and its charge, as settle.lua and the spool take it.

``UsageRecord``'s fields are the privacy allow-list of the usage log: metadata only, never
prompt or completion content. ``settlement`` builds the record and its ``Charge`` from what
the exchange knows; it is cheap enough to call for a provisional charge mid-stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import orjson

from gateway.usage import Rates, Usage, cost_mc

_MAX_LOG_VALUE = 200  # characters of one string field in the log


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One request's usage log entry. Tokens are counts, money milli-credits, times ms;
    ``stream``/``disconnected`` are 0 or 1; None fields are left out of the entry."""

    model: str
    route: str
    key_id: str
    ip_tag: str
    status: int
    input_tokens: int
    cache_creation_input_tokens: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read_input_tokens: int
    output_tokens: int
    credits_mc: int
    estimate_mc: int
    latency_ms: int
    ttfb_ms: int
    stream: int
    disconnected: int
    error_type: str | None = None
    upstream_request_id: str | None = None
    stop_reason: str | None = None

    def entry(self) -> tuple[str | int, ...]:
        """The flat (field, value, ...) form settle.lua appends to the log."""
        out: list[str | int] = []
        for name in _FIELD_NAMES:
            value = getattr(self, name)
            if value is not None:
                out += (name, value if isinstance(value, int) else value[:_MAX_LOG_VALUE])
        return tuple(out)

    def fields(self) -> dict[str, str | int]:
        """The entry as a mapping (the access log's fields)."""
        entry = self.entry()
        return dict(zip(entry[::2], entry[1::2], strict=True))  # type: ignore[arg-type]


_FIELD_NAMES = tuple(f.name for f in fields(UsageRecord))
# What a log entry may hold, whoever writes it.
LOG_FIELDS = frozenset(_FIELD_NAMES)


@dataclass(frozen=True, slots=True)
class Charge:
    """One request's settlement as settle.lua takes it and the spool keeps it.

    ``log`` is the flat (field, value, ...) usage entry, metadata only; None releases the
    reservation of a request whose admission outcome is unknown, charging nothing."""

    account_id: str
    key_id: str
    request_id: str
    cost_mc: int  # milli-credits, >= 0
    log: tuple[str | int, ...] | None

    def packed(self, key_index: int) -> bytes:
        """settle.lua's record: [request_id, cost_mc, key index in KEYS, log or 0]."""
        return orjson.dumps(
            [self.request_id, self.cost_mc, key_index, 0 if self.log is None else self.log]
        )

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"a": self.account_id, "k": self.key_id, "r": self.request_id,
             "c": self.cost_mc, "l": self.log}
        )  # fmt: skip

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Charge:
        """Raises KeyError/TypeError/ValueError on a malformed spool line."""
        log = raw["l"]
        return cls(
            str(raw["a"]), str(raw["k"]), str(raw["r"]), int(raw["c"]),
            None if log is None else tuple(log),
        )  # fmt: skip


def charge_of(account_id: str, request_id: str, record: UsageRecord) -> Charge:
    """The settlement of ``record``: its credits, and the log entry led by the ids."""
    cost = max(0, record.credits_mc)
    entry = ("request_id", request_id, *record.entry())
    return Charge(account_id, record.key_id, request_id, cost, entry)


def charge_of_fields(
    account_id: str, key_id: str, request_id: str, cost_mc: int, record: Mapping[str, str | int]
) -> Charge:
    """A charge from loose fields (operator tools, tests); fields outside ``LOG_FIELDS``
    are dropped, so nothing but metadata reaches the log."""
    entry: list[str | int] = ["request_id", request_id, "key_id", key_id]
    for name, value in record.items():
        if name in LOG_FIELDS and name not in ("key_id", "credits_mc"):
            entry += (name, value if isinstance(value, int) else str(value)[:_MAX_LOG_VALUE])
    cost = max(0, cost_mc)
    entry += ("credits_mc", cost)
    return Charge(account_id, key_id, request_id, cost, tuple(entry))


@dataclass(frozen=True, slots=True)
class Meta:
    """What billing needs of an admitted request, fixed at admission."""

    account_id: str
    key_id: str
    request_id: str
    route: str
    model: str
    rates: Rates
    ip_tag: str
    stream: bool
    estimate_mc: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the exchange ended so far. ``outcome`` "ok" leaves error_type unset."""

    status: int
    outcome: str
    latency_ms: int
    ttfb_ms: int
    upstream_request_id: str | None = None
    stop_reason: str | None = None


def usage_record(meta: Meta, usage: Usage, end: Outcome) -> UsageRecord:
    """The record of ``meta``'s request having used ``usage`` and ended as ``end``."""
    return UsageRecord(
        model=meta.model,
        route=meta.route,
        key_id=meta.key_id,
        ip_tag=meta.ip_tag,
        status=end.status,
        input_tokens=usage.input_tokens,
        cache_creation_input_tokens=usage.cache_write_5m + usage.cache_write_1h,
        cache_write_5m=usage.cache_write_5m,
        cache_write_1h=usage.cache_write_1h,
        cache_read_input_tokens=usage.cache_read_input_tokens,
        output_tokens=usage.output_tokens,
        credits_mc=cost_mc(usage, meta.rates),
        estimate_mc=meta.estimate_mc,
        latency_ms=end.latency_ms,
        ttfb_ms=end.ttfb_ms,
        stream=int(meta.stream),
        disconnected=int(end.outcome == "client_disconnected"),
        error_type=None if end.outcome == "ok" else end.outcome,
        upstream_request_id=end.upstream_request_id,
        stop_reason=end.stop_reason,
    )


def settlement(meta: Meta, usage: Usage, end: Outcome) -> tuple[UsageRecord, Charge]:
    """The record and the charge of one request (or of its progress so far)."""
    record = usage_record(meta, usage, end)
    return record, charge_of(meta.account_id, meta.request_id, record)

"""Request metrics and the structured access log (metadata only, never content)."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import orjson

from gateway.usage import Usage

access = logging.getLogger("antex.access")


class Metrics:
    """Per-process counters; the names match the Prometheus families served on /metrics."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int, str]] = Counter()
        self.refusals: Counter[str] = Counter()
        self.valkey_errors = 0
        self.upstream_errors: Counter[str] = Counter()
        self.streams_open = 0

    def request_done(
        self,
        route: str,
        status: int,
        model: str,
        latency_ms: int,
        ttfb_ms: int,
        usage: Usage,
        cost_mc: int,
    ) -> None:
        self.requests[(route, status, model)] += 1

    def window_refused(self, scope: str) -> None:
        self.refusals[scope] += 1

    def valkey_error(self) -> None:
        self.valkey_errors += 1

    def upstream_error(self, kind: str) -> None:
        self.upstream_errors[kind] += 1

    def stream_opened(self) -> None:
        self.streams_open += 1

    def stream_closed(self) -> None:
        self.streams_open -= 1


_json_lines = False


def configure_logging(level: str, fmt: str) -> None:
    global _json_lines
    _json_lines = fmt == "json"
    logging.basicConfig(
        level=level.upper(),
        format="%(message)s" if _json_lines else "%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def access_log(request_id: str, account_id: str, record: dict[str, Any]) -> None:
    if not access.isEnabledFor(logging.INFO):
        return
    if _json_lines:
        access.info(
            orjson.dumps({"request_id": request_id, "account": account_id, **record}).decode()
        )
    else:
        access.info(
            "%s account=%s %s",
            request_id,
            account_id,
            " ".join(f"{k}={v}" for k, v in record.items()),
        )

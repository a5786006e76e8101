"""The simulator's per-minute rate limits and the `anthropic-ratelimit-*` headers they produce.

Pure accounting: the caller passes the time. State is per process and keyed by the presented
API key, so several simulated upstream keys can each get their own limits later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

_MINUTE = 60.0
_ORG = "00000000-0000-4000-8000-00000000a11e"  # a fixed, obviously simulated organization id


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-minute allowances: requests, input tokens, output tokens."""

    rpm: int
    itpm: int
    otpm: int


@dataclass(slots=True)
class _Window:
    start: float  # epoch seconds of the minute this window counts
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """`headers` for the response; `retry_after` (whole seconds) and `message` when refused."""

    headers: list[tuple[str, str]]
    retry_after: int | None = None
    message: str = ""


@dataclass(slots=True)
class RateLimiter:
    """Fixed one-minute windows per key; every key gets `default` unless `per_key` names it."""

    default: Limits
    per_key: dict[str, Limits] = field(default_factory=dict)
    _windows: dict[str, _Window] = field(default_factory=dict)
    _reset_text: tuple[float, str] = (0.0, "")

    def limits_for(self, key: str) -> Limits:
        return self.per_key.get(key, self.default)

    def _window(self, key: str, now: float) -> _Window:
        start = now - now % _MINUTE
        window = self._windows.get(key)
        if window is None or window.start != start:
            window = self._windows[key] = _Window(start)
        return window

    def _reset(self, start: float) -> str:
        cached_start, text = self._reset_text
        if cached_start != start:
            moment = datetime.fromtimestamp(start + _MINUTE, UTC)
            text = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
            self._reset_text = (start, text)
        return text

    def _headers(self, limits: Limits, window: _Window) -> list[tuple[str, str]]:
        reset = self._reset(window.start)
        left_in = max(0, limits.itpm - window.input_tokens)
        left_out = max(0, limits.otpm - window.output_tokens)
        rows = (("requests", limits.rpm, max(0, limits.rpm - window.requests)),
                ("input-tokens", limits.itpm, left_in),
                ("output-tokens", limits.otpm, left_out),
                ("tokens", limits.itpm + limits.otpm, left_in + left_out))
        out = [("anthropic-organization-id", _ORG)]
        for name, limit, remaining in rows:
            out += ((f"anthropic-ratelimit-{name}-limit", str(limit)),
                    (f"anthropic-ratelimit-{name}-remaining", str(remaining)),
                    (f"anthropic-ratelimit-{name}-reset", reset))
        return out

    def peek(self, key: str, now: float) -> list[tuple[str, str]]:
        """The headers for a response that consumes nothing (models, errors, counting)."""
        return self._headers(self.limits_for(key), self._window(key, now))

    def admit(self, key: str, now: float, input_tokens: int, max_tokens: int,
              output_tokens: int) -> Verdict:
        """Count one request, or refuse it when it would pass a limit.

        Output tokens are checked against `max_tokens` before the answer exists, as the real
        API estimates them, then `output_tokens` (what the answer holds) is what is counted.
        """
        limits = self.limits_for(key)
        window = self._window(key, now)
        over = None
        if window.requests + 1 > limits.rpm:
            over = f"{limits.rpm:,} requests per minute"
        elif window.input_tokens + input_tokens > limits.itpm:
            over = f"{limits.itpm:,} input tokens per minute"
        elif window.output_tokens + max_tokens > limits.otpm:
            over = f"{limits.otpm:,} output tokens per minute"
        if over is not None:
            retry = max(1, math.ceil(window.start + _MINUTE - now))
            message = (
                f"This request would exceed the rate limit for your organization ({_ORG}) of "
                f"{over}. For details, refer to: https://docs.claude.com/en/api/rate-limits. "
                "You can see the response headers for current usage. Please reduce the prompt "
                "length or the maximum tokens requested, or try again later. You may also "
                "contact sales at https://www.anthropic.com/contact-sales to discuss your "
                "options for a rate limit increase.")
            return Verdict(self._headers(limits, window), retry, message)
        window.requests += 1
        window.input_tokens += input_tokens
        window.output_tokens += output_tokens
        return Verdict(self._headers(limits, window))

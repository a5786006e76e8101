"""The domain error tree. Errors carry a wire code and a message; they know nothing of HTTP.

``gateway.wire`` is the one place that maps them to a status and a body shape::

    AntexError
    ├── InvalidRequest            invalid_request_error   400
    │   ├── PayloadTooLarge       payload_too_large       400
    │   ├── MaxTokensTooLarge     max_tokens_too_large    400
    │   └── PreviousResponseNotFound  previous_response_not_found  400
    ├── RequestTimedOut           timeout_error           408 (body not received in time)
    ├── NotFound                  not_found_error         404
    ├── AuthenticationFailed      authentication_error    401
    ├── PermissionDenied          permission_error        403
    │   ├── IpLimitReached        ip_limit_reached        403
    │   ├── KeyQuarantined        key_quarantined         403
    │   └── KeyLimitReached       key_limit_reached       403 (creating a key beyond the plan's cap)
    ├── RateLimited               rate_limit_error        429 (+ retry-after)
    ├── UpstreamFailed            api_error               502 (connect/read failure)
    │   └── UpstreamTimedOut      timeout_error           504 (no byte within the timeout)
    ├── ServiceUnavailable        api_error               503 (Valkey unreachable: fail closed)
    ├── InternalError             api_error               500 (a fault nothing else mapped)
    └── ConfigError               (start-up only, never on the wire)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.clock import rfc3339


class AntexError(Exception):
    code = "api_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(AntexError):
    code = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    code = "payload_too_large"


class MaxTokensTooLarge(InvalidRequest):
    code = "max_tokens_too_large"


class PreviousResponseNotFound(InvalidRequest):
    """The Responses API is served statelessly: there is never a stored response to continue."""

    code = "previous_response_not_found"


class RequestTimedOut(AntexError):
    code = "timeout_error"


class NotFound(AntexError):
    code = "not_found_error"


class AuthenticationFailed(AntexError):
    code = "authentication_error"


class PermissionDenied(AntexError):
    code = "permission_error"


class IpLimitReached(PermissionDenied):
    code = "ip_limit_reached"


class KeyQuarantined(PermissionDenied):
    code = "key_quarantined"


class KeyLimitReached(PermissionDenied):
    """The account already holds as many active keys as its plan allows."""

    code = "key_limit_reached"


class RateLimited(AntexError):
    """A refusal by a credit window or the concurrency cap.

    ``scope`` is ``"5h"``, ``"7d"`` (the window is full), ``"concurrency"`` or
    ``"in_flight"`` (what is left of a window is held by requests still in flight);
    ``retry_after_s`` is the true wait, rounded up.
    """

    code = "rate_limit_error"

    def __init__(
        self, message: str, *, scope: str, retry_after_s: int, resets_at_ms: int | None = None
    ) -> None:
        super().__init__(message)
        self.scope = scope
        self.retry_after_s = max(1, retry_after_s)
        self.resets_at_ms = resets_at_ms


class UpstreamFailed(AntexError):
    """The upstream could not be reached or stopped answering; no upstream body exists."""

    code = "api_error"


class UpstreamTimedOut(UpstreamFailed):
    """No byte from the upstream within the timeout: Anthropic's own 504 type, which the
    clients match to retry."""

    code = "timeout_error"


class InternalError(AntexError):
    """A fault in the gateway itself; logged with its location, answered in wire shape."""

    code = "api_error"


class ServiceUnavailable(AntexError):
    code = "api_error"


class ConfigError(AntexError):
    """A bad setting, raised at start-up; the message names the variable."""

    code = "config_error"


# The refusals' wording: what a customer reads in a 4xx/429 body.

WINDOW_WORDS = {"5h": "5-hour", "7d": "Weekly"}
SECOND_MS = 1000


def duration_text(ms: int) -> str:
    """A wait as people say it: "40 s", "3 min", "2 h 5 min", "1 d 4 h" (rounded up)."""
    seconds = max(1, math.ceil(ms / 1000))
    if seconds < 60:
        return f"{seconds} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


@dataclass(frozen=True, slots=True)
class Frees:
    """When a window frees capacity, as every surface shows it: the 429 (message and
    ``retry-after``), ``GET /v1/usage`` and the dashboard read these, never their own sums.
    ``at_ms`` comes from window_frees.lua; bucket bounds are whole minutes, so the RFC 3339
    second is exact."""

    at_ms: int
    now_ms: int

    @property
    def at(self) -> str:
        return rfc3339(self.at_ms)

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil((self.at_ms - self.now_ms) / 1000))

    @property
    def wait_text(self) -> str:
        return duration_text(self.at_ms - self.now_ms)


def _plural(n: int, word: str, suffix: str = "s") -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{suffix}"


def key_revoked() -> AuthenticationFailed:
    return AuthenticationFailed("This API key has been revoked.")


def already_settled() -> ServiceUnavailable:
    # Only a request id reused after it ended meets this (the edge makes fresh ones).
    return ServiceUnavailable("This request was already settled; retry.")


def quarantined(reason: str) -> KeyQuarantined:
    return KeyQuarantined(
        f"This API key has been quarantined: {reason}. "
        "Ask your operator to review it and issue a new key."
    )


def no_plan(why: str, period_end_ms: int) -> PermissionDenied:
    """``why``: "expired", "missing", "zero_limit" or the account's status."""
    if why == "expired":
        detail = f"the plan period ended at {rfc3339(period_end_ms)}; ask your operator to renew it"
    elif why in ("missing", "zero_limit"):
        detail = "ask your operator to assign one"
    else:
        detail = f"the account is {why}; ask your operator to reactivate it"
    return PermissionDenied(f"No active plan for this account: {detail}.")


def ip_limit(bound: int, slots: int) -> IpLimitReached:
    return IpLimitReached(
        f"This API key is already bound to {_plural(bound, 'IP address', 'es')} and the "
        f"account has {_plural(slots, 'IP slot')}; ask your operator to rotate an IP "
        "or add slots."
    )


def _retry_soon(message: str, scope: str, wait_s: int, now_ms: int) -> RateLimited:
    """A refusal that clears within seconds: ``message`` ends with the wait it names."""
    return RateLimited(
        f"{message}; retry in {wait_s} s.",
        scope=scope,
        retry_after_s=wait_s,
        resets_at_ms=now_ms + wait_s * SECOND_MS,
    )


def too_many_in_flight(in_flight: int, cap: int, wait_s: int, now_ms: int) -> RateLimited:
    return _retry_soon(
        f"Too many concurrent requests: {in_flight} in flight and the plan allows {cap}",
        "concurrency", wait_s, now_ms,
    )  # fmt: skip


def window_held(window: str, wait_s: int, now_ms: int) -> RateLimited:
    """``window`` ("5h" | "7d") has capacity left, but requests in flight hold all of it."""
    return _retry_soon(
        f"{WINDOW_WORDS[window]} usage limit nearly reached: requests still in flight "
        "hold the remaining capacity",
        "in_flight", wait_s, now_ms,
    )  # fmt: skip


def window_full(window: str, frees: Frees) -> RateLimited:
    return RateLimited(
        f"{WINDOW_WORDS[window]} usage limit reached; capacity frees at "
        f"{frees.at} (in {frees.wait_text}).",
        scope=window,
        retry_after_s=frees.retry_after_s,
        resets_at_ms=frees.at_ms,
    )

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

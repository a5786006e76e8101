"""Renders domain errors on the wire: Anthropic JSON, OpenAI JSON, or an SSE error event.

This is the only module that knows which HTTP status and headers each error carries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from gateway import errors
from gateway.clock import rfc3339

if TYPE_CHECKING:
    from gateway.limits import UsageView, WindowUsage

# Claude Code and the Stainless SDKs retry 429s for minutes unless told not to.
RETRY_HINT_LIMIT_S = 60

_STATUS: tuple[tuple[type[errors.AntexError], int], ...] = (
    (errors.InvalidRequest, 400),
    (errors.AuthenticationFailed, 401),
    (errors.KeyLimitReached, 403),
    (errors.PermissionDenied, 403),
    (errors.NotFound, 404),
    (errors.RequestTimedOut, 408),
    (errors.RateLimited, 429),
    (errors.UpstreamTimedOut, 504),
    (errors.UpstreamFailed, 502),
    (errors.ServiceUnavailable, 503),
)

# The one OpenAI mapping of an error type, Anthropic's or ours, whoever found the error:
# type -> (HTTP status, or None to keep the one it came with; OpenAI type; OpenAI code).
OPENAI_ERRORS: dict[str, tuple[int | None, str, str | None]] = {
    "invalid_request_error": (400, "invalid_request_error", None),
    # An unknown model is the one 404 of the Messages API; other not-found errors (a stored
    # response) have no code.
    "not_found_error": (404, "not_found_error", "model_not_found"),
    "request_too_large": (400, "invalid_request_error", "request_too_large"),
    "authentication_error": (401, "authentication_error", "invalid_api_key"),
    "permission_error": (403, "permission_error", "permission_denied"),
    "billing_error": (None, "insufficient_quota", "insufficient_quota"),
    "rate_limit_error": (429, "rate_limit_error", "rate_limit_exceeded"),
    "api_error": (None, "server_error", None),
    "overloaded_error": (503, "server_error", "server_is_overloaded"),
    "timeout_error": (None, "timeout_error", "timeout"),
}
# The OpenAI type of the product's own codes (payload_too_large, ip_limit_reached, ...).
_OPENAI_TYPE_OF_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    429: "rate_limit_error",
}


def status_of(err: errors.AntexError) -> int:
    for cls, status in _STATUS:
        if isinstance(err, cls):
            return status
    return 500


def headers_of(err: errors.AntexError, request_id: str) -> list[tuple[bytes, bytes]]:
    headers = [(b"request-id", request_id.encode())]
    if isinstance(err, errors.RateLimited):
        headers.append((b"retry-after", str(err.retry_after_s).encode()))
        if err.retry_after_s > RETRY_HINT_LIMIT_S:
            headers.append((b"x-should-retry", b"false"))
    elif isinstance(err, errors.AuthenticationFailed | errors.PermissionDenied):
        headers.append((b"x-should-retry", b"false"))
    elif isinstance(err, errors.InvalidRequest | errors.NotFound):
        headers.append((b"x-should-retry", b"false"))
    return headers


def anthropic_body(err: errors.AntexError, request_id: str) -> bytes:
    return orjson.dumps(
        {
            "type": "error",
            "error": {"type": err.code, "message": err.message},
            "request_id": request_id,
        }
    )


def openai_error(err: errors.AntexError) -> dict[str, Any]:
    """The inner OpenAI error object of a domain error (its status is ``status_of``)."""
    mapped = OPENAI_ERRORS.get(err.code)
    code: str | None
    if mapped is None:
        # The product's own codes stay visible as `code`.
        kind, code = _OPENAI_TYPE_OF_STATUS.get(status_of(err), "server_error"), err.code
    else:
        _, kind, code = mapped
    if isinstance(err, errors.NotFound) and err.param != "model":
        code = None
    return {"message": err.message, "type": kind, "code": code, "param": err.param}


def openai_body(err: errors.AntexError) -> bytes:
    return orjson.dumps({"error": openai_error(err)})


def sse_error_event(err: errors.AntexError) -> bytes:
    """One Anthropic ``event: error`` for failures after a 200 was already sent."""
    payload = orjson.dumps({"type": "error", "error": {"type": err.code, "message": err.message}})
    return b"event: error\ndata: " + payload + b"\n\n"


def with_request_id(body: bytes, request_id: str) -> bytes:
    """An upstream error body with its ``request_id`` replaced by the gateway's own, so the
    id a customer quotes is the one in our logs; the error's type and wording stay as sent
    (clients recover by matching them). Bodies that are not such JSON pass unchanged."""
    if b'"request_id"' not in body:
        return body
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(doc, dict) or "request_id" not in doc:
        return body
    doc["request_id"] = request_id
    return orjson.dumps(doc)


def _utilization(used_mc: int, limit_mc: int) -> float:
    if limit_mc <= 0:
        return 100.0 if used_mc > 0 else 0.0
    tenths = min(1000, (used_mc * 1000 + limit_mc // 2) // limit_mc)
    if used_mc < limit_mc:
        tenths = min(tenths, 999)  # 100.0 only once the window is really full
    return tenths / 10


def usage_body(view: UsageView, plan_name: str | None, period_end_ms: int | None) -> dict[str, Any]:
    """Anthropic's subscription-usage shape (``GET /v1/usage``): percentages and reset
    times, never credits."""

    def window(w: WindowUsage) -> dict[str, Any]:
        resets = None if w.resets_at_ms is None else errors.Frees(w.resets_at_ms, view.now_ms).at
        return {"utilization": _utilization(w.used_mc, w.limit_mc), "resets_at": resets}

    return {
        "five_hour": window(view.five_hour),
        "seven_day": window(view.seven_day),
        "plan": {
            "name": plan_name,
            "period_end": None if period_end_ms is None else rfc3339(period_end_ms),
        },
        "requests_in_flight": view.in_flight,
    }

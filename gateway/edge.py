"""The edge every request passes first: its request id, CORS on the public API, and the
last-resort answer for a fault nothing else mapped.

One middleware does all three so a request pays for one extra await, not three. Before it,
an ASGI guard refuses paths that are not plain ASCII (which blacksheep cannot parse) and
puts a deadline on reading the request body.
"""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

from blacksheep import Application, Content, Request, Response, StreamedContent
from blacksheep.exceptions import HTTPException, MessageAborted

from gateway import errors, store, wire

log = logging.getLogger("antex.edge")

_SCOPE_KEY = "antex.request_id"
# Routes that speak OpenAI's wire format; everything else under /v1 speaks Anthropic's.
OPENAI_PATHS = ("/v1/chat/", "/v1/responses")
_PUBLIC = "/v1/"
# Headers a browser script may read from an answer (retry hints and the id to quote).
_EXPOSED = (
    b"request-id, x-request-id, retry-after, retry-after-ms, x-should-retry, "
    b"anthropic-ratelimit-requests-remaining, anthropic-ratelimit-requests-reset"
)
_METHODS = b"GET, POST, OPTIONS"
_PREFLIGHT_MAX_AGE = b"600"

Handler = Callable[[Request], Awaitable[Response]]
Middleware = Callable[[Request, Handler], Awaitable[Response]]


def new_request_id() -> str:
    return "req_" + os.urandom(12).hex()


def request_id(request: Request) -> str:
    """The request's one id: made on first use (the edge middleware), the same thereafter.

    It answers in the ``request-id`` header, names the access-log line and the usage record,
    and is what a customer quotes to support.
    """
    scope = cast(dict[str, Any], request.scope)  # ASGI scopes carry extension keys
    rid = scope.get(_SCOPE_KEY)
    if rid is None:
        rid = scope[_SCOPE_KEY] = new_request_id()
    return str(rid)


def is_openai(request: Request) -> bool:
    return request.path.startswith(OPENAI_PATHS)


def error_response(request: Request, exc: errors.AntexError) -> Response:
    """The single mapping from a domain error to the route's wire shape."""
    rid = request_id(request)
    body = wire.openai_body(exc) if is_openai(request) else wire.anthropic_body(exc, rid)
    return Response(
        wire.status_of(exc), wire.headers_of(exc, rid), Content(b"application/json", body)
    )


def route_template(app: Application, request: Request) -> str:
    """The matched route's pattern (``/v1/models/:model_id``), never the raw path: paths
    can hold anything a client typed, keys included. Unmatched paths log as ``(unmatched)``."""
    match = app.router.get_match_by_method_and_path(request.method, request.path)
    return match.pattern.decode() if match is not None else "(unmatched)"


def _where(exc: BaseException) -> str:
    """File and line of the innermost frame: enough to find the fault, no request values
    (an exception's message and a frame's locals can quote the client's input)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{os.path.basename(last.filename)}:{last.lineno} in {last.name}"


def _allowed_origin(origin: bytes, allowed: frozenset[bytes] | None) -> bytes | None:
    if allowed is None:
        return b"*"
    return origin if origin in allowed else None


def edge_middleware(app: Application, cors_origins: frozenset[bytes] | None) -> Middleware:
    """Builds the middleware. ``cors_origins`` None allows any origin: keys, not cookies,
    authenticate the public API, so a page on another origin gains nothing a script could
    not already do with the key. The cookie-based dashboard and the admin API never answer
    cross-origin requests.

    blacksheep's own CORS strategy applies one default policy to every route and answers a
    disallowed origin with 400, which would break the dashboard's same-origin form posts
    (browsers send ``Origin`` on them); so the public routes are handled here instead.
    """

    async def edge(request: Request, handler: Handler) -> Response:
        rid = request_id(request)
        public = request.path.startswith(_PUBLIC)
        origin = request.get_first_header(b"origin") if public else None
        allow = _allowed_origin(origin, cors_origins) if origin else None
        if (
            origin is not None
            and request.method == "OPTIONS"
            and request.get_first_header(b"access-control-request-method")
        ):
            return _preflight(request, allow)
        try:
            response = await handler(request)
        except errors.AntexError as exc:
            response = await app.handle_request_handler_exception(request, exc)
        except store.OUTAGES as exc:
            # Every route's Valkey outage ends here: a 503 in the route's shape, counted and
            # alerted by the one error handler like any other domain error.
            response = await app.handle_request_handler_exception(request, store.unavailable(exc))
        except MessageAborted:
            # The server gave up on the body: malformed chunked framing, or the client left.
            bad = errors.InvalidRequest("The request body was malformed or cut short.")
            response = await app.handle_request_handler_exception(request, bad)
        except HTTPException as exc:
            # The dashboard and admin API keep blacksheep's own mapping (HTTP errors,
            # redirects raised as exceptions).
            response = await app.handle_request_handler_exception(request, exc)
        except Exception as exc:
            log.error(
                "unexpected %s at %s on %s %s",
                type(exc).__name__, _where(exc), request.method, route_template(app, request),
            )  # fmt: skip
            internal = errors.InternalError("Internal error.")
            response = await app.handle_request_handler_exception(request, internal)
        response.set_header(b"request-id", rid.encode())
        if public and is_openai(request):
            response.set_header(b"x-request-id", rid.encode())
        if allow is not None:
            response.set_header(b"access-control-allow-origin", allow)
            response.set_header(b"access-control-expose-headers", _EXPOSED)
            if allow != b"*":
                response.add_header(b"vary", b"Origin")
        return response

    return edge


def _preflight(request: Request, allow: bytes | None) -> Response:
    """A credential-less preflight: 204 naming what the real request may carry."""
    if allow is None:
        return Response(403, [], Content(b"text/plain", b"origin not allowed\n"))
    asked = request.get_first_header(b"access-control-request-headers")
    headers = [
        (b"access-control-allow-origin", allow),
        (b"access-control-allow-methods", _METHODS),
        (b"access-control-allow-headers", asked or b"*"),
        (b"access-control-max-age", _PREFLIGHT_MAX_AGE),
        (b"request-id", request_id(request).encode()),
    ]
    if allow != b"*":
        headers.append((b"vary", b"Origin"))
    return Response(204, headers, None)


def stream_response(
    headers: list[tuple[bytes, bytes]],
    chunks: Callable[[], AsyncIterator[bytes]],
    content_type: bytes = b"text/event-stream",
) -> Response:
    """A 200 whose body is written as ``chunks`` yields it, for every streamed answer.

    ``chunks`` must never yield an empty part: blacksheep ends the chunked body on one, so
    the client's stream would end after it (``UpstreamStream.body`` drops them where they
    are made, saving a generator layer per chunk here).
    """
    return Response(200, headers, StreamedContent(content_type, chunks))


ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _clean_path(raw: bytes) -> bool:
    # Visible ASCII only: anything else is refused before blacksheep tries to parse it.
    return raw.isascii() and all(0x20 < b < 0x7F for b in raw)


def asgi_guard(app: ASGIApp, body_read_timeout: float) -> ASGIApp:
    """Wraps the ASGI app: a path with raw non-ASCII or control bytes gets a 400 in the
    route's JSON shape (never logged); reading the request body must finish within
    ``body_read_timeout`` seconds of the request's start, else the read raises
    RequestTimedOut (a 408 in the route's shape). After the body is complete, ``receive``
    is left alone (stream handlers wait on it for the client's disconnect)."""

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        raw = scope.get("raw_path") or b""
        if raw and not _clean_path(raw.split(b"?", 1)[0]):
            return await _refuse_path(scope, send)
        deadline = asyncio.get_running_loop().time() + body_read_timeout
        complete = False

        async def timed() -> dict[str, Any]:
            nonlocal complete
            try:
                async with asyncio.timeout_at(deadline):
                    message = cast(dict[str, Any], await receive())
            except TimeoutError:
                raise errors.RequestTimedOut(
                    f"The request body was not received within {body_read_timeout:g} s."
                ) from None
            if message.get("type") != "http.request" or not message.get("more_body"):
                complete = True
            return message

        def receive_in_time() -> Awaitable[dict[str, Any]]:
            # Once the body is in, the server's own awaitable goes out as is (granian's is a
            # future: the disconnect watch hangs a callback on it instead of a task).
            return cast(Awaitable[dict[str, Any]], receive()) if complete else timed()

        return await app(scope, receive_in_time, send)

    return guarded


async def _refuse_path(scope: dict[str, Any], send: Any) -> None:
    rid = new_request_id()
    err = errors.InvalidRequest("The request path must be plain ASCII (percent-encode it).")
    path = str(scope.get("path", ""))
    body = wire.openai_body(err) if path.startswith(OPENAI_PATHS) else wire.anthropic_body(err, rid)
    headers = [(k, v) for k, v in wire.headers_of(err, rid)]
    headers += [(b"content-type", b"application/json"), (b"connection", b"close")]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""The OpenAPI 3.1 document served at ``/openapi.json``.

The ``/admin`` operations and their schemas are generated from ``gateway.admin_routes`` (the
table that also registers them) and the msgspec models of ``gateway.admin_models``. The
public routes are written out here, as plain JSON Schema, because their bodies are the
Anthropic and OpenAI wire formats, passed through rather than decoded into models. A unit
test checks that every route the app registers is documented.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__, admin_routes

JSON = "application/json"
Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: tuple[str, ...] = (), *, open_: bool = False, **props: Schema) -> Schema:
    schema: Schema = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    if not open_:
        schema["additionalProperties"] = False
    return schema


def nullable(kind: str, **extra: Any) -> Schema:
    return {"type": [kind, "null"], **extra}


STR, INT, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}

SCHEMAS: dict[str, Schema] = {
    "Error": obj(
        ("type", "error"),
        open_=True,
        type={"const": "error"},
        error=obj(
            ("type", "message"),
            type={
                **STR,
                "description": "authentication_error, permission_error, ip_limit_reached, "
                "key_quarantined, key_limit_reached, rate_limit_error, invalid_request_error, "
                "payload_too_large, max_tokens_too_large, not_found_error, api_error",
            },
            message=STR,
        ),
        request_id=STR,
    ),
    "OpenAIError": obj(
        ("error",),
        error=obj(
            ("message", "type", "code", "param"),
            message=STR,
            type=STR,
            code=nullable("string"),
            param=nullable("string"),
        ),
    ),
    "MessagesRequest": obj(
        ("model", "messages"),
        open_=True,
        model=STR,
        max_tokens={**INT, "minimum": 1, "description": "at most ANTEX_MAX_TOKENS"},
        messages={"type": "array", "items": {"type": "object"}},
        system={"type": ["string", "array"]},
        stream=BOOL,
        tools={"type": "array", "items": {"type": "object"}},
    ),
    "Message": obj(
        ("id", "type", "role", "content", "model", "usage"),
        open_=True,
        id=STR,
        type={"const": "message"},
        role={"const": "assistant"},
        model=STR,
        content={"type": "array", "items": {"type": "object"}},
        stop_reason=nullable("string"),
        usage={"type": "object"},
    ),
    "CountTokensRequest": obj(
        ("model", "messages"), open_=True, model=STR, messages={"type": "array"}
    ),
    "CountTokens": obj(("input_tokens",), open_=True, input_tokens=INT),
    "Model": obj(
        ("id", "type", "display_name", "created_at"),
        type={"const": "model"},
        id=STR,
        display_name=STR,
        created_at=TIME,
        object={"const": "model"},
        created=INT,
        owned_by=STR,
    ),
    "ModelList": obj(
        ("data", "has_more", "first_id", "last_id"),
        data={"type": "array", "items": ref("Model")},
        has_more=BOOL,
        first_id=nullable("string"),
        last_id=nullable("string"),
        object={"const": "list"},
    ),
    "ChatCompletionRequest": obj(
        ("model", "messages"), open_=True, model=STR, messages={"type": "array"}, stream=BOOL
    ),
    "ChatCompletion": obj(
        ("id", "object", "choices"),
        open_=True,
        id=STR,
        object={"const": "chat.completion"},
        choices={"type": "array"},
        usage={"type": "object"},
    ),
    "ResponsesRequest": obj(("model", "input"), open_=True, model=STR, input={}, stream=BOOL),
    "Response": obj(
        ("id", "object", "output"),
        open_=True,
        id=STR,
        object={"const": "response"},
        output={"type": "array"},
        usage={"type": "object"},
    ),
}


def _error(description: str, schema: str = "Error") -> Schema:
    return {"description": description, "content": {JSON: {"schema": ref(schema)}}}


_RETRY = {"retry-after": {"schema": INT, "description": "seconds until capacity frees"}}
_ERRORS: tuple[tuple[str, str, str], ...] = (
    ("BadRequest", "400", "invalid_request_error, payload_too_large or max_tokens_too_large"),
    ("Unauthorized", "401", "authentication_error: missing, invalid or revoked credentials"),
    (
        "Forbidden",
        "403",
        "permission_error (no active plan), ip_limit_reached, key_quarantined; on key creation "
        "key_limit_reached (the account holds as many active keys as its plan allows)",
    ),
    ("ReadOnly", "403", "permission_error: a read-only operator token cannot change anything"),
    ("NotFound", "404", "not_found_error"),
    ("RateLimited", "429", "rate_limit_error: a credit window is full or too many in flight"),
    ("Upstream", "502", "api_error: the upstream could not be reached (504: it stopped answering)"),
    ("Unavailable", "503", "api_error: Valkey is unreachable; nothing was sent upstream"),
)
RESPONSES: dict[str, Schema] = {}
for _name, _status, _text in _ERRORS:
    # The OpenAI routes answer the same errors in OpenAI's shape.
    for _prefix, _schema in (("", "Error"), ("OpenAI", "OpenAIError")):
        RESPONSES[_prefix + _name] = _error(_text, _schema)
        if _status == "429":
            RESPONSES[_prefix + _name]["headers"] = _RETRY

_CUSTOMER: list[Schema] = [{"ApiKey": []}, {"ApiKeyBearer": []}]


def _ok(schema: Schema | None, description: str = "OK", status: str = "200") -> dict[str, Schema]:
    body: Schema = {"description": description}
    if schema is not None:
        body["content"] = {JSON: {"schema": schema}}
    return {status: body}


def public(
    op_id: str,
    summary: str,
    ok: dict[str, Schema],
    *,
    body: str | None = None,
    openai: bool = False,
) -> Schema:
    responses: Schema = dict(ok)
    for name, status, _ in _ERRORS:
        wired = f"OpenAI{name}" if openai else name
        responses[status] = {"$ref": f"#/components/responses/{wired}"}
    op: Schema = {"operationId": op_id, "summary": summary, "security": _CUSTOMER}
    op["tags"] = ["openai" if openai else "anthropic"]
    if body is not None:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": ref(body)}}}
    op["responses"] = responses
    return op


def path_param(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": STR, "description": description}


def query_param(name: str, description: str, schema: Schema = INT) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_SSE = {"text/event-stream": {"schema": {"type": "string", "description": "server-sent events"}}}


def _json_or_sse(schema: str) -> dict[str, Schema]:
    return {
        "200": {
            "description": "JSON, or an event stream when the request sets stream: true",
            "content": {JSON: {"schema": ref(schema)}, **_SSE},
        }
    }


def _paths() -> dict[str, Schema]:
    probe = {"security": [], "tags": ["probes"]}
    usage = public(
        "getUsage", "The account's credit windows as percentages", _ok(ref("SubscriptionUsage"))
    )
    return {
        "/": {
            "get": {**probe, "operationId": "root", "responses": _ok(None, "plain-text banner")},
            "head": {**probe, "operationId": "rootHead", "responses": _ok(None)},
        },
        "/healthz": {
            "get": {**probe, "operationId": "healthz", "responses": _ok(obj(status=STR))},
            "head": {**probe, "operationId": "healthzHead", "responses": _ok(None)},
        },
        "/readyz": {
            "head": {**probe, "operationId": "readyzHead", "responses": _ok(None)},
            "get": {
                **probe,
                "operationId": "readyz",
                "responses": {
                    **_ok(obj(status=STR), "Valkey reachable"),
                    "503": {"description": "Valkey unreachable"},
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics of all workers; keep it private",
                "tags": ["probes"],
                "security": [{}, {"MetricsToken": []}],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": STR}},
                    },
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                },
            }
        },
        "/openapi.json": {
            "get": {
                **probe,
                "operationId": "openapi",
                "summary": "This document",
                "responses": _ok({"type": "object"}),
            }
        },
        "/v1/messages": {
            "post": public(
                "createMessage",
                "Anthropic Messages, proxied and billed",
                _json_or_sse("Message"),
                body="MessagesRequest",
            )
        },
        "/v1/messages/count_tokens": {
            "post": public(
                "countTokens",
                "Count input tokens (not billed)",
                _ok(ref("CountTokens")),
                body="CountTokensRequest",
            )
        },
        "/v1/models": {
            "get": {
                **public("listModels", "Models of the catalog", _ok(ref("ModelList"))),
                "parameters": [
                    query_param("after_id", "page after this model id", STR),
                    query_param("before_id", "page before this model id", STR),
                    query_param("limit", "page size, 1-1000 (default 20)"),
                ],
            }
        },
        "/v1/models/{model_id}": {
            "get": {
                **public("getModel", "One model", _ok(ref("Model"))),
                "parameters": [path_param("model_id", "model id or alias")],
            }
        },
        "/v1/usage": {"get": usage},
        "/api/oauth/usage": {
            "get": {
                **usage,
                "operationId": "getOauthUsage",
                "summary": "Same as /v1/usage, at Claude Code's path",
            }
        },
        "/v1/chat/completions": {
            "post": public(
                "createChatCompletion",
                "OpenAI Chat Completions, translated to Messages",
                _json_or_sse("ChatCompletion"),
                body="ChatCompletionRequest",
                openai=True,
            )
        },
        "/v1/responses": {
            "post": public(
                "createResponse",
                "OpenAI Responses, translated to Messages",
                _json_or_sse("Response"),
                body="ResponsesRequest",
                openai=True,
            )
        },
        "/v1/responses/{response_id}": {
            "get": {
                **public(
                    "getResponse",
                    "Responses are not stored: always 404 for a valid key",
                    {},
                    openai=True,
                ),
                "parameters": [path_param("response_id", "a response id")],
            }
        },
        **admin_routes.paths(),
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Antex gateway",
            "version": __version__,
            "description": "Anthropic-compatible gateway with rolling 5-hour and 7-day credit "
            "windows. Customer routes take an sk_live_ key (x-api-key or Authorization: Bearer); "
            "/admin routes take an operator token from `antex admin-token create`.",
        },
        "tags": [
            {"name": "anthropic"},
            {"name": "openai"},
            {"name": "admin"},
            {"name": "probes"},
        ],
        "paths": _paths(),
        "components": {
            "schemas": {**SCHEMAS, **admin_routes.components()},
            "responses": RESPONSES,
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "ApiKeyBearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the sk_live_ key",
                },
                "OperatorToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "antex_op_… from `antex admin-token create`",
                },
                "MetricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "ANTEX_METRICS_TOKEN",
                },
            },
        },
    }

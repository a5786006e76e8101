"""The hand-written OpenAPI 3.1 document of the public routes and the ``/admin`` API.

Written out rather than generated, so it says what clients may rely on; a unit test checks
that every route the app registers is in it and that every ``/admin`` operation exists.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__

JSON = "application/json"
Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: tuple[str, ...] = (), *, open_: bool = False, **props: Schema) -> Schema:
    return object_of(required, props, open_=open_)


def object_of(
    required: tuple[str, ...], props: dict[str, Schema], *, open_: bool = False
) -> Schema:
    schema: Schema = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    if not open_:
        schema["additionalProperties"] = False
    return schema


def nullable(kind: str, **extra: Any) -> Schema:
    return {"type": [kind, "null"], **extra}


def list_of(name: str) -> Schema:
    return obj(("data",), data={"type": "array", "items": ref(name)})


def page_of(name: str) -> Schema:
    """A paginated list: pass ``next_cursor`` back as ``cursor`` until it is null."""
    return obj(
        ("data", "next_cursor"),
        data={"type": "array", "items": ref(name)},
        next_cursor={**nullable("string"), "description": "the next page's cursor"},
    )


STR, INT, NUM, BOOL = (
    {"type": "string"},
    {"type": "integer"},
    {"type": "number"},
    {"type": "boolean"},
)
TIME = {"type": "string", "format": "date-time"}
MS = {"type": "integer", "description": "milliseconds since the Unix epoch"}

_WINDOW = obj(
    ("utilization", "resets_at"),
    utilization={"type": "number", "minimum": 0, "maximum": 100, "description": "percent used"},
    resets_at={**nullable("string"), "format": "date-time"},
)

_ACCOUNT_REQUIRED = ("id", "email", "plan", "subscription")
_ACCOUNT_FIELDS: dict[str, Schema] = {
    "id": STR,
    "email": STR,
    "plan": nullable("string"),
    "subscription": {"enum": ["active", "expired", "cancelled", "none"]},
    "period_end_ms": nullable("integer"),
    "period_end": {**nullable("string"), "format": "date-time"},
    "credits_5h": nullable("integer"),
    "credits_7d": nullable("integer"),
    "ip_slots": {**INT, "description": "IP slots per key from the plan"},
    "extra_ip_slots": {**INT, "description": "bought slots, added to every key"},
    "concurrency": INT,
    "max_keys": {**INT, "description": "active (not revoked) keys the plan allows"},
    "shared_flag_ms": {**nullable("integer"), "description": "flagged for key sharing at"},
    "shared_flag_reason": nullable("string"),
    "created_ms": MS,
    "created_at": {**nullable("string"), "format": "date-time"},
}

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
    "SubscriptionUsage": obj(
        ("five_hour", "seven_day", "plan", "requests_in_flight"),
        five_hour=_WINDOW,
        seven_day=_WINDOW,
        plan=obj(
            ("name", "period_end"),
            name=nullable("string"),
            period_end={**nullable("string"), "format": "date-time"},
        ),
        requests_in_flight=INT,
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
    # -- admin
    "Account": object_of(_ACCOUNT_REQUIRED, _ACCOUNT_FIELDS),
    "AccountDetail": object_of(
        (*_ACCOUNT_REQUIRED, "keys"),
        {**_ACCOUNT_FIELDS, "keys": {"type": "array", "items": ref("Key")}},
    ),
    "Key": obj(
        ("key_id", "name", "prefix", "status", "bound_ips", "ip_slots"),
        open_=True,
        account_id=STR,
        key_id=STR,
        name=STR,
        prefix={**STR, "description": "sk_live_<key id>_…; the secret is never shown again"},
        status={"enum": ["active", "revoked", "quarantined"]},
        quarantine_reason=nullable("string"),
        quarantined_ms=nullable("integer"),
        created_ms=MS,
        last_used_ms=nullable("integer"),
        bound_ips={"type": "array", "items": STR},
        extra_ip_slots=INT,
        ip_slots={**INT, "description": "plan + account extra + key extra"},
    ),
    "CreatedKey": obj(
        ("account_id", "key_id", "name", "key"),
        account_id=STR,
        key_id=STR,
        name=STR,
        key={**STR, "description": "the full key, in this response only"},
    ),
    "IpBindings": obj(
        ("key_id", "account_id", "ip_slots", "bound"),
        key_id=STR,
        account_id=STR,
        ip_slots=INT,
        bound={
            "type": "array",
            "items": obj(
                ("ip", "bound_ms"),
                ip={**STR, "description": "an IPv4 address or an IPv6 /64"},
                bound_ms=MS,
                bound_at={**nullable("string"), "format": "date-time"},
            ),
        },
    ),
    "Unbound": obj(("key_id", "unbound"), key_id=STR, unbound={"type": "array", "items": STR}),
    "KeySlots": obj(
        ("key_id", "extra_ip_slots", "ip_slots"), key_id=STR, extra_ip_slots=INT, ip_slots=INT
    ),
    "ClearedReservations": obj(
        ("account_id", "email", "cleared"), account_id=STR, email=STR, cleared=INT
    ),
    "AccountSlots": obj(("account_id", "extra_ip_slots"), account_id=STR, extra_ip_slots=INT),
    "QuarantinedKey": {
        "allOf": [ref("Key"), obj(("email",), open_=True, email=nullable("string"))]
    },
    "Event": obj(
        ("id", "type"),
        open_=True,
        id={**STR, "description": "stream entry id"},
        type={
            "enum": [
                "key_quarantined",
                "wrong_secrets",
                "key_released",
                "key_revoked",
                "ip_unbound",
                "account_flagged",
                "flag_cleared",
                "deletion_requested",
            ]
        },
        key_id=STR,
        at_ms=MS,
        at=TIME,
        reason=STR,
        ips={"type": "array", "items": STR},
    ),
    "UsageReport": obj(
        ("account_id", "usage", "credits", "recent_requests"),
        account_id=STR,
        email=nullable("string"),
        usage=ref("SubscriptionUsage"),
        credits=obj(
            ("five_hour", "seven_day", "reserved"),
            five_hour=obj(("used", "limit"), used=NUM, limit=INT),
            seven_day=obj(("used", "limit"), used=NUM, limit=INT),
            reserved=NUM,
        ),
        recent_requests={
            "type": "array",
            "items": {
                "type": "object",
                "description": "usage metadata only: model, route, status, tokens, credits_mc, "
                "latency_ms, key_id, ip_tag, at_ms",
            },
        },
    ),
    "Plan": obj(
        ("name", "credits_5h", "credits_7d", "ip_slots", "concurrency", "period_days", "max_keys"),
        name=STR,
        credits_5h=INT,
        credits_7d=INT,
        ip_slots=INT,
        concurrency=INT,
        period_days=INT,
        description=STR,
        max_keys={**INT, "description": "active (not revoked) keys per account"},
    ),
    "PlanInput": obj(
        ("credits_5h", "credits_7d", "ip_slots", "concurrency"),
        credits_5h={**INT, "minimum": 1},
        credits_7d={**INT, "minimum": 1},
        ip_slots={**INT, "minimum": 1},
        concurrency={**INT, "minimum": 1},
        period_days={**INT, "minimum": 1, "default": 30},
        description=STR,
        max_keys={
            **INT,
            "minimum": 1,
            "description": "active keys per account; default: unchanged, 5 for a new plan",
        },
    ),
    "PlanSaved": obj(("plan", "accounts_updated"), plan=ref("Plan"), accounts_updated=INT),
    "AccountList": page_of("Account"),
    "KeyList": list_of("Key"),
    "FlaggedAccount": obj(
        ("account_id", "email", "flagged_ms", "reason"),
        account_id=STR,
        email=nullable("string"),
        flagged_ms=MS,
        flagged_at={**nullable("string"), "format": "date-time"},
        reason=STR,
    ),
    "QuarantineList": obj(
        ("data", "next_cursor", "flagged"),
        data={"type": "array", "items": ref("QuarantinedKey")},
        next_cursor={**nullable("string"), "description": "pass as `cursor` for the next page"},
        flagged={
            "type": "array",
            "items": ref("FlaggedAccount"),
            "description": "accounts flagged for key sharing: listed for review, not locked",
        },
    ),
    "AuditEntry": obj(
        ("id", "at_ms", "at", "actor", "action", "target", "changes"),
        id=STR,
        at_ms=MS,
        at=TIME,
        actor={**STR, "description": "operator token name, console:<name>, or cli@<host>"},
        action={**STR, "description": "e.g. account.plan, key.revoke, plan.set, token.create"},
        target={"type": "object", "additionalProperties": STR},
        changes={
            "type": "object",
            "description": "changed fields: [before, after]; never a secret",
            "additionalProperties": {"type": "array", "minItems": 2, "maxItems": 2},
        },
    ),
    "AuditList": page_of("AuditEntry"),
    "DeletionRequest": obj(
        ("account_id", "email", "requested_ms", "requested_at", "age_days", "overdue"),
        account_id=STR,
        email=nullable("string"),
        requested_ms=MS,
        requested_at=TIME,
        age_days=NUM,
        overdue={**BOOL, "description": "older than the 7 days the Privacy Policy promises"},
    ),
    "DeletionList": page_of("DeletionRequest"),
    "AccountDeleted": obj(
        ("email_sha256", "keys_deleted", "valkey_keys_deleted", "requested_ms"),
        email_sha256=STR,
        keys_deleted=INT,
        valkey_keys_deleted=INT,
        requested_ms=nullable("integer"),
    ),
    "EventList": list_of("Event"),
    "PlanList": list_of("Plan"),
    "Upstream": obj(
        ("id", "name", "enabled", "weight", "state"),
        id={**STR, "description": "up_… (or env: ANTEX_UPSTREAM_URL/ANTEX_UPSTREAM_KEY)"},
        name=STR,
        url=nullable("string"),
        weight={**INT, "minimum": 1, "maximum": 1000},
        enabled=BOOL,
        models={"type": "array", "items": STR, "description": "empty: every model"},
        max_concurrent=nullable("integer", description="requests in flight per worker"),
        key_fingerprint=nullable("string", description="sha256:… of the key; never the key"),
        created_ms=nullable("integer"),
        disabled_reason=nullable("string"),
        disabled_ms=nullable("integer"),
        state={"enum": ["ready", "half_open", "cooling", "circuit_open", "disabled", "unknown"]},
        headroom=nullable("number", description="smallest remaining/limit share last seen"),
        cooling_until_ms=nullable("integer"),
        reported_ms=nullable("integer", description="when a worker last reported its health"),
    ),
    "UpstreamList": list_of("Upstream"),
    "UpstreamInput": obj(
        ("name", "url", "key"),
        name=STR,
        url={**STR, "description": "base URL, e.g. https://api.anthropic.com"},
        key={**STR, "writeOnly": True, "description": "the upstream's API key, stored sealed"},
        weight={**INT, "minimum": 1, "maximum": 1000},
        models={"type": "array", "items": STR},
        max_concurrent={**INT, "minimum": 1},
    ),
    "UpstreamRemoved": obj(("id", "removed"), id=STR, removed={"const": True}),
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
_OPERATOR: list[Schema] = [{"OperatorToken": []}]


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


def admin(
    op_id: str,
    summary: str,
    ok: dict[str, Schema],
    *,
    body: Schema | None = None,
    query: list[Schema] | None = None,
) -> Schema:
    responses: Schema = dict(ok)
    responses["400"] = {"$ref": "#/components/responses/BadRequest"}
    responses["401"] = {"$ref": "#/components/responses/Unauthorized"}
    responses["403"] = {"$ref": "#/components/responses/ReadOnly"}
    responses["404"] = {"$ref": "#/components/responses/NotFound"}
    responses["503"] = {"$ref": "#/components/responses/Unavailable"}
    op: Schema = {
        "operationId": op_id,
        "summary": summary,
        "tags": ["admin"],
        "security": _OPERATOR,
    }
    if query:
        op["parameters"] = query
    if body is not None:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
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


_ACCOUNT = path_param("account", "account id or email (URL-encoded)")
_PAGE = [
    query_param("limit", "page size, 1-500 (default 100)"),
    query_param("cursor", "next_cursor of the previous page", STR),
]
_KEY = path_param("key_id", "key id, or the display prefix sk_live_<key id>_…")
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
        **_admin_paths(),
    }


def _admin_paths() -> dict[str, Schema]:
    account, key = [_ACCOUNT], [_KEY]
    upstream = [path_param("upstream", "upstream id or name (env: the environment's upstream)")]
    add_slots = obj(("add",), add={**INT, "description": "slots to add; negative removes"})
    return {
        "/admin/accounts": {
            "get": admin(
                "adminListAccounts",
                "Accounts by email, a page at a time",
                _ok(ref("AccountList")),
                query=[*_PAGE, query_param("q", "only emails or ids containing this", STR)],
            ),
            "post": admin(
                "adminCreateAccount",
                "Create an account (plan omitted: ANTEX_DEFAULT_PLAN; plan null: no plan)",
                _ok(ref("AccountDetail"), "Created", "201"),
                body=obj(("email",), email=STR, plan=nullable("string")),
            ),
        },
        "/admin/accounts/{account}": {
            "parameters": account,
            "get": admin("adminShowAccount", "An account with its keys", _ok(ref("AccountDetail"))),
            "delete": admin(
                "adminDeleteAccount",
                "Erase the account, its keys, bindings, usage, sessions and sign-in links; "
                "the audit trail keeps only the email's SHA-256",
                _ok(ref("AccountDeleted")),
            ),
        },
        "/admin/accounts/{account}/plan": {
            "parameters": account,
            "post": admin(
                "adminAssignPlan",
                "Put the account on a plan for a fresh period from now (reactivates it)",
                _ok(ref("Account")),
                body=obj(("plan",), plan=STR, period_days={**INT, "minimum": 1}),
            ),
        },
        "/admin/accounts/{account}/extend": {
            "parameters": account,
            "post": admin(
                "adminExtendPlan",
                "Add days to the period (from now if it ended); reactivates a cancelled account",
                _ok(ref("Account")),
                body=obj(days={**INT, "minimum": 1, "description": "default: the plan's period"}),
            ),
        },
        "/admin/accounts/{account}/cancel": {
            "parameters": account,
            "post": admin("adminCancelPlan", "End the subscription now", _ok(ref("Account"))),
        },
        "/admin/accounts/{account}/ip-slots": {
            "parameters": account,
            "post": admin(
                "adminAccountSlots",
                "Extra IP slots for every key of the account",
                _ok(ref("AccountSlots")),
                body=add_slots,
            ),
        },
        "/admin/accounts/{account}/usage": {
            "parameters": account,
            "get": admin(
                "adminUsage",
                "Both windows, credits and the recent request log (metadata only)",
                _ok(ref("UsageReport")),
                query=[query_param("requests", "recent requests to include, 1-100 (default 20)")],
            ),
        },
        "/admin/accounts/{account}/events": {
            "parameters": account,
            "get": admin(
                "adminEvents",
                "Security events, newest first",
                _ok(ref("EventList")),
                query=[query_param("count", "events to return, 1-100 (default 50)")],
            ),
        },
        "/admin/accounts/{account}/keys": {
            "parameters": account,
            "get": admin(
                "adminListKeys", "The account's keys (never a secret)", _ok(ref("KeyList"))
            ),
            "post": admin(
                "adminCreateKey",
                "Create a key (at most the plan's max_keys active); the full key is in this "
                "response only",
                {
                    **_ok(ref("CreatedKey"), "Created", "201"),
                    "403": {"$ref": "#/components/responses/Forbidden"},
                },
                body=obj(name=STR),
            ),
        },
        "/admin/keys/{key_id}": {
            "parameters": key,
            "get": admin("adminShowKey", "One key", _ok(ref("Key"))),
        },
        "/admin/keys/{key_id}/revoke": {
            "parameters": key,
            "post": admin(
                "adminRevokeKey",
                "Revoke a key: refused on every worker from the next request",
                _ok(ref("Key")),
            ),
        },
        "/admin/keys/{key_id}/release": {
            "parameters": key,
            "post": admin("adminReleaseKey", "Lift a key's quarantine", _ok(ref("Key"))),
        },
        "/admin/keys/{key_id}/ips": {
            "parameters": key,
            "get": admin("adminListIps", "The key's bound IPs and slots", _ok(ref("IpBindings"))),
        },
        "/admin/keys/{key_id}/ips/unbind": {
            "parameters": key,
            "post": admin(
                "adminUnbindIps",
                "Free one bound IP (an IPv6 address frees its /64) or all of them",
                _ok(ref("Unbound")),
                body={"oneOf": [obj(("ip",), ip=STR), obj(("all",), all={"const": True})]},
            ),
        },
        "/admin/keys/{key_id}/ip-slots": {
            "parameters": key,
            "post": admin(
                "adminKeySlots", "Extra IP slots for one key", _ok(ref("KeySlots")), body=add_slots
            ),
        },
        "/admin/accounts/{account}/clear-flag": {
            "parameters": account,
            "post": admin(
                "adminClearFlag",
                "Clear the account's key-sharing flag and the networks counted so far",
                _ok(ref("Account")),
            ),
        },
        "/admin/accounts/{account}/clear-reservations": {
            "parameters": account,
            "post": admin(
                "adminClearReservations",
                "Drop the account's reservations (requests in flight a lost gateway node "
                "left held); their requests are still billed when they end",
                _ok(ref("ClearedReservations")),
            ),
        },
        "/admin/quarantine": {
            "get": admin(
                "adminQuarantine",
                "Keys in quarantine, newest first, and accounts flagged for key sharing",
                _ok(ref("QuarantineList")),
                query=[*_PAGE, query_param("account", "only this account (id or email)", STR)],
            )
        },
        "/admin/audit": {
            "get": admin(
                "adminAudit",
                "The operator audit trail, newest first",
                _ok(ref("AuditList")),
                query=[
                    *_PAGE,
                    query_param("actor", "exactly this actor", STR),
                    query_param("action", "this action or family (key, key.revoke)", STR),
                    query_param("since_ms", "entries at or after this time (ms)"),
                    query_param("account", "entries about this account (id or email)", STR),
                ],
            )
        },
        "/admin/deletion-requests": {
            "get": admin(
                "adminDeletionRequests",
                "Customers' open deletion requests, oldest first",
                _ok(ref("DeletionList")),
                query=_PAGE,
            )
        },
        "/admin/plans": {"get": admin("adminListPlans", "The plan catalog", _ok(ref("PlanList")))},
        "/admin/upstreams": {
            "get": admin(
                "adminListUpstreams",
                "The upstream pool with health and rate-limit headroom (never a key)",
                _ok(ref("UpstreamList")),
            ),
            "post": admin(
                "adminAddUpstream",
                "Add an upstream; its key is sealed with the master key and never shown again",
                _ok(ref("Upstream"), "Created", "201"),
                body=ref("UpstreamInput"),
            ),
        },
        "/admin/upstreams/{upstream}": {
            "parameters": upstream,
            "get": admin("adminShowUpstream", "One upstream", _ok(ref("Upstream"))),
            "delete": admin(
                "adminRemoveUpstream", "Delete an upstream and its key", _ok(ref("UpstreamRemoved"))
            ),
        },
        "/admin/upstreams/{upstream}/enable": {
            "parameters": upstream,
            "post": admin(
                "adminEnableUpstream", "Enable it and clear its cooldowns", _ok(ref("Upstream"))
            ),
        },
        "/admin/upstreams/{upstream}/disable": {
            "parameters": upstream,
            "post": admin(
                "adminDisableUpstream",
                "Take it out of the pool on every worker",
                _ok(ref("Upstream")),
            ),
        },
        "/admin/upstreams/{upstream}/weight": {
            "parameters": upstream,
            "post": admin(
                "adminUpstreamWeight",
                "Change its weight (moves only its share of conversations)",
                _ok(ref("Upstream")),
                body=obj(("weight",), weight={**INT, "minimum": 1, "maximum": 1000}),
            ),
        },
        "/admin/plans/{name}": {
            "parameters": [path_param("name", "plan name")],
            "put": admin(
                "adminSetPlan",
                "Create or update a plan; its limits are copied into every account on it",
                _ok(ref("PlanSaved")),
                body=ref("PlanInput"),
            ),
        },
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
            "schemas": SCHEMAS,
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

"""The operator's HTTP API under ``/admin``: every operation of the ``antex`` CLI, JSON in and
out, authenticated by an operator token (``Authorization: Bearer antex_op_…``). Also serves
``/openapi.json``. Customer keys are never operator tokens: they get 401 here.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import msgspec
import orjson
from blacksheep import Application, Content, Request, Response

from gateway import (
    accounts,
    admin_tokens,
    audit,
    docs_page,
    erasure,
    openapi,
    schemas,
    upstream_store,
)
from gateway import admin_models as m
from gateway.admin_routes import ROUTES, Route
from gateway.anthropic_routes import json_response
from gateway.errors import (
    AuthenticationFailed,
    ConfigError,
    InvalidRequest,
    PayloadTooLarge,
    PermissionDenied,
)
from gateway.operations import Operator
from gateway.plans import DEFAULT_MAX_KEYS, Plan, list_plans
from gateway.secretbox import SecretBox, load_master_key

if TYPE_CHECKING:
    from gateway.resources import Resources

log = logging.getLogger("antex.admin")

_MAX_BODY = 64 * 1024
_MISSING = (
    "Missing operator token: send Authorization: Bearer <token> from `antex admin-token create`."
)
_WRONG = "Invalid operator token."
_READ_ONLY = "This operator token is read-only; a full token is needed to change anything."
_PAGE_MAX = 500

Endpoint = Callable[..., Awaitable[Response]]
Handler = Callable[..., Awaitable[Any]]
T = TypeVar("T")


async def json_body(request: Request, model: type[T]) -> T:
    """The body decoded as ``model`` (empty: ``{}``) by ``schemas.check``. Raises
    PayloadTooLarge over 64 KB and InvalidRequest for bad JSON or a field of the wrong type
    (the message starts with the field's name)."""
    declared = request.get_first_header(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > _MAX_BODY:
        raise PayloadTooLarge("Admin request bodies are limited to 64 KB.")
    data = await request.read() or b""
    if len(data) > _MAX_BODY:
        raise PayloadTooLarge("Admin request bodies are limited to 64 KB.")
    try:
        return schemas.check(data if data.strip() else b"{}", model)
    except RecursionError:  # msgspec's depth guard: nesting no body of ours needs
        raise InvalidRequest("Request body is nested too deeply.") from None


def query_int(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name)
    if not raw:
        return default
    try:
        value = int(raw[0][:12])
    except ValueError:
        raise InvalidRequest(f"{name}: must be an integer", param=name) from None
    return max(1, min(maximum, value))


def page_params(request: Request) -> tuple[int, int]:
    """``(limit, offset)`` from ``?limit=&cursor=``; the cursor is opaque to clients."""
    limit = query_int(request, "limit", 100, _PAGE_MAX)
    raw = (request.query.get("cursor") or [""])[0]
    if raw and not raw.isdigit():
        raise InvalidRequest("cursor: not a cursor from a previous page", param="cursor")
    return limit, int(raw or 0)


def page(items: list[Any], limit: int, offset: int) -> dict[str, Any]:
    chunk = items[offset : offset + limit]
    more = offset + limit < len(items)
    return {"data": chunk, "next_cursor": str(offset + limit) if more else None}


class AdminApi:
    """The handlers; each one authorizes first, then does one operation from ``accounts``."""

    def __init__(self, res: Resources) -> None:
        self.valkey = res.valkey
        self.limiter = res.limiter
        self.rounds = res.settings.bcrypt_rounds
        self.retention_days = res.settings.audit_retention_days
        self.default_plan = res.settings.default_plan
        # The limiter's clock (tests move it), so periods line up with what admit.lua sees.
        self.now = res.clock
        self.settings = res.settings

    async def authorize(self, request: Request) -> dict[str, Any]:
        """The operator token's metadata (name, scope), or 401."""
        header = request.get_first_header(b"authorization")
        if not header or header[:7].lower() != b"bearer ":
            raise AuthenticationFailed(_MISSING)
        meta = await admin_tokens.check_token(self.valkey, header[7:].decode("latin-1").strip())
        if meta is None:
            raise AuthenticationFailed(_WRONG)
        return meta

    def acting(self, request: Request) -> Operator:
        """The operator making this (authorized) request; its changes go to the audit trail."""
        name = str(cast(dict[str, Any], request.scope).get("antex.operator", "operator"))
        return Operator(self.valkey, name, self.now, self.retention_days, self.rounds)

    def endpoint(self, route: Route) -> Endpoint:
        """The route's handler behind operator auth, its body decoded as ``route.body`` and
        its answer sent with ``route.status``."""
        fn: Handler = getattr(self, route.handler)

        async def call(request: Request, *params: str) -> Response:
            meta = await self.authorize(request)
            operator = str(meta.get("name", "operator"))
            if request.method != "GET" and meta.get("scope") != "full":
                raise PermissionDenied(_READ_ONLY)
            cast(dict[str, Any], request.scope)["antex.operator"] = operator
            args: list[Any] = [request, *params]
            if route.body is not None:
                args.append(await json_body(request, route.body))
            answer = await fn(*args)
            response = (
                answer
                if isinstance(answer, Response)
                else json_response(route.status, m.encode(answer))
            )
            # An audit line names the operation, never the path: a pasted key could be in it.
            log.info("admin %s by %s: %d", route.handler, operator, response.status)
            return response

        # BlackSheep binds path parameters by the names in the signature.
        positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
        call.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("request", positional, annotation=Request)]
            + [inspect.Parameter(p, positional, annotation=str) for p in route.params]
        )
        call.__name__ = route.handler
        return call

    async def account_id(self, ref: str) -> str:
        return await accounts.require_account(self.valkey, ref)

    async def key_ref(self, ref: str) -> tuple[str, str]:
        return await accounts.find_key(self.valkey, ref)

    # -- accounts

    async def list_accounts(self, request: Request) -> dict[str, Any]:
        limit, offset = page_params(request)
        found = await accounts.list_accounts(self.valkey, now_ms=self.now())
        needle = (request.query.get("q") or [""])[0].strip().lower()
        if needle:
            found = [a for a in found if needle in (a["email"] or "") or needle in a["id"]]
        return page(found, limit, offset)

    async def create_account(self, request: Request, body: m.CreateAccount) -> Any:
        plan = await self._default_plan() if body.plan is msgspec.UNSET else body.plan
        account_id = await self.acting(request).create_account(body.email, plan)
        return await accounts.show_account(self.valkey, account_id, now_ms=self.now())

    async def _default_plan(self) -> str:
        default = self.default_plan
        if default not in {p.name for p in await list_plans(self.valkey)}:
            raise InvalidRequest("plan: field required (the default plan does not exist)")
        return default

    async def show_account(self, request: Request, account: str) -> Any:
        account_id = await self.account_id(account)
        return await accounts.show_account(self.valkey, account_id, now_ms=self.now())

    async def assign_plan(self, request: Request, account: str, body: m.AssignPlan) -> Any:
        account_id = await self.account_id(account)
        return await self.acting(request).assign_plan(account_id, body.plan, body.period_days)

    async def extend(self, request: Request, account: str, body: m.Extend) -> Any:
        account_id = await self.account_id(account)
        return await self.acting(request).extend(account_id, body.days)

    async def cancel(self, request: Request, account: str) -> Any:
        return await self.acting(request).cancel(await self.account_id(account))

    async def delete_account(self, request: Request, account: str) -> Any:
        return await self.acting(request).delete_account(await self.account_id(account))

    async def deletion_requests(self, request: Request) -> dict[str, Any]:
        limit, offset = page_params(request)
        found = await erasure.list_requests(self.valkey, self.now())
        return page(found, limit, offset)

    async def audit_trail(self, request: Request) -> dict[str, Any]:
        limit, offset = page_params(request)
        q = request.query
        account = (q.get("account") or [""])[0]
        since = (q.get("since_ms") or [""])[0]
        if since and (not since.isdigit() or len(since) > 15):
            raise InvalidRequest("since_ms: must be an integer", param="since_ms")
        found, more = await audit.query(
            self.valkey,
            actor=(q.get("actor") or [""])[0] or None,
            action=(q.get("action") or [""])[0] or None,
            since_ms=int(since) if since else None,
            account=await self.account_id(account) if account else None,
            limit=limit,
            offset=offset,
        )
        return {"data": found, "next_cursor": None if more is None else str(more)}

    async def account_slots(self, request: Request, account: str, body: m.AddSlots) -> Any:
        account_id = await self.account_id(account)
        total = await self.acting(request).add_account_slots(account_id, body.add)
        return m.AccountSlots(account_id=account_id, extra_ip_slots=total)

    async def usage(self, request: Request, account: str) -> Any:
        account_id = await self.account_id(account)
        count = query_int(request, "requests", 20, 100)
        return await accounts.usage_report(self.valkey, self.limiter, account_id, requests=count)

    async def events(self, request: Request, account: str) -> dict[str, Any]:
        account_id = await self.account_id(account)
        count = query_int(request, "count", 50, 100)
        return {"data": await accounts.account_events(self.valkey, account_id, count)}

    # -- keys

    async def list_keys(self, request: Request, account: str) -> dict[str, Any]:
        return {"data": await accounts.list_keys(self.valkey, await self.account_id(account))}

    async def create_key(self, request: Request, account: str, body: m.CreateKey) -> Any:
        account_id = await self.account_id(account)
        name = body.name or "default"
        created = await self.acting(request).create_key(account_id, name)
        # The only response that ever carries a key; it is not logged and cannot be repeated.
        return m.CreatedKey(account_id=account_id, key_id=created.key_id, name=name,
                            key=created.key)  # fmt: skip

    async def show_key(self, request: Request, key_id: str) -> Any:
        account_id, key = await self.key_ref(key_id)
        return await accounts.get_key(self.valkey, account_id, key)

    async def revoke_key(self, request: Request, key_id: str) -> Any:
        account_id, key = await self.key_ref(key_id)
        return await self.acting(request).revoke_key(account_id, key)

    async def release_key(self, request: Request, key_id: str) -> Any:
        account_id, key = await self.key_ref(key_id)
        return await self.acting(request).release_key(account_id, key)

    async def list_ips(self, request: Request, key_id: str) -> Any:
        account_id, key = await self.key_ref(key_id)
        return await accounts.list_ips(self.valkey, account_id, key)

    async def unbind(self, request: Request, key_id: str, body: m.Unbind) -> Any:
        account_id, key = await self.key_ref(key_id)
        if (body.ip is None) == (not body.all):
            raise InvalidRequest('send either {"ip": "<address>"} or {"all": true}', param="ip")
        removed = await self.acting(request).unbind_ips(account_id, key, body.ip)
        return m.Unbound(key_id=key, unbound=list(removed))

    async def key_slots(self, request: Request, key_id: str, body: m.AddSlots) -> Any:
        account_id, key = await self.key_ref(key_id)
        total = await self.acting(request).add_key_slots(account_id, key, body.add)
        view = await accounts.get_key(self.valkey, account_id, key)
        return m.KeySlots(key_id=key, extra_ip_slots=total, ip_slots=view["ip_slots"])

    async def quarantine(self, request: Request) -> dict[str, Any]:
        limit, offset = page_params(request)
        account = request.query.get("account")
        account_id = await self.account_id(account[0]) if account else None
        flagged = await accounts.list_flagged(self.valkey)
        if account_id is not None:
            flagged = [f for f in flagged if f["account_id"] == account_id]
        found = await accounts.list_quarantined(self.valkey, account_id)
        return {**page(found, limit, offset), "flagged": flagged}

    async def clear_reservations(self, request: Request, account: str) -> Any:
        return await self.acting(request).clear_reservations(await self.account_id(account))

    async def clear_flag(self, request: Request, account: str) -> Any:
        return await self.acting(request).clear_flag(await self.account_id(account))

    # -- plans

    async def plans(self, request: Request) -> dict[str, Any]:
        return {"data": [orjson.loads(p.to_json()) for p in await list_plans(self.valkey)]}

    async def put_plan(self, request: Request, name: str, body: m.PlanInput) -> Any:
        max_keys = body.max_keys
        if max_keys is None:
            current = next((p for p in await list_plans(self.valkey) if p.name == name), None)
            max_keys = current.max_keys if current else DEFAULT_MAX_KEYS
        try:
            plan = Plan(
                name=name,
                credits_5h=body.credits_5h,
                credits_7d=body.credits_7d,
                ip_slots=body.ip_slots,
                concurrency=body.concurrency,
                period_days=body.period_days or 30,
                description=body.description or "",
                max_keys=max_keys,
            )
        except ConfigError as exc:
            raise InvalidRequest(exc.message) from None
        updated = await self.acting(request).set_plan(plan)
        return {"plan": orjson.loads(plan.to_json()), "accounts_updated": updated}

    # -- upstreams

    async def list_upstreams(self, request: Request) -> dict[str, Any]:
        return {"data": await upstream_store.views(self.valkey, self.now())}

    async def add_upstream(self, request: Request, body: m.UpstreamInput) -> Any:
        box = SecretBox(load_master_key(self.settings.secret_key, self.settings.data_dir))
        # The answer names the key by its fingerprint only.
        return await self.acting(request).add_upstream(
            box,
            name=body.name,
            url=body.url,
            key=body.key,
            weight=body.weight or 1,
            models=tuple(body.models or ()),
            max_concurrent=body.max_concurrent,
        )

    async def show_upstream(self, request: Request, upstream: str) -> Any:
        return await upstream_store.view_of(self.valkey, upstream, self.now())

    async def remove_upstream(self, request: Request, upstream: str) -> Any:
        upstream_id = await self.acting(request).remove_upstream(upstream)
        return m.UpstreamRemoved(id=upstream_id, removed=True)

    async def enable_upstream(self, request: Request, upstream: str) -> Any:
        return await self.acting(request).enable_upstream(upstream, True)

    async def disable_upstream(self, request: Request, upstream: str) -> Any:
        return await self.acting(request).enable_upstream(upstream, False)

    async def upstream_weight(self, request: Request, upstream: str, body: m.UpstreamWeight) -> Any:
        return await self.acting(request).set_upstream_weight(upstream, body.weight)


def register(app: Application, res: Resources) -> None:
    """Adds every route of ``admin_routes.ROUTES``, ``GET /openapi.json`` and the operators'
    docs page ``GET /admin/docs`` to ``app``."""
    api = AdminApi(res)
    for route in ROUTES:
        app.router.add(route.method, route.pattern, api.endpoint(route))

    document = orjson.dumps(openapi.document())

    async def openapi_json(request: Request) -> Response:
        return Response(200, [], Content(b"application/json", document))

    async def docs(request: Request) -> Response:
        return Response(200, [], Content(b"text/html; charset=utf-8", docs_page.HTML))

    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/admin/docs", docs)

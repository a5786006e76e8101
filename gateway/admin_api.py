"""The operator's HTTP API under ``/admin``: every operation of the ``antex`` CLI, JSON in and
out, authenticated by an operator token (``Authorization: Bearer antex_op_…``). Also serves
``/openapi.json``. Customer keys are never operator tokens: they get 401 here.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import msgspec
import orjson
from blacksheep import Application, Content, Request, Response

from gateway import accounts, admin_tokens, audit, erasure, openapi, schemas, upstream_store
from gateway.clock import make_clock
from gateway.errors import (
    AuthenticationFailed,
    ConfigError,
    InvalidRequest,
    PayloadTooLarge,
    PermissionDenied,
)
from gateway.operations import Operator
from gateway.plans import DEFAULT_MAX_KEYS, Plan, list_plans
from gateway.routes import json_response
from gateway.scripts import fail_closed
from gateway.secretbox import SecretBox, load_master_key

if TYPE_CHECKING:
    from gateway.app import Resources

log = logging.getLogger("antex.admin")

_MAX_BODY = 64 * 1024
_MISSING = (
    "Missing operator token: send Authorization: Bearer <token> from `antex admin-token create`."
)
_WRONG = "Invalid operator token."
_READ_ONLY = "This operator token is read-only; a full token is needed to change anything."
_PAGE_MAX = 500
T = TypeVar("T")

Endpoint = Callable[..., Awaitable[Response]]


async def body_as(request: Request, schema: type[T]) -> T:
    """The JSON body checked against ``schema`` (gateway.schemas); an empty body is ``{}``."""
    declared = request.get_first_header(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > _MAX_BODY:
        raise PayloadTooLarge("Admin request bodies are limited to 64 KB.")
    data = await request.read() or b""
    if len(data) > _MAX_BODY:
        raise PayloadTooLarge("Admin request bodies are limited to 64 KB.")
    return schemas.check(data if data.strip() else b"{}", schema)


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
        self.now = make_clock(res.settings.clock_file)
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

    def operator(self, fn: Endpoint) -> Endpoint:
        @functools.wraps(fn)
        async def call(request: Request, *params: str) -> Response:
            with fail_closed():
                meta = await self.authorize(request)
                operator = str(meta.get("name", "operator"))
                if request.method != "GET" and meta.get("scope") != "full":
                    raise PermissionDenied(_READ_ONLY)
                cast(dict[str, Any], request.scope)["antex.operator"] = operator
                response = await fn(request, *params)
            # An audit line names the operation, never the path: a pasted key could be in it.
            log.info("admin %s by %s: %d", fn.__name__, operator, response.status)
            return response

        return call

    async def account_id(self, ref: str) -> str:
        return await accounts.require_account(self.valkey, ref)

    async def key_ref(self, ref: str) -> tuple[str, str]:
        return await accounts.find_key(self.valkey, ref)

    # -- accounts

    async def list_accounts(self, request: Request) -> Response:
        limit, offset = page_params(request)
        found = await accounts.list_accounts(self.valkey, now_ms=self.now())
        needle = (request.query.get("q") or [""])[0].strip().lower()
        if needle:
            found = [a for a in found if needle in (a["email"] or "") or needle in a["id"]]
        return json_response(200, page(found, limit, offset))

    async def create_account(self, request: Request) -> Response:
        body = await body_as(request, schemas.CreateAccountBody)
        email = body.email
        plan = await self._default_plan() if body.plan is msgspec.UNSET else body.plan
        account_id = await self.acting(request).create_account(email, plan)
        return json_response(
            201, await accounts.show_account(self.valkey, account_id, now_ms=self.now())
        )

    async def _default_plan(self) -> str:
        default = self.default_plan
        if default not in {p.name for p in await list_plans(self.valkey)}:
            raise InvalidRequest("plan: field required (the default plan does not exist)")
        return default

    async def show_account(self, request: Request, account: str) -> Response:
        account_id = await self.account_id(account)
        return json_response(
            200, await accounts.show_account(self.valkey, account_id, now_ms=self.now())
        )

    async def assign_plan(self, request: Request, account: str) -> Response:
        body = await body_as(request, schemas.AssignPlanBody)
        plan, days = body.plan, body.period_days
        view = await self.acting(request).assign_plan(await self.account_id(account), plan, days)
        return json_response(200, view)

    async def extend(self, request: Request, account: str) -> Response:
        account_id = await self.account_id(account)
        days = (await body_as(request, schemas.ExtendBody)).days
        view = await self.acting(request).extend(account_id, days)
        return json_response(200, view)

    async def cancel(self, request: Request, account: str) -> Response:
        account_id = await self.account_id(account)
        return json_response(200, await self.acting(request).cancel(account_id))

    async def delete_account(self, request: Request, account: str) -> Response:
        account_id = await self.account_id(account)
        return json_response(200, await self.acting(request).delete_account(account_id))

    async def deletion_requests(self, request: Request) -> Response:
        limit, offset = page_params(request)
        found = await erasure.list_requests(self.valkey, self.now())
        return json_response(200, page(found, limit, offset))

    async def audit_trail(self, request: Request) -> Response:
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
        return json_response(
            200, {"data": found, "next_cursor": None if more is None else str(more)}
        )

    async def account_slots(self, request: Request, account: str) -> Response:
        account_id = await self.account_id(account)
        add = (await body_as(request, schemas.SlotsBody)).add
        total = await self.acting(request).add_account_slots(account_id, add)
        return json_response(200, {"account_id": account_id, "extra_ip_slots": total})

    async def usage(self, request: Request, account: str) -> Response:
        account_id = await self.account_id(account)
        count = query_int(request, "requests", 20, 100)
        report = await accounts.usage_report(self.valkey, self.limiter, account_id, requests=count)
        return json_response(200, report)

    async def events(self, request: Request, account: str) -> Response:
        account_id = await self.account_id(account)
        count = query_int(request, "count", 50, 100)
        found = await accounts.account_events(self.valkey, account_id, count)
        return json_response(200, {"data": found})

    # -- keys

    async def list_keys(self, request: Request, account: str) -> Response:
        found = await accounts.list_keys(self.valkey, await self.account_id(account))
        return json_response(200, {"data": found})

    async def create_key(self, request: Request, account: str) -> Response:
        account_id = await self.account_id(account)
        name = (await body_as(request, schemas.CreateKeyBody)).name or "default"
        created = await self.acting(request).create_key(account_id, name)
        # The only response that ever carries a key; it is not logged and cannot be repeated.
        return json_response(
            201,
            {"account_id": account_id, "key_id": created.key_id, "name": name, "key": created.key},
        )

    async def show_key(self, request: Request, key_id: str) -> Response:
        account_id, key = await self.key_ref(key_id)
        return json_response(200, await accounts.get_key(self.valkey, account_id, key))

    async def revoke_key(self, request: Request, key_id: str) -> Response:
        account_id, key = await self.key_ref(key_id)
        return json_response(200, await self.acting(request).revoke_key(account_id, key))

    async def release_key(self, request: Request, key_id: str) -> Response:
        account_id, key = await self.key_ref(key_id)
        return json_response(200, await self.acting(request).release_key(account_id, key))

    async def list_ips(self, request: Request, key_id: str) -> Response:
        account_id, key = await self.key_ref(key_id)
        return json_response(200, await accounts.list_ips(self.valkey, account_id, key))

    async def unbind(self, request: Request, key_id: str) -> Response:
        account_id, key = await self.key_ref(key_id)
        body = await body_as(request, schemas.UnbindBody)
        ip, everything = body.ip, body.all
        if (ip is None) == (not everything):
            raise InvalidRequest('send either {"ip": "<address>"} or {"all": true}', param="ip")
        removed = await self.acting(request).unbind_ips(account_id, key, ip)
        return json_response(200, {"key_id": key, "unbound": removed})

    async def key_slots(self, request: Request, key_id: str) -> Response:
        account_id, key = await self.key_ref(key_id)
        add = (await body_as(request, schemas.SlotsBody)).add
        total = await self.acting(request).add_key_slots(account_id, key, add)
        view = await accounts.get_key(self.valkey, account_id, key)
        return json_response(
            200, {"key_id": key, "extra_ip_slots": total, "ip_slots": view["ip_slots"]}
        )

    async def quarantine(self, request: Request) -> Response:
        limit, offset = page_params(request)
        account = request.query.get("account")
        account_id = await self.account_id(account[0]) if account else None
        flagged = await accounts.list_flagged(self.valkey)
        if account_id is not None:
            flagged = [f for f in flagged if f["account_id"] == account_id]
        found = await accounts.list_quarantined(self.valkey, account_id)
        return json_response(200, {**page(found, limit, offset), "flagged": flagged})

    async def clear_reservations(self, request: Request, account: str) -> Response:
        account_id = await self.account_id(account)
        return json_response(200, await self.acting(request).clear_reservations(account_id))

    async def clear_flag(self, request: Request, account: str) -> Response:
        account_id = await self.account_id(account)
        return json_response(200, await self.acting(request).clear_flag(account_id))

    # -- plans

    async def plans(self, request: Request) -> Response:
        plans = [orjson.loads(p.to_json()) for p in await list_plans(self.valkey)]
        return json_response(200, {"data": plans})

    async def put_plan(self, request: Request, name: str) -> Response:
        body = await body_as(request, schemas.PlanBody)
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
        return json_response(
            200, {"plan": orjson.loads(plan.to_json()), "accounts_updated": updated}
        )


    # -- upstreams

    async def list_upstreams(self, request: Request) -> Response:
        return json_response(200, {"data": await upstream_store.views(self.valkey, self.now())})

    async def add_upstream(self, request: Request) -> Response:
        body = await body_as(request, schemas.AddUpstreamBody)
        models = body.models or []
        if not all(models):
            raise InvalidRequest("models: must be a list of model ids", param="models")
        box = SecretBox(load_master_key(self.settings.secret_key, self.settings.data_dir))
        view = await self.acting(request).add_upstream(
            box,
            name=body.name,
            url=body.url,
            key=body.key,
            weight=body.weight or 1,
            models=tuple(models),
            max_concurrent=body.max_concurrent,
        )  # fmt: skip
        # The answer names the key by its fingerprint only.
        return json_response(201, view)

    async def _upstream(self, upstream_id: str) -> Response:
        view = await upstream_store.view_of(self.valkey, upstream_id, self.now())
        return json_response(200, view)

    async def show_upstream(self, request: Request, upstream: str) -> Response:
        return await self._upstream(upstream)

    async def remove_upstream(self, request: Request, upstream: str) -> Response:
        upstream_id = await self.acting(request).remove_upstream(upstream)
        return json_response(200, {"id": upstream_id, "removed": True})

    async def enable_upstream(self, request: Request, upstream: str) -> Response:
        return json_response(200, await self.acting(request).enable_upstream(upstream, True))

    async def disable_upstream(self, request: Request, upstream: str) -> Response:
        return json_response(200, await self.acting(request).enable_upstream(upstream, False))

    async def upstream_weight(self, request: Request, upstream: str) -> Response:
        weight = (await body_as(request, schemas.WeightBody)).weight
        return json_response(200, await self.acting(request).set_upstream_weight(upstream, weight))


def register(app: Application, res: Resources) -> None:
    """Adds every ``/admin`` route and ``GET /openapi.json`` to ``app``."""
    api = AdminApi(res)
    op = api.operator
    r = app.router
    r.add_get("/admin/accounts", op(api.list_accounts))
    r.add_post("/admin/accounts", op(api.create_account))
    r.add_get("/admin/accounts/:account", op(api.show_account))
    r.add_delete("/admin/accounts/:account", op(api.delete_account))
    r.add_post("/admin/accounts/:account/plan", op(api.assign_plan))
    r.add_post("/admin/accounts/:account/extend", op(api.extend))
    r.add_post("/admin/accounts/:account/cancel", op(api.cancel))
    r.add_post("/admin/accounts/:account/ip-slots", op(api.account_slots))
    r.add_post("/admin/accounts/:account/clear-flag", op(api.clear_flag))
    r.add_post("/admin/accounts/:account/clear-reservations", op(api.clear_reservations))
    r.add_get("/admin/accounts/:account/usage", op(api.usage))
    r.add_get("/admin/accounts/:account/events", op(api.events))
    r.add_get("/admin/accounts/:account/keys", op(api.list_keys))
    r.add_post("/admin/accounts/:account/keys", op(api.create_key))
    r.add_get("/admin/keys/:key_id", op(api.show_key))
    r.add_post("/admin/keys/:key_id/revoke", op(api.revoke_key))
    r.add_post("/admin/keys/:key_id/release", op(api.release_key))
    r.add_get("/admin/keys/:key_id/ips", op(api.list_ips))
    r.add_post("/admin/keys/:key_id/ips/unbind", op(api.unbind))
    r.add_post("/admin/keys/:key_id/ip-slots", op(api.key_slots))
    r.add_get("/admin/quarantine", op(api.quarantine))
    r.add_get("/admin/audit", op(api.audit_trail))
    r.add_get("/admin/deletion-requests", op(api.deletion_requests))
    r.add_get("/admin/plans", op(api.plans))
    r.add_put("/admin/plans/:name", op(api.put_plan))
    r.add_get("/admin/upstreams", op(api.list_upstreams))
    r.add_post("/admin/upstreams", op(api.add_upstream))
    r.add_get("/admin/upstreams/:upstream", op(api.show_upstream))
    r.add_delete("/admin/upstreams/:upstream", op(api.remove_upstream))
    r.add_post("/admin/upstreams/:upstream/enable", op(api.enable_upstream))
    r.add_post("/admin/upstreams/:upstream/disable", op(api.disable_upstream))
    r.add_post("/admin/upstreams/:upstream/weight", op(api.upstream_weight))

    document = orjson.dumps(openapi.document())

    async def openapi_json(request: Request) -> Response:
        return Response(200, [], Content(b"application/json", document))

    r.add_get("/openapi.json", openapi_json)

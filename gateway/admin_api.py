"""The operator's HTTP API under ``/admin``: every operation of the ``antex`` CLI, JSON in and
out, authenticated by an operator token (``Authorization: Bearer antex_op_…``). Also serves
``/openapi.json``. Customer keys are never operator tokens: they get 401 here.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from blacksheep import Application, Content, Request, Response

from gateway import accounts, admin_tokens, openapi, upstream_store
from gateway.clock import make_clock
from gateway.errors import AuthenticationFailed, ConfigError, InvalidRequest, PayloadTooLarge
from gateway.plans import Plan, list_plans, set_plan
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

Endpoint = Callable[..., Awaitable[Response]]


async def json_body(request: Request) -> dict[str, Any]:
    declared = request.get_first_header(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > _MAX_BODY:
        raise PayloadTooLarge("Admin request bodies are limited to 64 KB.")
    data = await request.read() or b""
    if len(data) > _MAX_BODY:
        raise PayloadTooLarge("Admin request bodies are limited to 64 KB.")
    if not data.strip():
        return {}
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise InvalidRequest("Request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    return payload


def field(body: dict[str, Any], name: str, kind: type, *, required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"{name}: field required", param=name)
        return None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidRequest(f"{name}: must be an integer", param=name)
    if not isinstance(value, kind):
        raise InvalidRequest(f"{name}: must be a {kind.__name__}", param=name)
    return value


def query_int(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name)
    if not raw:
        return default
    try:
        value = int(raw[0])
    except ValueError:
        raise InvalidRequest(f"{name}: must be an integer", param=name) from None
    return max(1, min(maximum, value))


class AdminApi:
    """The handlers; each one authorizes first, then does one operation from ``accounts``."""

    def __init__(self, res: Resources) -> None:
        self.valkey = res.valkey
        self.limiter = res.limiter
        self.rounds = res.settings.bcrypt_rounds
        self.default_plan = res.settings.default_plan
        # The limiter's clock (tests move it), so periods line up with what admit.lua sees.
        self.now = make_clock(res.settings.clock_file)
        self.settings = res.settings

    async def authorize(self, request: Request) -> str:
        """The operator's token name, or 401."""
        header = request.get_first_header(b"authorization")
        if not header or header[:7].lower() != b"bearer ":
            raise AuthenticationFailed(_MISSING)
        meta = await admin_tokens.check_token(self.valkey, header[7:].decode("latin-1").strip())
        if meta is None:
            raise AuthenticationFailed(_WRONG)
        return str(meta.get("name", "operator"))

    def operator(self, fn: Endpoint) -> Endpoint:
        @functools.wraps(fn)
        async def call(request: Request, *params: str) -> Response:
            with fail_closed():
                operator = await self.authorize(request)
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
        found = await accounts.list_accounts(self.valkey, now_ms=self.now())
        return json_response(200, {"data": found})

    async def create_account(self, request: Request) -> Response:
        body = await json_body(request)
        email = field(body, "email", str, required=True)
        plan = field(body, "plan", str)
        if plan is None and "plan" not in body:
            plan = await self._default_plan()
        account_id = await accounts.create_account(self.valkey, email, plan, now_ms=self.now())
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
        body = await json_body(request)
        plan = field(body, "plan", str, required=True)
        days = field(body, "period_days", int)
        view = await accounts.assign_plan(
            self.valkey, await self.account_id(account), plan, now_ms=self.now(), period_days=days
        )
        return json_response(200, view)

    async def extend(self, request: Request, account: str) -> Response:
        account_id = await self.account_id(account)
        body = await json_body(request)
        days = field(body, "days", int)
        if days is None:
            days = await self._plan_period(account_id)
        view = await accounts.extend_plan(self.valkey, account_id, days, now_ms=self.now())
        return json_response(200, view)

    async def _plan_period(self, account_id: str) -> int:
        name = (await accounts.get_account(self.valkey, account_id)).get("plan")
        for plan in await list_plans(self.valkey):
            if plan.name == name:
                return plan.period_days
        raise InvalidRequest("days: field required (the account's plan no longer exists)")

    async def cancel(self, request: Request, account: str) -> Response:
        account_id = await self.account_id(account)
        return json_response(
            200, await accounts.cancel_plan(self.valkey, account_id, now_ms=self.now())
        )

    async def account_slots(self, request: Request, account: str) -> Response:
        account_id = await self.account_id(account)
        add = field(await json_body(request), "add", int, required=True)
        total = await accounts.add_account_ip_slots(self.valkey, account_id, add)
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
        name = field(await json_body(request), "name", str) or "default"
        created = await accounts.create_key(
            self.valkey, account_id, name, rounds=self.rounds, now_ms=self.now()
        )
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
        await accounts.revoke_key(self.valkey, account_id, key, now_ms=self.now())
        return json_response(200, await accounts.get_key(self.valkey, account_id, key))

    async def release_key(self, request: Request, key_id: str) -> Response:
        account_id, key = await self.key_ref(key_id)
        return json_response(
            200, await accounts.release_key(self.valkey, account_id, key, now_ms=self.now())
        )

    async def list_ips(self, request: Request, key_id: str) -> Response:
        account_id, key = await self.key_ref(key_id)
        return json_response(200, await accounts.list_ips(self.valkey, account_id, key))

    async def unbind(self, request: Request, key_id: str) -> Response:
        account_id, key = await self.key_ref(key_id)
        body = await json_body(request)
        ip, everything = field(body, "ip", str), field(body, "all", bool)
        if (ip is None) == (not everything):
            raise InvalidRequest('send either {"ip": "<address>"} or {"all": true}', param="ip")
        removed = await accounts.unbind_ips(self.valkey, account_id, key, ip, now_ms=self.now())
        return json_response(200, {"key_id": key, "unbound": removed})

    async def key_slots(self, request: Request, key_id: str) -> Response:
        account_id, key = await self.key_ref(key_id)
        add = field(await json_body(request), "add", int, required=True)
        total = await accounts.add_key_ip_slots(self.valkey, account_id, key, add)
        view = await accounts.get_key(self.valkey, account_id, key)
        return json_response(
            200, {"key_id": key, "extra_ip_slots": total, "ip_slots": view["ip_slots"]}
        )

    async def quarantine(self, request: Request) -> Response:
        account = request.query.get("account")
        account_id = await self.account_id(account[0]) if account else None
        return json_response(
            200, {"data": await accounts.list_quarantined(self.valkey, account_id)}
        )

    # -- plans

    async def plans(self, request: Request) -> Response:
        plans = [orjson.loads(p.to_json()) for p in await list_plans(self.valkey)]
        return json_response(200, {"data": plans})

    async def put_plan(self, request: Request, name: str) -> Response:
        body = await json_body(request)
        try:
            plan = Plan(
                name=name,
                credits_5h=field(body, "credits_5h", int, required=True),
                credits_7d=field(body, "credits_7d", int, required=True),
                ip_slots=field(body, "ip_slots", int, required=True),
                concurrency=field(body, "concurrency", int, required=True),
                period_days=field(body, "period_days", int) or 30,
                description=field(body, "description", str) or "",
            )
        except ConfigError as exc:
            raise InvalidRequest(exc.message) from None
        updated = await set_plan(self.valkey, plan)
        return json_response(
            200, {"plan": orjson.loads(plan.to_json()), "accounts_updated": updated}
        )


    # -- upstreams

    async def list_upstreams(self, request: Request) -> Response:
        return json_response(200, {"data": await upstream_store.views(self.valkey, self.now())})

    async def add_upstream(self, request: Request) -> Response:
        body = await json_body(request)
        models = field(body, "models", list) or []
        if not all(isinstance(m, str) and m for m in models):
            raise InvalidRequest("models: must be a list of model ids", param="models")
        box = SecretBox(load_master_key(self.settings.secret_key, self.settings.data_dir))
        record = await upstream_store.add_upstream(
            self.valkey, box,
            name=field(body, "name", str, required=True),
            url=field(body, "url", str, required=True),
            key=field(body, "key", str, required=True),
            weight=field(body, "weight", int) or 1,
            models=tuple(models),
            max_concurrent=field(body, "max_concurrent", int),
            now_ms=self.now(),
        )  # fmt: skip
        # The answer names the key by its fingerprint only.
        view = await upstream_store.view_of(self.valkey, record.id, self.now())
        return json_response(201, view)

    async def _upstream(self, upstream_id: str) -> Response:
        view = await upstream_store.view_of(self.valkey, upstream_id, self.now())
        return json_response(200, view)

    async def show_upstream(self, request: Request, upstream: str) -> Response:
        return await self._upstream(upstream)

    async def remove_upstream(self, request: Request, upstream: str) -> Response:
        upstream_id = await upstream_store.resolve(self.valkey, upstream)
        await upstream_store.remove_upstream(self.valkey, upstream_id)
        return json_response(200, {"id": upstream_id, "removed": True})

    async def enable_upstream(self, request: Request, upstream: str) -> Response:
        upstream_id = await upstream_store.enable(self.valkey, upstream, True, now_ms=self.now())
        return await self._upstream(upstream_id)

    async def disable_upstream(self, request: Request, upstream: str) -> Response:
        upstream_id = await upstream_store.enable(self.valkey, upstream, False, now_ms=self.now())
        return await self._upstream(upstream_id)

    async def upstream_weight(self, request: Request, upstream: str) -> Response:
        weight = field(await json_body(request), "weight", int, required=True)
        upstream_id = await upstream_store.resolve(self.valkey, upstream)
        await upstream_store.set_weight(self.valkey, upstream_id, weight)
        return await self._upstream(upstream_id)


def register(app: Application, res: Resources) -> None:
    """Adds every ``/admin`` route and ``GET /openapi.json`` to ``app``."""
    api = AdminApi(res)
    op = api.operator
    r = app.router
    r.add_get("/admin/accounts", op(api.list_accounts))
    r.add_post("/admin/accounts", op(api.create_account))
    r.add_get("/admin/accounts/:account", op(api.show_account))
    r.add_post("/admin/accounts/:account/plan", op(api.assign_plan))
    r.add_post("/admin/accounts/:account/extend", op(api.extend))
    r.add_post("/admin/accounts/:account/cancel", op(api.cancel))
    r.add_post("/admin/accounts/:account/ip-slots", op(api.account_slots))
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

"""HTTP side of the operator console: ``register(app, resources)`` adds ``/admin/console``.

Pages are server-rendered with the dashboard's templating; every POST checks the CSRF token
and the session's scope, then changes state through ``operations.Operator`` (actor
``console:<token name>``), so each change lands in the audit trail, and redirects (303).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from blacksheep import Application, Request, Response

from gateway import accounts, audit, erasure, errors, store, upstream_store, wire
from gateway.console import views
from gateway.console.sessions import SESSION_TTL_MS, ConsoleSessions, OperatorSession
from gateway.dashboard.csrf import FIELD as CSRF_FIELD
from gateway.dashboard.csrf import Csrf
from gateway.dashboard.render import Renderer, redirect
from gateway.dashboard.sessions import new_token
from gateway.operations import Operator
from gateway.pipeline import asgi_content
from gateway.plans import DEFAULT_MAX_KEYS, Plan, get_plan, list_plans

if TYPE_CHECKING:
    from gateway.resources import Resources

BASE = "/admin/console"
SIGNIN = f"{BASE}/signin"
PAGE = 50
_MAX_FORM_BYTES = 8 * 1024
# Notices are chosen by name from this table, so a link cannot make the page say anything.
NOTICES = {
    "plan": "The plan is assigned.", "extended": "The period is extended.",
    "cancelled": "The subscription is cancelled.", "slots": "IP slots changed.",
    "deleted": "The account is erased.", "revoked": "The key is revoked.",
    "released": "The key is released from quarantine.", "unbound": "IP addresses unbound.",
    "saved": "The plan is saved.", "signed_out": "You are signed out.",
    "cleared": "The key-sharing flag is cleared.", "enabled": "The upstream is enabled.",
    "disabled": "The upstream is disabled.",
}  # fmt: skip

Handler = Callable[..., Awaitable[Response]]


class FormRefused(Exception):
    """A POST without a valid CSRF token, or sent from another site."""


@dataclass(frozen=True, slots=True)
class Visit:
    token: str
    fresh: bool
    session: OperatorSession | None
    csrf: str


def _q(request: Request, name: str) -> str:
    return (request.query.get(name) or [""])[0].strip()


def _int(text: str, name: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise errors.InvalidRequest(f"{name}: enter a whole number") from None


class Console:
    def __init__(self, res: Resources) -> None:
        s = res.settings
        self.res = res
        self.client = res.valkey
        self.clock = res.clock
        self.sessions = ConsoleSessions(res.valkey, self.clock, s.trusted_proxies)
        self.csrf = Csrf(res.valkey)
        self.render = Renderer()

    # -- plumbing --------------------------------------------------------------------------

    async def visit(self, request: Request) -> Visit:
        token = self.sessions.presented(request)
        session = await self.sessions.load(token)
        fresh = token is None
        if token is None:
            token = new_token()
        return Visit(token, fresh, session, await self.csrf.token(token))

    def html(
        self, request: Request, visit: Visit, template: str, context: dict[str, Any],
        *, status: int = 200,
    ) -> Response:  # fmt: skip
        notice = NOTICES.get(_q(request, "done"), "")
        full = {"csrf": visit.csrf, "csrf_field": CSRF_FIELD, "operator": visit.session,
                "nav": "", "notice": notice, "error": "", "base": BASE, **context}  # fmt: skip
        response = self.render.page(f"console/{template}", full, status=status)
        if visit.fresh:
            self.sessions.set_cookie(request, response, visit.token, -1)
        return response

    async def form(self, request: Request, visit: Visit) -> dict[str, str]:
        """The urlencoded body of a POST, after the same-site and CSRF checks."""
        if request.get_first_header(b"sec-fetch-site") == b"cross-site":
            raise FormRefused
        ctype = request.get_first_header(b"content-type") or b""
        if not ctype.lower().startswith(b"application/x-www-form-urlencoded"):
            raise FormRefused
        size, chunks = 0, []
        async for chunk in asgi_content(request).stream():
            size += len(chunk)
            if size > _MAX_FORM_BYTES:
                raise errors.InvalidRequest("The form is too large.")
            chunks.append(chunk)
        try:
            parsed = parse_qs(b"".join(chunks).decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            raise errors.InvalidRequest("The form is not valid UTF-8.") from None
        form = {k: v[0] for k, v in parsed.items() if v}
        if visit.fresh or not await self.csrf.check(visit.token, form.get(CSRF_FIELD)):
            raise FormRefused
        return form

    def page(self, handler: Handler) -> Handler:
        """Times the handler and renders refusals and domain errors as HTML pages."""

        async def call(request: Request, **params: Any) -> Response:
            started = time.perf_counter()
            try:
                response = await handler(request, **params)
            except FormRefused:
                response = await self.problem(
                    request, 403, "This form has expired or came from another site. "
                    "Go back, reload the page and try again.",
                )  # fmt: skip
            except store.FAILURES as caught:
                exc = store.domain_error(caught)
                message = exc.message
                if isinstance(exc, errors.ServiceUnavailable):
                    message = "The console cannot reach its data store. Try again shortly."
                response = await self.problem(request, wire.status_of(exc), message)
            elapsed = (time.perf_counter() - started) * 1000
            response.add_header(b"server-timing", f"app;dur={elapsed:.2f}".encode())
            return response

        call.__name__ = handler.__name__
        return call

    async def problem(self, request: Request, status: int, message: str) -> Response:
        try:
            visit = await self.visit(request)
        except store.FAILURES:
            visit = Visit("", False, None, "")
        return self.html(
            request, visit, "error.html", {"status": status, "message": message, "title": "Error"},
            status=status,
        )  # fmt: skip

    async def signed_in(self, request: Request) -> Visit | Response:
        visit = await self.visit(request)
        if visit.session is None:
            return redirect(SIGNIN)
        return visit

    def operator(self, session: OperatorSession) -> Operator:
        s = self.res.settings
        return Operator(
            self.client, f"console:{session.name}", self.clock, s.audit_retention_days,
            s.bcrypt_rounds,
        )  # fmt: skip

    async def act(
        self, request: Request, change: Callable[[Operator, dict[str, str]], Awaitable[str]]
    ) -> Response:
        """A state-changing POST: session, CSRF, scope, then ``change`` (returns where to go)."""
        visit = await self.visit(request)
        if visit.session is None:
            return redirect(SIGNIN)
        form = await self.form(request, visit)
        if visit.session.scope != "full":
            raise errors.PermissionDenied("This operator token is read-only.")
        return redirect(await change(self.operator(visit.session), form))

    # -- sign-in ---------------------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        return redirect(f"{BASE}/accounts")

    async def signin_form(self, request: Request) -> Response:
        visit = await self.visit(request)
        if visit.session is not None:
            return redirect(f"{BASE}/accounts")
        return self.html(request, visit, "signin.html", {"title": "Operator sign-in"})

    async def signin(self, request: Request) -> Response:
        visit = await self.visit(request)
        form = await self.form(request, visit)
        session = await self.sessions.create(form.get("token", "").strip())
        if session is None:
            return self.html(
                request, visit, "signin.html",
                {"title": "Operator sign-in", "error": "That is not a valid operator token."},
                status=401,
            )  # fmt: skip
        # A new cookie at sign-in: the pre-sign-in token is never promoted to a session.
        response = redirect(f"{BASE}/accounts")
        self.sessions.set_cookie(request, response, session.token, SESSION_TTL_MS // 1000)
        return response

    async def signout(self, request: Request) -> Response:
        visit = await self.visit(request)
        await self.form(request, visit)
        await self.sessions.destroy(visit.token)
        response = redirect(f"{SIGNIN}?done=signed_out")
        self.sessions.set_cookie(request, response, "", 0)
        return response

    # -- accounts --------------------------------------------------------------------------

    async def accounts_page(self, request: Request) -> Response:
        found = await self.signed_in(request)
        if isinstance(found, Response):
            return found
        needle = _q(request, "q").lower()
        everything = await accounts.list_accounts(self.client, now_ms=self.clock())
        if needle:
            everything = [a for a in everything
                          if needle in (a["email"] or "") or needle in a["id"]]  # fmt: skip
        start = max(0, _int(_q(request, "start") or "0", "start"))
        rows = everything[start : start + PAGE]
        more = start + PAGE < len(everything)
        return self.html(
            request, found, "accounts.html",
            {"title": "Accounts", "nav": "accounts", "rows": rows, "q": needle,
             "total": len(everything), "start": start, "next": start + PAGE if more else None,
             "prev": max(0, start - PAGE) if start else None},
        )  # fmt: skip

    async def account_page(self, request: Request, account: str) -> Response:
        found = await self.signed_in(request)
        if isinstance(found, Response):
            return found
        account_id = await accounts.require_account(self.client, account)
        detail = await accounts.show_account(self.client, account_id, now_ms=self.clock())
        usage = await self.res.limiter.usage(account_id)
        events, _ = await audit.query(self.client, account=account_id, limit=10)
        return self.html(
            request, found, "account.html",
            {"title": detail["email"], "nav": "accounts", "a": detail,
             "windows": views.windows(usage), "plans": await list_plans(self.client),
             "recent": await accounts.recent_requests(self.client, account_id, 10),
             "trail": events},
        )  # fmt: skip

    async def assign_plan(self, request: Request, account: str) -> Response:
        async def change(op: Operator, form: dict[str, str]) -> str:
            account_id = await accounts.require_account(self.client, account)
            days = form.get("period_days", "").strip()
            await op.assign_plan(account_id, form.get("plan", ""),
                                 _int(days, "period_days") if days else None)  # fmt: skip
            return f"{BASE}/accounts/{account_id}?done=plan"

        return await self.act(request, change)

    async def extend(self, request: Request, account: str) -> Response:
        async def change(op: Operator, form: dict[str, str]) -> str:
            account_id = await accounts.require_account(self.client, account)
            days = form.get("days", "").strip()
            await op.extend(account_id, _int(days, "days") if days else None)
            return f"{BASE}/accounts/{account_id}?done=extended"

        return await self.act(request, change)

    async def cancel(self, request: Request, account: str) -> Response:
        async def change(op: Operator, form: dict[str, str]) -> str:
            account_id = await accounts.require_account(self.client, account)
            await op.cancel(account_id)
            return f"{BASE}/accounts/{account_id}?done=cancelled"

        return await self.act(request, change)

    async def account_slots(self, request: Request, account: str) -> Response:
        async def change(op: Operator, form: dict[str, str]) -> str:
            account_id = await accounts.require_account(self.client, account)
            await op.add_account_slots(account_id, _int(form.get("add", ""), "add"))
            return f"{BASE}/accounts/{account_id}?done=slots"

        return await self.act(request, change)

    async def delete(self, request: Request, account: str) -> Response:
        async def change(op: Operator, form: dict[str, str]) -> str:
            account_id = await accounts.require_account(self.client, account)
            email = (await accounts.get_account(self.client, account_id)).get("email", "")
            if form.get("confirm", "").strip().lower() != email:
                raise errors.InvalidRequest("Type the account's email to confirm the deletion.")
            await op.delete_account(account_id)
            return f"{BASE}/deletions?done=deleted"

        return await self.act(request, change)

    # -- keys ------------------------------------------------------------------------------

    async def key_page(self, request: Request, key_id: str) -> Response:
        found = await self.signed_in(request)
        if isinstance(found, Response):
            return found
        account_id, key = await accounts.find_key(self.client, key_id)
        detail = await accounts.get_key(self.client, account_id, key)
        ips = await accounts.list_ips(self.client, account_id, key)
        email = (await accounts.get_account(self.client, account_id)).get("email")
        return self.html(
            request, found, "key.html",
            {"title": f"Key {key}", "nav": "accounts", "k": detail, "ips": ips["bound"],
             "email": email},
        )  # fmt: skip

    def _key_action(self, key_id: str, run: Callable[[Operator, str, str, dict[str, str]],
                    Awaitable[Any]], done: str, back: str = "") -> Callable[
                        [Operator, dict[str, str]], Awaitable[str]]:  # fmt: skip
        async def change(op: Operator, form: dict[str, str]) -> str:
            account_id, key = await accounts.find_key(self.client, key_id)
            await run(op, account_id, key, form)
            return (back or f"{BASE}/keys/{key}") + f"?done={done}"

        return change

    async def revoke(self, request: Request, key_id: str) -> Response:
        return await self.act(request, self._key_action(
            key_id, lambda op, a, k, f: op.revoke_key(a, k), "revoked"))  # fmt: skip

    async def release(self, request: Request, key_id: str) -> Response:
        back = f"{BASE}/quarantine" if _q(request, "from") == "quarantine" else ""
        return await self.act(request, self._key_action(
            key_id, lambda op, a, k, f: op.release_key(a, k), "released", back))  # fmt: skip

    async def unbind(self, request: Request, key_id: str) -> Response:
        async def run(op: Operator, a: str, k: str, form: dict[str, str]) -> Any:
            ip = form.get("ip", "").strip()
            return await op.unbind_ips(a, k, ip or None)

        return await self.act(request, self._key_action(key_id, run, "unbound"))

    async def key_slots(self, request: Request, key_id: str) -> Response:
        async def run(op: Operator, a: str, k: str, form: dict[str, str]) -> Any:
            return await op.add_key_slots(a, k, _int(form.get("add", ""), "add"))

        return await self.act(request, self._key_action(key_id, run, "slots"))

    # -- quarantine, plans, traffic, deletions, audit --------------------------------------

    async def quarantine(self, request: Request) -> Response:
        found = await self.signed_in(request)
        if isinstance(found, Response):
            return found
        rows = await accounts.list_quarantined(self.client)
        flagged = await accounts.list_flagged(self.client)
        return self.html(request, found, "quarantine.html",
                         {"title": "Quarantine", "nav": "quarantine", "rows": rows,
                          "flagged": flagged})  # fmt: skip

    async def clear_flag(self, request: Request, account: str) -> Response:
        async def change(op: Operator, form: dict[str, str]) -> str:
            await op.clear_flag(await accounts.require_account(self.client, account))
            return f"{BASE}/quarantine?done=cleared"

        return await self.act(request, change)

    # -- upstreams -------------------------------------------------------------------------

    async def upstreams(self, request: Request) -> Response:
        found = await self.signed_in(request)
        if isinstance(found, Response):
            return found
        rows = await upstream_store.views(self.client, self.clock())
        return self.html(request, found, "upstreams.html",
                         {"title": "Upstreams", "nav": "upstreams", "rows": rows})  # fmt: skip

    async def switch_upstream(self, request: Request, upstream: str) -> Response:
        async def change(op: Operator, form: dict[str, str]) -> str:
            enable = form.get("enable") == "1"
            await op.enable_upstream(upstream, enable)
            return f"{BASE}/upstreams?done={'enabled' if enable else 'disabled'}"

        return await self.act(request, change)

    async def plans(self, request: Request) -> Response:
        found = await self.signed_in(request)
        if isinstance(found, Response):
            return found
        return self.html(request, found, "plans.html",
                         {"title": "Plans", "nav": "plans",
                          "plans": await list_plans(self.client)})  # fmt: skip

    async def save_plan(self, request: Request) -> Response:
        async def change(op: Operator, form: dict[str, str]) -> str:
            name = form.get("name", "").strip()
            # A blank or missing key cap keeps the plan's own (as the CLI and admin API do).
            keys = form.get("max_keys", "").strip()
            current = await get_plan(self.client, name) if name else None
            try:
                plan = Plan(
                    name=name,
                    credits_5h=_int(form.get("credits_5h", ""), "credits_5h"),
                    credits_7d=_int(form.get("credits_7d", ""), "credits_7d"),
                    ip_slots=_int(form.get("ip_slots", ""), "ip_slots"),
                    concurrency=_int(form.get("concurrency", ""), "concurrency"),
                    period_days=_int(form.get("period_days", "") or "30", "period_days"),
                    description=form.get("description", "").strip(),
                    max_keys=_int(keys, "max_keys") if keys
                    else (current.max_keys if current else DEFAULT_MAX_KEYS),
                )
            except errors.ConfigError as exc:
                raise errors.InvalidRequest(exc.message) from None
            await op.set_plan(plan)
            return f"{BASE}/plans?done=saved"

        return await self.act(request, change)

    async def traffic(self, request: Request) -> Response:
        found = await self.signed_in(request)
        if isinstance(found, Response):
            return found
        totals = views.metric_totals(self.res.metrics.render().decode())
        top = await views.top_accounts(self.client, self.res.limiter, self.clock())
        return self.html(request, found, "traffic.html",
                         {"title": "Traffic", "nav": "traffic", **totals, "top": top})  # fmt: skip

    async def deletions(self, request: Request) -> Response:
        found = await self.signed_in(request)
        if isinstance(found, Response):
            return found
        rows = await erasure.list_requests(self.client, self.clock())
        context = {"title": "Deletion requests", "nav": "deletions", "rows": rows}
        return self.html(request, found, "deletions.html", context)

    async def audit_page(self, request: Request) -> Response:
        found = await self.signed_in(request)
        if isinstance(found, Response):
            return found
        actor, action = _q(request, "actor"), _q(request, "action")
        start = max(0, _int(_q(request, "start") or "0", "start"))
        rows, more = await audit.query(
            self.client, actor=actor or None, action=action or None, limit=PAGE, offset=start
        )
        base = f"{BASE}/audit?actor={quote(actor)}&action={quote(action)}&start="
        return self.html(
            request, found, "audit.html",
            {"title": "Audit trail", "nav": "audit", "rows": rows, "actor": actor,
             "action": action, "next": f"{base}{more}" if more is not None else None},
        )  # fmt: skip


def register(app: Application, res: Resources) -> Console:
    """Adds the ``/admin/console`` pages to ``app``."""
    c = Console(res)

    def plain(handler: Handler) -> Handler:
        wrapped = c.page(handler)

        async def call(request: Request) -> Response:
            return await wrapped(request)

        return call

    def with_account(handler: Handler) -> Handler:
        wrapped = c.page(handler)

        async def call(request: Request, account: str) -> Response:
            return await wrapped(request, account=account)

        return call

    def with_key(handler: Handler) -> Handler:
        wrapped = c.page(handler)

        async def call(request: Request, key_id: str) -> Response:
            return await wrapped(request, key_id=key_id)

        return call

    def with_upstream(handler: Handler) -> Handler:
        wrapped = c.page(handler)

        async def call(request: Request, upstream: str) -> Response:
            return await wrapped(request, upstream=upstream)

        return call

    r = app.router
    r.add_get(BASE, plain(c.root))
    r.add_get(SIGNIN, plain(c.signin_form))
    r.add_post(SIGNIN, plain(c.signin))
    r.add_post(f"{BASE}/signout", plain(c.signout))
    r.add_get(f"{BASE}/accounts", plain(c.accounts_page))
    r.add_get(f"{BASE}/accounts/:account", with_account(c.account_page))
    r.add_post(f"{BASE}/accounts/:account/plan", with_account(c.assign_plan))
    r.add_post(f"{BASE}/accounts/:account/extend", with_account(c.extend))
    r.add_post(f"{BASE}/accounts/:account/cancel", with_account(c.cancel))
    r.add_post(f"{BASE}/accounts/:account/ip-slots", with_account(c.account_slots))
    r.add_post(f"{BASE}/accounts/:account/delete", with_account(c.delete))
    r.add_get(f"{BASE}/keys/:key_id", with_key(c.key_page))
    r.add_post(f"{BASE}/keys/:key_id/revoke", with_key(c.revoke))
    r.add_post(f"{BASE}/keys/:key_id/release", with_key(c.release))
    r.add_post(f"{BASE}/keys/:key_id/unbind", with_key(c.unbind))
    r.add_post(f"{BASE}/keys/:key_id/ip-slots", with_key(c.key_slots))
    r.add_get(f"{BASE}/quarantine", plain(c.quarantine))
    r.add_post(f"{BASE}/accounts/:account/clear-flag", with_account(c.clear_flag))
    r.add_get(f"{BASE}/upstreams", plain(c.upstreams))
    r.add_post(f"{BASE}/upstreams/:upstream/switch", with_upstream(c.switch_upstream))
    r.add_get(f"{BASE}/plans", plain(c.plans))
    r.add_post(f"{BASE}/plans", plain(c.save_plan))
    r.add_get(f"{BASE}/traffic", plain(c.traffic))
    r.add_get(f"{BASE}/deletions", plain(c.deletions))
    r.add_get(f"{BASE}/audit", plain(c.audit_page))
    return c

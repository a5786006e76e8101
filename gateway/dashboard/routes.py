"""HTTP side of the dashboard: ``register(app, resources)`` adds the /dashboard routes.

Each handler resolves the visitor from the session cookie, checks the CSRF token on every
POST, and turns domain errors into an HTML page here (the app's JSON error handler is for
API clients). Every response reports its server time in ``Server-Timing``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from blacksheep import Application, Content, Request, Response

from gateway import accounts, errors, store, wire
from gateway.dashboard import signin, views
from gateway.dashboard.csrf import FIELD as CSRF_FIELD
from gateway.dashboard.csrf import Csrf
from gateway.dashboard.mail import Mailer, parse_smtp_url
from gateway.dashboard.render import Renderer, redirect
from gateway.dashboard.sessions import Session, Sessions, new_token
from gateway.pipeline import asgi_content

if TYPE_CHECKING:
    from gateway.resources import Resources

log = logging.getLogger("antex.dashboard")

SIGNIN = "/dashboard/signin"
HOME = "/dashboard/usage"
_MAX_FORM_BYTES = 8 * 1024
_KEY_ID = re.compile(r"^[a-z0-9]{12}$")
_MAX_KEY_NAME = 64

Handler = Callable[..., Awaitable[Response]]


class FormRefused(Exception):
    """A POST without a valid CSRF token, or sent from another site."""


@dataclass(frozen=True, slots=True)
class Visit:
    """Who is asking: the cookie token (new when absent), its session if signed in."""

    token: str
    fresh: bool  # the token is new: set the cookie on the response
    session: Session | None
    csrf: str


class Dashboard:
    def __init__(self, res: Resources) -> None:
        s = res.settings
        self.res = res
        self.client = res.valkey
        self.clock = res.clock
        self.sessions = Sessions(res.valkey, self.clock, s.trusted_proxies)
        self.csrf = Csrf(res.valkey)
        self.render = Renderer()
        self.limits = signin.SigninLimits()
        self.base_url = s.base_url
        self.mailer: Mailer | None = None
        if s.smtp_url:
            self.mailer = Mailer(parse_smtp_url(s.smtp_url), s.smtp_sender, s.base_url)

    # -- plumbing --------------------------------------------------------------------------

    async def visit(self, request: Request) -> Visit:
        token = self.sessions.presented(request)
        session = await self.sessions.load(token)
        fresh = token is None
        if token is None:
            token = new_token()
        return Visit(token, fresh, session, await self.csrf.token(token))

    def html(
        self,
        request: Request,
        visit: Visit,
        template: str,
        context: dict[str, Any],
        *,
        status: int = 200,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> Response:
        full = {
            "csrf": visit.csrf,
            "csrf_field": CSRF_FIELD,
            "base_url": self.base_url,
            "account": None,
            "nav": "",
            "notice": "",
            "error": "",
            **context,
        }
        response = self.render.page(template, full, status=status, headers=headers)
        if visit.fresh:
            self.sessions.set_cookie(request, response, visit.token, persist=False)
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
                status = wire.status_of(exc)
                if isinstance(exc, errors.ServiceUnavailable):
                    message = "The dashboard cannot reach its data store. Try again shortly."
                else:
                    message = exc.message
                response = await self.problem(request, status, message)
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
        account = None
        if visit.session is not None:
            account = {"email": "", "id": visit.session.account_id}
        return self.html(
            request, visit, "error.html",
            {"status": status, "message": message, "account": account, "title": "Error"},
            status=status,
        )  # fmt: skip

    async def signed_in(self, request: Request) -> tuple[Visit, dict[str, str]] | Response:
        visit = await self.visit(request)
        if visit.session is None:
            return redirect(SIGNIN)
        try:
            account = await views.account_of(self.client, visit.session.account_id)
        except errors.NotFound:
            await self.sessions.destroy(visit.token)  # the account is gone
            return redirect(SIGNIN)
        return visit, account

    # -- sign-in ---------------------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        visit = await self.visit(request)
        return redirect(HOME if visit.session else SIGNIN)

    def _signin_page(
        self, request: Request, visit: Visit, *, error: str = "", status: int = 200,
        headers: list[tuple[bytes, bytes]] | None = None, notice: str = "",
    ) -> Response:  # fmt: skip
        return self.html(
            request, visit, "signin.html",
            {"title": "Sign in", "error": error, "notice": notice,
             "mail": self.mailer is not None},
            status=status, headers=headers,
        )  # fmt: skip

    async def signin_form(self, request: Request) -> Response:
        visit = await self.visit(request)
        if visit.session is not None:
            return redirect(HOME)
        notice = "You are signed out." if request.query.get("signed_out") else ""
        return self._signin_page(request, visit, notice=notice)

    async def signin_request(self, request: Request) -> Response:
        visit = await self.visit(request)
        form = await self.form(request, visit)
        try:
            email = accounts.normalize_email(form.get("email", ""))
        except errors.InvalidRequest:
            return self._signin_page(
                request, visit, error="Enter the email address of your account.", status=400
            )
        ip_tag = self.res.pipeline.client_tag(request)
        wait = await signin.over_limit(self.client, email, ip_tag, self.limits)
        if wait is not None:
            minutes = max(1, (wait + 59) // 60)
            return self._signin_page(
                request, visit, status=429, headers=[(b"retry-after", str(wait).encode())],
                error=f"Too many sign-in requests. Try again in {minutes} min.",
            )  # fmt: skip
        if self.mailer is not None:
            # Looked up in the background: the answer and its timing do not depend on it.
            self.mailer.spawn(self._mail_link(email))
        return self.html(
            request, visit, "signin_sent.html",
            {"title": "Check your mail", "mail": self.mailer is not None},
        )  # fmt: skip

    async def _mail_link(self, email: str) -> None:
        assert self.mailer is not None
        try:
            account_id = await accounts.find_account(self.client, email)
            if account_id is None:
                return
            link = await signin.issue_link(self.client, account_id, self.base_url, self.clock())
        except store.FAILURES as exc:
            log.error("sign-in link not issued: %s", store.domain_error(exc).message)
            return
        await self.mailer.deliver(email, link)

    def _bad_link(self, request: Request, visit: Visit) -> Response:
        return self._signin_page(
            request, visit, status=400,
            error="This sign-in link is invalid, has expired or was already used. "
            "Ask for a new one below.",
        )  # fmt: skip

    async def link_confirm(self, request: Request) -> Response:
        visit = await self.visit(request)
        token = (request.query.get("token") or [""])[0]
        if not signin.plausible(token):
            return self._bad_link(request, visit)
        account_id = await signin.peek(self.client, token, self.clock())
        if account_id is None:
            return self._bad_link(request, visit)
        account = await views.account_of(self.client, account_id)
        return self.html(
            request, visit, "signin_link.html",
            {"title": "Sign in", "token": token, "email": account.get("email", "")},
        )  # fmt: skip

    async def link_redeem(self, request: Request) -> Response:
        visit = await self.visit(request)
        form = await self.form(request, visit)
        token = form.get("token", "")
        account_id = None
        if signin.plausible(token):
            account_id = await signin.redeem(self.client, token, self.clock())
        if account_id is None:
            return self._bad_link(request, visit)
        # A new id at every sign-in: whatever id the browser held before (possibly planted
        # by someone else) is dropped, never promoted.
        await self.sessions.destroy(visit.token)
        session = await self.sessions.create(account_id)
        response = redirect(HOME)
        self.sessions.set_cookie(request, response, session.token, persist=True)
        return response

    async def signout(self, request: Request) -> Response:
        visit = await self.visit(request)
        await self.form(request, visit)
        await self.sessions.destroy(visit.token)
        response = redirect(f"{SIGNIN}?signed_out=1")
        self.sessions.clear_cookie(request, response)
        return response

    # -- pages -----------------------------------------------------------------------------

    async def usage(self, request: Request) -> Response:
        found = await self.signed_in(request)
        if isinstance(found, Response):
            return found
        visit, account = found
        assert visit.session is not None
        data = await views.usage_page(
            self.client, self.res.limiter, visit.session.account_id, account, self.clock()
        )
        return self.html(
            request, visit, "usage.html",
            {"title": "Usage", "nav": "usage", "account": account, **data},
        )  # fmt: skip

    async def _keys_page(
        self, request: Request, visit: Visit, account: dict[str, str], **extra: Any
    ) -> Response:
        data = await views.keys_page(self.client, account["id"], account)
        status = extra.pop("status", 200)
        return self.html(
            request, visit, "keys.html",
            {"title": "API keys", "nav": "keys", "account": account, "created": None,
             "name_error": "", "key_error": "", **data, **extra},
            status=status,
        )  # fmt: skip

    async def keys(self, request: Request) -> Response:
        found = await self.signed_in(request)
        if isinstance(found, Response):
            return found
        visit, account = found
        notice = ""
        revoked = (request.query.get("revoked") or [""])[0]
        if revoked and _KEY_ID.match(revoked):
            key = await views.find_key(self.client, account["id"], revoked)
            if key is not None:
                notice = f"The key “{key.get('name', '')}” is revoked."
        return await self._keys_page(request, visit, account, notice=notice)

    async def create_key(self, request: Request) -> Response:
        found = await self.signed_in(request)
        if isinstance(found, Response):
            return found
        visit, account = found
        form = await self.form(request, visit)
        name = " ".join(form.get("name", "").split())
        if not name or len(name) > _MAX_KEY_NAME or not name.isprintable():
            return await self._keys_page(
                request, visit, account, status=400,
                name_error=f"Give the key a name of 1 to {_MAX_KEY_NAME} characters.",
            )  # fmt: skip
        try:
            created = await accounts.create_key(
                self.client, account["id"], name,
                rounds=self.res.settings.bcrypt_rounds, now_ms=self.clock(),
            )  # fmt: skip
        except errors.KeyLimitReached as exc:
            return await self._keys_page(
                request, visit, account, status=wire.status_of(exc), key_error=exc.message
            )
        # Rendered straight into this response (no redirect): the full key must never sit
        # in Valkey, a URL or a log, so this page is the only place it ever appears.
        return await self._keys_page(
            request, visit, account, status=201,
            created={"name": name, "key": created.key, "key_id": created.key_id},
        )  # fmt: skip

    async def revoke_confirm(self, request: Request, key_id: str) -> Response:
        found = await self.signed_in(request)
        if isinstance(found, Response):
            return found
        visit, account = found
        key = None
        if _KEY_ID.match(key_id):
            key = await views.find_key(self.client, account["id"], key_id)
        if key is None:
            raise errors.NotFound("There is no such key on your account.")
        return self.html(
            request, visit, "key_revoke.html",
            {"title": "Revoke key", "nav": "keys", "account": account, "key": key},
        )  # fmt: skip

    async def revoke(self, request: Request, key_id: str) -> Response:
        found = await self.signed_in(request)
        if isinstance(found, Response):
            return found
        visit, account = found
        await self.form(request, visit)
        if not _KEY_ID.match(key_id):
            raise errors.NotFound("There is no such key on your account.")
        try:
            # revoke_key refuses ids outside this account's own key set.
            await accounts.revoke_key(self.client, account["id"], key_id, now_ms=self.clock())
        except errors.NotFound:
            raise errors.NotFound("There is no such key on your account.") from None
        return redirect(f"/dashboard/keys?revoked={key_id}")

    async def plans(self, request: Request) -> Response:
        found = await self.signed_in(request)
        if isinstance(found, Response):
            return found
        visit, account = found
        data = await views.plans_page(self.client, account["id"], account)
        notice = "Your deletion request was recorded." if request.query.get("deletion") else ""
        return self.html(
            request, visit, "plans.html",
            {"title": "Plans", "nav": "plans", "account": account, "notice": notice,
             "operator_text": self.res.settings.plans_page_text, **data},
        )  # fmt: skip

    async def delete_account(self, request: Request) -> Response:
        found = await self.signed_in(request)
        if isinstance(found, Response):
            return found
        visit, account = found
        form = await self.form(request, visit)
        if form.get("confirm") != "yes":
            data = await views.plans_page(self.client, account["id"], account)
            return self.html(
                request, visit, "plans.html",
                {"title": "Plans", "nav": "plans", "account": account,
                 "operator_text": self.res.settings.plans_page_text,
                 "error": "Tick the box to confirm the deletion request.", **data},
                status=400,
            )  # fmt: skip
        await views.request_deletion(self.client, self.res.limiter, account["id"], self.clock())
        return redirect("/dashboard/plans?deletion=requested")

    async def static(self, request: Request, name: str) -> Response:
        found = self.render.static.get(name)
        if found is None:
            raise errors.NotFound("No such file.")
        ctype, data = found
        return Response(
            200,
            [(b"cache-control", b"public, max-age=86400"), (b"x-content-type-options", b"nosniff")],
            Content(ctype, data),
        )


def register(app: Application, res: Resources) -> Dashboard:
    """Adds the dashboard routes; returns the instance (its mailer drains at shutdown)."""
    dash = Dashboard(res)

    # Blacksheep binds route parameters by the handler's own signature, so each shape of
    # handler gets a plain function with exactly the parameters of its route.
    def plain(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        wrapped = dash.page(handler)

        async def call(request: Request) -> Response:
            return await wrapped(request)

        return call

    def with_key(handler: Handler) -> Callable[[Request, str], Awaitable[Response]]:
        wrapped = dash.page(handler)

        async def call(request: Request, key_id: str) -> Response:
            return await wrapped(request, key_id=key_id)

        return call

    static = dash.page(dash.static)

    async def static_file(request: Request, name: str) -> Response:
        return await static(request, name=name)

    r = app.router
    r.add_get("/dashboard", plain(dash.root))
    r.add_get(SIGNIN, plain(dash.signin_form))
    r.add_post(SIGNIN, plain(dash.signin_request))
    r.add_get(signin.LINK_PATH, plain(dash.link_confirm))
    r.add_post(signin.LINK_PATH, plain(dash.link_redeem))
    r.add_post("/dashboard/signout", plain(dash.signout))
    r.add_get(HOME, plain(dash.usage))
    r.add_get("/dashboard/keys", plain(dash.keys))
    r.add_post("/dashboard/keys", plain(dash.create_key))
    r.add_get("/dashboard/keys/:key_id/revoke", with_key(dash.revoke_confirm))
    r.add_post("/dashboard/keys/:key_id/revoke", with_key(dash.revoke))
    r.add_get("/dashboard/plans", plain(dash.plans))
    r.add_post("/dashboard/account/delete", plain(dash.delete_account))
    r.add_get("/dashboard/static/:name", static_file)

    async def on_stop(_: Application) -> None:
        if dash.mailer is not None:
            await dash.mailer.drain()

    app.on_stop += on_stop
    return dash

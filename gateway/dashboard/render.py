"""Jinja2 environment for ``gateway/templates`` and the HTML responses of the dashboard.

Every page goes out with a strict content security policy (no inline script or style, no
third-party origin), ``no-store`` caching and no referrer, so sign-in tokens in URLs and
freshly created keys stay out of caches and other sites' logs.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from typing import Any

from blacksheep import Content, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape

from gateway.dashboard.views import iso, utc_text

STATIC_FILES = {"dashboard.css": b"text/css; charset=utf-8",
                "dashboard.js": b"text/javascript; charset=utf-8"}  # fmt: skip

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)

_URL = re.compile(r"https?://[^\s<>\"']+[^\s<>\"'.,;:!?)]")


def linkify(text: str) -> Markup:
    """Operator text with its http(s) URLs as links; everything else escaped."""
    out, last = [], 0
    for match in _URL.finditer(text):
        out.append(escape(text[last : match.start()]))
        url = escape(match.group(0))
        out.append(Markup(f'<a href="{url}" rel="noopener noreferrer">{url}</a>'))
        last = match.end()
    out.append(escape(text[last:]))
    return Markup("").join(out)


def _thousands(n: int) -> str:
    return f"{n:,}"


class Renderer:
    def __init__(self) -> None:
        self.env = Environment(
            loader=PackageLoader("gateway", "templates"),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(iso=iso, utc=utc_text, thousands=_thousands, linkify=linkify)
        self.static: dict[str, tuple[bytes, bytes]] = {}
        for name, ctype in STATIC_FILES.items():
            data = resources.files("gateway").joinpath("static", name).read_bytes()
            self.static[name] = (ctype, data)
        # Content-addressed URLs let browsers cache the files for good.
        self.versions = {
            name: hashlib.sha256(data).hexdigest()[:12] for name, (_, data) in self.static.items()
        }
        self.env.globals["static_version"] = self.versions

    def page(
        self,
        template: str,
        context: dict[str, Any],
        *,
        status: int = 200,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> Response:
        html = self.env.get_template(template).render(context)
        response = Response(
            status,
            [*SECURITY_HEADERS, *(headers or [])],
            Content(b"text/html; charset=utf-8", html.encode()),
        )
        return response


def redirect(location: str) -> Response:
    # 303 turns a POST into a GET, so reloading the next page never re-submits the form.
    return Response(303, [(b"location", location.encode()), *SECURITY_HEADERS], None)

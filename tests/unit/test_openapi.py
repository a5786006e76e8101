"""The OpenAPI document is valid 3.1 and matches the routes the app really registers."""

from __future__ import annotations

import inspect
from typing import get_type_hints

import msgspec
import orjson
import pytest
from openapi_spec_validator import validate

from gateway import admin_routes, openapi
from gateway.admin_api import AdminApi
from gateway.app import create_app
from gateway.config import Settings

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
# The dashboards and the API reference page are HTML for browsers, not API operations.
BROWSER_PAGES = ("/dashboard", "/admin/console", "/admin/docs")


@pytest.fixture(scope="module")
def registered() -> set[tuple[str, str]]:
    # Building the app opens no connection: Valkey and aiohttp connect lazily on start.
    app = create_app(Settings(valkey_url="valkey://127.0.0.1:1"))
    app.router.apply_routes()
    return {
        (method.lower(), route.mustache_pattern)
        for method, route in app.router.iter_with_methods()
        if method != "*"  # the not-found fallback
        and not route.mustache_pattern.startswith(BROWSER_PAGES)
    }


def documented() -> set[tuple[str, str]]:
    paths = openapi.document()["paths"]
    return {(m, path) for path, item in paths.items() for m in METHODS if m in item}


def test_document_is_valid_openapi_3_1_and_round_trips_as_json() -> None:
    doc = orjson.loads(orjson.dumps(openapi.document()))
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def test_every_registered_route_is_documented(registered: set[tuple[str, str]]) -> None:
    missing = sorted(registered - documented())
    assert missing == []


def test_every_documented_admin_operation_exists(registered: set[tuple[str, str]]) -> None:
    admin_ops = {op for op in documented() if op[1].startswith("/admin/")}
    assert len(admin_ops) == 32
    assert sorted(admin_ops - registered) == []


def test_public_routes_are_documented_with_their_security() -> None:
    paths = openapi.document()["paths"]
    for path in ("/v1/messages", "/v1/chat/completions", "/v1/responses"):
        assert paths[path]["post"]["security"] == [{"ApiKey": []}, {"ApiKeyBearer": []}]
    for item in (paths[p] for p in paths if p.startswith("/admin/")):
        for method in METHODS:
            if method in item:
                assert item[method]["security"] == [{"OperatorToken": []}]
                assert "401" in item[method]["responses"]


def test_operation_ids_are_unique() -> None:
    ids = [
        item[m]["operationId"]
        for item in openapi.document()["paths"].values()
        for m in METHODS
        if m in item
    ]
    assert len(ids) == len(set(ids))


def test_every_admin_route_has_a_handler_taking_its_path_parameters_and_body() -> None:
    for route in admin_routes.ROUTES:
        handler = getattr(AdminApi, route.handler)
        names = list(inspect.signature(handler).parameters)
        expected = ["self", "request", *route.params] + (["body"] if route.body else [])
        assert names == expected, route.op_id
        if route.body is not None:
            assert get_type_hints(handler)["body"] is route.body, route.op_id


def test_admin_schemas_are_generated_from_the_models() -> None:
    schemas = openapi.document()["components"]["schemas"]
    for route in admin_routes.ROUTES:
        for kind in (route.body, route.answer):
            if kind is not None:
                generated = msgspec.json.schema_components([kind], ref_template=admin_routes.REF)
                assert schemas[kind.__name__] == generated[1][kind.__name__], kind

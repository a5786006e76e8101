"""What every answer carries, whatever the route: one header set, one request id a customer
can quote, CORS on the public API only, timeouts that fit long non-streamed answers."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.embedded_valkey import free_port
from tests.integration.conftest import (
    Customer,
    Stack,
    gateway_env,
    new_customer,
    run_gateway,
)

MODEL = "claude-sonnet-4-6"
MESSAGES = [{"role": "user", "content": "Say hello"}]
# Headers that may legitimately repeat (RFC 9110 list-valued or cookie headers).
_MULTI = {"set-cookie", "vary"}


def _dupes(resp: httpx.Response) -> list[str]:
    counts = Counter(name.decode().lower() for name, _ in resp.headers.raw)
    return [name for name, n in counts.items() if n > 1 and name not in _MULTI]


def _calls(key: str) -> list[tuple[str, str, str, dict[str, Any] | bytes | None, dict[str, str]]]:
    """(label, method, path, body, extra headers) for every public route and outcome."""
    auth = {"x-api-key": key}
    msg = {"model": MODEL, "max_tokens": 64, "messages": MESSAGES}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    resp = {"model": MODEL, "input": "hi"}
    fault = {"x-sim-fault": "529"}
    return [
        ("messages json", "POST", "/v1/messages", msg, auth),
        ("messages sse", "POST", "/v1/messages", {**msg, "stream": True}, auth),
        ("messages upstream error", "POST", "/v1/messages", msg, {**auth, **fault}),
        ("messages bad json", "POST", "/v1/messages", b"{nope", auth),
        ("messages no key", "POST", "/v1/messages", msg, {}),
        ("messages unknown model", "POST", "/v1/messages", {**msg, "model": "gpt-4o"}, auth),
        ("count_tokens", "POST", "/v1/messages/count_tokens", chat, auth),
        ("models", "GET", "/v1/models", None, auth),
        ("model", "GET", f"/v1/models/{MODEL}", None, auth),
        ("usage", "GET", "/v1/usage", None, auth),
        ("chat json", "POST", "/v1/chat/completions", chat, auth),
        ("chat sse", "POST", "/v1/chat/completions", {**chat, "stream": True}, auth),
        ("chat upstream error", "POST", "/v1/chat/completions", chat, {**auth, **fault}),
        ("chat no key", "POST", "/v1/chat/completions", chat, {}),
        ("responses json", "POST", "/v1/responses", resp, auth),
        ("responses sse", "POST", "/v1/responses", {**resp, "stream": True}, auth),
        ("responses upstream error", "POST", "/v1/responses", resp, {**auth, **fault}),
        ("responses no key", "POST", "/v1/responses", resp, {}),
        ("unknown path", "GET", "/v1/nothing-here", None, auth),
        ("root", "GET", "/", None, {}),
        ("healthz", "GET", "/healthz", None, {}),
    ]


def _request(method: str, url: str, body: Any, headers: dict[str, str]) -> dict[str, Any]:
    content = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    return {
        "method": method, "url": url, "content": content, "timeout": 30,
        "headers": {"anthropic-version": "2023-06-01", "content-type": "application/json",
                    **headers},
    }  # fmt: skip


def _send(url: str, method: str, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    return httpx.request(**_request(method, url + path, body, headers))


async def _asend(
    url: str, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.request(**_request(method, url + path, body, headers))


def test_no_single_valued_header_repeats_on_any_route(stack: Stack, customer: Customer) -> None:
    seen: dict[str, list[str]] = {}
    for label, method, path, body, headers in _calls(customer.key):
        resp = _send(stack.url, method, path, body, headers)
        assert resp.status_code < 600, label
        seen[label] = _dupes(resp)
        # The gateway's own id answers every request, exactly once.
        assert resp.headers.get_list("request-id") and len(resp.headers.get_list("request-id")) == 1
        assert resp.headers["request-id"].startswith("req_"), label
    assert {label: d for label, d in seen.items() if d} == {}


def test_success_answers_carry_the_gateways_request_id_not_the_upstreams(
    stack: Stack, customer: Customer
) -> None:
    for stream in (False, True):
        body = {"model": MODEL, "max_tokens": 64, "messages": MESSAGES, "stream": stream}
        resp = _send(stack.url, "POST", "/v1/messages", body, {"x-api-key": customer.key})
        assert resp.status_code == 200
        assert not resp.headers["request-id"].startswith("req_sim_")
        assert resp.headers.get_list("content-type") and len(
            resp.headers.get_list("content-type")
        ) == 1


@pytest.fixture(scope="module")
def edge_gateway(
    valkey_url: str, simulator: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A gateway with JSON logs, a 1 s stream idle timeout, a 3 s non-stream timeout and an
    allow-list of browser origins."""
    data_dir = tmp_path_factory.mktemp("edge-gw")
    port = free_port()
    log_path = data_dir / "gateway.log"
    env = gateway_env(
        valkey_url, simulator, data_dir, port,
        ANTEX_LOG_FORMAT="json", ANTEX_UPSTREAM_READ_TIMEOUT="1",
        ANTEX_UPSTREAM_NONSTREAM_TIMEOUT="3", ANTEX_CORS_ORIGINS="https://app.example",
        ANTEX_MAX_TOKENS="100000",
    )  # fmt: skip
    with run_gateway(env, port, log_path, "edge gateway") as url:
        yield url, log_path


def _access_lines(log_path: Path) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in log_path.read_bytes().splitlines()
             if line.startswith(b"{")]  # fmt: skip
    return [d for d in lines if d.get("logger") == "antex.access"]


async def _logged(log_path: Path, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        found = [d for d in _access_lines(log_path) if d.get("request_id") == request_id]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no access line for {request_id}"
        await asyncio.sleep(0.05)


async def test_the_answered_id_names_the_log_line_beside_the_upstreams(
    valkey_url: str, edge_gateway: tuple[str, Path]
) -> None:
    url, log_path = edge_gateway
    customer = await new_customer(valkey_url)
    auth = {"x-api-key": customer.key}
    body = {"model": MODEL, "max_tokens": 64, "messages": MESSAGES}
    for label, extra, status in (
        ("json", {}, 200),
        ("stream", {"stream": True}, 200),
        ("upstream refusal", {}, 529),
    ):
        headers = {**auth, "x-sim-fault": "529"} if status == 529 else auth
        resp = await _asend(url, "POST", "/v1/messages", {**body, **extra}, headers)
        assert resp.status_code == status, label
        line = await _logged(log_path, resp.headers["request-id"])
        assert line["upstream_request_id"].startswith("req_sim_"), label
        assert line["upstream_request_id"] != resp.headers["request-id"]
    # A refusal before admission is logged under the id it was answered with, too.
    refused = await _asend(url, "POST", "/v1/messages", body, {"x-api-key": customer.key + "x"})
    assert refused.status_code == 401
    assert orjson.loads(refused.content)["request_id"] == refused.headers["request-id"]
    assert (await _logged(log_path, refused.headers["request-id"]))["status"] == 401


async def test_a_non_streamed_answer_may_take_longer_than_the_stream_idle_timeout(
    valkey_url: str, edge_gateway: tuple[str, Path]
) -> None:
    url, _ = edge_gateway
    customer = await new_customer(valkey_url)
    body = {"model": MODEL, "max_tokens": 64, "messages": MESSAGES}
    # ~2 s before the simulator answers: past the 1 s idle timeout, inside the 3 s one.
    slow = {"x-api-key": customer.key, "x-sim-ttft-ms": "1800", "x-sim-event-delay-ms": "10"}
    resp = await _asend(url, "POST", "/v1/messages", body, slow)
    assert resp.status_code == 200, resp.text
    assert orjson.loads(resp.content)["type"] == "message"


async def test_a_non_streamed_answer_that_never_comes_is_a_504_timeout_error(
    valkey_url: str, edge_gateway: tuple[str, Path]
) -> None:
    url, _ = edge_gateway
    customer = await new_customer(valkey_url)
    body = {"model": MODEL, "max_tokens": 64, "messages": MESSAGES}
    started = time.monotonic()
    resp = await _asend(url, "POST", "/v1/messages", body, {"x-api-key": customer.key,
                                                     "x-sim-fault": "stall"})
    assert resp.status_code == 504
    assert orjson.loads(resp.content)["error"]["type"] == "timeout_error"
    assert time.monotonic() - started >= 2.5  # the non-stream timeout, not the idle one
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    resp = await _asend(url, "POST", "/v1/chat/completions", chat, {"x-api-key": customer.key,
                                                              "x-sim-fault": "stall"})
    assert resp.status_code == 504


def test_max_tokens_may_reach_the_models_own_output_limit(
    stack: Stack, customer: Customer
) -> None:
    auth = {"x-api-key": customer.key}
    # Claude Code's default: claude-opus-5-5 at max_tokens 128000.
    ok = {"model": "claude-opus-5-5", "max_tokens": 128_000, "messages": MESSAGES}
    assert _send(stack.url, "POST", "/v1/messages", ok, auth).status_code == 200
    over = {**ok, "max_tokens": 128_001}
    resp = _send(stack.url, "POST", "/v1/messages", over, auth)
    assert resp.status_code == 400
    error = orjson.loads(resp.content)["error"]
    assert error["type"] == "max_tokens_too_large" and "128,000" in error["message"]
    # A model whose output limit is 64,000.
    small = {"model": "claude-haiku-4-5", "max_tokens": 64_001, "messages": MESSAGES}
    resp = _send(stack.url, "POST", "/v1/messages", small, auth)
    assert resp.status_code == 400 and "64,000" in resp.text


async def test_the_operators_cap_applies_below_the_models_limit(
    valkey_url: str, edge_gateway: tuple[str, Path]
) -> None:
    url, _ = edge_gateway
    customer = await new_customer(valkey_url)
    body = {"model": "claude-opus-5-5", "max_tokens": 100_001, "messages": MESSAGES}
    resp = await _asend(url, "POST", "/v1/messages", body, {"x-api-key": customer.key})
    assert resp.status_code == 400 and "100,000" in resp.text
    assert orjson.loads(resp.content)["error"]["type"] == "max_tokens_too_large"


_PREFLIGHT = {
    "origin": "https://app.example",
    "access-control-request-method": "POST",
    "access-control-request-headers": "x-api-key, anthropic-version, content-type, "
    "anthropic-dangerous-direct-browser-access",
}


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/chat/completions", "/v1/responses"])
def test_a_browser_preflight_on_the_public_api_is_answered(stack: Stack, path: str) -> None:
    resp = httpx.options(stack.url + path, headers=_PREFLIGHT)
    assert resp.status_code == 204
    assert resp.headers["access-control-allow-origin"] == "*"
    assert "POST" in resp.headers["access-control-allow-methods"]
    assert "x-api-key" in resp.headers["access-control-allow-headers"]


def test_answers_to_a_browser_carry_cors_headers_errors_included(
    stack: Stack, customer: Customer
) -> None:
    origin = {"origin": "https://tool.example"}
    body = {"model": MODEL, "max_tokens": 64, "messages": MESSAGES}
    ok = _send(stack.url, "POST", "/v1/messages", body, {"x-api-key": customer.key, **origin})
    refused = _send(stack.url, "POST", "/v1/messages", body, origin)
    for resp in (ok, refused):
        assert resp.headers["access-control-allow-origin"] == "*"
        exposed = resp.headers["access-control-expose-headers"]
        assert "request-id" in exposed and "retry-after" in exposed
    assert (ok.status_code, refused.status_code) == (200, 401)


def test_cookie_and_operator_routes_never_answer_cross_origin(stack: Stack) -> None:
    for path in ("/dashboard/signin", "/admin/accounts"):
        resp = httpx.options(stack.url + path, headers=_PREFLIGHT)
        assert "access-control-allow-origin" not in resp.headers, path
        resp = httpx.get(stack.url + path, headers={"origin": "https://app.example"})
        assert "access-control-allow-origin" not in resp.headers, path


async def test_an_origin_allow_list_echoes_allowed_origins_only(
    valkey_url: str, edge_gateway: tuple[str, Path]
) -> None:
    url, _ = edge_gateway
    allowed = await _aoptions(url + "/v1/messages", headers=_PREFLIGHT)
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "origin" in allowed.headers["vary"].lower()
    other = await _aoptions(
        url + "/v1/messages", headers={**_PREFLIGHT, "origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in other.headers
    customer = await new_customer(valkey_url)
    body = {"model": MODEL, "max_tokens": 64, "messages": MESSAGES}
    resp = await _asend(url, "POST", "/v1/messages", body,
                 {"x-api-key": customer.key, "origin": "https://evil.example"})  # fmt: skip
    assert resp.status_code == 200 and "access-control-allow-origin" not in resp.headers


async def _aoptions(url: str, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.options(url, headers=headers)


def test_an_upstream_error_body_names_the_id_the_header_carries(
    stack: Stack, customer: Customer
) -> None:
    body = {"model": MODEL, "max_tokens": 64, "messages": MESSAGES}
    for fault in ("400", "429", "529"):
        resp = _send(stack.url, "POST", "/v1/messages", body,
                     {"x-api-key": customer.key, "x-sim-fault": fault})  # fmt: skip
        doc = orjson.loads(resp.content)
        assert doc["request_id"] == resp.headers["request-id"], fault
        assert doc["error"]["type"] in ("invalid_request_error", "rate_limit_error",
                                        "overloaded_error")  # fmt: skip


@pytest.mark.parametrize("effort", ["high", "xhigh"])
def test_a_max_tokens_the_gateway_picks_fits_the_models_output_limit(
    stack: Stack, customer: Customer, effort: str
) -> None:
    """claude-opus-4-1 writes at most 32,000 tokens; a reasoning budget plus room for the
    answer must not push the gateway's own default past it."""
    auth = {"x-api-key": customer.key}
    chat = {"model": "claude-opus-4-1", "reasoning_effort": effort,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    resp = _send(stack.url, "POST", "/v1/chat/completions", chat, auth)
    assert resp.status_code == 200, resp.text
    responses = {"model": "claude-opus-4-1", "input": "hi", "reasoning": {"effort": effort}}
    resp = _send(stack.url, "POST", "/v1/responses", responses, auth)
    assert resp.status_code == 200, resp.text
    # A value the client names is still checked.
    named = {**chat, "max_completion_tokens": 40_000}
    assert _send(stack.url, "POST", "/v1/chat/completions", named, auth).status_code == 400


def test_health_probes_answer_head(stack: Stack) -> None:
    for path in ("/healthz", "/readyz"):
        assert httpx.head(stack.url + path).status_code == 200, path


async def test_an_unknown_path_is_logged_under_the_id_it_was_answered_with(
    edge_gateway: tuple[str, Path]
) -> None:
    url, log_path = edge_gateway
    resp = await _asend(url, "POST", "/v1/v1/messages", {"model": MODEL}, {})
    assert resp.status_code == 404
    assert (await _logged(log_path, resp.headers["request-id"]))["status"] == 404

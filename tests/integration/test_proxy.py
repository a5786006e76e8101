"""The streaming proxy over real sockets: passthrough, cancellation, errors, headers."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import orjson
import pytest

from gateway.sse import forwarded_tokens
from gateway.usage import estimate_tokens
from tests.integration.clients import billed
from tests.integration.conftest import UPSTREAM_KEY, Customer, Stack

BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Say hello"}],
}


def post(stack: Stack, key: str | None, body: Any = BODY, **kw: Any) -> httpx.Response:
    headers = {"anthropic-version": "2023-06-01", **kw.pop("headers", {})}
    if key:
        headers["x-api-key"] = key
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(
        f"{stack.url}/v1/messages", content=content, headers=headers, timeout=30, **kw
    )


def error_of(resp: httpx.Response) -> tuple[int, str]:
    payload = resp.json()
    assert payload["type"] == "error"
    assert resp.headers["request-id"].startswith("req_")
    return resp.status_code, payload["error"]["type"]


def test_stream_bytes_are_identical_to_what_the_upstream_sent(
    stack: Stack, customer: Customer
) -> None:
    body = orjson.dumps({**BODY, "stream": True})
    sim_headers = {"x-sim-output-tokens": "40", "x-sim-deterministic": "1"}
    direct = httpx.post(
        f"{stack.sim_url}/v1/messages", content=body,
        headers={"x-api-key": UPSTREAM_KEY, "anthropic-version": "2023-06-01", **sim_headers},
    )  # fmt: skip
    via = post(stack, customer.key, body, headers=sim_headers)
    assert via.status_code == 200
    assert via.headers["content-type"].startswith("text/event-stream")
    assert b"event: message_stop" in via.content
    assert via.content == direct.content


def test_first_chunk_arrives_before_the_upstream_finishes(stack: Stack, customer: Customer) -> None:
    headers = {"x-sim-chunks": "10", "x-sim-chunk-delay-ms": "150", "x-api-key": customer.key}
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{stack.url}/v1/messages", headers=headers,
        content=orjson.dumps({**BODY, "stream": True}), timeout=30,
    ) as resp:  # fmt: skip
        chunks = resp.iter_raw()
        first = next(chunks)
        first_at = time.monotonic() - started
        rest = b"".join(chunks)
    total = time.monotonic() - started
    assert b"message_start" in first
    assert b"message_stop" in rest
    # Ten deltas 150 ms apart: buffering would deliver nothing before ~1.5 s.
    assert first_at < 0.75 < total


def test_client_disconnect_cancels_the_upstream_stream(stack: Stack, customer: Customer) -> None:
    before = stack.sim_stats()["disconnected"]
    headers = {"x-sim-chunks": "200", "x-sim-chunk-delay-ms": "100", "x-api-key": customer.key}
    with httpx.stream(
        "POST", f"{stack.url}/v1/messages", headers=headers,
        content=orjson.dumps({**BODY, "stream": True}), timeout=30,
    ) as resp:  # fmt: skip
        next(resp.iter_raw())
    # The stream would run 20 s; the simulator must see the drop within a few seconds.
    deadline = time.monotonic() + 5
    while stack.sim_stats()["disconnected"] == before:
        assert time.monotonic() < deadline, "upstream stream was not cancelled"
        time.sleep(0.05)


def test_missing_and_invalid_keys_are_401_without_retry(stack: Stack, customer: Customer) -> None:
    for key in (
        None,
        "sk_live_nope",
        customer.key[:-1] + ("A" if customer.key[-1] != "A" else "B"),
    ):
        resp = post(stack, key)
        assert error_of(resp) == (401, "authentication_error")
        assert resp.headers["x-should-retry"] == "false"


def test_bearer_auth_is_accepted(stack: Stack, customer: Customer) -> None:
    resp = httpx.post(
        f"{stack.url}/v1/messages", content=orjson.dumps(BODY),
        headers={"authorization": f"Bearer {customer.key}"}, timeout=30,
    )  # fmt: skip
    assert resp.status_code == 200, resp.text


def test_body_over_2mb_is_refused_by_length_and_while_chunked(
    stack: Stack, customer: Customer
) -> None:
    big = orjson.dumps({**BODY, "messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]})
    assert error_of(post(stack, customer.key, big)) == (400, "payload_too_large")

    def chunked() -> Any:
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    resp = httpx.post(
        f"{stack.url}/v1/messages",
        content=chunked(),
        headers={"x-api-key": customer.key},
        timeout=30,
    )
    assert error_of(resp) == (400, "payload_too_large")


def test_request_validation_errors(stack: Stack, customer: Customer) -> None:
    assert error_of(post(stack, customer.key, {**BODY, "max_tokens": 128_001})) == (
        400, "max_tokens_too_large",
    )  # fmt: skip
    assert error_of(post(stack, customer.key, b"{not json")) == (400, "invalid_request_error")
    assert error_of(post(stack, customer.key, b"[1,2]")) == (400, "invalid_request_error")
    no_model = {k: v for k, v in BODY.items() if k != "model"}
    assert error_of(post(stack, customer.key, no_model)) == (400, "invalid_request_error")
    assert error_of(post(stack, customer.key, {**BODY, "model": "gpt-4o"})) == (
        404,
        "not_found_error",
    )


def test_unknown_path_is_404_in_anthropic_shape(stack: Stack) -> None:
    resp = httpx.get(f"{stack.url}/v1/nothing-here")
    assert error_of(resp) == (404, "not_found_error")


@pytest.mark.parametrize(
    ("fault", "status", "kind"),
    [("429", 429, "rate_limit_error"), ("529", 529, "overloaded_error"), ("500", 500, "api_error")],
)
def test_upstream_errors_are_forwarded_unmodified(
    stack: Stack, customer: Customer, fault: str, status: int, kind: str
) -> None:
    direct = httpx.post(
        f"{stack.sim_url}/v1/messages", content=orjson.dumps(BODY),
        headers={"x-api-key": UPSTREAM_KEY, "x-sim-fault": fault},
    )  # fmt: skip
    resp = post(stack, customer.key, headers={"x-sim-fault": fault})
    assert resp.status_code == status
    assert resp.json()["error"] == direct.json()["error"]
    assert resp.json()["error"]["type"] == kind
    if fault == "429":
        assert resp.headers["retry-after"] == direct.headers["retry-after"]


def test_upstream_failure_mid_stream_becomes_one_error_event(
    stack: Stack, customer: Customer
) -> None:
    resp = post(stack, customer.key, {**BODY, "stream": True}, headers={"x-sim-fault": "drop"})
    assert resp.status_code == 200
    assert resp.content.count(b"event: error") == 1
    assert b"message_stop" not in resp.content


def test_stalled_upstream_times_out_into_an_error_event(stack: Stack, customer: Customer) -> None:
    # The test server's idle-read timeout is 3 s.
    resp = post(stack, customer.key, {**BODY, "stream": True}, headers={"x-sim-fault": "stall"})
    assert resp.status_code == 200
    assert resp.content.count(b"event: error") == 1
    assert b"message_start" in resp.content


def test_anthropic_headers_and_query_go_upstream_verbatim(stack: Stack, customer: Customer) -> None:
    betas = "interleaved-thinking-2025-05-14,context-management-2025-06-27"
    marker = f"run-{time.monotonic_ns()}"
    resp = httpx.post(
        f"{stack.url}/v1/messages?beta=true",
        content=orjson.dumps(BODY),
        headers={
            "x-api-key": customer.key,
            "anthropic-version": "2023-06-01",
            "anthropic-beta": betas,
            "anthropic-dangerous-direct-browser-access": "true",
            "x-claude-code-session-id": marker,
            "connection": "keep-alive",
        },
    )
    assert resp.status_code == 200
    seen = next(
        r for r in httpx.get(f"{stack.sim_url}/_sim/requests").json()
        if dict((k.lower(), v) for k, v in r["headers"]).get("x-claude-code-session-id") == marker
    )  # fmt: skip
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert seen["query_string"] == "beta=true"
    assert headers["anthropic-beta"] == betas
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-dangerous-direct-browser-access"] == "true"
    assert headers["x-api-key"] == UPSTREAM_KEY
    assert customer.key not in str(seen)


def test_root_probe_needs_no_key(stack: Stack) -> None:
    assert httpx.head(f"{stack.url}/").status_code == 200
    assert httpx.get(f"{stack.url}/").status_code == 200


def test_upstream_unreachable_is_a_clean_502(
    valkey_url: str, customer: Customer, tmp_path: Any
) -> None:
    import subprocess
    import sys

    from tests.integration.conftest import ROOT, gateway_env, stop, wait_http

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    from gateway.embedded_valkey import free_port

    port = free_port()
    (tmp_path / "clock").write_text("0")
    env = gateway_env(valkey_url, f"http://127.0.0.1:{dead}", tmp_path, port, ANTEX_WORKERS="1")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=ROOT, env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, "gateway")
        resp = httpx.post(
            f"http://127.0.0.1:{port}/v1/messages", content=orjson.dumps(BODY),
            headers={"x-api-key": customer.key}, timeout=30,
        )  # fmt: skip
        assert error_of(resp) == (502, "api_error")
    finally:
        stop(proc)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_before_any_usage_is_billed_its_input_estimate(
    stack: Stack, customer: Customer, sync_valkey: Any, stream: bool
) -> None:
    """Streamed (the upstream's headers came, its message_start not yet) or not: the same
    input estimate as a gateway killed at that point, never zero."""
    body = orjson.dumps({**BODY, "stream": stream})
    headers = {"x-sim-ttft-ms": "10000", "x-api-key": customer.key}
    if stream:
        with httpx.stream(
            "POST", f"{stack.url}/v1/messages", headers=headers, content=body, timeout=30
        ) as resp:
            assert resp.status_code == 200
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{stack.url}/v1/messages", headers=headers, content=body, timeout=1)
    [entry] = billed(sync_valkey, customer, 1)
    assert entry["disconnected"] == "1"
    assert int(entry["input_tokens"]) == estimate_tokens(len(body)) > 0
    assert int(entry["credits_mc"]) > 0


def test_an_upstream_error_mid_stream_is_billed_for_the_content_before_it_only(
    stack: Stack, customer: Customer, sync_valkey: Any
) -> None:
    """Counted from the text deltas the client got: neither the error event's own bytes
    (its message) nor the deltas' event lines are an answer the customer received, and
    the translated routes count that text exactly."""
    headers = {"x-sim-fault": "error-mid-stream", "x-sim-output-tokens": "100"}
    resp = post(stack, customer.key, {**BODY, "max_tokens": 1000, "stream": True},
                headers=headers)  # fmt: skip
    assert resp.status_code == 200 and b"event: error" in resp.content
    received = sum(
        len(orjson.loads(line[6:])["delta"]["text"].encode())
        for line in resp.content.splitlines()
        if line.startswith(b'data: {"type":"content_block_delta"')
    )
    [entry] = billed(sync_valkey, customer, 1)
    assert int(entry["output_tokens"]) == forwarded_tokens(received) > 0

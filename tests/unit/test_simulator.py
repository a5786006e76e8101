"""The upstream simulator as a real granian process, driven by the real anthropic SDK and httpx."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.catalog import load_catalog
from gateway.simulator import _pause

ROOT = Path(__file__).resolve().parents[2]
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 100,
        "messages": [{"role": "user", "content": "Hello there"}]}
WEATHER_TOOL = {"name": "get_weather", "description": "Weather for a city",
                "input_schema": {"type": "object", "required": ["city"],
                                 "properties": {"city": {"type": "string"},
                                                "days": {"type": "integer"},
                                                "metric": {"type": "boolean"},
                                                "extra": {"type": "object"},
                                                "tags": {"type": "array"}}}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.02)


def _start(*extra: str) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.simulator", "--port", str(port),
         "--ttft-ms", "20", "--event-delay-ms", "3", *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, "simulator exited during start-up"
        try:
            return httpx.get(base + "/_sim/stats", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        _wait_until(ready, timeout=20)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    yield from _start()


@pytest.fixture(scope="module")
def burst_sim() -> Iterator[str]:
    yield from _start("--burst")


@pytest.fixture(scope="module")
def http(sim: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def sdk(sim: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=sim, api_key="x", max_retries=0) as client:
        yield client


def _stats(http: httpx.Client) -> dict[str, int]:
    stats: dict[str, int] = http.get("/_sim/stats").json()
    return stats


def _last_body_length(http: httpx.Client) -> int:
    length: int = http.get("/_sim/requests").json()[-1]["body_length"]
    return length


def _events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in raw.split(b"\n\n"):
        if not frame.strip():
            continue
        name_line, data_line = frame.split(b"\n")
        assert name_line.startswith(b"event: ") and data_line.startswith(b"data: ")
        out.append((name_line[7:].decode(), orjson.loads(data_line[6:])))
    return out


def _post(http: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    return http.post("/v1/messages?beta=true", content=orjson.dumps(body), headers=hdrs)


def test_non_stream_message_has_anthropic_shape_and_documented_usage(
    sdk: anthropic.Anthropic, http: httpx.Client
) -> None:
    msg = sdk.messages.create(**BODY)
    assert msg.id.startswith("msg_sim_")
    assert msg.model == "claude-sonnet-4-6"
    assert msg.stop_reason == "end_turn"
    assert msg.content[0].type == "text" and msg.content[0].text
    assert msg.usage.input_tokens == max(1, _last_body_length(http) // 4)
    assert msg.usage.output_tokens == 32
    assert msg.usage.cache_read_input_tokens == 0
    assert msg.usage.cache_creation_input_tokens == 0
    assert msg.usage.cache_creation is not None
    assert msg.usage.cache_creation.ephemeral_5m_input_tokens == 0
    assert msg.usage.service_tier == "standard"


def test_input_tokens_follow_raw_body_length(http: httpx.Client) -> None:
    for pad in ("", "x" * 3, "y" * 1001):
        body = {**BODY, "messages": [{"role": "user", "content": "hi" + pad}]}
        raw = orjson.dumps(body)
        usage = http.post("/v1/messages", content=raw).json()["usage"]
        assert usage["input_tokens"] == max(1, len(raw) // 4)


@settings(max_examples=30, deadline=None)
@given(max_tokens=st.integers(1, 300), wanted=st.none() | st.integers(0, 400))
def test_output_tokens_default_to_32_and_never_exceed_max_tokens(
    http: httpx.Client, max_tokens: int, wanted: int | None
) -> None:
    headers = {} if wanted is None else {"x-sim-output-tokens": str(wanted)}
    body = {**BODY, "max_tokens": max_tokens}
    resp = _post(http, body, **headers).json()
    expected = min(max_tokens, 32 if wanted is None else wanted)
    assert resp["usage"]["output_tokens"] == expected
    truncated = wanted is not None and wanted > max_tokens
    assert resp["stop_reason"] == ("max_tokens" if truncated else "end_turn")


def test_cache_headers_set_cache_fields_and_split(sdk: anthropic.Anthropic) -> None:
    msg = sdk.messages.create(
        **BODY, extra_headers={"x-sim-cache-read": "1800", "x-sim-cache-write-5m": "40",
                               "x-sim-cache-write-1h": "2"})
    assert msg.usage.cache_read_input_tokens == 1800
    assert msg.usage.cache_creation_input_tokens == 42
    assert msg.usage.cache_creation.ephemeral_5m_input_tokens == 40
    assert msg.usage.cache_creation.ephemeral_1h_input_tokens == 2


def test_sse_event_sequence_matches_the_wire_format(http: httpx.Client) -> None:
    resp = _post(http, {**BODY, "stream": True}, x_sim_chunks="5", x_sim_cache_read="7")
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["request-id"].startswith("req_sim_")
    events = _events(resp.content)
    names = [name for name, _ in events]
    assert names == (["message_start", "content_block_start", "ping"]
                     + ["content_block_delta"] * 5
                     + ["content_block_stop", "message_delta", "message_stop"])
    assert all(data["type"] == name for name, data in events)
    start_usage = events[0][1]["message"]["usage"]
    assert start_usage["output_tokens"] == 1
    assert start_usage["cache_read_input_tokens"] == 7
    assert start_usage["input_tokens"] == max(1, _last_body_length(http) // 4)
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == "end_turn"
    assert final["usage"] == {"input_tokens": start_usage["input_tokens"],
                              "cache_creation_input_tokens": 0, "cache_read_input_tokens": 7,
                              "output_tokens": 32}


def test_sdk_stream_accumulates_the_same_message(
    sdk: anthropic.Anthropic, http: httpx.Client
) -> None:
    with sdk.messages.stream(**BODY, extra_headers={
            "x-sim-output-tokens": "80", "x-sim-stop-reason": "max_tokens"}) as stream:
        deltas = [e for e in stream if e.type == "content_block_delta"]
        msg = stream.get_final_message()
    assert len(deltas) == 10  # one delta per ~8 output tokens by default
    assert msg.usage.output_tokens == 80
    assert msg.usage.input_tokens == max(1, _last_body_length(http) // 4)
    assert msg.stop_reason == "max_tokens"
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "".join(d.delta.text for d in deltas)


async def test_async_sdk_streams_too(sim: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=sim, api_key="x", max_retries=0) as client:
        async with client.messages.stream(**BODY) as stream:
            msg = await stream.get_final_message()
    assert msg.usage.output_tokens == 32 and msg.stop_reason == "end_turn"


def test_thinking_block_comes_first_with_a_signature(
    sdk: anthropic.Anthropic, http: httpx.Client
) -> None:
    body = {**BODY, "max_tokens": 4096, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    with sdk.messages.stream(**body) as stream:
        msg = stream.get_final_message()
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].signature and msg.content[0].thinking
    adaptive = {**body, "thinking": {"type": "adaptive"}, "stream": True}
    events = _events(_post(http, adaptive).content)
    stop_at = next(i for i, (n, _) in enumerate(events) if n == "content_block_stop")
    assert events[stop_at - 1][1]["delta"]["type"] == "signature_delta"
    assert events[1][1]["content_block"] == {"type": "thinking", "thinking": ""}


def test_tools_produce_a_tool_use_built_from_the_schema(sdk: anthropic.Anthropic) -> None:
    body = {**BODY, "tools": [WEATHER_TOOL]}
    msg = sdk.messages.create(**body)
    assert msg.stop_reason == "tool_use"
    tool = msg.content[-1]
    assert tool.type == "tool_use" and tool.id.startswith("toolu_sim_")
    expected = {"city": "sim", "days": 1, "metric": True, "extra": {}, "tags": []}
    assert tool.name == "get_weather" and tool.input == expected
    with sdk.messages.stream(**body) as stream:
        fragments = [e.delta.partial_json for e in stream
                     if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
        streamed = stream.get_final_message()
    assert len(fragments) >= 2
    assert streamed.stop_reason == "tool_use"
    assert streamed.content[-1].input == expected


def test_empty_schema_gives_empty_input(sdk: anthropic.Anthropic) -> None:
    body = {**BODY, "tools": [{"name": "noop", "input_schema": {"type": "object"}}]}
    with sdk.messages.stream(**body) as stream:
        msg = stream.get_final_message()
    assert msg.content[-1].input == {}


def test_tool_result_or_tool_choice_none_gives_plain_text(sdk: anthropic.Anthropic) -> None:
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                           "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": "sunny"}]},
    ]
    answered = sdk.messages.create(
        **{**BODY, "tools": [WEATHER_TOOL], "messages": history})
    declined = sdk.messages.create(
        **BODY, tools=[WEATHER_TOOL], tool_choice={"type": "none"})
    for msg in (answered, declined):
        assert msg.stop_reason == "end_turn"
        assert [b.type for b in msg.content] == ["text"]


def test_count_tokens_uses_the_same_rule(sdk: anthropic.Anthropic, http: httpx.Client) -> None:
    result = sdk.messages.count_tokens(model="claude-sonnet-4-6", messages=BODY["messages"])
    assert result.input_tokens == max(1, _last_body_length(http) // 4)
    resp = http.post("/v1/messages/count_tokens?beta=true", content=b"{}")
    assert resp.status_code == 400


def test_models_list_and_retrieve(sdk: anthropic.Anthropic) -> None:
    ids = [m.id for m in sdk.models.list(limit=2)]  # auto-pagination walks every page
    assert "claude-opus-4-6" in ids and "claude-haiku-4-5-20251001" in ids
    assert len(ids) == len(set(ids))
    model = sdk.models.retrieve("claude-sonnet-4-5-20250929")
    assert model.display_name == "Claude Sonnet 4.5" and model.type == "model"
    with pytest.raises(anthropic.NotFoundError):
        sdk.models.retrieve("claude-nonexistent")


@pytest.mark.parametrize(("fault", "status", "kind", "sdk_error"), [
    ("429", 429, "rate_limit_error", anthropic.RateLimitError),
    ("529", 529, "overloaded_error", anthropic.InternalServerError),
    ("500", 500, "api_error", anthropic.InternalServerError),
    ("400", 400, "invalid_request_error", anthropic.BadRequestError),
])
def test_status_faults_return_anthropic_error_bodies(
    http: httpx.Client, sdk: anthropic.Anthropic, fault: str, status: int, kind: str,
    sdk_error: type[Exception],
) -> None:
    resp = _post(http, BODY, x_sim_fault=fault)
    assert resp.status_code == status
    body = resp.json()
    assert set(body) == {"type", "error", "request_id"} and body["type"] == "error"
    assert body["error"]["type"] == kind and body["error"]["message"]
    assert body["request_id"] == resp.headers["request-id"]
    assert resp.headers.get("retry-after") == ("7" if status == 429 else None)
    with pytest.raises(sdk_error):
        sdk.messages.create(**BODY, extra_headers={"x-sim-fault": fault})


def test_error_mid_stream_sends_an_error_event_and_no_message_stop(
    http: httpx.Client, sdk: anthropic.Anthropic
) -> None:
    resp = _post(http, {**BODY, "stream": True}, x_sim_fault="error-mid-stream")
    assert resp.status_code == 200
    events = _events(resp.content)
    assert events[0][0] == "message_start"
    assert any(name == "content_block_delta" for name, _ in events)
    assert events[-1] == ("error", {"type": "error", "error": {"type": "overloaded_error",
                                                               "message": "Overloaded"}})
    assert "message_stop" not in [name for name, _ in events]
    one_delta = _post(http, {**BODY, "stream": True}, x_sim_fault="error-mid-stream",
                      x_sim_chunks="1")
    assert [name for name, _ in _events(one_delta.content)] == [
        "message_start", "content_block_start", "ping", "content_block_delta", "error"]
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        with sdk.messages.stream(**BODY, extra_headers={
                "x-sim-fault": "error-mid-stream"}) as stream:
            stream.get_final_message()


def test_stall_sends_message_start_then_nothing(sim: str, http: httpx.Client) -> None:
    before = _stats(http)
    with httpx.Client(base_url=sim, timeout=httpx.Timeout(5, read=0.3)) as client:
        with client.stream("POST", "/v1/messages", content=orjson.dumps({**BODY, "stream": True}),
                           headers={"x-sim-fault": "stall"}) as resp:
            assert resp.status_code == 200
            received = b""
            with pytest.raises(httpx.ReadTimeout):
                for chunk in resp.iter_bytes():
                    received += chunk
    assert [name for name, _ in _events(received)] == ["message_start"]
    _wait_until(lambda: _stats(http)["disconnected"] == before["disconnected"] + 1)
    assert _stats(http)["in_flight"] == 0


def test_drop_cuts_the_connection_before_the_stream_ends(sim: str, http: httpx.Client) -> None:
    received = b""
    with httpx.Client(base_url=sim, timeout=5) as client:
        with client.stream("POST", "/v1/messages", content=orjson.dumps({**BODY, "stream": True}),
                           headers={"x-sim-fault": "drop", "x-sim-chunks": "6"}) as resp:
            assert resp.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                for chunk in resp.iter_bytes():
                    received += chunk
    assert b"event: content_block_delta" in received
    assert b"message_stop" not in received


def test_client_disconnect_mid_stream_is_counted_promptly(sim: str, http: httpx.Client) -> None:
    before = _stats(http)
    headers = {"x-sim-chunks": "100", "x-sim-chunk-delay-ms": "1000"}  # 100 s if left alone
    with httpx.Client(base_url=sim, timeout=5) as client:
        with client.stream("POST", "/v1/messages", content=orjson.dumps({**BODY, "stream": True}),
                           headers=headers) as resp:
            chunks = resp.iter_bytes()  # held: a dropped generator would close the response
            assert next(chunks).startswith(b"event: message_start")
            _wait_until(lambda: _stats(http)["in_flight"] == 1)
            assert _stats(http)["disconnected"] == before["disconnected"]
    left = time.monotonic()
    _wait_until(lambda: _stats(http)["disconnected"] == before["disconnected"] + 1)
    assert time.monotonic() - left < 0.5  # long before the next 1 s chunk would notice
    after = _stats(http)
    assert after["in_flight"] == 0 and after["completed"] == before["completed"]


def test_paced_stream_completes_and_is_counted(http: httpx.Client) -> None:
    before = _stats(http)
    started = time.monotonic()
    resp = _post(http, {**BODY, "stream": True}, x_sim_chunks="4", x_sim_chunk_delay_ms="30")
    assert time.monotonic() - started >= 4 * 0.030  # a pause before every delta
    events = _events(resp.content)
    assert [n for n, _ in events].count("content_block_delta") == 4
    assert events[-1][0] == "message_stop"
    after = _stats(http)
    assert after["started"] - before["started"] == 1
    assert after["completed"] - before["completed"] == 1


def test_stream_faults_on_non_stream_requests_have_analogues(sim: str) -> None:
    raw = orjson.dumps(BODY)
    with httpx.Client(base_url=sim, timeout=httpx.Timeout(5, read=0.3)) as client:
        resp = client.post("/v1/messages", content=raw, headers={"x-sim-fault": "error-mid-stream"})
        assert resp.status_code == 529
        assert resp.json()["error"]["type"] == "overloaded_error"
        with pytest.raises(httpx.RemoteProtocolError):
            client.post("/v1/messages", content=raw, headers={"x-sim-fault": "drop"})
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/messages", content=raw, headers={"x-sim-fault": "stall"})


def test_unknown_fault_and_bad_sim_headers_are_rejected(http: httpx.Client) -> None:
    for headers in ({"x-sim-fault": "meteor"}, {"x-sim-output-tokens": "-3"},
                    {"x-sim-chunks": "many"}):
        resp = http.post("/v1/messages", content=orjson.dumps(BODY), headers=headers)
        assert resp.status_code == 400
        assert next(iter(headers)) in resp.json()["error"]["message"]


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "not valid JSON"),
    (b"[]", "valid dictionary"),
    (orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
     "max_tokens: Field required"),
    (orjson.dumps({"model": "m", "max_tokens": 5}), "messages: Field required"),
    (orjson.dumps({**BODY, "max_tokens": 0}), "greater than or equal to 1"),
])
def test_invalid_requests_get_invalid_request_error(
    http: httpx.Client, body: bytes, message: str
) -> None:
    resp = http.post("/v1/messages", content=body)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and message in error["message"]


def test_unknown_routes_are_404_in_anthropic_shape(http: httpx.Client) -> None:
    for method, path in (("GET", "/v1/nothing"), ("HEAD", "/"), ("GET", "/v1/messages")):
        resp = http.request(method, path)
        assert resp.status_code == 404
        assert resp.headers["request-id"].startswith("req_sim_")
        if method != "HEAD":
            assert resp.json()["error"]["type"] == "not_found_error"


def test_request_log_keeps_metadata_but_never_the_body(http: httpx.Client) -> None:
    secret = "private-prompt-7c1e"
    body = {**BODY, "messages": [{"role": "user", "content": secret}]}
    raw = orjson.dumps(body)
    _post(http, body, x_custom="42")
    log = http.get("/_sim/requests")
    assert secret not in log.text
    entry = log.json()[-1]
    assert entry["method"] == "POST" and entry["path"] == "/v1/messages"
    assert entry["query_string"] == "beta=true" and entry["body_length"] == len(raw)
    assert ["x-custom", "42"] in entry["headers"]
    for _ in range(60):
        http.get("/v1/models")
    assert len(http.get("/_sim/requests").json()) == 50


def test_reset_zeroes_the_counters(http: httpx.Client) -> None:
    _post(http, BODY)
    assert http.post("/_sim/reset").status_code == 200
    assert _stats(http) == {"started": 0, "completed": 0, "disconnected": 0, "in_flight": 0}
    _post(http, BODY)
    assert _stats(http)["started"] == 1 and _stats(http)["completed"] == 1


@pytest.fixture(scope="module")
def keyed_sim() -> Iterator[str]:
    yield from _start("--require-key", "sekret")


def test_require_key_rejects_requests_without_it(keyed_sim: str) -> None:
    with anthropic.Anthropic(base_url=keyed_sim, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError):
            bad.messages.create(**BODY)
    with anthropic.Anthropic(base_url=keyed_sim, api_key="sekret", max_retries=0) as good:
        assert good.messages.create(**BODY).usage.output_tokens == 32
    with httpx.Client(base_url=keyed_sim) as raw:
        ok = raw.post("/v1/messages", content=orjson.dumps(BODY), headers={"x-api-key": "sekret"})
        bare = raw.post("/v1/messages", content=orjson.dumps(BODY))
        assert ok.status_code == 200 and bare.status_code == 401
        assert bare.json()["error"]["type"] == "authentication_error"
        assert raw.get("/_sim/stats").status_code == 200  # the control endpoints stay open


# --- pacing, seen over a raw socket: each server write is one HTTP/1.1 chunk ---------------

def _raw_chunks(base: str, body: dict[str, Any], **headers: str
                ) -> tuple[float, bytes, list[tuple[float, bytes]]]:
    """POST `body` over a plain socket; returns (send time, response head, [(arrival, chunk)])
    with one entry per chunk of the chunked body, i.e. per write the server made."""
    port = int(base.rsplit(":", 1)[1])
    raw = orjson.dumps(body)
    lines = ["POST /v1/messages HTTP/1.1", "host: sim", "content-type: application/json",
             "connection: close", f"content-length: {len(raw)}",
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sent = time.monotonic()
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + raw)
        buf, chunks, head = b"", [], b""
        while True:
            data = sock.recv(65536)
            now = time.monotonic()
            buf += data
            if not head and b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
            while head and b"\r\n" in buf:
                size_line, rest = buf.split(b"\r\n", 1)
                size = int(size_line, 16)
                if len(rest) < size + 2:
                    break
                if size:
                    chunks.append((now, rest[:size]))
                buf = rest[size + 2:]
            if not data:
                return sent, head, chunks


def test_every_event_is_its_own_write_after_the_ttft_and_the_delays(sim: str) -> None:
    ttft, delay = 0.15, 0.04
    sent, head, chunks = _raw_chunks(sim, {**BODY, "stream": True}, x_sim_chunks="3",
                                     x_sim_ttft_ms="150", x_sim_event_delay_ms="40")
    assert b"transfer-encoding: chunked" in head.lower()
    frames = [chunk for _, chunk in chunks]
    assert all(f.count(b"\n\n") == 1 and f.startswith(b"event: ") for f in frames)
    names = [name for name, _ in _events(b"".join(frames))]
    assert names == (["message_start", "content_block_start", "ping"]
                     + ["content_block_delta"] * 3
                     + ["content_block_stop", "message_delta", "message_stop"])
    # The server cannot send event k before ttft + k delays: a lower bound that load on the
    # machine can only push later, never earlier.
    for k, (arrived, _) in enumerate(chunks):
        assert arrived - sent >= ttft + k * delay


def test_chunk_delay_header_is_an_alias_of_the_event_delay(sim: str) -> None:
    sent, _, chunks = _raw_chunks(sim, {**BODY, "stream": True}, x_sim_chunks="2",
                                  x_sim_ttft_ms="0", x_sim_chunk_delay_ms="30")
    assert len(chunks) == 8
    assert chunks[-1][0] - sent >= 7 * 0.030


def test_burst_mode_writes_the_whole_answer_at_once(sim: str) -> None:
    _, _, chunks = _raw_chunks(sim, {**BODY, "stream": True}, x_sim_chunks="5",
                               x_sim_burst="1", x_sim_event_delay_ms="500")
    assert len(chunks) == 1
    names = [name for name, _ in _events(chunks[0][1])]
    assert names[0] == "message_start" and names[-1] == "message_stop" and len(names) == 11


def test_burst_process_default_and_per_request_pacing(burst_sim: str) -> None:
    _, _, burst = _raw_chunks(burst_sim, {**BODY, "stream": True})
    assert len(burst) == 1
    _, _, paced = _raw_chunks(burst_sim, {**BODY, "stream": True}, x_sim_burst="0",
                              x_sim_chunks="2")
    assert len(paced) == 8


def test_non_stream_answer_waits_ttft_plus_the_generation_time(http: httpx.Client) -> None:
    started = time.monotonic()
    resp = _post(http, BODY, x_sim_chunks="4", x_sim_ttft_ms="100", x_sim_event_delay_ms="20")
    assert resp.status_code == 200
    # 10 events: message_start, block start, ping, 4 deltas, block stop, delta, stop.
    assert time.monotonic() - started >= 0.100 + 10 * 0.020


def test_long_pauses_carry_pings() -> None:
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    asyncio.run(_pause(send, 0.25, ping_every=0.1))
    assert sent == [b'event: ping\ndata: {"type":"ping"}\n\n'] * 2


def test_disconnect_during_the_ttft_is_counted_promptly(sim: str, http: httpx.Client) -> None:
    before = _stats(http)
    port = int(sim.rsplit(":", 1)[1])
    raw = orjson.dumps({**BODY, "stream": True})
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: sim\r\nx-sim-ttft-ms: 60000\r\n"
                     b"content-length: %d\r\n\r\n" % len(raw) + raw)
        _wait_until(lambda: _stats(http)["in_flight"] == 1)
    _wait_until(lambda: _stats(http)["disconnected"] == before["disconnected"] + 1)
    assert _stats(http)["in_flight"] == 0


# --- response headers and rate limits ---------------------------------------------------------

RATE_NAMES = ("requests", "input-tokens", "output-tokens", "tokens")


def _rate(resp: httpx.Response, name: str) -> tuple[int, int, datetime]:
    h = resp.headers
    prefix = f"anthropic-ratelimit-{name}-"
    return (int(h[prefix + "limit"]), int(h[prefix + "remaining"]),
            datetime.fromisoformat(h[prefix + "reset"]))


def test_every_response_carries_request_id_and_rate_limit_headers(http: httpx.Client) -> None:
    responses = [
        _post(http, BODY), _post(http, {**BODY, "stream": True}),
        _post(http, {**BODY, "max_tokens": 0}), http.get("/v1/models"),
        http.get("/v1/nothing"), _post(http, BODY, x_sim_fault="529"),
        http.post("/v1/messages/count_tokens", content=orjson.dumps(
            {"model": "claude-sonnet-4-6", "messages": BODY["messages"]})),
    ]
    for resp in responses:
        assert resp.headers["request-id"].startswith("req_sim_")
        for name in RATE_NAMES:
            limit, remaining, reset = _rate(resp, name)
            assert 0 <= remaining <= limit
            assert reset.tzinfo is not None
            assert 0 <= (reset - datetime.now(UTC)).total_seconds() <= 61


def test_rate_limit_remaining_counts_down_per_key(sim: str) -> None:
    def post(key: str) -> httpx.Response:
        return httpx.post(f"{sim}/v1/messages", content=orjson.dumps(BODY),
                          headers={"x-api-key": key, "x-sim-ttft-ms": "0"})
    key = f"key-{time.monotonic_ns()}"
    first, second = post(key), post(key)
    if first.headers["anthropic-ratelimit-requests-reset"] != \
            second.headers["anthropic-ratelimit-requests-reset"]:
        first, second = post(key), post(key)  # the minute turned between the two
    assert _rate(second, "requests")[1] == _rate(first, "requests")[1] - 1
    spent_in = max(1, len(orjson.dumps(BODY)) // 4)
    assert _rate(second, "input-tokens")[1] == _rate(first, "input-tokens")[1] - spent_in
    assert _rate(second, "output-tokens")[1] == _rate(first, "output-tokens")[1] - 32
    assert _rate(second, "tokens")[1] == _rate(first, "tokens")[1] - spent_in - 32
    other = post(f"other-{key}")
    assert _rate(other, "requests")[1] == _rate(other, "requests")[0] - 1


@pytest.fixture(scope="module")
def limited_sim() -> Iterator[str]:
    yield from _start("--rpm", "3", "--otpm", "5000")


def test_past_the_limit_the_real_429_with_retry_after(limited_sim: str) -> None:
    with anthropic.Anthropic(base_url=limited_sim, api_key="k1", max_retries=0) as client:
        for _ in range(3):
            client.messages.create(**BODY)
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(**BODY)
    resp = caught.value.response
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "3 requests per minute" in caught.value.message
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert resp.headers["anthropic-ratelimit-requests-remaining"] == "0"
    # Output tokens are checked against max_tokens up front, as the real API estimates them.
    with anthropic.Anthropic(base_url=limited_sim, api_key="k2", max_retries=0) as client:
        with pytest.raises(anthropic.RateLimitError, match="5,000 output tokens per minute"):
            client.messages.create(**{**BODY, "max_tokens": 5001})


# --- models from the catalog, and the strict rules end to end -------------------------------

def test_models_are_the_catalogs_newest_first(sdk: anthropic.Anthropic) -> None:
    catalog = load_catalog()
    assert [m.id for m in sdk.models.list(limit=3)] == [m.id for m in catalog.models]
    alias = next(a for m in catalog.models for a in m.aliases)
    assert sdk.models.retrieve(alias).id == catalog.by_id[alias].id


def test_claude_codes_default_model_and_max_tokens_are_served(sdk: anthropic.Anthropic) -> None:
    with sdk.messages.stream(**{**BODY, "model": "claude-opus-5-5",
                                "max_tokens": 128000}) as stream:
        assert stream.get_final_message().stop_reason == "end_turn"


def test_max_tokens_above_the_models_limit_names_both_numbers(sdk: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk.messages.create(**{**BODY, "model": "claude-haiku-4-5", "max_tokens": 64001},
                            timeout=30)
    assert "64001 > 64000" in caught.value.message
    with pytest.raises(anthropic.NotFoundError, match="model: claude-3-opus"):
        sdk.messages.create(**{**BODY, "model": "claude-3-opus"})


def test_strict_rules_answer_on_the_wire(http: httpx.Client) -> None:
    blank = {**BODY, "messages": [{"role": "user", "content": [{"type": "text", "text": " "}]}]}
    resp = _post(http, blank)
    assert resp.status_code == 400
    assert resp.json()["error"] == {
        "type": "invalid_request_error",
        "message": "messages: text content blocks must contain non-whitespace text"}
    assert _stats(http)["in_flight"] == 0


def test_sim_tool_header_picks_the_offered_tool(sdk: anthropic.Anthropic) -> None:
    second = {"name": "read_file", "input_schema": {
        "type": "object", "properties": {"path": {"type": "string"}}}}
    body = {**BODY, "tools": [WEATHER_TOOL, second]}
    assert sdk.messages.create(**body).content[-1].name == "get_weather"  # type: ignore[union-attr]
    picked = sdk.messages.create(**body, extra_headers={"x-sim-tool": "read_file"})
    assert picked.content[-1].name == "read_file"  # type: ignore[union-attr]
    assert picked.content[-1].input == {"path": "sim"}  # type: ignore[union-attr]
    with pytest.raises(anthropic.BadRequestError, match="x-sim-tool"):
        sdk.messages.create(**body, extra_headers={"x-sim-tool": "nope"})
    plain = sdk.messages.create(**BODY, extra_headers={"x-sim-tool": "read_file"})
    assert [b.type for b in plain.content] == ["text"]  # nothing offered: a plain answer

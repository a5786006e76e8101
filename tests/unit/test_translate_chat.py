"""Chat Completions ↔ Anthropic translation, checked against recorded payload shapes and the
real openai SDK models (pydantic validation and an in-memory transport, no network)."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway import errors, wire
from gateway.errors import InvalidRequest
from gateway.translate.common import anthropic_error_to_openai, sanitize_tool_id
from gateway.translate.openai_chat import (
    ChatStreamTranslator,
    anthropic_to_chat_response,
    chat_request_to_anthropic,
)

FIXTURES = Path(__file__).parent / "fixtures"
TRANSLATE = Path(__file__).parents[2] / "gateway" / "translate"
IO_LIBRARIES = {"aiohttp", "valkey", "blacksheep", "granian", "httpx", "socket", "asyncio"}


def load(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def feed_all(translator: ChatStreamTranslator, events: list[list[Any]]) -> bytes:
    return b"".join(translator.feed(event, data) for event, data in events)


def data_lines(raw: bytes) -> list[str]:
    assert raw.endswith(b"\n\n")
    frames = raw.decode().split("\n\n")[:-1]
    assert all(f.startswith("data: ") and "\n" not in f for f in frames)
    return [f.removeprefix("data: ") for f in frames]


def minimal(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hi"}]} | extra


# -- request -----------------------------------------------------------------------------------


def test_openai_python_body_maps_field_by_field() -> None:
    out = chat_request_to_anthropic(load("chat_request"))

    assert out["model"] == "claude-sonnet-4-6"
    assert out["system"] == "You are a weather assistant.\nAnswer in one sentence."
    assert out["max_tokens"] == 1024
    assert out["stop_sequences"] == ["\n\nHuman:", "END"]
    assert out["temperature"] == 1.0
    assert "top_p" not in out  # newer models refuse temperature and top_p together
    assert out["stream"] is True
    assert out["metadata"] == {"user_id": "user-8f14e45f"}
    assert out["tools"] == [{
        "name": "get_weather", "description": "Current weather for a city.",
        "input_schema": {"type": "object", "required": ["city"],
                         "properties": {"city": {"type": "string"},
                                        "unit": {"type": "string", "enum": ["c", "f"]}}}}]
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    for ignored in ("seed", "logprobs", "stream_options", "user", "n"):
        assert ignored not in out

    user, assistant, results = out["messages"]
    assert user["role"] == "user"
    assert user["content"][1] == {"type": "image", "source": {
        "type": "base64", "media_type": "image/png",
        "data": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
                "AAAABJRU5ErkJggg=="}}
    assert user["content"][2] == {"type": "image", "source": {
        "type": "url", "url": "https://upload.example.org/photos/eiffel.jpg"}}
    assert assistant == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "call_q1W2e3R4t5Y6u7I8", "name": "get_weather",
         "input": {"city": "Paris", "unit": "c"}},
        {"type": "tool_use", "id": "call_a9S8d7F6g5H4j3K2", "name": "get_weather",
         "input": {"city": "Lyon"}}]}
    # Both tool messages and the later user message merge into one user turn, results first.
    assert results == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_q1W2e3R4t5Y6u7I8",
         "content": '{"temp": 18, "sky": "cloudy"}'},
        {"type": "tool_result", "tool_use_id": "call_a9S8d7F6g5H4j3K2",
         "content": [{"type": "text", "text": '{"temp": 21, "sky": "clear"}'}]},
        {"type": "text", "text": "Summarise."}]}


def test_defaults_when_optional_fields_are_absent() -> None:
    out = chat_request_to_anthropic(minimal())
    assert out == {"model": "claude-sonnet-4-6", "max_tokens": 8192,
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "claude-sonnet-4-6"}, "messages"),
        ({"model": "claude-sonnet-4-6", "messages": []}, "messages"),
        (minimal(n=2), "n"),
        (minimal(max_tokens=0), "max_tokens"),
        (minimal(reasoning_effort="extreme"), "reasoning_effort"),
        (minimal(messages=[{"role": "function", "content": "x"}]), "messages[0].role"),
    ],
)
def test_invalid_requests_are_refused_with_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat_request_to_anthropic(body)
    assert info.value.param == param
    assert info.value.code == "invalid_request_error"


def test_n_of_one_is_accepted() -> None:
    assert chat_request_to_anthropic(minimal(n=1))["messages"]


def test_max_completion_tokens_wins_over_deprecated_max_tokens() -> None:
    out = chat_request_to_anthropic(minimal(max_completion_tokens=300, max_tokens=50))
    assert out["max_tokens"] == 300


def test_single_string_stop_and_whitespace_only_stops() -> None:
    assert chat_request_to_anthropic(minimal(stop="###"))["stop_sequences"] == ["###"]
    assert "stop_sequences" not in chat_request_to_anthropic(minimal(stop=[" ", "\n"]))


def test_invalid_tool_arguments_are_kept_raw() -> None:
    body = minimal(messages=[
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}},
            {"id": "c2", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "x"},
        {"role": "tool", "tool_call_id": "c2", "content": "y"}])
    calls = chat_request_to_anthropic(body)["messages"][1]["content"]
    assert [c["input"] for c in calls] == [{"raw": "{oops"}, {}]


def test_unanswered_tool_call_gets_a_result_and_stray_results_are_dropped() -> None:
    body = minimal(messages=[
        {"role": "user", "content": "go"},
        {"role": "tool", "tool_call_id": "ghost", "content": "stray"},
        {"role": "assistant", "content": "calling", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": "never mind"}])
    messages = chat_request_to_anthropic(body)["messages"]
    assert messages[0] == {"role": "user", "content": [{"type": "text", "text": "go"}]}
    assert messages[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": "No output recorded."},
        {"type": "text", "text": "never mind"}]


def test_tool_ids_are_sanitised_the_same_way_on_calls_and_results() -> None:
    body = minimal(messages=[
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [
            {"id": "call:1/a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call:1/a", "content": "ok"}])
    messages = chat_request_to_anthropic(body)["messages"]
    call_id = messages[1]["content"][0]["id"]
    assert call_id == sanitize_tool_id("call:1/a") != sanitize_tool_id("call:1.a")
    assert call_id.startswith("call_1_a_")
    assert messages[2]["content"][0]["tool_use_id"] == call_id


def test_history_tools_without_tool_definitions_get_inert_stubs() -> None:
    body = minimal(messages=[
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}])
    out = chat_request_to_anthropic(body)
    assert out["tools"] == [{"name": "lookup",
                             "input_schema": {"type": "object", "properties": {}}}]
    assert out["tool_choice"] == {"type": "none"}


def test_file_parts_become_documents_and_audio_is_dropped() -> None:
    body = minimal(messages=[{"role": "user", "content": [
        {"type": "file", "file": {"filename": "a.pdf",
                                  "file_data": "data:application/pdf;base64,JVBERi0x"}},
        {"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}},
        {"type": "text", "text": "summarise"}]}])
    content = chat_request_to_anthropic(body)["messages"][0]["content"]
    assert content == [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                        "data": "JVBERi0x"}},
        {"type": "text", "text": "summarise"}]


def test_unsupported_image_urls_are_refused_clearly() -> None:
    body = minimal(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}])
    with pytest.raises(InvalidRequest) as info:
        chat_request_to_anthropic(body)
    assert info.value.param == "messages[0].content[0].image_url"


@pytest.mark.parametrize("user", ["jane@example.com", "+1 (555) 010-9999"])
def test_personal_data_in_user_is_not_forwarded(user: str) -> None:
    assert "metadata" not in chat_request_to_anthropic(minimal(user=user))


def test_tool_choice_forms() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    named = {"type": "function", "function": {"name": "f"}}
    cases = {"none": {"type": "none"}, "required": {"type": "any"},
             json.dumps(named): {"type": "tool", "name": "f"}}
    for choice, expected in cases.items():
        value = json.loads(choice) if choice.startswith("{") else choice
        assert chat_request_to_anthropic(minimal(tools=tools, tool_choice=value))[
            "tool_choice"] == expected
    assert "tool_choice" not in chat_request_to_anthropic(minimal(tools=tools))


@pytest.mark.parametrize(
    ("effort", "budget"), [("low", 1024), ("medium", 8192), ("high", 24576), ("xhigh", 32768)])
def test_reasoning_effort_budgets_with_default_max_tokens(effort: str, budget: int) -> None:
    out = chat_request_to_anthropic(minimal(reasoning_effort=effort))
    assert out["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert budget < out["max_tokens"]


def test_reasoning_effort_respects_an_explicit_cap() -> None:
    out = chat_request_to_anthropic(minimal(reasoning_effort="high", max_completion_tokens=6000))
    assert out["max_tokens"] == 6000
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 3000}
    tiny = chat_request_to_anthropic(minimal(reasoning_effort="high", max_tokens=1500))
    assert "thinking" not in tiny
    assert tiny["max_tokens"] == 1500


def test_reasoning_effort_none_omits_thinking() -> None:
    assert "thinking" not in chat_request_to_anthropic(minimal(reasoning_effort="none"))


def test_thinking_drops_sampling_and_unforces_tool_choice() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    out = chat_request_to_anthropic(minimal(
        reasoning_effort="medium", temperature=0.2, tools=tools, tool_choice="required",
        parallel_tool_calls=False))
    assert "temperature" not in out
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_adaptive_models_get_effort_instead_of_a_budget() -> None:
    out = chat_request_to_anthropic(minimal(reasoning_effort="high"), adaptive_thinking=True)
    assert out["thinking"] == {"type": "adaptive"}
    assert out["output_config"] == {"effort": "high"}
    assert out["max_tokens"] == 8192


def test_thinking_is_skipped_when_the_tool_loop_cannot_replay_a_signature() -> None:
    body = load("chat_request") | {"reasoning_effort": "high"}
    del body["max_completion_tokens"]
    body["messages"] = body["messages"][:5]  # ends inside the tool loop
    out = chat_request_to_anthropic(body)
    assert "thinking" not in out
    assert out["temperature"] == 1.0


def test_replayed_thinking_blocks_keep_thinking_on() -> None:
    body = load("chat_request") | {"reasoning_effort": "high"}
    del body["max_completion_tokens"]
    body["messages"] = body["messages"][:5]
    block = {"type": "thinking", "thinking": "plan", "signature": "c2ln"}
    body["messages"][2]["thinking_blocks"] = [block]
    out = chat_request_to_anthropic(body)
    assert out["messages"][1]["content"][0] == block
    assert out["thinking"]["type"] == "enabled"


def test_json_schema_response_format_maps_to_output_config() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = minimal(response_format={"type": "json_schema",
                                    "json_schema": {"name": "x", "schema": schema}})
    assert chat_request_to_anthropic(body)["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}}


# -- response ----------------------------------------------------------------------------------


def test_non_streaming_message_maps_to_a_valid_chat_completion() -> None:
    message = load("anthropic_message_tool_use")
    out = anthropic_to_chat_response(message, created=1760000000)
    parsed = ChatCompletion.model_validate(out)

    assert parsed.id == "chatcmpl-msg_01Aq9w938a90dw8q"
    assert parsed.created == 1760000000
    choice = parsed.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id == "toolu_01A09q90qw90lq917835lq9"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "c"}
    assert out["choices"][0]["message"]["reasoning_content"] == "Need the weather tool for Paris."
    assert out["choices"][0]["message"]["thinking_blocks"] == [message["content"][0]]
    assert out["usage"] == {"prompt_tokens": 1812, "completion_tokens": 40, "total_tokens": 1852,
                            "prompt_tokens_details": {"cached_tokens": 1800,
                                                      "cache_write_tokens": 0}}


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
     ("tool_use", "tool_calls"), ("refusal", "content_filter"),
     ("model_context_window_exceeded", "length"), ("pause_turn", "stop"), (None, "stop")],
)
def test_finish_reason_map(stop_reason: str | None, finish: str) -> None:
    message = {"id": "m", "model": "claude", "content": [{"type": "text", "text": "x"}],
               "stop_reason": stop_reason, "usage": {"input_tokens": 1, "output_tokens": 1}}
    out = anthropic_to_chat_response(message, created=1)
    assert ChatCompletion.model_validate(out).choices[0].finish_reason == finish


# -- stream ------------------------------------------------------------------------------------


def test_stream_chunks_in_order_with_usage_and_done() -> None:
    translator = ChatStreamTranslator(model="claude-sonnet-4-5", include_usage=True,
                                      created=1760000000)
    lines = data_lines(feed_all(translator, load("anthropic_stream_tool_turn")))
    assert lines[-1] == "[DONE]"
    chunks = [orjson.loads(line) for line in lines[:-1]]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        assert chunk["id"] == "chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL"
        assert chunk["model"] == "claude-sonnet-4-5"
    assert all(c["usage"] is None for c in chunks[:-1])

    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("reasoning_content", "") for d in deltas) == (
        "The user wants the tests re-run. I'll call exec_command with pytest — émoji-safe 🚀.\n")
    assert "".join(d.get("content", "") for d in deltas) == "Running the test suite now."
    calls = [t for d in deltas for t in d.get("tool_calls", [])]
    assert calls[0] == {"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                        "function": {"name": "exec_command", "arguments": ""}}
    assert all(set(c) == {"index", "function"} for c in calls[1:])
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {
        "cmd": "pytest -q", "workdir": "/home/dev/proj"}
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls",
                                        "logprobs": None}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 18672, "completion_tokens": 187, "total_tokens": 18859,
        "prompt_tokens_details": {"cached_tokens": 18240, "cache_write_tokens": 420}}
    assert translator.usage == {"input_tokens": 12, "cache_creation_input_tokens": 420,
                                "cache_read_input_tokens": 18240, "output_tokens": 187}


def two_tool_events() -> list[list[Any]]:
    events = load("anthropic_stream_tool_turn")
    second = [
        ["content_block_start", {"type": "content_block_start", "index": 3, "content_block": {
            "type": "tool_use", "id": "toolu_02", "name": "view_image", "input": {}}}],
        ["content_block_delta", {"type": "content_block_delta", "index": 3, "delta": {
            "type": "input_json_delta", "partial_json": '{"path": "a.png"}'}}],
        ["content_block_stop", {"type": "content_block_stop", "index": 3}]]
    return [*events[:-2], *second, *events[-2:]]


def test_tool_call_indices_count_tool_calls_only() -> None:
    translator = ChatStreamTranslator(model="m", include_usage=False, created=1)
    lines = data_lines(feed_all(translator, two_tool_events()))
    chunks = [orjson.loads(line) for line in lines[:-1]]
    starts = [t for c in chunks for t in c["choices"][0]["delta"].get("tool_calls", [])
              if "id" in t]
    assert [(t["index"], t["id"]) for t in starts] == [(0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6"),
                                                       (1, "toolu_02")]
    assert all("usage" not in c for c in chunks)


def test_openai_sdk_consumes_the_stream() -> None:
    body = feed_all(ChatStreamTranslator(model="claude-sonnet-4-5", include_usage=True,
                                         created=1), two_tool_events())

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        client = openai.OpenAI(api_key="k", base_url="http://gw.test/v1", http_client=http,
                               max_retries=0)
        stream = client.chat.completions.create(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": "go"}],
            stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 187
    names = [t.function.name for c in chunks if c.choices
             for t in c.choices[0].delta.tool_calls or [] if t.function and t.function.name]
    assert names == ["exec_command", "view_image"]


def test_mid_stream_error_is_one_openai_error_chunk_and_the_sdk_raises() -> None:
    translator = ChatStreamTranslator(model="m", include_usage=True, created=1)
    events = load("anthropic_stream_tool_turn")[:9]
    head = feed_all(translator, events)
    tail = translator.feed("error", {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}})
    assert data_lines(tail) == [json.dumps({"error": {
        "message": "Overloaded", "type": "server_error", "code": "server_is_overloaded",
        "param": None}}, separators=(",", ":"))]
    assert translator.feed("message_stop", {}) == b""
    assert translator.usage["cache_read_input_tokens"] == 18240

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=head + tail)

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        client = openai.OpenAI(api_key="k", base_url="http://gw.test/v1", http_client=http,
                               max_retries=0)
        with pytest.raises(openai.APIError, match="Overloaded"):
            list(client.chat.completions.create(model="m", messages=[], stream=True))


@given(st.lists(st.text(min_size=1), min_size=1, max_size=12))
def test_any_split_of_the_text_yields_the_same_content(pieces: list[str]) -> None:
    translator = ChatStreamTranslator(model="m", include_usage=False, created=1)
    events: list[list[Any]] = [
        ["message_start", {"message": {"id": "msg_1", "usage": {"input_tokens": 1}}}],
        ["content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}],
        *[["content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}}]
          for p in pieces],
        ["content_block_stop", {"index": 0}],
        ["message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}],
        ["message_stop", {}]]
    lines = data_lines(feed_all(translator, events))
    text = "".join(orjson.loads(line)["choices"][0]["delta"].get("content", "")
                   for line in lines[:-1])
    assert text == "".join(pieces)


# -- errors ------------------------------------------------------------------------------------


def anthropic_error(err_type: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": err_type, "message": message},
                         "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"})


@pytest.mark.parametrize(
    ("status", "err_type", "out_status", "out_type", "code"),
    [
        (400, "invalid_request_error", 400, "invalid_request_error", None),
        (404, "not_found_error", 404, "not_found_error", "model_not_found"),
        (413, "request_too_large", 400, "invalid_request_error", "request_too_large"),
        (401, "authentication_error", 401, "authentication_error", "invalid_api_key"),
        (403, "permission_error", 403, "permission_error", "permission_denied"),
        (429, "rate_limit_error", 429, "rate_limit_error", "rate_limit_exceeded"),
        (500, "api_error", 500, "server_error", None),
        (529, "overloaded_error", 503, "server_error", "server_is_overloaded"),
        (402, "billing_error", 402, "insufficient_quota", "insufficient_quota"),
        (504, "timeout_error", 504, "timeout_error", "timeout"),
        (409, "conflict_error", 409, "conflict_error", None),
    ],
)
def test_anthropic_errors_map_to_openai(status: int, err_type: str, out_status: int,
                                        out_type: str, code: str | None) -> None:
    got_status, body = anthropic_error_to_openai(status, anthropic_error(err_type, "boom"))
    assert got_status == out_status
    assert body == {"error": {"message": "boom", "type": out_type, "code": code, "param": None}}


def test_an_unknown_model_maps_alike_whoever_finds_it() -> None:
    ours = errors.NotFound("model: gpt-4o", param="model")
    upstream = anthropic_error("not_found_error", "model: gpt-4o")
    status, theirs = anthropic_error_to_openai(404, upstream)
    mapped = wire.openai_error(ours)
    assert (status, theirs["error"]["type"], theirs["error"]["code"]) == (
        wire.status_of(ours), mapped["type"], mapped["code"]
    ) == (404, "not_found_error", "model_not_found")


def test_prompt_too_long_is_context_length_exceeded() -> None:
    raw = anthropic_error("invalid_request_error", "prompt is too long: 210000 tokens > 200000")
    assert anthropic_error_to_openai(400, raw)[1]["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(("status", "out_status"), [(502, 502), (529, 503), (413, 400)])
def test_non_json_error_bodies_are_tolerated(status: int, out_status: int) -> None:
    got_status, body = anthropic_error_to_openai(status, b"<html>Bad Gateway</html>")
    assert got_status == out_status
    assert body["error"]["message"] == "<html>Bad Gateway</html>"
    assert anthropic_error_to_openai(502, b"")[1]["error"]["message"] == (
        "Upstream returned HTTP 502.")


# -- purity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", sorted(TRANSLATE.glob("*.py")), ids=lambda p: p.name)
def test_translate_modules_import_no_io_libraries(module: Path) -> None:
    imported = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & IO_LIBRARIES

"""Responses API ↔ Anthropic translation: Codex-shaped requests, exact stream event sequences,
reasoning replay, and parsing by the real openai SDK (pydantic and an in-memory transport)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.errors import InvalidRequest
from gateway.translate.openai_responses import (
    PreviousResponseNotFound,
    ResponsesContext,
    ResponsesStreamTranslator,
    anthropic_to_responses,
    responses_request_to_anthropic,
)
from gateway.translate.responses_stream import decode_reasoning, encode_thinking

FIXTURES = Path(__file__).parent / "fixtures"
EVENTS = TypeAdapter(ResponseStreamEvent)
MODEL = "claude-sonnet-4-5"
SIG = ("EqMBCkYIBxgCKkDk3m9vYx0W2r5TmQ0bX4u8h1b6Y3pQ7Zc9L2f4N1a8K0s5V7e3R6t9U2w4X8y1B5n7M0q3P6j9"
       "H2k5G8d1F4gEgw0aGFuY2hvcg==")
BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def load(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def codex_ctx() -> ResponsesContext:
    return responses_request_to_anthropic(load("codex_request"))[1]


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """Split our SSE bytes; the event line must repeat the JSON type (F.3.1)."""
    events = []
    for frame in raw.decode().split("\n\n")[:-1]:
        event_line, data_line = frame.split("\n")
        payload = orjson.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {payload['type']}"
        events.append(payload)
    return events


def run_stream(events: list[list[Any]], ctx: ResponsesContext | None = None,
               ) -> tuple[ResponsesStreamTranslator, bytes]:
    translator = ResponsesStreamTranslator(ctx or codex_ctx(), response_id="resp_abc",
                                           created_at=1767225600)
    raw = translator.start() + b"".join(translator.feed(e, d) for e, d in events)
    return translator, raw


def minimal(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": "hi"} | extra


# -- request -----------------------------------------------------------------------------------


def test_codex_request_maps_to_anthropic() -> None:
    body = load("codex_request")
    out, ctx = responses_request_to_anthropic(body)

    assert out["model"] == MODEL
    assert out["max_tokens"] == 32000
    assert out["stream"] is True
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 24576}
    assert out["cache_control"] == {"type": "ephemeral"}
    assert [b["text"][:30] for b in out["system"]] == [
        "You are Codex, based on GPT-5.", "<permissions instructions>\nFil"]
    assert out["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}

    names = [t["name"] for t in out["tools"]]
    assert names == ["exec_command", "write_stdin", "update_plan", "apply_patch", "view_image"]
    patch_tool = out["tools"][3]
    assert patch_tool["input_schema"] == {"type": "object", "required": ["input"],
                                          "properties": {"input": {"type": "string"}}}
    assert "lark grammar" in patch_tool["description"]
    assert "start: begin_patch hunk+ end_patch" in patch_tool["description"]
    assert out["tools"][0]["input_schema"] == body["tools"][0]["parameters"]

    roles = [m["role"] for m in out["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert [b["text"][:12] for b in out["messages"][0]["content"]] == [
        "# AGENTS.md ", "<environment", "Fix the fail"]
    thinking, call = out["messages"][1]["content"]
    assert thinking == {"type": "thinking", "signature": SIG,
                        "thinking": body["input"][4]["summary"][0]["text"]}
    assert call == {"type": "tool_use", "id": "toolu_01HkQ3x8Yt7VbNw2Lm4PqRsT",
                    "name": "exec_command",
                    "input": {"cmd": "pytest -q", "workdir": "/home/dev/proj",
                              "yield_time_ms": 10000}}
    assert out["messages"][2]["content"][0]["tool_use_id"] == "toolu_01HkQ3x8Yt7VbNw2Lm4PqRsT"
    patch_call = out["messages"][3]["content"][0]
    assert patch_call["name"] == "apply_patch"
    assert patch_call["input"] == {"input": body["input"][7]["input"]}
    assert patch_call["id"].startswith("call_7Ab_c_9_")
    assert out["messages"][4]["content"][0]["tool_use_id"] == patch_call["id"]
    assert out["messages"][5]["content"] == [
        {"type": "text", "text": "Fixed the sign error in `add`."}]

    assert ctx.model == MODEL
    assert ctx.custom_tools == frozenset({"apply_patch"})
    assert ctx.tool_ids == {patch_call["id"]: "call_7Ab.c/9"}
    assert ctx.tools == body["tools"]
    assert ctx.parallel_tool_calls is False
    assert ctx.instructions == body["instructions"]
    for ignored in ("store", "include", "prompt_cache_key", "reasoning", "parallel_tool_calls"):
        assert ignored not in out


def test_thinking_turns_off_when_the_last_tool_turn_has_no_replayed_thinking() -> None:
    body = load("codex_request")
    body["input"] = body["input"][:9]  # ends after the apply_patch output
    out, _ = responses_request_to_anthropic(body)
    assert "thinking" not in out


def test_foreign_and_other_model_reasoning_blobs_are_dropped() -> None:
    body = load("codex_request")
    body["input"][4]["encrypted_content"] = "gAAAAABo-openai-blob"
    assert out_first_assistant(body)[0]["type"] == "tool_use"
    body["input"][4]["encrypted_content"] = encode_thinking("claude-opus-4-1", SIG, "x")
    assert out_first_assistant(body)[0]["type"] == "tool_use"
    assert decode_reasoning("antex1:!!not-base64!!", MODEL) is None


def out_first_assistant(body: dict[str, Any]) -> list[dict[str, Any]]:
    out, _ = responses_request_to_anthropic(body)
    return next(m["content"] for m in out["messages"] if m["role"] == "assistant")


def test_previous_response_id_is_refused_with_its_own_code() -> None:
    with pytest.raises(PreviousResponseNotFound) as info:
        responses_request_to_anthropic(minimal(previous_response_id="resp_x"))
    assert isinstance(info.value, InvalidRequest)
    assert info.value.code == "previous_response_not_found"
    assert info.value.param == "previous_response_id"
    assert info.value.message == "Previous response with id 'resp_x' not found."


@pytest.mark.parametrize(
    ("body", "param"),
    [(minimal(background=True), "background"), ({"input": "hi"}, "model"),
     (minimal(input=[]), "input"), (minimal(reasoning={"effort": "ultra"}), "reasoning.effort")])
def test_unsupported_requests_are_refused(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        responses_request_to_anthropic(body)
    assert info.value.param == param


def test_string_input_and_loose_message_items() -> None:
    out, ctx = responses_request_to_anthropic(minimal(metadata={"trace": "t1"}, user="u-1"))
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert "system" not in out
    assert ctx.metadata == {"trace": "t1"}
    assert out["metadata"] == {"user_id": "u-1"}

    items = [{"role": "system", "content": "Be terse."},
             {"role": "user", "content": [
                 {"type": "input_text", "text": "What is this?"},
                 {"type": "input_image", "image_url": "data:image/jpeg;base64,/9j/4AAQ",
                  "detail": "auto"},
                 {"type": "input_file", "filename": "n.txt",
                  "file_data": "data:text/plain;base64,aGVsbG8="}]},
             {"type": "compaction", "encrypted_content": "opaque"},
             {"type": "web_search_call", "id": "ws_1", "status": "completed"},
             {"type": "some_future_item", "payload": 1}]
    out, _ = responses_request_to_anthropic(minimal(input=items, unknown_field=True))
    assert out["system"] == [{"type": "text", "text": "Be terse.",
                              "cache_control": {"type": "ephemeral"}}]
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                     "data": "/9j/4AAQ"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                        "data": "hello"}}]


def test_orphaned_calls_get_results_and_outputs_without_calls_are_dropped() -> None:
    items = [{"role": "user", "content": "go"},
             {"type": "function_call_output", "call_id": "nobody", "output": "stray"},
             {"type": "function_call", "call_id": "c1", "name": "shell",
              "arguments": '{"command": ["ls"]}'},
             {"type": "local_shell_call", "call_id": "c2", "status": "completed",
              "action": {"type": "exec", "command": ["pwd"]}},
             {"type": "function_call_output", "call_id": "c2", "output": [
                 {"type": "input_text", "text": "/home"}]},
             {"type": "function_call_output", "call_id": "c2", "output": "duplicate"}]
    out, _ = responses_request_to_anthropic(minimal(input=items))
    user, assistant, results = out["messages"]
    assert user["content"] == [{"type": "text", "text": "go"}]
    assert [b["name"] for b in assistant["content"]] == ["shell", "local_shell"]
    assert assistant["content"][1]["input"] == {"type": "exec", "command": ["pwd"]}
    assert results["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": "No output recorded."},
        {"type": "tool_result", "tool_use_id": "c2",
         "content": [{"type": "text", "text": "/home"}]}]
    # No tools were declared, so the history gets inert stubs and new calls are forbidden.
    assert [t["name"] for t in out["tools"]] == ["shell", "local_shell"]
    assert out["tool_choice"] == {"type": "none"}


def test_tool_kinds_choices_and_namespaces() -> None:
    tools = [{"type": "web_search", "external_web_access": True},
             {"type": "local_shell"}, {"type": "image_generation"},
             {"type": "function", "name": "f", "parameters": {"properties": {}}}]
    namespace = {"type": "namespace", "name": "mcp__github", "description": "GitHub",
                 "tools": [{"type": "function", "name": "get_issue", "parameters": {}}]}
    items = ["hi", {"type": "additional_tools", "role": "developer", "tools": [namespace]}]
    body = minimal(tools=tools, input=[{"role": "user", "content": items[0]}, items[1]],
                   tool_choice={"type": "function", "name": "f"}, parallel_tool_calls=True)
    out, ctx = responses_request_to_anthropic(body)
    assert out["tools"] == [{"type": "web_search_20250305", "name": "web_search"},
                            {"name": "f", "input_schema": {"type": "object", "properties": {}}},
                            {"name": "mcp__github__get_issue",
                             "input_schema": {"type": "object", "properties": {}}}]
    assert out["tool_choice"] == {"type": "tool", "name": "f"}
    assert ctx.namespaced == {"mcp__github__get_issue": ("mcp__github", "get_issue")}

    for choice, expected in [("required", {"type": "any"}), ("none", {"type": "none"}),
                             ({"type": "function", "name": "dropped"}, {"type": "auto"}),
                             ({"type": "allowed_tools", "mode": "required", "tools": []},
                              {"type": "any"})]:
        got, _ = responses_request_to_anthropic(body | {"tool_choice": choice})
        assert got["tool_choice"] == expected


def test_text_format_json_schema_and_sampling() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    body = minimal(text={"verbosity": "low", "format": {
        "type": "json_schema", "name": "codex_output_schema", "strict": True, "schema": schema}},
        temperature=1.7, top_p=0.5, max_output_tokens=500)
    out, ctx = responses_request_to_anthropic(body)
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert out["temperature"] == 1.0 and "top_p" not in out
    assert out["max_tokens"] == 500 and ctx.max_output_tokens == 500


# -- stream ------------------------------------------------------------------------------------


EXPECTED_ORDER = [
    "response.created", "response.in_progress", "response.in_progress",
    "response.output_item.added", "response.reasoning_summary_part.added",
    "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
    "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
    "response.output_item.done",
    "response.output_item.added", "response.content_part.added",
    "response.output_text.delta", "response.output_text.delta",
    "response.output_text.done", "response.content_part.done", "response.output_item.done",
    "response.output_item.added", "response.function_call_arguments.delta",
    "response.function_call_arguments.delta", "response.function_call_arguments.delta",
    "response.function_call_arguments.done", "response.output_item.done",
    "response.completed",
]


def test_stream_event_order_sequence_numbers_and_sdk_models() -> None:
    translator, raw = run_stream(load("anthropic_stream_tool_turn"))
    events = parse_sse(raw)
    assert [e["type"] for e in events] == EXPECTED_ORDER
    assert [e["sequence_number"] for e in events] == list(range(len(EXPECTED_ORDER)))
    for event in events:
        EVENTS.validate_python(event)

    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [(e["output_index"], e["item"]["type"]) for e in added] == [
        (0, "reasoning"), (1, "message"), (2, "function_call")]
    done = {e["output_index"]: e["item"] for e in events
            if e["type"] == "response.output_item.done"}
    assert done[1]["content"][0]["text"] == "Running the test suite now."
    assert done[2] == {"id": "fc_abc_2", "call_id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                       "name": "exec_command", "status": "completed", "type": "function_call",
                       "arguments": '{"cmd": "pytest -q", "workdir": "/home/dev/proj"}'}

    final = Response.model_validate(events[-1]["response"])
    assert final.status == "completed"
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    assert final.output_text == "Running the test suite now."
    assert final.usage is not None
    assert final.usage.model_dump() == {
        "input_tokens": 18672, "output_tokens": 187, "total_tokens": 18859,
        "input_tokens_details": {"cached_tokens": 18240, "cache_write_tokens": 420,
                                 "cache_write_tokens_details": None},
        "output_tokens_details": {"reasoning_tokens": 21}}
    assert translator.response == events[-1]["response"]
    assert translator.usage == {"input_tokens": 12, "cache_creation_input_tokens": 420,
                                "cache_read_input_tokens": 18240, "output_tokens": 187}
    assert translator.feed("message_stop", {}) == b""
    assert translator.ping() == b""


def test_reasoning_round_trip_reproduces_signature_and_thinking_exactly() -> None:
    events = load("anthropic_stream_tool_turn")
    _, raw = run_stream(events)
    parsed = parse_sse(raw)
    reasoning = next(e["item"] for e in parsed if e["type"] == "response.output_item.done"
                     and e["item"]["type"] == "reasoning")
    call = next(e["item"] for e in parsed if e["type"] == "response.output_item.done"
                and e["item"]["type"] == "function_call")
    assert reasoning["encrypted_content"].startswith("antex1:")

    # Codex sends the items back verbatim on the next turn.
    body = minimal(input=[{"role": "user", "content": "re-run the tests"}, reasoning, call,
                          {"type": "function_call_output", "call_id": call["call_id"],
                           "output": "2 passed"}],
                   reasoning={"effort": "medium"})
    out, _ = responses_request_to_anthropic(body)
    thinking = out["messages"][1]["content"][0]
    assert thinking == {"type": "thinking", "signature": SIG, "thinking": (
        "The user wants the tests re-run. I'll call exec_command with pytest — émoji-safe 🚀.\n")}
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 8192}


@given(st.text(), st.text(alphabet=BASE64, min_size=1))
def test_reasoning_codec_round_trips_any_text(thinking: str, signature: str) -> None:
    blob = encode_thinking(MODEL, signature, thinking)
    assert decode_reasoning(blob, MODEL) == {"type": "thinking", "thinking": thinking,
                                             "signature": signature}


def test_custom_tool_input_is_buffered_and_unwrapped() -> None:
    _, raw = run_stream(load("anthropic_stream_apply_patch"))
    events = parse_sse(raw)
    for event in events:
        EVENTS.validate_python(event)
    assert [e["type"] for e in events][2:] == [
        "response.output_item.added", "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done", "response.output_item.done",
        "response.completed"]
    patch = ("*** Begin Patch\n*** Update File: calc.py\n@@ def add(a, b):\n-    return a - b\n"
             "+    return a + b\n*** End Patch\n")
    assert events[3]["delta"] == events[4]["input"] == patch
    item = events[5]["item"]
    assert (item["type"], item["name"], item["input"], item["call_id"]) == (
        "custom_tool_call", "apply_patch", patch, "toolu_01Vb8")
    Response.model_validate(events[-1]["response"])


def test_a_tool_call_cut_off_mid_json_is_never_marked_done() -> None:
    events = load("anthropic_stream_tool_turn")
    # Drop the closing fragment of the tool input, as when max_tokens cuts it off.
    cut = [e for e in events if not (e[0] == "content_block_delta" and e[1]["index"] == 2
                                     and e[1]["delta"]["partial_json"].endswith("}"))]
    assert len(cut) == len(events) - 1
    cut[-2] = ["message_delta", {"delta": {"stop_reason": "max_tokens"},
                                 "usage": {"output_tokens": 4096}}]
    _, raw = run_stream(cut)
    parsed = parse_sse(raw)
    done_types = [e["item"]["type"] for e in parsed if e["type"] == "response.output_item.done"]
    assert done_types == ["reasoning", "message"]
    assert not any(e["type"] == "response.function_call_arguments.done" for e in parsed)
    final = parsed[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["output"][2]["status"] == "incomplete"
    Response.model_validate(final["response"])


def text_turn(stop_reason: str) -> list[list[Any]]:
    return [["message_start", {"message": {"id": "m", "usage": {"input_tokens": 5,
                                                                 "output_tokens": 1}}}],
            ["content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}],
            ["content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "No."}}],
            ["content_block_stop", {"index": 0}],
            ["message_delta", {"delta": {"stop_reason": stop_reason},
                               "usage": {"output_tokens": 2}}],
            ["message_stop", {}]]


@pytest.mark.parametrize(
    ("stop_reason", "kind", "details"),
    [("end_turn", "response.completed", None), ("stop_sequence", "response.completed", None),
     ("refusal", "response.completed", None), ("pause_turn", "response.completed", None),
     ("max_tokens", "response.incomplete", {"reason": "max_output_tokens"})])
def test_stop_reasons_end_the_stream(stop_reason: str, kind: str, details: Any) -> None:
    _, raw = run_stream(text_turn(stop_reason))
    final = parse_sse(raw)[-1]
    assert final["type"] == kind
    assert final["response"]["incomplete_details"] == details
    assert Response.model_validate(final["response"]).output_text == "No."


def test_context_window_exceeded_fails_with_the_code_codex_handles() -> None:
    _, raw = run_stream(text_turn("model_context_window_exceeded"))
    final = parse_sse(raw)[-1]
    assert final["type"] == "response.failed"
    assert final["response"]["status"] == "failed"
    assert final["response"]["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    ("error", "kwargs", "code", "message"),
    # A mid-stream overload is transient: server_error, which Codex retries (it gives up for
    # good on server_is_overloaded).
    [({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, {},
      "server_error", "Overloaded"),
     ({"type": "rate_limit_error", "message": "Too many requests."}, {"retry_after_s": 7},
      "rate_limit_exceeded", "Too many requests. Please try again in 7s."),
     ({"type": "invalid_request_error", "message": "prompt is too long: 201000 tokens"}, {},
      "context_length_exceeded", "prompt is too long: 201000 tokens"),
     ({"type": "api_error", "message": "Upstream closed."}, {}, "server_error",
      "Upstream closed."),
     ({"type": "rate_limit_error", "message": "5h window used up"},
      {"code": "rate_limit_exceeded", "retry_after_s": 3600}, "rate_limit_exceeded",
      "5h window used up Please try again in 3600s.")])
def test_errors_end_with_response_failed(error: dict[str, Any], kwargs: dict[str, Any],
                                         code: str, message: str) -> None:
    translator, head = run_stream(load("anthropic_stream_tool_turn")[:9])
    failed = parse_sse(translator.error(error, **kwargs))
    assert [e["type"] for e in failed] == ["response.failed"]
    assert failed[0]["sequence_number"] == len(parse_sse(head))
    assert failed[0]["response"]["error"] == {"code": code, "message": message}
    assert translator.feed("message_stop", {}) == b""


def test_upstream_error_event_and_ping_during_the_stream() -> None:
    translator, _ = run_stream(load("anthropic_stream_tool_turn")[:4])
    keepalive = parse_sse(translator.ping())
    assert keepalive[0]["type"] == "response.in_progress"
    assert keepalive[0]["response"]["output"][0]["type"] == "reasoning"
    failed = parse_sse(translator.feed("error", {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}}))
    assert failed[0]["response"]["error"]["code"] == "server_error"


def test_openai_sdk_stream_helper_accumulates_the_final_response() -> None:
    _, raw = run_stream(load("anthropic_stream_tool_turn"))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        client = openai.OpenAI(api_key="k", base_url="http://gw.test/v1", http_client=http,
                               max_retries=0)
        with client.responses.stream(model=MODEL, input="go") as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == "Running the test suite now."
    assert final.output[2].type == "function_call"


@given(st.lists(st.text(min_size=1), min_size=1, max_size=12))
def test_any_split_of_the_text_yields_the_same_output_text(pieces: list[str]) -> None:
    events: list[list[Any]] = [
        ["message_start", {"message": {"id": "m", "usage": {"input_tokens": 1}}}],
        ["content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}],
        *[["content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}}]
          for p in pieces],
        ["content_block_stop", {"index": 0}],
        ["message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}],
        ["message_stop", {}]]
    _, raw = run_stream(events, ResponsesContext(model=MODEL))
    parsed = parse_sse(raw)
    deltas = "".join(e["delta"] for e in parsed if e["type"] == "response.output_text.delta")
    assert deltas == "".join(pieces)
    assert Response.model_validate(parsed[-1]["response"]).output_text == "".join(pieces)


# -- non-streaming -----------------------------------------------------------------------------


def test_non_streaming_message_maps_to_a_valid_response() -> None:
    body = minimal(tools=[{"type": "function", "name": "get_weather",
                           "parameters": {"type": "object", "properties": {}}}],
                   metadata={"k": "v"})
    _, ctx = responses_request_to_anthropic(body)
    out = anthropic_to_responses(load("anthropic_message_tool_use"), ctx,
                                 response_id="resp_01", created_at=1767225600)
    response = Response.model_validate(out)
    assert (response.id, response.status, response.model) == ("resp_01", "completed", MODEL)
    assert response.metadata == {"k": "v"}
    reasoning, message, call = out["output"]
    assert reasoning["summary"] == [{"type": "summary_text",
                                     "text": "Need the weather tool for Paris."}]
    assert decode_reasoning(reasoning["encrypted_content"], MODEL) == (
        load("anthropic_message_tool_use")["content"][0])
    assert message["content"][0]["text"] == "Let me check."
    assert json.loads(call["arguments"]) == {"city": "Paris", "unit": "c"}
    assert call["call_id"] == "toolu_01A09q90qw90lq917835lq9"
    assert out["usage"] == {"input_tokens": 1812, "output_tokens": 40, "total_tokens": 1852,
                            "input_tokens_details": {"cached_tokens": 1800,
                                                     "cache_write_tokens": 0},
                            "output_tokens_details": {"reasoning_tokens": 8}}


def test_web_search_and_citations_map_to_search_call_and_url_citation() -> None:
    ctx = ResponsesContext(model=MODEL)
    out = anthropic_to_responses(load("anthropic_message_web_search"), ctx,
                                 response_id="resp_02", created_at=1)
    response = Response.model_validate(out)
    search, message = out["output"]
    assert search == {"type": "web_search_call", "id": "ws_02_0", "status": "completed",
                      "action": {"type": "search", "query": "rust 1.90 release date"}}
    assert response.output_text == "Rust 1.90 was released on 18 September 2025."
    assert message["content"][0]["annotations"] == [{
        "type": "url_citation", "url": "https://blog.rust-lang.org/2025/09/18/Rust-1.90.0/",
        "title": "Announcing Rust 1.90.0", "start_index": 23, "end_index": 44}]


def test_namespaced_and_sanitised_calls_map_back_to_client_names() -> None:
    ctx = ResponsesContext(model=MODEL, namespaced={"mcp__gh__issue": ("mcp__gh", "issue")},
                           tool_ids={"call_x_1234": "call.x"})
    message = {"id": "m", "content": [
        {"type": "tool_use", "id": "call_x_1234", "name": "mcp__gh__issue", "input": {"n": 1}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}}
    call = anthropic_to_responses(message, ctx, response_id="resp_3", created_at=1)["output"][0]
    assert (call["name"], call["namespace"], call["call_id"]) == ("issue", "mcp__gh", "call.x")


def test_redacted_thinking_round_trips_through_encrypted_content() -> None:
    message = {"id": "m", "content": [{"type": "redacted_thinking", "data": "EmwKAhgBEgy3va"},
                                      {"type": "text", "text": "ok"}],
               "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}}
    out = anthropic_to_responses(message, ResponsesContext(model=MODEL), response_id="resp_4",
                                 created_at=1)
    item = Response.model_validate(out).output[0]
    assert item.type == "reasoning" and item.summary == []
    assert decode_reasoning(item.encrypted_content, MODEL) == message["content"][0]

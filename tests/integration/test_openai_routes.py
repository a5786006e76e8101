"""The OpenAI routes through the real server with the real ``openai`` SDK: answers, usage and
credits equal what the simulator reported, tool loops, streams, and every error mapping."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import valkey

from gateway.catalog import adaptive_thinking, load_catalog
from gateway.keyspace import AccountKeys
from gateway.plans import Plan
from gateway.sse import EventSplitter, UsageScanner
from gateway.translate.openai_chat import chat_request_to_anthropic
from gateway.translate.openai_responses import responses_request_to_anthropic
from gateway.usage import Usage, cost_mc, estimate_mc
from tests.integration.conftest import UPSTREAM_KEY, Customer, Stack, new_customer

MODEL = "claude-sonnet-4-6"
RATES = load_catalog(None).by_id[MODEL].rates
HOUR_MS = 3_600_000
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAC"
    "hwGA60e6kgAAAABJRU5ErkJggg=="
)
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
CHAT_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": WEATHER_SCHEMA,
        },
    }
]
RESPONSES_TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": WEATHER_SCHEMA,
        "strict": False,
    }
]


# -- helpers -------------------------------------------------------------------------------


def client_for(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0)


@pytest.fixture
def oai(stack: Stack, customer: Customer) -> Iterator[openai.OpenAI]:
    client = client_for(stack, customer.key)
    yield client
    client.close()


@pytest.fixture
def log_of(sync_valkey: valkey.Valkey) -> Callable[[Customer, int], list[dict[str, str]]]:
    """The account's settled usage records, polled until ``count`` exist (settle is async)."""

    def read(customer: Customer, count: int) -> list[dict[str, str]]:
        key = AccountKeys(customer.account_id).log
        deadline = time.monotonic() + 10
        while True:
            entries = [fields for _, fields in sync_valkey.xrange(key)]
            if len(entries) >= count or time.monotonic() > deadline:
                assert len(entries) >= count, f"only {len(entries)} settled records"
                return entries
            time.sleep(0.02)

    return read


def upstream(stack: Stack, anthropic_body: dict[str, Any], sim: dict[str, str]) -> dict[str, Any]:
    """What the simulator answers to this exact Anthropic body, asked directly.

    Returns the billed usage (by the Anthropic route's own scanner for streams) and the text.
    """
    resp = httpx.post(
        f"{stack.sim_url}/v1/messages", content=orjson.dumps(anthropic_body), timeout=30,
        headers={"x-api-key": UPSTREAM_KEY, "anthropic-version": "2023-06-01", **sim},
    )  # fmt: skip
    assert resp.status_code == 200
    if not anthropic_body.get("stream"):
        message = resp.json()
        text = "".join(b.get("text", "") for b in message["content"] if b["type"] == "text")
        return {"usage": message["usage"], "text": text}
    scanner = UsageScanner()
    scanner.feed(resp.content)
    text = ""
    for event, data in EventSplitter().feed(resp.content):
        delta = orjson.loads(data).get("delta") or {}
        if event == "content_block_delta" and delta.get("type") == "text_delta":
            text += delta["text"]
    return {"usage": scanner.billed_usage(), "text": text}


def chat_translation(params: dict[str, Any]) -> dict[str, Any]:
    return chat_request_to_anthropic(params, adaptive_thinking=adaptive_thinking(MODEL))


def responses_translation(params: dict[str, Any]) -> dict[str, Any]:
    return responses_request_to_anthropic(params, adaptive_thinking=adaptive_thinking(MODEL))[0]


def prompt_tokens(usage: dict[str, Any]) -> int:
    return int(
        usage["input_tokens"]
        + usage.get("cache_creation_input_tokens", 0)
        + usage.get("cache_read_input_tokens", 0)
    )


def last_upstream_body_length(stack: Stack) -> int:
    recent = httpx.get(f"{stack.sim_url}/_sim/requests").json()
    return int(next(r for r in reversed(recent) if r["path"] == "/v1/messages")["body_length"])


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    return [(event, orjson.loads(data)) for event, data in EventSplitter().feed(raw)]


# -- chat completions ------------------------------------------------------------------------


def test_chat_non_stream_usage_and_credits_equal_the_anthropic_route(
    stack: Stack, customer: Customer, oai: openai.OpenAI, log_of: Any
) -> None:
    sim = {"x-sim-output-tokens": "20", "x-sim-cache-read": "7", "x-sim-cache-write-1h": "5"}
    params: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 50,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there"},
        ],
    }
    got = oai.chat.completions.create(**params, extra_headers=sim)
    translated = chat_translation(params)
    assert last_upstream_body_length(stack) == len(orjson.dumps(translated))
    want = upstream(stack, translated, sim)
    assert got.object == "chat.completion" and got.model == MODEL
    assert got.choices[0].message.content == want["text"]
    assert got.choices[0].finish_reason == "stop"
    assert got.usage is not None
    assert got.usage.prompt_tokens == prompt_tokens(want["usage"])
    assert got.usage.completion_tokens == want["usage"]["output_tokens"] == 20
    assert got.usage.prompt_tokens_details is not None
    assert got.usage.prompt_tokens_details.cached_tokens == 7

    # The same translated body on /v1/messages is billed to the same milli-credit.
    direct = httpx.post(
        f"{stack.url}/v1/messages", content=orjson.dumps(translated), timeout=30,
        headers={"x-api-key": customer.key, **sim},
    )  # fmt: skip
    assert direct.status_code == 200
    translated_entry, messages_entry = log_of(customer, 2)
    assert translated_entry["route"] == "chat_completions"
    assert messages_entry["route"] == "messages"
    expected = cost_mc(Usage.from_anthropic(want["usage"]), RATES)
    assert int(translated_entry["credits_mc"]) == int(messages_entry["credits_mc"]) == expected
    assert translated_entry["cache_write_1h"] == "5"


def test_chat_stream_with_include_usage_ends_with_the_usage_chunk(
    stack: Stack, customer: Customer, oai: openai.OpenAI, log_of: Any
) -> None:
    sim = {"x-sim-output-tokens": "40", "x-sim-chunks": "6"}
    params: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Tell me something"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = list(oai.chat.completions.create(**params, extra_headers=sim))
    want = upstream(stack, chat_translation(params), sim)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want["text"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    *body, last = chunks
    assert all(c.usage is None for c in body)
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == prompt_tokens(want["usage"])
    assert last.usage.completion_tokens == 40
    (entry,) = log_of(customer, 1)
    assert entry["stream"] == "1" and entry["output_tokens"] == "40"
    assert int(entry["credits_mc"]) == cost_mc(Usage.from_anthropic(want["usage"]), RATES)


def test_chat_tool_call_round_trip(oai: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = oai.chat.completions.create(
        model=MODEL, max_tokens=200, messages=messages, tools=CHAT_TOOLS,  # type: ignore[arg-type]
    )  # fmt: skip
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "sim"}
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    second = oai.chat.completions.create(
        model=MODEL, max_tokens=200, messages=messages, tools=CHAT_TOOLS,  # type: ignore[arg-type]
    )  # fmt: skip
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls


def test_chat_streamed_tool_calls_assemble_and_loop(oai: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    calls: dict[int, dict[str, str]] = {}
    finish = None
    stream = oai.chat.completions.create(
        model=MODEL, max_tokens=200, messages=messages, tools=CHAT_TOOLS,  # type: ignore[arg-type]
        stream=True,
    )  # fmt: skip
    for chunk in stream:
        for delta_call in chunk.choices[0].delta.tool_calls or []:
            slot = calls.setdefault(delta_call.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] += delta_call.id or ""
            if delta_call.function:
                slot["name"] += delta_call.function.name or ""
                slot["arguments"] += delta_call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0]
    call = calls[0]
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "sim"}
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call["id"], "type": "function",
             "function": {"name": call["name"], "arguments": call["arguments"]}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": "Sunny"},
    ]  # fmt: skip
    text, finish = "", None
    for chunk in oai.chat.completions.create(
        model=MODEL, max_tokens=200, messages=messages, tools=CHAT_TOOLS,  # type: ignore[arg-type]
        stream=True,
    ):  # fmt: skip
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "stop" and text


def test_chat_image_part_goes_upstream_as_a_base64_block(
    stack: Stack, oai: openai.OpenAI
) -> None:
    params: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 30,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
        ]}],
    }  # fmt: skip
    got = oai.chat.completions.create(**params)
    translated = chat_translation(params)
    image = translated["messages"][0]["content"][1]
    assert image["source"] == {"type": "base64", "media_type": "image/png", "data": PNG[22:]}
    assert last_upstream_body_length(stack) == len(orjson.dumps(translated))
    assert got.usage is not None
    assert got.usage.prompt_tokens == prompt_tokens(upstream(stack, translated, {})["usage"])


def test_chat_unknown_fields_are_ignored_and_n_above_1_is_refused(oai: openai.OpenAI) -> None:
    ok = oai.chat.completions.create(
        model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}],
        logit_bias={"50256": -100}, seed=3, extra_body={"some_future_field": {"x": 1}},
    )  # fmt: skip
    assert ok.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}], n=2
        )
    assert info.value.status_code == 400
    assert info.value.param == "n" and "n=1" in info.value.message


def test_chat_first_chunk_arrives_before_the_upstream_finishes(
    stack: Stack, customer: Customer
) -> None:
    body = {"model": MODEL, "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    headers = {"authorization": f"Bearer {customer.key}", "x-sim-chunks": "10",
               "x-sim-chunk-delay-ms": "150"}  # fmt: skip
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{stack.url}/v1/chat/completions", headers=headers,
        content=orjson.dumps(body), timeout=30,
    ) as resp:  # fmt: skip
        chunks = resp.iter_raw()
        first = next(chunks)
        first_at = time.monotonic() - started
        rest = b"".join(chunks)
    total = time.monotonic() - started
    assert first.startswith(b"data: {") and b'"role":"assistant"' in first
    assert rest.endswith(b"data: [DONE]\n\n")
    # Ten deltas 150 ms apart: a buffering translator would send nothing before ~1.5 s.
    assert first_at < 0.75 < total


def test_chat_mid_stream_upstream_error_raises_in_the_sdk(
    oai: openai.OpenAI, customer: Customer, log_of: Any
) -> None:
    stream = oai.chat.completions.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_headers={"x-sim-fault": "error-mid-stream", "x-sim-output-tokens": "40"},
    )  # fmt: skip
    with pytest.raises(openai.APIError, match="Overloaded"):
        for _ in stream:
            pass
    (entry,) = log_of(customer, 1)
    assert entry["error_type"] == "upstream_error_event"
    assert int(entry["output_tokens"]) > 0  # what the upstream reported so far is billed


def test_chat_lost_upstream_mid_stream_ends_in_an_error_chunk(
    stack: Stack, customer: Customer, log_of: Any
) -> None:
    body = {"model": MODEL, "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    resp = httpx.post(
        f"{stack.url}/v1/chat/completions", content=orjson.dumps(body), timeout=30,
        headers={"authorization": f"Bearer {customer.key}", "x-sim-fault": "drop",
                 "x-sim-output-tokens": "40"},
    )  # fmt: skip
    assert resp.status_code == 200
    last = resp.text.strip().split("\n\n")[-1]
    assert last.startswith("data: ") and "[DONE]" not in resp.text
    assert orjson.loads(last[6:])["error"]["type"] == "server_error"
    (entry,) = log_of(customer, 1)
    assert entry["error_type"] == "upstream_lost"


# -- responses ---------------------------------------------------------------------------------


def test_responses_non_stream_answer_and_usage_equal_the_simulator(
    stack: Stack, customer: Customer, oai: openai.OpenAI, log_of: Any
) -> None:
    sim = {"x-sim-output-tokens": "25", "x-sim-cache-read": "11"}
    params: dict[str, Any] = {
        "model": MODEL,
        "instructions": "You are terse.",
        "input": "Hello there",
        "max_output_tokens": 100,
        "metadata": {"team": "a"},
    }
    got = oai.responses.create(**params, extra_headers=sim)
    translated = responses_translation(params)
    assert last_upstream_body_length(stack) == len(orjson.dumps(translated))
    want = upstream(stack, translated, sim)
    assert got.object == "response" and got.status == "completed" and got.model == MODEL
    assert got.id.startswith("resp_") and got.metadata == {"team": "a"}
    assert got.output_text == want["text"]
    assert got.usage is not None
    assert got.usage.input_tokens == prompt_tokens(want["usage"])
    assert got.usage.input_tokens_details.cached_tokens == 11
    assert got.usage.output_tokens == 25
    assert got.usage.total_tokens == got.usage.input_tokens + 25
    (entry,) = log_of(customer, 1)
    assert entry["route"] == "responses"
    assert int(entry["credits_mc"]) == cost_mc(Usage.from_anthropic(want["usage"]), RATES)


def test_responses_stream_has_the_exact_event_sequence_and_usage(
    stack: Stack, oai: openai.OpenAI
) -> None:
    sim = {"x-sim-output-tokens": "24", "x-sim-chunks": "3"}
    params: dict[str, Any] = {"model": MODEL, "input": "Hello", "stream": True}
    events = list(oai.responses.create(**params, extra_headers=sim))
    want = upstream(stack, responses_translation(params), sim)
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added",
        "response.in_progress",  # the upstream's ping, as a keep-alive Codex counts
        "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == want["text"]
    assert done.response.usage is not None
    assert done.response.usage.input_tokens == prompt_tokens(want["usage"])
    assert done.response.usage.output_tokens == 24


def test_responses_function_call_round_trip(oai: openai.OpenAI) -> None:
    conversation: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = oai.responses.create(model=MODEL, input=conversation, tools=RESPONSES_TOOLS)  # type: ignore[arg-type]
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and first.status == "completed"
    call = calls[0]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "sim"}
    assert call.status == "completed" and call.call_id
    conversation += [
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"},
    ]  # fmt: skip
    second = oai.responses.create(model=MODEL, input=conversation, tools=RESPONSES_TOOLS)  # type: ignore[arg-type]
    assert second.status == "completed"
    assert not [i for i in second.output if i.type == "function_call"]
    assert second.output_text


def test_responses_streamed_function_call_round_trip(oai: openai.OpenAI) -> None:
    conversation: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    done_items = []
    for event in oai.responses.create(
        model=MODEL, input=conversation, tools=RESPONSES_TOOLS, stream=True,  # type: ignore[arg-type]
    ):  # fmt: skip
        if event.type == "response.output_item.done":
            done_items.append(event.item)
    call = next(i for i in done_items if i.type == "function_call")
    assert json.loads(call.arguments) == {"city": "sim"}
    conversation += [
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"},
    ]
    with oai.responses.stream(
        model=MODEL, input=conversation, tools=RESPONSES_TOOLS,  # type: ignore[arg-type]
    ) as stream:  # fmt: skip
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text
    assert not [i for i in final.output if i.type == "function_call"]


def test_responses_stream_helper_gets_its_final_response(
    stack: Stack, oai: openai.OpenAI
) -> None:
    sim = {"x-sim-output-tokens": "30"}
    params: dict[str, Any] = {"model": MODEL, "input": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Describe"},
                                     {"type": "input_image", "image_url": PNG, "detail": "auto"}]},
    ]}  # fmt: skip
    deltas = []
    with oai.responses.stream(**params, extra_headers=sim) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    want = upstream(stack, responses_translation({**params, "stream": True}), sim)
    assert "".join(deltas) == final.output_text == want["text"]
    assert final.usage is not None
    assert final.usage.input_tokens == prompt_tokens(want["usage"])
    assert final.usage.output_tokens == 30


def test_responses_reasoning_is_returned_and_replays(oai: openai.OpenAI) -> None:
    first = oai.responses.create(
        model=MODEL, input="Think first", reasoning={"effort": "low", "summary": "auto"},
        include=["reasoning.encrypted_content"],
    )  # fmt: skip
    reasoning = first.output[0]
    assert reasoning.type == "reasoning"
    assert reasoning.summary and reasoning.summary[0].text
    assert reasoning.encrypted_content and reasoning.encrypted_content.startswith("antex1:")
    second = oai.responses.create(
        model=MODEL, reasoning={"effort": "low"},
        input=[{"role": "user", "content": "Think first"},
               reasoning.model_dump(exclude_none=True),
               {"role": "assistant", "content": first.output_text},
               {"role": "user", "content": "And again"}],
    )  # fmt: skip
    assert second.status == "completed"


def test_responses_unknown_fields_and_item_types_are_ignored(oai: openai.OpenAI) -> None:
    got = oai.responses.create(
        model=MODEL, store=True, truncation="auto", prompt_cache_key="abc",
        input=[{"type": "compaction", "encrypted_content": "opaque"},
               {"type": "some_future_item", "payload": {"x": 1}},
               {"type": "message", "role": "user", "content": "hi"}],
        tools=[{"type": "web_search", "external_web_access": False},  # type: ignore[list-item]
               {"type": "local_shell"}],
        extra_body={"client_metadata": {"x": "y"}, "future_flag": True},
    )  # fmt: skip
    assert got.status == "completed" and got.output_text


def test_get_response_is_404_in_openai_shape(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oai.responses.retrieve("resp_abc")
    body = info.value.body
    assert isinstance(body, dict)
    assert body["type"] == "not_found_error" and body["code"] is None
    assert body["message"] == "Response with id 'resp_abc' not found."


def test_responses_client_disconnect_cancels_the_upstream(
    stack: Stack, customer: Customer, log_of: Any
) -> None:
    before = stack.sim_stats()["disconnected"]
    body = {"model": MODEL, "input": "hi", "stream": True}
    headers = {"authorization": f"Bearer {customer.key}", "x-sim-chunks": "200",
               "x-sim-chunk-delay-ms": "100"}  # fmt: skip
    with httpx.stream(
        "POST", f"{stack.url}/v1/responses", headers=headers, content=orjson.dumps(body),
        timeout=30,
    ) as resp:  # fmt: skip
        first = next(resp.iter_raw())
        assert b"response.created" in first
    deadline = time.monotonic() + 10
    while stack.sim_stats()["disconnected"] == before:
        assert time.monotonic() < deadline, "the upstream stream was not cancelled"
        time.sleep(0.05)
    (entry,) = log_of(customer, 1)
    assert entry["disconnected"] == "1" and entry["error_type"] == "client_disconnected"


def test_responses_lost_upstream_ends_in_response_failed(stack: Stack, customer: Customer) -> None:
    body = {"model": MODEL, "input": "hi", "stream": True}
    resp = httpx.post(
        f"{stack.url}/v1/responses", content=orjson.dumps(body), timeout=30,
        headers={"authorization": f"Bearer {customer.key}", "x-sim-fault": "drop",
                 "x-sim-output-tokens": "40"},
    )  # fmt: skip
    assert resp.status_code == 200
    events = sse_events(resp.content)
    assert events[0][0] == "response.created"
    kind, last = events[-1]
    assert kind == "response.failed"
    assert last["response"]["error"]["code"] == "server_error"  # retryable for Codex


@pytest.mark.parametrize(
    ("model", "adaptive"),
    [("claude-sonnet-4-6", True), ("claude-opus-5", True), ("claude-mythos-preview", True),
     ("claude-sonnet-4-5-20250929", False), ("claude-haiku-4-5", False),
     ("claude-opus-4-1-20250805", False), ("claude-3-7-sonnet-20250219", False)],
)  # fmt: skip
def test_adaptive_thinking_follows_the_model_generation(model: str, adaptive: bool) -> None:
    assert adaptive_thinking(model) is adaptive



def test_openai_routes_leave_no_prompt_or_key_on_disk_or_in_valkey(
    stack: Stack, customer: Customer, logs_dir: Path
) -> None:
    canary = f"CANARY{uuid.uuid4().hex}"
    chat = {"model": MODEL, "max_tokens": 20,
            "messages": [{"role": "user", "content": f"secret plans {canary}"}]}  # fmt: skip
    responses = {"model": MODEL, "input": f"secret plans {canary}",
                 "instructions": f"system {canary}"}  # fmt: skip
    headers = {"authorization": f"Bearer {customer.key}"}
    for path, body in (("chat/completions", chat), ("responses", responses)):
        for extra, sim in (
            ({}, {}), ({"stream": True}, {}), ({"stream": True}, {"x-sim-fault": "drop"}),
            ({"stream": True}, {"x-sim-fault": "error-mid-stream"}), ({}, {"x-sim-fault": "500"}),
            ({"model": f"model-{canary}"}, {}), ({"n": 2, "previous_response_id": canary}, {}),
        ):  # fmt: skip
            httpx.post(f"{stack.url}/v1/{path}", content=orjson.dumps({**body, **extra}),
                       headers={**headers, **sim}, timeout=30)  # fmt: skip
    client = valkey.Valkey.from_url(stack.valkey_url)
    try:
        secret = customer.key.rsplit("_", 1)[1].encode()
        for name in client.scan_iter(count=1000):
            dump = client.dump(name) or b""
            assert canary.encode() not in dump and secret not in dump, name
    finally:
        client.close()
    for root in (logs_dir, stack.data_dir):
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert canary.encode() not in data and secret not in data, path

# -- errors on both routes -----------------------------------------------------------------------

Call = Callable[[openai.OpenAI, dict[str, Any]], Any]


def call_chat(client: openai.OpenAI, extra: dict[str, Any]) -> Any:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 100,
                              "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    return client.chat.completions.create(**{**params, **extra})


def call_responses(client: openai.OpenAI, extra: dict[str, Any]) -> Any:
    params: dict[str, Any] = {"model": MODEL, "max_output_tokens": 100, "input": "hi"}
    return client.responses.create(**{**params, **extra})


ROUTES = pytest.mark.parametrize("call", [call_chat, call_responses], ids=["chat", "responses"])


def error_body(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "code", "param"}
    return body


@ROUTES
def test_bad_key_is_401(stack: Stack, call: Call) -> None:
    with client_for(stack, "sk_live_nope") as client, \
            pytest.raises(openai.AuthenticationError) as info:
        call(client, {})
    body = error_body(info.value)
    assert body["type"] == "authentication_error" and body["code"] == "invalid_api_key"
    assert info.value.response.headers["x-should-retry"] == "false"


@ROUTES
async def test_ip_limit_is_403_ip_limit_reached(
    stack: Stack, valkey_url: str, call: Call, sync_valkey: valkey.Valkey
) -> None:
    plan = Plan(f"one-ip-{uuid.uuid4().hex[:6]}", 1000, 1000, ip_slots=1, concurrency=8,
                period_days=30)  # fmt: skip
    customer = await new_customer(valkey_url, plan)
    keys = AccountKeys(customer.account_id)
    sync_valkey.hset(keys.key_ips(customer.key_id), "elsewhere", str(int(time.time() * 1000)))
    with client_for(stack, customer.key) as client, \
            pytest.raises(openai.PermissionDeniedError) as info:
        call(client, {})
    body = error_body(info.value)
    assert body["code"] == "ip_limit_reached" and body["type"] == "permission_error"


@ROUTES
def test_account_without_plan_is_403_permission_error(
    stack: Stack, customer: Customer, call: Call, sync_valkey: valkey.Valkey
) -> None:
    sync_valkey.hset(AccountKeys(customer.account_id).account, "status", "suspended")
    with client_for(stack, customer.key) as client, \
            pytest.raises(openai.PermissionDeniedError) as info:
        call(client, {})
    body = error_body(info.value)
    assert body["code"] == "permission_denied" and "No active plan" in body["message"]


@ROUTES
def test_quarantined_key_is_403_key_quarantined(
    stack: Stack, customer: Customer, call: Call, sync_valkey: valkey.Valkey
) -> None:
    sync_valkey.hset(
        AccountKeys(customer.account_id).key(customer.key_id),
        mapping={"status": "quarantined", "quarantine_reason": "seen on a paste site"},
    )
    with client_for(stack, customer.key) as client, \
            pytest.raises(openai.PermissionDeniedError) as info:
        call(client, {})
    body = error_body(info.value)
    assert body["code"] == "key_quarantined" and "paste site" in body["message"]


@ROUTES
def test_oversized_body_is_400_payload_too_large(
    stack: Stack, customer: Customer, call: Call
) -> None:
    huge = "x" * (2 * 1024 * 1024 + 10)
    with client_for(stack, customer.key) as client, \
            pytest.raises(openai.BadRequestError) as info:
        call(client, {"metadata": {"blob": huge}})
    assert error_body(info.value)["code"] == "payload_too_large"


@ROUTES
def test_too_many_output_tokens_is_400_max_tokens_too_large(
    stack: Stack, customer: Customer, call: Call
) -> None:
    field = "max_tokens" if call is call_chat else "max_output_tokens"
    with client_for(stack, customer.key) as client, \
            pytest.raises(openai.BadRequestError) as info:
        call(client, {field: 1_000_000})
    body = error_body(info.value)
    assert body["code"] == "max_tokens_too_large" and "1000000 exceeds" in body["message"]


@ROUTES
def test_unknown_model_is_404_model_not_found(
    stack: Stack, customer: Customer, call: Call
) -> None:
    with client_for(stack, customer.key) as client, \
            pytest.raises(openai.NotFoundError) as info:
        call(client, {"model": "gpt-4o"})
    body = error_body(info.value)
    assert body["code"] == "model_not_found" and body["param"] == "model"


def test_previous_response_id_is_400_previous_response_not_found(
    stack: Stack, customer: Customer
) -> None:
    with client_for(stack, customer.key) as client, \
            pytest.raises(openai.BadRequestError) as info:
        call_responses(client, {"previous_response_id": "resp_x"})
    assert error_body(info.value) == {
        "message": "Previous response with id 'resp_x' not found.",
        "type": "invalid_request_error",
        "code": "previous_response_not_found",
        "param": "previous_response_id",
    }


@ROUTES
@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("500", 500, None), ("529", 503, "server_is_overloaded"), ("429", 429, "rate_limit_exceeded"),
     ("400", 400, "context_length_exceeded")],
)  # fmt: skip
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_upstream_errors_keep_their_status_in_openai_shape(
    stack: Stack, customer: Customer, call: Call, fault: str, status: int, code: str | None,
    stream: bool, log_of: Any,
) -> None:  # fmt: skip
    with client_for(stack, customer.key) as client, \
            pytest.raises(openai.APIStatusError) as info:
        call(client, {"stream": stream, "extra_headers": {"x-sim-fault": fault}})
    assert info.value.status_code == status
    body = error_body(info.value)
    assert body["code"] == code
    if fault == "429":
        assert info.value.response.headers["retry-after"] == "7"
    (entry,) = log_of(customer, 1)
    assert entry["status"] == fault and entry["credits_mc"] == "0"


# -- credit windows ------------------------------------------------------------------------------


WINDOW_TOKENS = 4000  # large enough that whole-credit rounding cannot fit a second request


def window_request(call: Call, stream: bool = False) -> dict[str, Any]:
    field = "max_tokens" if call is call_chat else "max_output_tokens"
    extra = {"x-sim-output-tokens": str(WINDOW_TOKENS)}
    return {field: WINDOW_TOKENS, "stream": stream, "extra_headers": extra}


def tiny_plan(call: Call) -> Plan:
    """One request fills the 5-hour window; the week holds one and a half, so a second
    request (5 hours later) fills it too. Windows refuse only once full."""
    if call is call_chat:
        body = chat_translation({"model": MODEL, "max_tokens": WINDOW_TOKENS,
                                 "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    else:
        body = responses_translation(
            {"model": MODEL, "max_output_tokens": WINDOW_TOKENS, "input": "hi"}
        )
    one = estimate_mc(len(orjson.dumps(body)), WINDOW_TOKENS, RATES, 8192)
    week = math.ceil(1.5 * one / 1000)
    assert week * 1000 < 2 * one
    return Plan(f"tiny-{uuid.uuid4().hex[:6]}", one // 1000, week, ip_slots=5, concurrency=8,
                period_days=30)  # fmt: skip


@ROUTES
async def test_window_refusals_are_429_with_retry_after_naming_the_window(
    stack: Stack, valkey_url: str, call: Call, log_of: Any
) -> None:
    customer = await new_customer(valkey_url, tiny_plan(call))
    moved = 0
    with client_for(stack, customer.key) as client:
        try:
            call(client, window_request(call))
            log_of(customer, 1)  # settled: the next refusal is the window's, not a reservation's
            for stream in (False, True):
                with pytest.raises(openai.RateLimitError) as five_hour:
                    call(client, window_request(call, stream))
                body = error_body(five_hour.value)
                assert body["code"] == "rate_limit_exceeded" and "5-hour" in body["message"]
                retry = int(five_hour.value.response.headers["retry-after"])
                assert 5 * 3600 - 120 <= retry <= 5 * 3600 + 60
                if call is call_responses:
                    break  # a streamed Responses refusal is Codex's case, tested below

            moved = 5 * HOUR_MS + 2 * 60_000
            stack.move_clock(moved)
            call(client, window_request(call))  # the 5-hour window is empty: this fills the week
            log_of(customer, 2)
            with pytest.raises(openai.RateLimitError) as weekly:
                call(client, window_request(call))
            assert "Weekly" in error_body(weekly.value)["message"]
            assert int(weekly.value.response.headers["retry-after"]) > 6 * 24 * 3600
        finally:
            stack.move_clock(-moved)  # other tests share this server's clock


async def test_codex_stream_refusal_of_a_full_window_is_final_with_its_window(
    stack: Stack, valkey_url: str, log_of: Any
) -> None:
    """A full window frees in hours: ``rate_limit_exceeded`` with "try again in Ns" would
    have Codex sleep N s per retry, so the refusal is a final ``response.failed`` whose
    message names the window and when it frees (Codex ends the turn on ``invalid_prompt``
    and prints the message)."""
    customer = await new_customer(valkey_url, tiny_plan(call_responses))
    moved = 0
    with client_for(stack, customer.key) as client:
        try:
            call_responses(client, window_request(call_responses))
            log_of(customer, 1)
            for window in ("5-hour", "Weekly"):
                if window == "Weekly":
                    moved = 5 * HOUR_MS + 2 * 60_000
                    stack.move_clock(moved)
                    call_responses(client, window_request(call_responses))  # fills the week
                    log_of(customer, 2)
                with client.responses.with_streaming_response.create(
                    model=MODEL, input="hi", max_output_tokens=WINDOW_TOKENS, stream=True
                ) as raw:
                    assert raw.http_response.status_code == 200
                    assert int(raw.headers["retry-after"]) > 4 * 3600
                    events = list(raw.parse())
                assert [e.type for e in events] == [
                    "response.created", "response.in_progress", "response.failed"
                ]
                error = events[-1].response.error
                assert error is not None and error.code == "invalid_prompt"
                assert window in error.message and "frees at" in error.message
                # Codex's pattern (?i)try again in\s*(\d+...) must not match: it would sleep.
                assert "try again in" not in error.message.lower()
            # Non-stream Responses requests keep the plain 429.
            with pytest.raises(openai.RateLimitError):
                call_responses(client, window_request(call_responses))
        finally:
            stack.move_clock(-moved)


@pytest.mark.parametrize("stream", [False, True])
def test_every_route_records_the_stop_reason_and_the_upstreams_request_id(
    stack: Stack, customer: Customer, log_of: Any, stream: bool
) -> None:
    headers = {"authorization": f"Bearer {customer.key}"}
    calls = (
        ("/v1/messages", {"model": MODEL, "max_tokens": 64, "stream": stream,
                          "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/chat/completions", {"model": MODEL, "stream": stream,
                                  "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/responses", {"model": MODEL, "input": "hi", "stream": stream}),
    )  # fmt: skip
    for path, body in calls:
        resp = httpx.post(f"{stack.url}{path}", headers=headers, json=body, timeout=30)
        assert resp.status_code == 200, resp.text
    entries = log_of(customer, len(calls))
    assert [e["route"] for e in entries] == ["messages", "chat_completions", "responses"]
    for entry in entries:
        assert entry["stop_reason"] == "end_turn"
        assert entry["upstream_request_id"].startswith("req_sim_")
        assert entry["stream"] == str(int(stream)) and "error_type" not in entry

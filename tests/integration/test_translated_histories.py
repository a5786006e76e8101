"""Histories agents really send, through both OpenAI routes of the real server with the openai
SDK, against the strict simulator: each is answered, where the unnormalised translation was
refused with a 400."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.integration.conftest import UPSTREAM_KEY, Customer, Stack

MODEL = "claude-sonnet-4-6"
# Claude 4.6 and later refuse any prefill; the gateway drops a final assistant turn for them.
PREFILL_MODEL = "claude-sonnet-4-5-20250929"
TOOL_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": TOOL_SCHEMA}}]
RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "parameters": TOOL_SCHEMA}]


def said(role: str, text: str) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}


def turn(role: str, *blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": role, "content": list(blocks)}


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


CALL = {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
# Per history: the Chat messages, the Responses input, the tools, the Anthropic messages the
# translation used to forward as-is (which the real API refuses), and the model.
HISTORIES: dict[str, tuple[list[Any], list[Any], bool, list[Any], str]] = {
    "blank assistant turn": (
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\n\n"},
         {"role": "user", "content": "go on"}],
        [said("user", "hi"), said("assistant", " "), said("user", "go on")],
        False,
        [turn("user", text("hi")), turn("assistant", text(" ")), turn("user", text("go on"))],
        MODEL,
    ),
    "prefill ending in a space": (
        [{"role": "user", "content": "Name a colour."},
         {"role": "assistant", "content": "Colour: "}],
        [said("user", "Name a colour."), said("assistant", "Colour: ")],
        False,
        [turn("user", text("Name a colour.")), turn("assistant", text("Colour: "))],
        PREFILL_MODEL,
    ),
    "tool-only step with an empty output and a blank reply": (
        [{"role": "user", "content": "Weather in Paris?"},
         {"role": "assistant", "content": "", "tool_calls": [
             {"id": "call_1", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
         {"role": "tool", "tool_call_id": "call_1", "content": ""},
         {"role": "assistant", "content": "\n\n"},
         {"role": "user", "content": "go on"}],
        [said("user", "Weather in Paris?"),
         {"type": "function_call", "call_id": "call_1", "name": "get_weather",
          "arguments": '{"city": "Paris"}'},
         {"type": "function_call_output", "call_id": "call_1", "output": ""},
         said("assistant", " "), said("user", "go on")],
        True,
        [turn("user", text("Weather in Paris?")), turn("assistant", CALL),
         turn("user", {"type": "tool_result", "tool_use_id": "call_1", "content": ""}),
         turn("assistant", text("\n\n")), turn("user", text("go on"))],
        MODEL,
    ),
}


@pytest.fixture
def oai(stack: Stack, customer: Customer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=customer.key, max_retries=0)
    yield client
    client.close()


@pytest.mark.parametrize("name", HISTORIES)
def test_the_simulator_refuses_the_history_as_it_used_to_be_forwarded(
    stack: Stack, name: str
) -> None:
    _, _, _, messages, model = HISTORIES[name]
    body = {"model": model, "max_tokens": 64, "messages": messages}
    resp = httpx.post(
        f"{stack.sim_url}/v1/messages", content=orjson.dumps(body), timeout=30,
        headers={"x-api-key": UPSTREAM_KEY, "anthropic-version": "2023-06-01"},
    )  # fmt: skip
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("name", HISTORIES)
def test_chat_completions_answers_the_history(oai: openai.OpenAI, name: str, stream: bool) -> None:
    messages, _, tools, _, model = HISTORIES[name]
    extra: dict[str, Any] = {"tools": CHAT_TOOLS} if tools else {}
    if stream:
        chunks = list(oai.chat.completions.create(model=model, max_tokens=64, stream=True,
                                                  messages=messages, **extra))
        assert chunks[-1].choices[0].finish_reason in ("stop", "tool_calls")
    else:
        reply = oai.chat.completions.create(model=model, max_tokens=64, messages=messages,
                                            **extra)
        assert reply.choices[0].finish_reason in ("stop", "tool_calls")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("name", HISTORIES)
def test_responses_answers_the_history(oai: openai.OpenAI, name: str, stream: bool) -> None:
    _, items, tools, _, model = HISTORIES[name]
    extra: dict[str, Any] = {"tools": RESPONSES_TOOLS} if tools else {}
    if stream:
        events = list(oai.responses.create(model=model, max_output_tokens=64, stream=True,
                                           input=items, **extra))
        assert events[-1].type == "response.completed"
    else:
        reply = oai.responses.create(model=model, max_output_tokens=64, input=items, **extra)
        assert reply.status == "completed"


@pytest.mark.parametrize("name", HISTORIES)
def test_chat_messages_sent_to_the_responses_route_are_answered(
    oai: openai.OpenAI, name: str
) -> None:
    # Chat-style {role, content} messages are valid Responses input items too.
    messages, model = HISTORIES[name][0], HISTORIES[name][4]
    items = [m for m in messages if m["role"] in ("user", "assistant") and m["content"]]
    reply = oai.responses.create(model=model, max_output_tokens=64, input=items)
    assert reply.status == "completed" and reply.output_text


def test_a_prefill_for_a_model_that_refuses_prefill_is_answered(oai: openai.OpenAI) -> None:
    messages = HISTORIES["prefill ending in a space"][0]
    reply = oai.chat.completions.create(model=MODEL, max_tokens=64, messages=messages)
    assert reply.choices[0].message.content

"""The official SDKs against ``antex serve``: what they see equals what the upstream said."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.integration.conftest import UPSTREAM_KEY, Customer, Stack

MESSAGES: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hello there"}]
TOOLS: list[anthropic.types.ToolParam] = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


@pytest.fixture
def via(stack: Stack, customer: Customer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=stack.url, api_key=customer.key, max_retries=0) as client:
        yield client


@pytest.fixture
def direct(stack: Stack) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=stack.sim_url, api_key=UPSTREAM_KEY, max_retries=0) as client:
        yield client


def test_non_stream_message_usage_equals_upstream(
    via: anthropic.Anthropic, direct: anthropic.Anthropic
) -> None:
    kw = {"model": "claude-sonnet-4-6", "max_tokens": 50, "messages": MESSAGES}
    got = via.messages.create(**kw)  # type: ignore[call-overload]
    want = direct.messages.create(**kw)  # type: ignore[call-overload]
    assert got.usage == want.usage
    assert got.content[0].type == "text" and got.stop_reason == "end_turn"


def test_stream_final_message_usage_equals_upstream(
    via: anthropic.Anthropic, direct: anthropic.Anthropic
) -> None:
    kw = {"model": "claude-opus-4-6", "max_tokens": 30, "messages": MESSAGES}
    with via.messages.stream(**kw) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        got = stream.get_final_message()
    with direct.messages.stream(**kw) as stream:  # type: ignore[arg-type]
        want = stream.get_final_message()
    assert text and got.usage == want.usage
    assert got.usage.output_tokens == 30


def test_tool_use_round_trip(via: anthropic.Anthropic) -> None:
    first = via.messages.create(
        model="claude-sonnet-4-6", max_tokens=200, messages=MESSAGES, tools=TOOLS
    )
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict)
    with via.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=200,
        tools=TOOLS,
        messages=[
            *MESSAGES,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny"}],
            },
        ],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn"


def test_streamed_tool_input_is_assembled(via: anthropic.Anthropic) -> None:
    with via.messages.stream(
        model="claude-haiku-4-5", max_tokens=100, messages=MESSAGES, tools=TOOLS
    ) as stream:
        final = stream.get_final_message()
    call = next(b for b in final.content if b.type == "tool_use")
    assert call.input == {"city": "sim"}


def test_count_tokens_matches_upstream(
    via: anthropic.Anthropic, direct: anthropic.Anthropic
) -> None:
    got = via.messages.count_tokens(model="claude-sonnet-4-6", messages=MESSAGES)
    want = direct.messages.count_tokens(model="claude-sonnet-4-6", messages=MESSAGES)
    assert got.input_tokens == want.input_tokens > 0


def test_models_list_and_retrieve(via: anthropic.Anthropic) -> None:
    ids = [m.id for m in via.models.list(limit=1000)]
    assert "claude-sonnet-4-6" in ids and "claude-opus-4-6" in ids
    one = via.models.retrieve("claude-sonnet-4-6")
    assert one.id == "claude-sonnet-4-6" and one.display_name
    with pytest.raises(anthropic.NotFoundError):
        via.models.retrieve("no-such-model")


def test_models_paginate(via: anthropic.Anthropic) -> None:
    page = via.models.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    everything = [m.id for m in via.models.list(limit=2)]  # auto-pagination follows last_id
    assert len(everything) == len(set(everything)) > 2


def test_openai_sdk_lists_models(stack: Stack, customer: Customer) -> None:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=customer.key, max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert "claude-sonnet-4-6" in ids
    client.close()


def test_bearer_only_sdk_auth(stack: Stack, customer: Customer) -> None:
    client = anthropic.Anthropic(base_url=stack.url, auth_token=customer.key, max_retries=0)
    msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=MESSAGES)
    assert msg.usage.output_tokens == 10
    client.close()


def test_sdk_surfaces_gateway_errors(stack: Stack) -> None:
    client = anthropic.Anthropic(base_url=stack.url, api_key="sk_live_bogus", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=MESSAGES)
    client.close()

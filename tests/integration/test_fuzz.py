"""Fuzzing every route's body against the real two-worker server and the simulator: valid
bodies mutated with wrong types, nulls, huge numbers, deep nesting and odd unicode. No input
may produce a 5xx; every 4xx carries the route's JSON error shape.

``FUZZ_EXAMPLES`` (per route, default 250) raises the count for a long run; the run prints
its totals (requests and statuses)."""

from __future__ import annotations

import json
import os
import secrets
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.plans import Plan
from tests.integration.conftest import Customer, Stack, new_customer
from tests.integration.ops_helpers import operator_token

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "250"))
MODEL = "claude-sonnet-4-6"
ROOMY = Plan("fuzz", 10**9, 10**9, ip_slots=4, concurrency=64, period_days=30)
TALLY: Counter[str] = Counter()

CHAT = {
    "model": MODEL,
    "max_tokens": 16,
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "image_url", "image_url": {"url": "data:,x"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ],
    "reasoning_effort": "low",
    "stream_options": {"include_usage": True},
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "auto",
    "response_format": {"type": "text"},
    "stop": ["x"],
    "n": 1,
}  # fmt: skip
RESPONSES = {
    "model": MODEL,
    "max_output_tokens": 16,
    "instructions": "be brief",
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
    ],
    "reasoning": {"effort": "low", "summary": "auto"},
    "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
    "text": {"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}}},
    "metadata": {"a": "b"},
}  # fmt: skip
MESSAGES = {
    "model": MODEL,
    "max_tokens": 16,
    "system": "be brief",
    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    "metadata": {"user_id": "u"},
    "stream": False,
}
COUNT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
ROUTES: dict[str, tuple[str, dict[str, Any], str]] = {
    # name: (path, valid body, wire shape)
    "messages": ("/v1/messages", MESSAGES, "anthropic"),
    "count_tokens": ("/v1/messages/count_tokens", COUNT, "anthropic"),
    "chat": ("/v1/chat/completions", CHAT, "openai"),
    "responses": ("/v1/responses", RESPONSES, "openai"),
}
ADMIN: dict[str, tuple[str, str, dict[str, Any]]] = {
    "extend": ("POST", "/admin/accounts/{account}/extend", {"days": 1}),
    "plan": ("POST", "/admin/accounts/{account}/plan", {"plan": "fuzz", "period_days": 30}),
    "slots": ("POST", "/admin/accounts/{account}/ip-slots", {"add": 1}),
    "put_plan": ("PUT", "/admin/plans/fuzz-{n}", {"credits_5h": 5, "credits_7d": 10,
                                                  "ip_slots": 1, "concurrency": 1}),
}  # fmt: skip

odd_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12
) | st.sampled_from(["", "\u0000", "\u202e", "\ufeff", "💥" * 50, "a" * 5000, "low", "user"])
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**31, 2**63, 2**64 + 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    odd_text,
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=8,
)


def deep(n: int) -> Any:
    value: Any = "x"
    for _ in range(n):
        value = [value] if n % 2 else {"a": value}
    return value


payloads = values | st.integers(min_value=50, max_value=400).map(deep)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from paths(v, (*prefix, i))


def mutate(doc: Any, path: tuple[Any, ...], value: Any, drop: bool) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        copy = dict(doc)
        if drop and not rest:
            copy.pop(head, None)
        else:
            copy[head] = mutate(doc[head], rest, value, drop)
        return copy
    copy_list = list(doc)
    copy_list[head] = mutate(doc[head], rest, value, drop)
    return copy_list


def mutations(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    where = st.sampled_from(list(paths(base)))
    one = st.tuples(where, payloads, st.booleans())

    def build(steps: list[tuple[tuple[Any, ...], Any, bool]]) -> bytes:
        doc: Any = base
        for path, value, drop in steps:
            try:
                doc = mutate(doc, path, value, drop)
            except (KeyError, IndexError, TypeError):
                continue  # an earlier step replaced what this path walked through
        return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")

    valid = st.just(json.dumps(base).encode())
    return st.one_of(valid, st.lists(one, min_size=1, max_size=3).map(build))


def check_shape(answer: httpx.Response, shape: str, what: Any) -> None:
    TALLY[f"{answer.status_code // 100}xx"] += 1
    TALLY["requests"] += 1
    assert answer.status_code < 500, (answer.status_code, answer.text[:300], what)
    if answer.status_code >= 400:
        body = answer.json()
        error = body["error"]
        assert isinstance(error["message"], str) and error["message"], body
        if shape == "anthropic":
            assert body["type"] == "error" and isinstance(error["type"], str), body
        else:
            assert isinstance(error["type"], str) and "param" in error, body


@pytest.fixture(scope="module")
async def fuzz_customer(stack: Stack) -> Customer:
    return await new_customer(stack.valkey_url, ROOMY)


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    print(f"\nfuzz totals: {dict(TALLY)}")


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
    derandomize=os.environ.get("FUZZ_EXAMPLES") is None,
)  # fmt: skip


@pytest.mark.parametrize("route", list(ROUTES))
def test_no_body_gets_a_5xx_and_every_refusal_has_the_routes_shape(
    route: str, client: httpx.Client, fuzz_customer: Customer
) -> None:
    path, base, shape = ROUTES[route]
    headers = {"x-api-key": fuzz_customer.key, "content-type": "application/json"}

    @FUZZ
    @given(body=mutations(base))
    def run(body: bytes) -> None:
        check_shape(client.post(path, content=body, headers=headers), shape, body[:300])

    run()


@pytest.mark.parametrize("action", list(ADMIN))
async def test_no_admin_body_gets_a_5xx(
    action: str, stack: Stack, client: httpx.Client, fuzz_customer: Customer
) -> None:
    method, template, base = ADMIN[action]
    headers = {"authorization": f"Bearer {await operator_token(stack.valkey_url)}"}

    @FUZZ
    @given(body=mutations(base))
    def run(body: bytes) -> None:
        path = template.format(account=fuzz_customer.account_id, n=secrets.token_hex(3))
        answer = client.request(method, path, content=body, headers=headers)
        check_shape(answer, "anthropic", body[:300])

    run()


REPRODUCTIONS = [
    ("chat", {**CHAT, "reasoning_effort": 5}, "reasoning_effort"),
    ("chat", {**CHAT, "reasoning_effort": ["high"]}, "reasoning_effort"),
    ("responses", {**RESPONSES, "reasoning": {"effort": 5}}, "reasoning.effort"),
    ("chat", {**CHAT, "messages": [*CHAT["messages"][:2],
                                   {"role": "assistant", "tool_calls": True}]},
     "messages.2.tool_calls"),
    ("chat", {**CHAT, "messages": [*CHAT["messages"][:2],
                                   {"role": "assistant", "tool_calls": 3}]},
     "messages.2.tool_calls"),
    ("chat", {**CHAT, "stream_options": "yes"}, "stream_options"),
    ("chat", {**CHAT, "max_tokens": 2**40}, "max_tokens"),
    ("messages", {**MESSAGES, "max_tokens": "16"}, "max_tokens"),
    ("messages", {**MESSAGES, "metadata": ["u"]}, "metadata"),
    ("messages", {**MESSAGES, "stream": "yes"}, "stream"),
    ("responses", {**RESPONSES, "input": [{"type": "message", "content": 5}]}, "input.0.content"),
    ("responses", {**RESPONSES, "text": {"format": "json"}}, "text.format"),
    ("count_tokens", {**COUNT, "model": 7}, "model"),
]  # fmt: skip


@pytest.mark.parametrize(("route", "body", "field"), REPRODUCTIONS)
def test_known_bad_inputs_are_400s_naming_the_field(
    route: str, body: dict[str, Any], field: str, client: httpx.Client, fuzz_customer: Customer
) -> None:
    path, _, shape = ROUTES[route]
    headers = {"x-api-key": fuzz_customer.key, "content-type": "application/json"}
    answer = client.post(path, content=json.dumps(body).encode(), headers=headers)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"].startswith(field)
    if shape == "openai":
        assert error["param"] == field


# A thousand levels: deeper than the decoder's recursion limit, shallower than orjson's.
DEEP = "[" * 1000 + "]" * 1000


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("where", ["unknown_field", "message"])
def test_deeply_nested_bodies_are_400s_in_the_routes_shape(
    route: str, where: str, client: httpx.Client, fuzz_customer: Customer
) -> None:
    path, base, shape = ROUTES[route]
    headers = {"x-api-key": fuzz_customer.key, "content-type": "application/json"}
    if where == "unknown_field":
        body = json.dumps({**base, "zz": "DEEP"})
    else:
        key = "input" if route == "responses" else "messages"
        body = json.dumps({**base, key: ["DEEP"]})
    answer = client.post(path, content=body.replace('"DEEP"', DEEP).encode(), headers=headers)
    assert answer.status_code == 400, answer.text
    check_shape(answer, shape, body[:300])
    assert answer.json()["error"]["type"] == "invalid_request_error"

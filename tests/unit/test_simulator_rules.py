"""What the simulator refuses, as the real Messages API does, and the look-alikes it accepts."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.catalog import load_catalog
from gateway.simulator_rules import Rejected, check_messages_request

USER = {"role": "user", "content": "Hello there"}
TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}
BASE: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 4096, "messages": [USER],
                        "tools": [TOOL]}


def _tool_use(tid: str = "toolu_1") -> dict[str, Any]:
    return {"type": "tool_use", "id": tid, "name": "get_weather", "input": {"city": "Paris"}}


def _tool_result(tid: str = "toolu_1") -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tid, "content": "sunny"}


def _with(**fields: Any) -> dict[str, Any]:
    return {**copy.deepcopy(BASE), **fields}


def _msgs(*messages: dict[str, Any]) -> dict[str, Any]:
    return _with(messages=list(messages))


def _refusal(req: dict[str, Any], *, counting: bool = False) -> Rejected:
    with pytest.raises(Rejected) as caught:
        check_messages_request(req, counting=counting)
    return caught.value


REFUSED = {
    "empty text block": (
        _msgs({"role": "user", "content": [{"type": "text", "text": ""}]}),
        "messages: text content blocks must be non-empty"),
    "whitespace-only text block": (
        _msgs({"role": "user", "content": [{"type": "text", "text": " \n\t"}]}),
        "messages: text content blocks must contain non-whitespace text"),
    "whitespace-only string content": (
        _msgs({"role": "user", "content": "   "}),
        "text content blocks must contain non-whitespace text"),
    "empty user string content": (
        _msgs(USER, {"role": "assistant", "content": ""}, USER),
        "messages.1: all messages must have non-empty content except for the optional final "
        "assistant message"),
    "empty text inside a tool_result": (
        _msgs(USER, {"role": "assistant", "content": [_tool_use()]},
              {"role": "user", "content": [{**_tool_result(),
                                            "content": [{"type": "text", "text": ""}]}]}),
        "text content blocks must be non-empty"),
    "prefill ending in a space": (
        _msgs(USER, {"role": "assistant", "content": "The answer is "}),
        "messages: final assistant content cannot end with trailing whitespace"),
    "prefill whose last block ends in a newline": (
        _msgs(USER, {"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                      {"type": "text", "text": "{\n"}]}),
        "final assistant content cannot end with trailing whitespace"),
    "tool_use answered by plain text": (
        _msgs(USER, {"role": "assistant", "content": [_tool_use()]}, USER),
        "messages.1: `tool_use` ids were found without `tool_result` blocks immediately "
        "after: toolu_1."),
    "tool_result after text in the next turn": (
        _msgs(USER, {"role": "assistant", "content": [_tool_use()]},
              {"role": "user", "content": [{"type": "text", "text": "here"}, _tool_result()]}),
        "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1"),
    "one of two tool_uses unanswered": (
        _msgs(USER, {"role": "assistant", "content": [_tool_use("a"), _tool_use("b")]},
              {"role": "user", "content": [_tool_result("a")]}),
        "immediately after: b."),
    "tool_use in the final assistant turn": (
        _msgs(USER, {"role": "assistant", "content": [_tool_use()]}),
        "`tool_use` ids were found without `tool_result` blocks"),
    "tool_result for an unknown id": (
        _msgs(USER, {"role": "assistant", "content": [_tool_use()]},
              {"role": "user", "content": [_tool_result(), _tool_result("toolu_9")]}),
        "messages.2.content.1: unexpected `tool_use_id` found in `tool_result` blocks: "
        "toolu_9."),
    "tool_result with no assistant turn before": (
        _msgs({"role": "user", "content": [_tool_result()]}),
        "messages.0.content.0: unexpected `tool_use_id`"),
    "thinking budget below 1024": (
        _with(thinking={"type": "enabled", "budget_tokens": 1023}),
        "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"),
    "thinking budget equal to max_tokens": (
        _with(thinking={"type": "enabled", "budget_tokens": 4096}),
        "`max_tokens` must be greater than `thinking.budget_tokens`"),
    "unknown content block type": (
        _msgs({"role": "user", "content": [{"type": "txt", "text": "hi"}]}),
        "messages.0.content.0: Input tag 'txt' found using 'type' does not match"),
    "unknown role": (
        _msgs({"role": "tool", "content": "be brief"}, USER),
        "messages.0.role: Input should be 'user', 'assistant' or 'system'"),
    "empty messages": (_with(messages=[]), "messages: at least one message is required"),
    "max_tokens above the model's output limit": (
        _with(model="claude-sonnet-4-5", max_tokens=64001),
        "max_tokens: 64001 > 64000, which is the maximum allowed number of output tokens for "
        "claude-sonnet-4-5-20250929"),
    "max_tokens zero": (_with(max_tokens=0), "greater than or equal to 1"),
    "temperature above 1": (_with(temperature=1.5), "temperature: Input should be less than"),
    "temperature below 0": (_with(temperature=-0.1), "temperature: Input should be greater"),
    "temperature together with top_p": (
        _with(temperature=0.5, top_p=0.9),
        "`temperature` and `top_p` cannot both be specified"),
    "thinking with a non-default temperature": (
        _with(thinking={"type": "enabled", "budget_tokens": 1024}, temperature=0.2),
        "`temperature` may only be set to 1 when thinking is enabled"),
    "thinking with top_k": (
        _with(thinking={"type": "adaptive"}, top_k=5), "`top_k` must be unset"),
    "thinking with forced tool use": (
        _with(thinking={"type": "adaptive"}, tool_choice={"type": "any"}),
        "Thinking may not be enabled when tool_choice forces tool use."),
    "thinking mid tool loop without the signed thinking block": (
        _msgs(USER, {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                                      _tool_use()]},
              {"role": "user", "content": [_tool_result()]}) | {"thinking": {"type": "adaptive"}},
        "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
        "`text`. When `thinking` is enabled, a final `assistant` message must start with a "
        "thinking block"),
    "thinking block after text in one assistant message": (
        _msgs(USER, {"role": "assistant", "content": [
            {"type": "text", "text": "Hi."}, {"type": "thinking", "thinking": "t",
                                              "signature": "s"}]}, USER),
        "messages.1.content.0: If an assistant message contains any thinking blocks, the "
        "first block must be thinking or redacted_thinking. Found text."),
    "assistant turn ending in thinking": (
        _msgs(USER, {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "t", "signature": "s"}]}, USER),
        "messages.1: The final block in an assistant message cannot be `thinking`."),
    "final assistant thinking while thinking is off": (
        _msgs(USER, {"role": "assistant", "content": [
            {"type": "redacted_thinking", "data": "x"}, {"type": "text", "text": "So"}]}),
        "messages.1.content.0: When thinking is disabled, an `assistant` message in the final "
        "position cannot contain `thinking`"),
    "tool_use without an id": (
        _msgs(USER, {"role": "assistant", "content": [{**_tool_use(), "id": None}]},
              {"role": "user", "content": [_tool_result()]}),
        "messages.1.content.0.id: Input should be a valid string"),
    "temperature not finite": (_with(temperature=float("nan")), "temperature: Input should be"),
    "tool blocks without tools defined": (
        {**_msgs(USER, {"role": "assistant", "content": [_tool_use()]},
                 {"role": "user", "content": [_tool_result()]}), "tools": []},
        "Requests which include `tool_use` or `tool_result` blocks must define tools."),
    "system block with empty text": (
        _with(system=[{"type": "text", "text": ""}]), "system: text content blocks must be"),
    "system block with blank text": (
        _with(system=[{"type": "text", "text": "ok"}, {"type": "text", "text": "  "}]),
        "system: text content blocks must contain non-whitespace text"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_like_the_real_api(case: str) -> None:
    req, message = REFUSED[case]
    refusal = _refusal(req)
    assert (refusal.status, refusal.error_type) == (400, "invalid_request_error")
    assert message in refusal.message


def test_a_model_it_does_not_serve_is_not_found() -> None:
    refusal = _refusal(_with(model="claude-nonexistent-9"))
    assert (refusal.status, refusal.error_type) == (404, "not_found_error")
    assert refusal.message == "model: claude-nonexistent-9"


ACCEPTED = {
    "consecutive user messages (merged)": _msgs(USER, USER),
    "consecutive assistant messages split the tool turn": _msgs(
        USER, {"role": "assistant", "content": "Let me look."},
        {"role": "assistant", "content": [_tool_use()]},
        {"role": "user", "content": [_tool_result()]}),
    "tool results in two consecutive user messages": _msgs(
        USER, {"role": "assistant", "content": [_tool_use("a"), _tool_use("b")]},
        {"role": "user", "content": [_tool_result("a")]},
        {"role": "user", "content": [_tool_result("b"), {"type": "text", "text": "go on"}]}),
    "whitespace inside text": _msgs({"role": "user", "content": "  two  spaces  inside  "}),
    "prefill with leading whitespace": _msgs(USER, {"role": "assistant", "content": "  {"}),
    "empty final assistant message": _msgs(USER, {"role": "assistant", "content": ""}),
    "trailing whitespace in an earlier assistant turn": _msgs(
        USER, {"role": "assistant", "content": "Sure. "}, USER),
    "tool_result with empty string content": _msgs(
        USER, {"role": "assistant", "content": [_tool_use()]},
        {"role": "user", "content": [{**_tool_result(), "content": ""}]}),
    "thinking budget just below max_tokens": _with(
        thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=1025),
    "adaptive thinking": _with(thinking={"type": "adaptive"}),
    "temperature zero": _with(temperature=0),
    "temperature one": _with(temperature=1.0),
    "top_p alone": _with(top_p=0.9),
    "system as a string": _with(system=""),
    "thinking at temperature 1": _with(thinking={"type": "adaptive"}, temperature=1),
    "thinking mid tool loop with its signed thinking first": _msgs(
        USER, {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "t", "signature": "s"}, _tool_use()]},
        {"role": "user", "content": [_tool_result()]}) | {"thinking": {"type": "adaptive"}},
    "thinking on after a finished tool loop without thinking": _msgs(
        USER, {"role": "assistant", "content": [_tool_use()]},
        {"role": "user", "content": [_tool_result()]},
        {"role": "assistant", "content": "Sunny."}, USER) | {"thinking": {"type": "adaptive"}},
    "earlier thinking kept while thinking is off": _msgs(
        USER, {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "t", "signature": "s"},
            {"type": "text", "text": "Hi."}]}, USER),
    "forced tool use without thinking": _with(tool_choice={"type": "any"}),
    "alias at its model's output limit": _with(model="claude-sonnet-4-5", max_tokens=64000),
    "Claude Code's default model and max_tokens": _with(model="claude-opus-5-5",
                                                        max_tokens=128000),
}


@pytest.mark.parametrize("case", ACCEPTED)
def test_accepted_look_alikes(case: str) -> None:
    check_messages_request(ACCEPTED[case])


def test_every_catalog_model_and_alias_is_served_up_to_its_output_limit() -> None:
    catalog = load_catalog()
    for name, info in catalog.by_id.items():
        limit = info.max_output_tokens or 64000  # the default where the catalog has none
        check_messages_request(_with(model=name, max_tokens=limit))
        refusal = _refusal(_with(model=name, max_tokens=limit + 1))
        assert f"{limit + 1} > {limit}" in refusal.message and info.id in refusal.message


def test_counting_needs_no_max_tokens_but_checks_the_rest() -> None:
    body = {"model": "claude-sonnet-4-6", "messages": [USER]}
    check_messages_request(body, counting=True)
    assert "max_tokens: Field required" in _refusal(body).message
    blank = {**body, "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]}
    assert "must be non-empty" in _refusal(blank, counting=True).message
    assert _refusal({**body, "model": "gpt-4o"}, counting=True).status == 404


def test_system_messages_in_the_list_are_accepted_as_text() -> None:
    """The SDK's SystemMessageParam; Claude Code 2.1.332 sends one after the user turn."""
    system = {"role": "system", "content": "Be brief."}
    check_messages_request(_msgs(USER, system))
    check_messages_request(_msgs(USER, {"role": "system",
                                        "content": [{"type": "text", "text": "Be brief."}]}))
    assert "non-whitespace" in _refusal(_msgs(USER, {"role": "system", "content": " "})).message
    image = {"type": "image", "source": {"type": "url", "url": "https://example.test/a.png"}}
    assert "'text'" in _refusal(_msgs(USER, {"role": "system", "content": [image]})).message
    assert "at least one" in _refusal(_msgs(system)).message

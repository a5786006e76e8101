"""The normalisation pass that ends both OpenAI translations: each rule on its own, the smallest
histories the real API refused before it, and generated Chat and Responses histories whose
translations the strict simulator's validator must accept."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import InvalidRequest
from gateway.simulator_rules import Rejected, check_messages_request
from gateway.translate.normalize import NO_RESULT, normalize_messages
from gateway.translate.openai_chat import chat_request_to_anthropic
from gateway.translate.openai_responses import responses_request_to_anthropic
from gateway.translate.responses_stream import encode_redacted, encode_thinking

MODEL = "claude-sonnet-4-6"  # refuses any prefill, as every model from Claude 4.6 on
PREFILL_MODEL = "claude-sonnet-4-5-20250929"  # continues a final assistant turn
SIG = "EqMBCkYIBxgCKkDk3m9vYx0W2r5TmQ0bX4u8h1b6Y3pQ7Zc9L2f4N1a8K0s5V7e3R6t9U2w4X8y1B5n7M0q3P6j9"
PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhf"
       "DwAChwGA60e6kgAAAABJRU5ErkJggg==")


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


def call(call_id: str, name: str = "f") -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": {}}


def result(call_id: str, content: Any = "ok") -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, "content": content}


def filled(call_id: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, "content": NO_RESULT}


def thinking(t: str = "Let me think.  ") -> dict[str, Any]:
    return {"type": "thinking", "thinking": t, "signature": SIG}


def accepted(request: dict[str, Any]) -> dict[str, Any]:
    try:
        check_messages_request(request)
    except Rejected as exc:
        pytest.fail(f"simulator refuses the translation: {exc.message}\n{request['messages']}")
    # The real API also answers 400 "`tool_use` ids must be unique"; the simulator does not check.
    ids = [b["id"] for m in request["messages"] for b in m["content"] if b["type"] == "tool_use"]
    assert len(ids) == len(set(ids)), ids
    # Nor "This model does not support assistant message prefill" (Claude 4.6 and later).
    if request["model"] != PREFILL_MODEL:
        assert request["messages"][-1]["role"] == "user"
    # Nor does it check "a final assistant message must start with a thinking block".
    if request.get("thinking", {}).get("type") in ("enabled", "adaptive"):
        messages = request["messages"]
        last = next((m for m in reversed(messages) if m["role"] == "assistant"), None)
        if last is not None and (last is messages[-1] or "tool_use" in block_types(last)):
            assert last["content"][0]["type"] in ("thinking", "redacted_thinking"), last
    return request


def block_types(message: dict[str, Any]) -> set[str]:
    return {b["type"] for b in message["content"]}


def chat(messages: list[dict[str, Any]], model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return accepted(chat_request_to_anthropic({"model": model, "messages": messages, **extra}))


def responses(input_: Any, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return accepted(responses_request_to_anthropic({"model": model, "input": input_, **extra})[0])


def said(role: str, t: str) -> dict[str, Any]:
    return {"type": "message", "role": role,
            "content": [{"type": "output_text" if role == "assistant" else "input_text",
                         "text": t}]}


# -- the smallest inputs the real API refused --------------------------------------------------


def test_chat_whitespace_assistant_turn_between_users_is_dropped_and_users_merge() -> None:
    out = chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\n\n"},
                {"role": "user", "content": "go on"}])
    assert out["messages"] == [user(text("hi"), text("go on"))]


def test_responses_blank_output_text_is_dropped_and_users_merge() -> None:
    out = responses([said("user", "hi"), said("assistant", " "), said("user", "go on")])
    assert out["messages"] == [user(text("hi"), text("go on"))]


COLOUR_CHAT = [{"role": "user", "content": "Name a colour."},
               {"role": "assistant", "content": "Colour: "}]
COLOUR_ITEMS = [said("user", "Name a colour."), said("assistant", "Colour: ")]


def test_chat_prefill_loses_its_trailing_whitespace() -> None:
    out = chat(COLOUR_CHAT, PREFILL_MODEL)
    assert out["messages"][-1] == assistant(text("Colour:"))


def test_responses_prefill_loses_its_trailing_whitespace() -> None:
    out = responses(COLOUR_ITEMS, PREFILL_MODEL)
    assert out["messages"][-1] == assistant(text("Colour:"))


def test_models_that_refuse_prefill_get_the_history_without_its_final_assistant_turn() -> None:
    assert chat(COLOUR_CHAT)["messages"] == [user(text("Name a colour."))]
    assert responses(COLOUR_ITEMS, "claude-mythos-preview")["messages"] == [
        user(text("Name a colour."))]


def test_thinking_stays_off_for_a_prefill_without_thinking() -> None:
    # "When thinking is enabled, a final assistant message must start with a thinking block."
    assert "thinking" not in chat(COLOUR_CHAT, PREFILL_MODEL, reasoning_effort="high")
    assert "thinking" not in responses(COLOUR_ITEMS, PREFILL_MODEL, reasoning={"effort": "high"})
    out = chat([COLOUR_CHAT[0], {"role": "assistant", "content": " "}], PREFILL_MODEL,
               reasoning_effort="high")
    assert out["thinking"]["type"] == "enabled"
    assert "thinking" in chat(COLOUR_CHAT, reasoning_effort="high")  # no prefill left


# -- the other histories agents send -----------------------------------------------------------


def test_chat_tool_only_assistant_turn_with_empty_content() -> None:
    out = chat([{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": ""},
                {"role": "assistant", "content": "\n\n"},
                {"role": "user", "content": "go on"}])
    assert out["messages"] == [
        user(text("weather?")),
        assistant({"type": "tool_use", "id": "c1", "name": "get_weather",
                   "input": {"city": "Paris"}}),
        # An empty output is sent without content, which the API takes as "no output".
        user({"type": "tool_result", "tool_use_id": "c1"}, text("go on"))]


def test_image_only_user_turn_is_kept() -> None:
    out = chat([{"role": "user", "content": [
        {"type": "text", "text": " "}, {"type": "image_url", "image_url": {"url": PNG}}]}])
    assert [b["type"] for b in out["messages"][0]["content"]] == ["image"]


def test_developer_message_mid_history_joins_the_system_and_blank_system_is_omitted() -> None:
    out = chat([{"role": "system", "content": "  "}, {"role": "user", "content": "a"},
                {"role": "developer", "content": "Be terse."}, {"role": "user", "content": "b"}])
    assert out["system"] == "Be terse."
    assert out["messages"] == [user(text("a"), text("b"))]
    out = chat([{"role": "system", "content": "\n"}, {"role": "user", "content": "a"}])
    assert "system" not in out
    out = responses([said("developer", " "), said("user", "a")], instructions="")
    assert "system" not in out


def test_history_with_nothing_to_send_is_refused_before_the_upstream() -> None:
    with pytest.raises(InvalidRequest) as info:
        chat_request_to_anthropic({"model": MODEL, "messages": [
            {"role": "system", "content": "x"}, {"role": "user", "content": " "}]})
    assert info.value.param == "messages"
    with pytest.raises(InvalidRequest) as info:
        responses_request_to_anthropic({"model": MODEL, "input": "\n"})
    assert info.value.param == "input"


def test_responses_reasoning_before_a_blank_message_and_a_call_stays_first() -> None:
    item = {"type": "reasoning", "summary": [],
            "encrypted_content": encode_thinking(MODEL, SIG, "plan  \n")}
    out = responses([said("user", "go"), item, said("assistant", "  "),
                     {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                     {"type": "function_call_output", "call_id": "c1", "output": " "}],
                    reasoning={"effort": "low"})
    assert out["messages"][1]["content"][0] == {"type": "thinking", "thinking": "plan  \n",
                                                "signature": SIG}
    assert out["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "c1"}]
    assert out["thinking"]["type"] == "enabled"


# -- each rule of the pass ---------------------------------------------------------------------


def test_blank_text_and_empty_turns_are_dropped() -> None:
    rough = [user(text(""), text("a"), text(" \t")), assistant(text("\n")), user(),
             assistant(text("b"))]
    assert normalize_messages(rough) == [user(text("a")), assistant(text("b"))]


def test_same_role_neighbours_merge_in_order() -> None:
    rough = [user(text("a")), user(text("b")), assistant(text("c")), assistant(text("d"))]
    assert normalize_messages(rough) == [user(text("a"), text("b")),
                                         assistant(text("c"), text("d"))]


def test_tool_results_open_the_user_turn_in_call_order() -> None:
    rough = [user(text("go")), assistant(call("a"), call("b")),
             user(text("also this"), result("b", "B"), result("a", "A"))]
    assert normalize_messages(rough)[2] == user(result("a", "A"), result("b", "B"),
                                                text("also this"))


def test_unanswered_calls_are_filled_and_stray_or_repeated_outputs_dropped() -> None:
    rough = [user(result("ghost")), user(text("go")), assistant(call("a"), call("b")),
             user(result("a"), result("a", "again"), result("zzz"))]
    assert normalize_messages(rough) == [
        user(text("go")), assistant(call("a"), call("b")), user(result("a"), filled("b"))]


def test_history_ending_on_calls_gets_filled_results() -> None:
    rough = [user(text("go")), assistant(text("on it"), call("a"))]
    assert normalize_messages(rough)[-1] == user(filled("a"))


def test_turns_that_touch_once_a_blank_turn_is_gone_pair_as_one() -> None:
    # The user turn between the two calls was only whitespace: both calls form one turn,
    # answered by the outputs that follow.
    rough = [user(text("go")), assistant(call("a")), user(text(" ")), assistant(call("b")),
             user(result("a"), result("b"))]
    assert normalize_messages(rough) == [user(text("go")), assistant(call("a"), call("b")),
                                         user(result("a"), result("b"))]


def test_a_turn_of_stray_outputs_vanishes_and_its_neighbours_merge() -> None:
    rough = [user(text("go")), assistant(text("a")), user(result("ghost")), assistant(text("b"))]
    assert normalize_messages(rough) == [user(text("go")), assistant(text("a"), text("b"))]


def test_repeated_call_ids_are_renamed_with_their_outputs() -> None:
    rough = [user(text("go")), assistant(call("call_0")), user(result("call_0", "first")),
             assistant(call("call_0"), call("call_0")),
             user(result("call_0", "second"), result("call_0", "third"))]
    out = normalize_messages(rough)
    assert out[3] == assistant(call("call_0_2"), call("call_0_3"))
    assert out[4] == user(result("call_0_2", "second"), result("call_0_3", "third"))
    assert out[2] == user(result("call_0", "first"))


def test_blank_tool_output_loses_its_content() -> None:
    rough = [user(text("go")), assistant(call("a"), call("b"), call("c")),
             user(result("a", " \n"), result("b", [text(""), text("x")]), result("c", [text(" ")]))]
    assert normalize_messages(rough)[2] == user(
        {"type": "tool_result", "tool_use_id": "a"}, result("b", [text("x")]),
        {"type": "tool_result", "tool_use_id": "c"})


def test_prefill_is_trimmed_and_dropped_when_nothing_is_left() -> None:
    assert normalize_messages([user(text("q")), assistant(text("A: \n"))])[-1] == assistant(
        text("A:"))
    assert normalize_messages([user(text("q")), assistant(text("A"), text(" x  "))]) == [
        user(text("q")), assistant(text("A"), text(" x"))]
    assert normalize_messages([user(text("q")), assistant(thinking())]) == [user(text("q"))]


def test_without_prefill_a_final_assistant_turn_is_dropped() -> None:
    rough = [user(text("q")), assistant(text("A")), user(text(" ")), assistant(text("B"))]
    assert normalize_messages(rough, prefill=False) == [user(text("q"))]
    calls = [user(text("q")), assistant(call("a"))]
    assert normalize_messages(calls, prefill=False) == [*calls, user(filled("a"))]


def test_thinking_blocks_are_kept_byte_exact() -> None:
    block = thinking(" \n  ")
    redacted = {"type": "redacted_thinking", "data": "opaque"}
    out = normalize_messages([user(text("q")), assistant(block), assistant(redacted, call("a")),
                              user(result("a"))])
    assert out[1]["content"][0] is block
    assert out[1] == assistant(block, redacted, call("a"))


def test_thinking_only_opens_an_assistant_turn_and_never_ends_one() -> None:
    block = thinking()
    rough = [user(text("go")), assistant(text("a")), assistant(block, call("a")),
             user(result("a")), assistant(block, text("b"), block), user(text("more")),
             assistant(block), user(text("again"))]
    assert normalize_messages(rough) == [
        user(text("go")), assistant(text("a"), call("a")), user(result("a")),
        assistant(block, text("b")), user(text("more"), text("again"))]


def test_a_prefill_holds_no_thinking() -> None:
    rough = [user(text("q")), assistant(thinking(), text("A "))]
    assert normalize_messages(rough) == [user(text("q")), assistant(text("A"))]


def test_the_input_is_not_modified() -> None:
    rough = [user(text("go")), assistant(call("a")), assistant(call("a")), user(result("a"))]
    snapshot = repr(rough)
    normalize_messages(rough)
    assert repr(rough) == snapshot


# -- generated histories -----------------------------------------------------------------------

TEXTS = st.one_of(st.sampled_from(["", " ", "\n\n", "\t \n", "\u00a0", "hi", "go on", "Colour: ",
                                   " x ", "ok\n"]), st.text(max_size=8))
CALL_IDS = st.sampled_from(["c1", "c2", "call.3", "call_0", ""])
TOOL_NAMES = st.sampled_from(["get_weather", "shell", "apply_patch"])
ARGUMENTS = st.sampled_from(['{"city": "Paris"}', "", "{oops", "[1]", "{}"])
IMAGE_URLS = st.sampled_from([PNG, "https://example.org/cat.png"])
MODELS = st.sampled_from([MODEL, PREFILL_MODEL])
EFFORTS = st.sampled_from([None, "none", "low", "medium", "high"])
EXAMPLES = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def chat_parts(*, images: bool) -> st.SearchStrategy[Any]:
    part = st.builds(lambda t: {"type": "text", "text": t}, TEXTS)
    if images:
        part = part | st.builds(lambda u: {"type": "image_url", "image_url": {"url": u}},
                                IMAGE_URLS)
    return TEXTS | st.lists(part, max_size=3)


CHAT_TOOL_CALLS = st.lists(st.builds(
    lambda i, n, a: {"id": i, "type": "function", "function": {"name": n, "arguments": a}},
    CALL_IDS, TOOL_NAMES, ARGUMENTS), max_size=3)
CHAT_MESSAGES = st.one_of(
    st.builds(lambda r, c: {"role": r, "content": c},
              st.sampled_from(["system", "developer"]), chat_parts(images=False)),
    st.builds(lambda c: {"role": "user", "content": c}, chat_parts(images=True)),
    st.builds(lambda c, calls, blocks: {"role": "assistant", "content": c, "tool_calls": calls,
                                        "thinking_blocks": blocks},
              st.none() | chat_parts(images=False), CHAT_TOOL_CALLS,
              st.lists(st.builds(thinking, TEXTS), max_size=1)),
    st.builds(lambda i, c: {"role": "tool", "tool_call_id": i, "content": c},
              CALL_IDS, chat_parts(images=False)),
)


@EXAMPLES
@given(messages=st.lists(CHAT_MESSAGES, min_size=1, max_size=8), model=MODELS, effort=EFFORTS,
       adaptive=st.booleans(), max_tokens=st.none() | st.sampled_from([1, 2000, 4096]))
def test_any_chat_history_translates_to_a_request_the_api_accepts(
    messages: list[dict[str, Any]], model: str, effort: str | None, adaptive: bool,
    max_tokens: int | None,
) -> None:
    body: dict[str, Any] = {"model": model, "messages": messages, "reasoning_effort": effort,
                            "max_tokens": max_tokens}
    try:
        request = chat_request_to_anthropic(body, adaptive_thinking=adaptive)
    except InvalidRequest as exc:
        assert exc.param == "messages"  # only a history with nothing left to send
        return
    accepted(request)


def response_parts(role: str) -> st.SearchStrategy[Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    part = st.builds(lambda t: {"type": kind, "text": t}, TEXTS)
    if role == "user":
        part = part | st.builds(lambda u: {"type": "input_image", "image_url": u}, IMAGE_URLS)
    return TEXTS | st.lists(part, max_size=3)


def message_item(role: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda c, typed: {"role": role, "content": c} | (
        {"type": "message"} if typed else {}), response_parts(role), st.booleans())


OUTPUTS = TEXTS | st.lists(st.one_of(
    st.builds(lambda t: {"type": "input_text", "text": t}, TEXTS),
    st.builds(lambda u: {"type": "input_image", "image_url": u}, IMAGE_URLS)), max_size=2)
def reasoning_blobs(model: str) -> st.SearchStrategy[str]:
    return st.one_of(st.builds(lambda t: encode_thinking(model, SIG, t), TEXTS),
                     st.just(encode_redacted(model, "opaque-redacted")),
                     st.just(encode_thinking("claude-opus-4-1", SIG, "another model")),
                     st.just("gAAAAABo-openai-blob"))


def response_items(model: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        *(message_item(role) for role in ("user", "assistant", "system", "developer")),
        st.builds(lambda i, n, a: {"type": "function_call", "call_id": i, "name": n,
                                   "arguments": a}, CALL_IDS, TOOL_NAMES, ARGUMENTS),
        st.builds(lambda i, o: {"type": "function_call_output", "call_id": i, "output": o},
                  CALL_IDS, OUTPUTS),
        st.builds(lambda i, t: {"type": "custom_tool_call", "call_id": i, "name": "apply_patch",
                                "input": t}, CALL_IDS, TEXTS),
        st.builds(lambda i, o: {"type": "custom_tool_call_output", "call_id": i, "output": o},
                  CALL_IDS, OUTPUTS),
        st.builds(lambda b, s: {"type": "reasoning", "encrypted_content": b,
                                "summary": [{"type": "summary_text", "text": s}]},
                  reasoning_blobs(model), TEXTS),
    )


@EXAMPLES
@given(model_and_input=st.one_of(*(
           st.tuples(st.just(m), TEXTS | st.lists(response_items(m), min_size=1, max_size=8))
           for m in (MODEL, PREFILL_MODEL))),
       effort=EFFORTS, adaptive=st.booleans(), instructions=st.none() | TEXTS,
       max_output_tokens=st.none() | st.sampled_from([1, 2000, 4096]))
def test_any_responses_input_translates_to_a_request_the_api_accepts(
    model_and_input: tuple[str, Any], effort: str | None, adaptive: bool,
    instructions: str | None, max_output_tokens: int | None,
) -> None:
    model, input_ = model_and_input
    body: dict[str, Any] = {"model": model, "input": input_, "instructions": instructions,
                            "reasoning": {"effort": effort}, "max_output_tokens": max_output_tokens}
    try:
        request, _ = responses_request_to_anthropic(body, adaptive_thinking=adaptive)
    except InvalidRequest as exc:
        assert exc.param == "input"  # only an input with nothing left to send
        return
    accepted(request)

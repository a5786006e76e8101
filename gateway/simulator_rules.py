"""What the real Messages API refuses before a request runs, as pure checks on a parsed body.

The simulator answers with these verdicts; the wording follows the real API's messages where
they are known, otherwise it names the exact field path (``messages.2.content.0.text``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

from gateway.catalog import Catalog, ModelInfo, load_catalog

# Used where the catalog gives no output limit: the smallest limit of current models.
DEFAULT_MAX_OUTPUT_TOKENS = 64000
MIN_THINKING_BUDGET = 1024

_ROLES = ("user", "assistant")
# Block types the real API accepts in messages (client and server tools, newest included).
_BLOCK_TYPES = (
    "text", "image", "document", "search_result", "tool_use", "tool_result", "thinking",
    "redacted_thinking", "server_tool_use", "web_search_tool_result", "web_fetch_tool_result",
    "code_execution_tool_result", "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result", "tool_search_tool_result", "mcp_tool_use",
    "mcp_tool_result", "container_upload",
)
_TAGS = ", ".join(f"'{t}'" for t in _BLOCK_TYPES)
_THINKING_TYPES = ("enabled", "disabled", "adaptive")
_NOT_EMPTY = "text content blocks must be non-empty"
_NOT_BLANK = "text content blocks must contain non-whitespace text"


class Rejected(Exception):
    """A request the real API refuses: HTTP `status`, Anthropic `error_type`, `message`."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def _bad(message: str) -> Rejected:
    return Rejected(400, "invalid_request_error", message)


@functools.cache
def catalog() -> Catalog:
    """The models the simulator serves: the gateway's shipped catalog."""
    return load_catalog()


def max_output_tokens(info: ModelInfo) -> int:
    return info.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_number(value: Any) -> bool:
    return type(value) is int or (type(value) is float and math.isfinite(value))


def check_messages_request(req: dict[str, Any], *, counting: bool = False) -> None:
    """Raise `Rejected` unless the real API would run this `/v1/messages` body.

    `counting` checks a `/v1/messages/count_tokens` body (no `max_tokens`). Raises
    `Rejected(400, "invalid_request_error", ...)`, or `Rejected(404, "not_found_error", ...)`
    for a model the catalog does not list. Returns None when the body is accepted.
    """
    if not isinstance(req, dict):
        raise _bad("Input should be a valid dictionary")
    for field in ("model", "messages") if counting else ("model", "max_tokens", "messages"):
        if field not in req:
            raise _bad(f"{field}: Field required")
    model = req["model"]
    if not isinstance(model, str):
        raise _bad("model: Input should be a valid string")
    if not counting:
        _check_max_tokens(req["max_tokens"])
    _check_sampling(req)
    _check_system(req.get("system"))
    turns = _check_messages(req["messages"])
    thinking = req.get("thinking")
    _check_thinking(thinking, None if counting else req["max_tokens"])
    thinking_on = isinstance(thinking, dict) and thinking["type"] in ("enabled", "adaptive")
    if thinking_on:
        _check_thinking_compat(req)
    _check_thinking_blocks(turns, thinking_on)
    if not req.get("tools") and any(
            b["type"] in ("tool_use", "tool_result") for _, blocks in turns for _, _, b in blocks):
        raise _bad("Requests which include `tool_use` or `tool_result` blocks must define "
                   "tools.")
    info = catalog().by_id.get(model)
    if info is None:
        raise Rejected(404, "not_found_error", f"model: {model}")
    limit = max_output_tokens(info)
    if not counting and req["max_tokens"] > limit:
        raise _bad(f"max_tokens: {req['max_tokens']} > {limit}, which is the maximum allowed "
                   f"number of output tokens for {info.id}")


def _check_max_tokens(value: Any) -> None:
    if not _is_int(value):
        raise _bad("max_tokens: Input should be a valid integer")
    if value < 1:
        raise _bad("max_tokens: Input should be greater than or equal to 1")


def _check_sampling(req: Mapping[str, Any]) -> None:
    temperature = req.get("temperature")
    if temperature is not None:
        if not _is_number(temperature):
            raise _bad("temperature: Input should be a valid number")
        if temperature < 0:
            raise _bad("temperature: Input should be greater than or equal to 0")
        if temperature > 1:
            raise _bad("temperature: Input should be less than or equal to 1")
    top_p = req.get("top_p")
    if top_p is not None:
        if not _is_number(top_p) or not 0 <= top_p <= 1:
            raise _bad("top_p: Input should be a number between 0 and 1")
        # Every model the catalog serves is one of the newer models that refuse both.
        if temperature is not None:
            raise _bad("`temperature` and `top_p` cannot both be specified for this model. "
                       "Please use only one.")


def _check_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise _bad("system: Input should be a valid string or a valid list")
    for i, block in enumerate(system):
        where = f"system.{i}"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _bad(f"{where}.type: Input should be 'text'")
        text = block.get("text")
        if not isinstance(text, str):
            raise _bad(f"{where}.text: Field required")
        if not text:
            raise _bad(f"system: {_NOT_EMPTY}")
        if not text.strip():
            raise _bad(f"system: {_NOT_BLANK}")


def _check_thinking(thinking: Any, max_tokens: int | None) -> None:
    if thinking is None:
        return
    if not isinstance(thinking, dict) or thinking.get("type") not in _THINKING_TYPES:
        raise _bad("thinking: Input tag found using 'type' does not match any of the "
                   "expected tags: 'enabled', 'disabled', 'adaptive'")
    if thinking["type"] != "enabled":
        return
    budget = thinking.get("budget_tokens")
    if budget is None:
        raise _bad("thinking.enabled.budget_tokens: Field required")
    if not _is_int(budget):
        raise _bad("thinking.enabled.budget_tokens: Input should be a valid integer")
    if budget < MIN_THINKING_BUDGET:
        raise _bad("thinking.enabled.budget_tokens: Input should be greater than or equal "
                   f"to {MIN_THINKING_BUDGET}")
    if max_tokens is not None and budget >= max_tokens:
        raise _bad("`max_tokens` must be greater than `thinking.budget_tokens`. Please consult "
                   "our documentation at https://docs.claude.com/en/docs/build-with-claude/"
                   "extended-thinking#max-tokens-and-context-window-size")


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """The message's content as a block list; a string is one text block."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad(f"{where}.content: Input should be a valid string or a valid list")
    for j, block in enumerate(content):
        if not isinstance(block, dict):
            raise _bad(f"{where}.content.{j}: Input should be a valid dictionary")
        kind = block.get("type")
        if kind not in _BLOCK_TYPES:
            raise _bad(f"{where}.content.{j}: Input tag {kind!r} found using 'type' does not "
                       f"match any of the expected tags: {_TAGS}")
    return content


def _check_text(block: Mapping[str, Any], where: str) -> None:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{where}.text: Input should be a valid string")
    if not text:
        raise _bad(f"messages: {_NOT_EMPTY}")
    if not text.strip():
        raise _bad(f"messages: {_NOT_BLANK}")


def _check_tool_use(block: Mapping[str, Any], where: str) -> None:
    for field in ("id", "name"):
        if not isinstance(block.get(field), str):
            raise _bad(f"{where}.{field}: Input should be a valid string")
    if not isinstance(block.get("input"), dict):
        raise _bad(f"{where}.input: Input should be a valid dictionary")


def _check_tool_result(block: Mapping[str, Any], where: str) -> None:
    if not isinstance(block.get("tool_use_id"), str):
        raise _bad(f"{where}.tool_use_id: Field required")
    inner = block.get("content")
    if isinstance(inner, list):
        for k, part in enumerate(inner):
            if isinstance(part, dict) and part.get("type") == "text":
                _check_text(part, f"{where}.content.{k}")


_Turns = list[tuple[str, list[tuple[int, int, dict[str, Any]]]]]


def _check_system_message(message: Mapping[str, Any], where: str) -> None:
    content = message.get("content")
    if isinstance(content, str):
        if not content.strip():
            raise _bad(f"{where}.content: {_NOT_BLANK}")
        return
    if not isinstance(content, list) or not content:
        raise _bad(f"{where}.content: Input should be a valid string or a list of text blocks")
    for j, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _bad(f"{where}.content.{j}.type: Input should be 'text'")
        _check_text(block, f"{where}.content.{j}")


def _check_messages(messages: Any) -> _Turns:
    """Checks each message and the tool pairing; returns the turns (runs of one role, which
    the API merges) as (role, [(message index, block index, block)])."""
    if not isinstance(messages, list):
        raise _bad("messages: Input should be a valid list")
    if not messages:
        raise _bad("messages: at least one message is required")
    last = len(messages) - 1
    # Turns: runs of same-role messages, which the API merges into one turn.
    turns: _Turns = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise _bad(f"{where}: Input should be a valid dictionary")
        role = message.get("role")
        if role == "system":
            # Mid-conversation system messages (the SDK's SystemMessageParam: text only, as
            # Claude Code sends after a user turn); they take no part in the turn order.
            _check_system_message(message, where)
            continue
        if role not in _ROLES:
            raise _bad(f"{where}.role: Input should be 'user', 'assistant' or 'system'")
        if "content" not in message:
            raise _bad(f"{where}.content: Field required")
        content = message["content"]
        final_prefill = i == last and role == "assistant"
        if content in ("", []) and not final_prefill:
            raise _bad(f"{where}: all messages must have non-empty content except for the "
                       "optional final assistant message")
        blocks = [] if content == "" else _blocks(content, where)
        for j, block in enumerate(blocks):
            if block["type"] == "text":
                _check_text(block, f"{where}.content.{j}")
            elif block["type"] == "tool_result":
                _check_tool_result(block, f"{where}.content.{j}")
            elif block["type"] == "tool_use":
                _check_tool_use(block, f"{where}.content.{j}")
        if final_prefill and blocks:
            tail = blocks[-1]
            if tail["type"] == "text" and tail["text"] != tail["text"].rstrip():
                raise _bad("messages: final assistant content cannot end with trailing "
                           "whitespace")
        if turns and turns[-1][0] == role:
            turns[-1][1].extend((i, j, b) for j, b in enumerate(blocks))
        else:
            turns.append((role, [(i, j, b) for j, b in enumerate(blocks)]))
    if not turns:
        raise _bad("messages: at least one user or assistant message is required")
    _check_tool_pairs(turns)
    return turns


def _check_tool_pairs(turns: _Turns) -> None:
    """Each assistant `tool_use` is answered by a `tool_result` that opens the next user turn,
    and each `tool_result` answers a `tool_use` of the assistant turn just before it."""
    for t, (role, blocks) in enumerate(turns):
        if role == "user":
            previous = turns[t - 1][1] if t > 0 else []
            offered = {b.get("id") for _, _, b in previous if b["type"] == "tool_use"}
            for i, j, block in blocks:
                if block["type"] == "tool_result" and block["tool_use_id"] not in offered:
                    raise _bad(f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                               f"`tool_result` blocks: {block['tool_use_id']}. Each "
                               "`tool_result` block must have a corresponding `tool_use` "
                               "block in the previous message.")
            continue
        uses = [(i, b.get("id")) for i, _, b in blocks if b["type"] == "tool_use"]
        if not uses:
            continue
        answered: set[Any] = set()
        if t + 1 < len(turns):
            for _, _, block in turns[t + 1][1]:
                if block["type"] != "tool_result":
                    break  # tool results must come first in the answering turn
                answered.add(block["tool_use_id"])
        missing = [str(use_id) for _, use_id in uses if use_id not in answered]
        if missing:
            index = max(i for i, _ in uses)
            raise _bad(f"messages.{index}: `tool_use` ids were found without `tool_result` "
                       f"blocks immediately after: {', '.join(missing)}. Each `tool_use` "
                       "block must have a corresponding `tool_result` block in the next "
                       "message.")


_THINKING_DOCS = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
_THOUGHT = ("thinking", "redacted_thinking")


def _check_thinking_compat(req: Mapping[str, Any]) -> None:
    """What thinking cannot be combined with: sampling changes and forced tool use."""
    considerations = f"Please consult our documentation at {_THINKING_DOCS}" \
        "#important-considerations-when-using-extended-thinking"
    temperature = req.get("temperature")
    if temperature is not None and temperature != 1:
        raise _bad(f"`temperature` may only be set to 1 when thinking is enabled. {considerations}")
    top_p = req.get("top_p")
    if top_p is not None and top_p < 0.95:
        raise _bad("`top_p` must be greater than or equal to 0.95 or unset when thinking is "
                   f"enabled. {considerations}")
    if req.get("top_k") is not None:
        raise _bad(f"`top_k` must be unset when thinking is enabled. {considerations}")
    choice = req.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise _bad("Thinking may not be enabled when tool_choice forces tool use.")


def _check_thinking_blocks(turns: _Turns, thinking_on: bool) -> None:
    """Where thinking blocks must, and must not, stand in the history."""
    first_of: dict[int, dict[str, Any]] = {}
    for role, blocks in turns:
        if role != "assistant":
            continue
        for i, _, block in blocks:
            first_of.setdefault(i, block)
            if block["type"] in _THOUGHT and first_of[i]["type"] not in _THOUGHT:
                raise _bad(f"messages.{i}.content.0: If an assistant message contains any "
                           "thinking blocks, the first block must be thinking or "
                           f"redacted_thinking. Found {first_of[i]['type']}.")
        if blocks and blocks[-1][2]["type"] in _THOUGHT:
            raise _bad(f"messages.{blocks[-1][0]}: The final block in an assistant message "
                       "cannot be `thinking`.")
    role, blocks = turns[-1]
    if role == "assistant" and not thinking_on:
        for i, j, block in blocks:
            if block["type"] in _THOUGHT:
                raise _bad(f"messages.{i}.content.{j}: When thinking is disabled, an "
                           "`assistant` message in the final position cannot contain "
                           "`thinking`. To use thinking blocks, enable `thinking` in your "
                           "request.")
    # Mid tool loop (the last user turn opens with tool results), the assistant turn that
    # asked for the tools must open with its thinking.
    if not thinking_on or role != "user" or len(turns) < 2:
        return
    if not blocks or blocks[0][2]["type"] != "tool_result":
        return
    i, _, first = turns[-2][1][0]
    if first["type"] not in _THOUGHT:
        raise _bad(f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, "
                   f"but found `{first['type']}`. When `thinking` is enabled, a final "
                   "`assistant` message must start with a thinking block (preceeding the "
                   "lastmost set of `tool_use` and `tool_result` blocks). We recommend you "
                   "include thinking blocks from previous turns. To avoid this requirement, "
                   f"disable `thinking`. Please consult our documentation at {_THINKING_DOCS}")

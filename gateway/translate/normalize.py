"""The last step of every OpenAI → Anthropic translation: one pass that turns a rough message
list into one the Messages API accepts (protocol G, F.4.1)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.translate.common import Block

Message = dict[str, Any]

NO_RESULT = "No output recorded."
_THINKING = ("thinking", "redacted_thinking")


def is_blank(text: str) -> bool:
    """True for text the API refuses as a text block: empty or whitespace only."""
    return not text or text.isspace()


def drop_blank_text(blocks: Iterable[Block]) -> list[Block]:
    """``blocks`` without text blocks whose text is blank (other block types kept as they are)."""
    return [b for b in blocks if b.get("type") != "text" or not is_blank(b.get("text") or "")]


def normalize_messages(messages: list[Message], *, prefill: bool = True) -> list[Message]:
    """A rough Anthropic message list → one the Messages API accepts.

    In: ``[{"role": "user" | "assistant", "content": [block, ...]}, ...]`` as the translators
    build it from a client's history: any role order, blank text, turns that end up empty,
    tool calls without outputs and outputs without calls. Out: the same shape (new lists and
    dicts; the input is not modified, blocks that need no change are shared), where

    - no text block is blank, neither in a turn nor inside a ``tool_result``; a result left
      without content loses its ``content`` key (the API rejects blank text anywhere);
    - no turn is empty and no two neighbours share a role: agents leave empty turns behind
      (``"\\n\\n"`` after a tool-only step), and dropping one makes its neighbours touch, so
      they are merged (what the API itself does with consecutive same-role turns);
    - every ``tool_use`` id is unique in the conversation: a repeated id (clients that number
      calls per turn) is renamed, and so is the output that answers it;
    - a user turn after an assistant turn with ``tool_use`` opens with exactly one
      ``tool_result`` per call, in call order: the first output for each call is kept, a
      missing one is filled with ``NO_RESULT``; outputs that answer no call of the previous
      assistant turn are dropped (the API refuses both orphans). A history that ends on tool
      calls gets a final user turn of filled results;
    - thinking blocks stand where the API takes them: an assistant turn that holds any opens
      with one, and none ends with one; misplaced ones (left by merging turns) and trailing
      ones are dropped, and a turn of nothing but thinking goes;
    - a final assistant turn (a prefill) holds no thinking (the API refuses it there unless
      thinking is on, and then the prefill would have to open with it) and ends in text
      without trailing whitespace: that whitespace is trimmed, and the turn dropped when
      nothing is left. With ``prefill=False`` (models that refuse any prefill) a final
      assistant turn is dropped.

    Merging comes before pairing, so the outputs after two call turns that only a blank turn
    separated answer the calls of both. Thinking and redacted_thinking blocks are never
    altered (their signature covers the exact text), only dropped. The result may be empty;
    callers decide whether that is an error.
    """
    turns = _merge(messages)
    turns = _merge(_pair_tool_results(turns))
    turns = _merge(map(_place_thinking, turns))
    if not prefill and turns and turns[-1]["role"] == "assistant":
        return turns[:-1]
    return _trim_prefill(turns)


def _clean(block: Block) -> Block | None:
    """The block as the API accepts it, or None when nothing of it may be sent."""
    kind = block.get("type")
    if kind == "text":
        return None if is_blank(block.get("text") or "") else block
    if kind == "tool_result" and "content" in block:
        content = block["content"]
        if isinstance(content, list):
            content = drop_blank_text(content) or None
        elif not isinstance(content, str) or is_blank(content):
            content = None
        if content is None:
            return {k: v for k, v in block.items() if k != "content"}
        if content is not block["content"]:
            return block | {"content": content}
    return block


def _merge(messages: Iterable[Message]) -> list[Message]:
    """Blank text and empty turns dropped, same-role neighbours merged."""
    out: list[Message] = []
    for message in messages:
        blocks = [b for b in map(_clean, message["content"]) if b is not None]
        if not blocks:
            continue
        if out and out[-1]["role"] == message["role"]:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": message["role"], "content": blocks})
    return out


def _pair_tool_results(turns: list[Message]) -> list[Message]:
    """Each assistant turn's calls answered at the start of the next user turn, strays dropped.

    Runs on merged turns, so "the next user turn" is the only place an answer can be. It may
    leave a user turn empty (it held only strays); the caller merges again.
    """
    seen: set[str] = set()
    out: list[Message] = []
    calls: list[tuple[str, str]] = []  # (id the client sent, id sent upstream) of the last turn
    for turn in turns:
        if turn["role"] == "assistant":
            if calls:
                out.append({"role": "user", "content": _answers(calls, [])})
            content, calls = _unique_calls(turn["content"], seen)
            out.append({"role": "assistant", "content": content})
        else:
            out.append({"role": "user", "content": _answers(calls, turn["content"])})
            calls = []
    if calls:
        out.append({"role": "user", "content": _answers(calls, [])})
    return out


def _unique_calls(blocks: list[Block], seen: set[str]) -> tuple[list[Block], list[tuple[str, str]]]:
    content: list[Block] = []
    calls: list[tuple[str, str]] = []
    for block in blocks:
        if block.get("type") == "tool_use":
            original = str(block.get("id") or "")
            unique, n = original, 1
            while unique in seen or not unique:
                n += 1
                unique = f"{original}_{n}"
            seen.add(unique)
            calls.append((original, unique))
            if unique != original:
                block = block | {"id": unique}
        content.append(block)
    return content, calls


def _answers(calls: list[tuple[str, str]], blocks: list[Block]) -> list[Block]:
    # Outputs claim calls in order, so two calls that shared an id get the two outputs sent.
    open_calls = list(calls)
    found: dict[str, Block] = {}
    for block in blocks:
        if block.get("type") != "tool_result":
            continue
        claimed = next((c for c in open_calls if c[0] == block.get("tool_use_id")), None)
        if claimed is not None:
            open_calls.remove(claimed)
            found[claimed[1]] = block | {"tool_use_id": claimed[1]}
    results = [found.get(unique) or {"type": "tool_result", "tool_use_id": unique,
                                     "content": NO_RESULT} for _, unique in calls]
    return results + [b for b in blocks if b.get("type") != "tool_result"]


def _place_thinking(turn: Message) -> Message:
    """An assistant turn with its thinking only where the API takes it (may leave it empty)."""
    content: list[Block] = turn["content"]
    if turn["role"] != "assistant" or not any(b.get("type") in _THINKING for b in content):
        return turn
    if content[0].get("type") not in _THINKING:
        content = [b for b in content if b.get("type") not in _THINKING]
    end = len(content)
    while end and content[end - 1].get("type") in _THINKING:
        end -= 1
    return {"role": "assistant", "content": content[:end]}


def _trim_prefill(turns: list[Message]) -> list[Message]:
    if not turns or turns[-1]["role"] != "assistant":
        return turns
    content = [b for b in turns[-1]["content"] if b.get("type") not in _THINKING]
    while content and content[-1].get("type") == "text":
        last = content[-1]
        text = last["text"].rstrip()
        if text:
            if text != last["text"]:
                content[-1] = last | {"text": text}
            break
        content.pop()
    if not content:
        return turns[:-1]
    return [*turns[:-1], {"role": "assistant", "content": content}]

"""The usage scanner reads the same usage however the stream is cut into chunks."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sse import (
    EventSplitter,
    UsageScanner,
    forwarded_tokens,
    usage_from_message,
    with_forwarded_output,
)


def event(name: str, payload: dict[str, object]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def realistic_stream(text_pieces: list[str], output_tokens: int) -> bytes:
    parts = [
        event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-4-6",
                    "content": [],
                    "usage": {
                        "input_tokens": 25,
                        "cache_creation_input_tokens": 7,
                        "cache_read_input_tokens": 1800,
                        "output_tokens": 1,
                    },
                },
            },
        ),
        event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        event("ping", {"type": "ping"}),
    ]
    for piece in text_pieces:
        parts.append(
            event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
        )
    parts += [
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": output_tokens // 2},
            },
        ),
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": output_tokens, "input_tokens": 26},
            },
        ),
        event("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(parts)


EXPECTED_BASE = {
    "input_tokens": 26,
    "cache_creation_input_tokens": 7,
    "cache_read_input_tokens": 1800,
}

# Text that tries to look like the events the scanner decodes.
tricky_text = st.lists(
    st.sampled_from(
        ["hi", "event: message_delta", "\\n\\ndata: {", "x" * 200, "é✓", "event: error"]
    )
    | st.text(max_size=30),
    max_size=12,
)


def scan(stream: bytes, cuts: list[int]) -> UsageScanner:
    scanner = UsageScanner()
    positions = sorted({c % (len(stream) + 1) for c in cuts})
    start = 0
    for pos in [*positions, len(stream)]:
        if pos > start:
            scanner.feed(stream[start:pos])
            start = pos
    return scanner


@settings(max_examples=300)
@given(pieces=tricky_text, output=st.integers(1, 100_000), cuts=st.lists(st.integers(0, 10**6)))
def test_usage_is_independent_of_chunking(pieces: list[str], output: int, cuts: list[int]) -> None:
    stream = realistic_stream(pieces, output)
    scanner = scan(stream, cuts)
    assert scanner.billed_usage() == {**EXPECTED_BASE, "output_tokens": output}
    assert scanner.model == "claude-sonnet-4-6"
    assert scanner.stop_reason == "end_turn"
    assert scanner.error is None


@settings(max_examples=200)
@given(pieces=tricky_text, cuts=st.lists(st.integers(0, 10**6)), keep=st.integers(0, 12))
def test_forwarded_content_is_counted_alike_whatever_the_chunking_and_never_short(
    pieces: list[str], cuts: list[int], keep: int
) -> None:
    """A stream cut after ``keep`` deltas: the content bytes counted cover what was sent."""
    cut = realistic_stream(pieces[:keep], 1).split(b"event: content_block_stop")[0]
    whole = UsageScanner()
    whole.feed(cut)
    chunked = scan(cut, cuts)
    assert chunked.content_bytes() == whole.content_bytes()
    assert chunked.deltas == len(pieces[:keep])
    sent = sum(len(p.encode()) for p in pieces[:keep])
    assert whole.content_bytes() >= sent
    billed = with_forwarded_output(whole.billed_usage(), False, whole.content_bytes(), None)
    assert billed["output_tokens"] >= max(1, forwarded_tokens(sent))


def test_a_final_output_count_is_billed_as_reported() -> None:
    assert with_forwarded_output({"output_tokens": 7}, True, 9_000, None) == {"output_tokens": 7}
    assert with_forwarded_output({"output_tokens": 1}, False, 9_000, 100) == {
        "output_tokens": 100  # never past max_tokens
    }


def test_byte_by_byte_feeding_matches_whole_stream() -> None:
    stream = realistic_stream(["Hello", " world"], 15)
    whole = UsageScanner()
    whole.feed(stream)
    one = scan(stream, list(range(len(stream))))
    assert one.billed_usage() == whole.billed_usage() == {**EXPECTED_BASE, "output_tokens": 15}


def test_mid_stream_error_is_captured_and_usage_falls_back_to_message_start() -> None:
    stream = realistic_stream(["a"], 5).split(b"event: content_block_stop")[0] + event(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    scanner = scan(stream, [3, 50, 51, 400])
    assert scanner.error == {"type": "overloaded_error", "message": "Overloaded"}
    assert scanner.billed_usage()["input_tokens"] == 25
    assert scanner.billed_usage()["cache_read_input_tokens"] == 1800


def test_crlf_line_endings_are_understood() -> None:
    stream = realistic_stream(["x"], 9).replace(b"\n", b"\r\n")
    assert scan(stream, [10, 99]).billed_usage()["output_tokens"] == 9


def test_non_stream_usage() -> None:
    body = orjson.dumps({"model": "m", "usage": {"input_tokens": 3, "output_tokens": 4}})
    assert usage_from_message(body) == ({"input_tokens": 3, "output_tokens": 4}, "m")
    assert usage_from_message(b"not json") == ({}, None)


@given(cuts=st.lists(st.integers(0, 10**6)))
def test_event_splitter_yields_every_event_once(cuts: list[int]) -> None:
    stream = realistic_stream(["a", "b"], 3)
    splitter = EventSplitter()
    events: list[tuple[str, bytes]] = []
    start = 0
    for pos in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
        if pos > start:
            events += splitter.feed(stream[start:pos])
            start = pos
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert names.count("content_block_delta") == 2
    assert all(orjson.loads(data)["type"] == name for name, data in events)


def observe(stream: bytes, cuts: list[int]) -> UsageScanner:
    """The translated routes' way: the same scanner fed the parsed events."""
    scanner, splitter = UsageScanner(), EventSplitter()
    positions = sorted({c % (len(stream) + 1) for c in cuts})
    start = 0
    for pos in [*positions, len(stream)]:
        if pos > start:
            for name, raw in splitter.feed(stream[start:pos]):
                scanner.observe(name, orjson.loads(raw))
            start = pos
    return scanner


@settings(max_examples=200)
@given(pieces=tricky_text, output=st.integers(1, 100_000), cuts=st.lists(st.integers(0, 10**6)))
def test_parsed_events_bill_as_the_scanned_bytes_do(
    pieces: list[str], output: int, cuts: list[int]
) -> None:
    stream = realistic_stream(pieces, output)
    scanned, observed = scan(stream, cuts), observe(stream, cuts)
    assert observed.billed_usage() == scanned.billed_usage()
    assert observed.usage_now(None) == scanned.usage_now(None)
    assert (observed.stop_reason, observed.model) == (scanned.stop_reason, scanned.model)
    assert observed.ended and scanned.ended and observed.final


@settings(max_examples=100)
@given(pieces=tricky_text, keep=st.integers(0, 12))
def test_parsed_events_of_a_cut_stream_count_exactly_the_content_sent(
    pieces: list[str], keep: int
) -> None:
    cut = realistic_stream(pieces[:keep], 1).split(b"event: content_block_stop")[0]
    observed, scanned = observe(cut, []), scan(cut, [])
    sent = sum(len(p.encode()) for p in pieces[:keep])
    assert observed.content_bytes() == sent <= scanned.content_bytes()
    assert not observed.ended and not observed.final
    assert observed.usage_now(None)["output_tokens"] == max(1, forwarded_tokens(sent))


@given(cuts=st.lists(st.integers(0, 10**6)))
def test_an_upstream_error_events_bytes_are_not_counted_as_content(cuts: list[int]) -> None:
    cut = realistic_stream(["some text", "more"], 1).split(b"event: content_block_stop")[0]
    error = event("error", {"type": "error", "error": {"type": "overloaded_error",
                                                       "message": "Overloaded " * 40}})  # fmt: skip
    alone = scan(cut, [])
    assert scan(cut + error, cuts).content_bytes() == alone.content_bytes()


@given(cuts=st.lists(st.integers(0, 10**6)), keep=st.integers(1, 6))
def test_delta_event_lines_are_framing_not_content(cuts: list[int], keep: int) -> None:
    """Plain text deltas are counted to the byte; a delta's text that spells an event line
    is still counted in full (JSON escapes its newlines)."""
    pieces = ["plain words here", "\nevent: content_block_delta\n", "more words"] * 2
    cut = realistic_stream(pieces[:keep], 1).split(b"event: content_block_stop")[0]
    sent = sum(len(orjson.dumps(p)) - 2 for p in pieces[:keep])  # as escaped on the wire
    assert scan(cut, cuts).content_bytes() == sent

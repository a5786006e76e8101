"""Each script's replies, three ways in step: its header's RETURNS, the parser's table
(``limits.REPLIES``) and what the script really sends back from a real Valkey."""

from __future__ import annotations

import re
import uuid
from importlib import resources

import pytest

from gateway import errors
from gateway.limits import REPLIES, CreditLimiter, Shape, parse_reply
from gateway.store import SCRIPT_NAMES, Client, Scripts
from tests.lua.conftest import FakeClock, make_account


def documented(script: str) -> set[tuple[str | None, int, tuple[str | None, ...]]]:
    """The header's reply shapes: (outcome tag or None, value count, value names), a quoted
    value (``"5h"|"7d"``) standing as None for any name."""
    text = resources.files("ratelimit_lua").joinpath(f"{script}.lua").read_text("utf-8")
    section = text[text.index("RETURNS") : text.index("]]")]
    section = re.sub(r"\([^()]*\)", "", section)  # "(0|1)", "(including the new one)" ...
    shapes = set()
    for group in re.findall(r"\{([^{}]*)\}", section):
        items = [item.strip() for item in group.split(",")]
        head, rest = items[0], items[1:]
        names = tuple(None if item.startswith('"') else item for item in rest)
        if head.startswith('"'):
            for outcome in re.findall(r'"([^"]+)"', head):
                shapes.add((outcome, len(rest), names))
        else:
            shapes.add((None, len(items), (head, *names)))
    return shapes


def declared(shape: Shape) -> tuple[str | None, int, tuple[str, ...]]:
    return shape.outcome, len(shape.fields), shape.fields


@pytest.mark.parametrize("script", SCRIPT_NAMES)
def test_the_parser_table_matches_each_scripts_header(script: str) -> None:
    header = documented(script)
    assert header, f"{script}.lua documents no reply"
    table = {declared(shape) for shape in REPLIES[script]}
    # Same outcomes with the same number of values ...
    assert {(o, n) for o, n, _ in header} == {(o, n) for o, n, _ in table}
    # ... and the same names wherever the header names a value.
    for outcome, count, names in header:
        fields = next(f for o, n, f in table if (o, n) == (outcome, count))
        assert all(doc is None or doc == field for doc, field in zip(names, fields, strict=True))


def test_an_undocumented_reply_is_refused() -> None:
    with pytest.raises(RuntimeError, match="undocumented"):
        parse_reply("admit", [b"ok", 1])
    with pytest.raises(RuntimeError, match="undocumented"):
        parse_reply("usage", [1, 2, 3])


async def test_each_script_replies_in_a_documented_shape(
    async_valkey: Client, scripts: Scripts, clock: FakeClock, account_id: str
) -> None:
    limiter = CreditLimiter(async_valkey, scripts, clock)
    await make_account(async_valkey, account_id)
    checked = await limiter.admit(
        account_id=account_id, key_id="k1", ip_tag="ip-a", request_id="r0", estimate_mc=0,
        check_only=True,
    )  # fmt: skip
    assert checked.check_only
    admitted = await limiter.admit(
        account_id=account_id, key_id="k1", ip_tag="ip-a", request_id="r1", estimate_mc=500
    )
    assert admitted.reserved_mc == 500
    with pytest.raises(errors.AuthenticationFailed):
        await limiter.admit(
            account_id=account_id, key_id="nope", ip_tag="ip-a", request_id="r2", estimate_mc=1
        )
    assert await limiter.settle(
        account_id=account_id, key_id="k1", request_id="r1", cost_mc=400, record={}
    )
    usage = await limiter.usage(account_id)
    assert usage.five_hour.used_mc == 400
    assert not await limiter.record_key_failure(account_id=account_id, key_id="k1", ip_tag="x")
    other = uuid.uuid4().hex[:16]
    await make_account(async_valkey, other, status="cancelled")
    with pytest.raises(errors.PermissionDenied):
        await limiter.admit(
            account_id=other, key_id="k1", ip_tag="ip-a", request_id="r3", estimate_mc=1
        )

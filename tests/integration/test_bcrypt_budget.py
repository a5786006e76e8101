"""The bcrypt work wrong secrets may cost, on the real two-worker server: bounded per key id
and per address by each worker's budgets (counted by ``antex_auth_bcrypt``, the metric the
operator sees), while the owner's bound address and valid keys keep working."""

from __future__ import annotations

import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.conftest import Customer, Stack, new_customer
from tests.integration.ops_helpers import client_from, send
from tests.integration.test_key_security import forget_cached_key

WORKERS = 2
# The Authenticator's defaults: per key id (unbound addresses) and per address.
KEY_BURST, KEY_RATE = 5, 0.5
ADDRESS_BURST, ADDRESS_RATE = 10, 4.0


def counters(stack: Stack) -> dict[str, float]:
    """antex_auth_bcrypt_total by result and antex_auth_bcrypt_refused_total by budget,
    summed over both workers."""
    text = httpx.get(f"{stack.url}/metrics").text
    found: dict[str, float] = {}
    for name, label, value in re.findall(
        r'^antex_auth_bcrypt(?:_refused)?_total\{(\w+)="(\w+)"\} (\S+)$', text, re.M
    ):
        found[f"{name}:{label}"] = float(value)
    return found


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def wrong_secret(key: str) -> str:
    return f"{key.rsplit('_', 1)[0]}_{secrets.token_hex(20)}"


def attack(stack: Stack, key: str, address: str) -> int:
    with client_from(address) as client:
        return client.post(
            f"{stack.url}/v1/messages", content=b"{}", headers={"x-api-key": wrong_secret(key)}
        ).status_code


@pytest.mark.parametrize("sources", [1, 200])
async def test_wrong_secrets_for_one_key_id_cost_a_bounded_number_of_bcrypts(
    stack: Stack, sources: int
) -> None:
    owner = await new_customer(stack.valkey_url)
    owner_ip = f"127.0.6.{sources}"
    assert send(stack, owner.key, owner_ip).status_code == 200  # binds the owner's address
    await forget_cached_key(stack.valkey_url, owner.key_id)
    addresses = [f"127.0.{4 + sources // 200}.{1 + n % sources}" for n in range(200)]
    before = counters(stack)
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda ip: attack(stack, owner.key, ip), addresses))
    took = time.monotonic() - started
    after = counters(stack)
    assert set(statuses) == {401}
    hashed = delta(before, after, "result:mismatch")
    refused = delta(before, after, "budget:key") + delta(before, after, "budget:address")
    bound = WORKERS * (KEY_BURST + KEY_RATE * took)
    print(
        f"\n200 wrong secrets from {sources} address(es) in {took:.2f} s: "
        f"{hashed:.0f} bcrypt runs (bound {bound:.1f}), {refused:.0f} refused unhashed"
    )
    assert 0 < hashed <= bound
    assert hashed + refused >= 200 - 2  # the rest never reached bcrypt (two may be replays)
    # The owner's bound address still gets its (uncached) secret checked.
    assert send(stack, owner.key, owner_ip).status_code == 200


async def test_wrong_secrets_from_one_address_over_many_keys_cost_a_bounded_number(
    stack: Stack,
) -> None:
    victims: list[Customer] = [await new_customer(stack.valkey_url) for _ in range(30)]
    neighbour = await new_customer(stack.valkey_url)
    address = "127.0.6.250"
    before = counters(stack)
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda v: attack(stack, v.key, address), victims * 4))
    took = time.monotonic() - started
    after = counters(stack)
    assert set(statuses) == {401}
    hashed = delta(before, after, "result:mismatch")
    bound = WORKERS * (ADDRESS_BURST + ADDRESS_RATE * took)
    print(
        f"\n120 wrong secrets for 30 key ids from one address in {took:.2f} s: "
        f"{hashed:.0f} bcrypt runs (bound {bound:.1f})"
    )
    # Under load the bound grows with the time taken; the budget still refused some unhashed.
    assert 0 < hashed <= bound and hashed < len(statuses)
    assert delta(before, after, "budget:address") > 0
    # A valid key new to that address is still verified (it waits for a token at most).
    assert send(stack, neighbour.key, address).status_code == 200

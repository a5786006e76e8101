"""The simulator as several upstream keys: own limits, own prompt cache, faults per key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.simulator_cache import TTL_S, PromptCache
from tests.unit.test_simulator import _start

SYSTEM = "You are a careful coding agent. " * 40


def turns(n: int) -> dict[str, object]:
    messages: list[dict[str, object]] = [{"role": "user", "content": "start the task " * 20}]
    for i in range(n - 1):
        messages += [{"role": "assistant", "content": f"step {i} done " * 30},
                     {"role": "user", "content": f"continue {i} " * 10}]  # fmt: skip
    return {"model": "claude-sonnet-4-6", "max_tokens": 64, "system": SYSTEM,
            "messages": messages}  # fmt: skip


def test_a_prefix_is_read_from_the_same_keys_cache_only_within_its_lifetime() -> None:
    cache = PromptCache()
    read, write = cache.usage("k1", turns(1), 0.0)
    assert read == 0 and write > 0  # the system prompt is written
    read2, write2 = cache.usage("k1", turns(2), 1.0)
    assert read2 == write  # the system prompt is read back, the new turns written
    read3, _ = cache.usage("k1", turns(3), 2.0)
    assert read3 == read2 + write2
    assert cache.usage("k2", turns(3), 3.0)[0] == 0  # another key: another organization
    assert cache.usage("k1", turns(4), 2.0 + TTL_S + 1)[0] == 0  # expired


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    keys = tmp_path_factory.mktemp("sim") / "keys.json"
    keys.write_bytes(orjson.dumps({"sk-a": {"rpm": 3}, "sk-b": {}}))
    yield from _start("--keys", str(keys), "--prompt-cache")


def post(base: str, key: str, body: dict[str, object] | None = None) -> httpx.Response:
    return httpx.post(f"{base}/v1/messages", json=body or turns(2), timeout=10,
                      headers={"x-api-key": key, "anthropic-version": "2023-06-01"})  # fmt: skip


def test_each_key_has_its_own_limits_headers_and_cache(sim: str, tmp_path: Path) -> None:
    httpx.post(f"{sim}/_sim/reset")
    assert post(sim, "sk-unknown").status_code == 401
    first, second = post(sim, "sk-a"), post(sim, "sk-a")
    assert first.headers["anthropic-ratelimit-requests-limit"] == "3"
    assert second.json()["usage"]["cache_read_input_tokens"] > 0
    assert post(sim, "sk-b").json()["usage"]["cache_read_input_tokens"] == 0
    post(sim, "sk-a")
    refused = post(sim, "sk-a")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert post(sim, "sk-b").status_code == 200
    view = httpx.get(f"{sim}/_sim/keys").json()
    assert view["sk-a"]["requests"] == 3 and view["sk-a"]["refused"] == 1
    total = second.json()["usage"]
    assert view["sk-a"]["cache_read_input_tokens"] >= total["cache_read_input_tokens"]


def test_faults_switch_per_key_at_run_time(sim: str) -> None:
    control = f"{sim}/_sim/keys"
    assert httpx.post(control, json={"key": "sk-b", "fault": "revoked"}).status_code == 200
    assert post(sim, "sk-b").status_code == 401
    httpx.post(control, json={"key": "sk-b", "fault": "overloaded"})
    overloaded = post(sim, "sk-b")
    assert overloaded.status_code == 529
    assert overloaded.json()["error"]["type"] == "overloaded_error"
    httpx.post(control, json={"key": "sk-b", "fault": "stall"})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{sim}/v1/messages", json=turns(1), timeout=0.5,
                   headers={"x-api-key": "sk-b"})  # fmt: skip
    httpx.post(control, json={"key": "sk-b", "fault": None, "rpm": 1000})
    assert post(sim, "sk-b").status_code == 200
    assert httpx.post(control, json={"key": "sk-b", "fault": "melted"}).status_code == 400

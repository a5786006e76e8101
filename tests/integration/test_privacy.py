"""Prompts and keys live in RAM only: a canary is found in no log, Valkey file or data dir."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import orjson
import valkey

from gateway.embedded_valkey import EmbeddedValkey
from tests.integration.conftest import Customer, Stack
from tests.integration.ops_helpers import Admin, cli, send


def files_containing(roots: list[Path], needles: list[bytes]) -> list[str]:
    hits = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                hits += [f"{path}: {n[:12]!r}" for n in needles if n in data]
    return hits


def send_canaries(stack: Stack, customer: Customer, canary: str) -> None:
    prompt = {"role": "user", "content": f"secret plans {canary}"}
    good = {"model": "claude-sonnet-4-6", "max_tokens": 20, "messages": [prompt]}
    headers = {"x-api-key": customer.key}
    bodies: list[tuple[bytes, dict[str, str]]] = [
        (orjson.dumps(good), {}),
        (orjson.dumps({**good, "stream": True}), {}),
        (orjson.dumps({**good, "stream": True}), {"x-sim-fault": "error-mid-stream"}),
        (orjson.dumps(good), {"x-sim-fault": "500"}),
        (orjson.dumps({**good, "max_tokens": 10**6}), {}),
        (orjson.dumps({**good, "model": f"model-{canary}"}), {}),
        (f"{{broken json {canary}".encode(), {}),
    ]
    for body, extra in bodies:
        httpx.post(
            f"{stack.url}/v1/messages", content=body, headers={**headers, **extra}, timeout=30
        )
    httpx.post(
        f"{stack.url}/v1/messages/count_tokens",
        content=orjson.dumps({"model": "claude-sonnet-4-6", "messages": [prompt]}),
        headers=headers,
    )
    # A wrong key that carries the canary must not be logged either.
    httpx.post(
        f"{stack.url}/v1/messages", content=b"{}", headers={"x-api-key": f"sk_live_{canary}"}
    )


def test_canary_prompt_and_key_are_nowhere_on_disk(
    stack: Stack, customer: Customer, valkey_server: EmbeddedValkey, logs_dir: Path
) -> None:
    canary = f"CANARY{uuid.uuid4().hex}"
    send_canaries(stack, customer, canary)
    client = valkey.Valkey.from_url(stack.valkey_url)
    client.save()
    client.bgrewriteaof()
    client.close()
    secret = customer.key.rsplit("_", 1)[1]
    needles = [canary.encode(), customer.key.encode(), secret.encode()]
    hits = files_containing([logs_dir, stack.data_dir, valkey_server.data_dir], needles)
    assert hits == []
    # And nothing in Valkey's memory either: scan every value as text.
    client = valkey.Valkey.from_url(stack.valkey_url)
    for name in client.scan_iter(count=1000):
        dump = client.dump(name) or b""
        assert canary.encode() not in dump and secret.encode() not in dump, name
    client.close()


def test_operator_surfaces_never_show_a_key_or_token_again(
    stack: Stack, valkey_server: EmbeddedValkey, logs_dir: Path
) -> None:
    email = f"priv-{uuid.uuid4().hex[:8]}@example.test"
    assert cli(stack, "account", "create", email).code == 0
    cli_key = cli(stack, "key", "create", email).out.strip()
    token = cli(stack, "admin-token", "create").out.strip()
    admin = Admin(stack, token)
    api_key = admin.post(f"/admin/accounts/{email}/keys", {"name": "api"}, status=201)["key"]
    for key in (cli_key, api_key):
        assert send(stack, key).status_code == 200
    key_id = cli_key.split("_")[2]
    outputs = [
        cli(stack, *args).out
        for base in (
            ("key", "list", email), ("account", "show", email), ("account", "list"),
            ("ip", "list", key_id), ("quarantine", "list", "--account", email),
            ("usage", email), ("admin-token", "list"),
        )
        for args in (base, (*base, "--json"))
    ]  # fmt: skip
    paths = ("", "/keys", "/usage", "/events")
    outputs += [orjson.dumps(admin.get(f"/admin/accounts/{email}{p}")).decode() for p in paths]
    for path in (f"/admin/keys/{key_id}", f"/admin/keys/{key_id}/ips", "/admin/quarantine"):
        outputs.append(orjson.dumps(admin.get(path)).decode())
    admin.close()
    secrets = [k.rsplit("_", 1)[1] for k in (cli_key, api_key)] + [token]
    assert [s[:8] for s in secrets if any(s in out for out in outputs)] == []
    client = valkey.Valkey.from_url(stack.valkey_url)
    client.save()
    for name in client.scan_iter(count=1000):
        dump = client.dump(name) or b""
        assert not any(s.encode() in dump for s in secrets), name
    client.close()
    needles = [s.encode() for s in secrets]
    assert files_containing([logs_dir, stack.data_dir, valkey_server.data_dir], needles) == []

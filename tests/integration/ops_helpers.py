"""Helpers for the operator-surface tests: the real CLI as a subprocess, the admin API over
HTTP, clients bound to chosen loopback source addresses, and the server's clock."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import valkey.asyncio as avalkey
from openapi_schema_validator import OAS31Validator

from gateway import admin_tokens, openapi
from tests.integration.conftest import ROOT, Stack

MESSAGE = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hello"}],
}


def client_from(ip: str) -> httpx.Client:
    """A client whose connections come from ``ip`` (any 127.x.y.z works on Linux)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=ip), timeout=30)


def send(stack: Stack, key: str, ip: str = "127.0.0.1", **headers: str) -> httpx.Response:
    with client_from(ip) as client:
        return client.post(
            f"{stack.url}/v1/messages",
            content=orjson.dumps(MESSAGE),
            headers={"x-api-key": key, "content-type": "application/json", **headers},
        )


def error_type(response: httpx.Response) -> str:
    return str(response.json()["error"]["type"])


def server_now(stack: Stack) -> int:
    """The gateway's clock: wall time plus the offset the tests moved it by."""
    return time.time_ns() // 1_000_000 + int(stack.clock_file.read_text() or 0)


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return orjson.loads(self.out)


def cli(stack: Stack, *args: str, stdin: str | None = None) -> CliResult:
    """``python -m gateway ARGS`` against the stack's Valkey, clock and data dir (where the
    master key that seals upstream keys lives)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTEX_")}
    env.update(
        ANTEX_VALKEY_URL=stack.valkey_url,
        ANTEX_CLOCK_FILE=str(stack.clock_file),
        ANTEX_DATA_DIR=str(stack.data_dir),
        ANTEX_BCRYPT_ROUNDS="4",
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        input=stdin,
    )  # fmt: skip
    return CliResult(done.returncode, done.stdout, done.stderr)


async def operator_token(valkey_url: str, name: str = "tests") -> str:
    client = avalkey.Valkey.from_url(valkey_url, decode_responses=True)
    try:
        return (await admin_tokens.create_token(client, name, now_ms=time.time_ns() // 10**6))[1]
    finally:
        await client.aclose()


DOCUMENT = openapi.document()


def documented_schema(method: str, path: str, status: int) -> dict[str, Any]:
    """The schema openapi.py promises for this answer (path may carry a query)."""
    bare = path.split("?", 1)[0]
    for template, item in DOCUMENT["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), bare):
            answer = item[method.lower()]["responses"][str(status)]
            if "$ref" in answer:
                answer = DOCUMENT["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
            return dict(answer["content"]["application/json"]["schema"])
    raise AssertionError(f"{method} {path} is not documented")


def check_documented(method: str, path: str, status: int, body: Any) -> None:
    schema = documented_schema(method, path, status)
    OAS31Validator({**schema, "components": DOCUMENT["components"]}).validate(body)


class Admin:
    """The admin API with one operator token; every call asserts the expected status and
    that the body matches what the OpenAPI document says about it."""

    def __init__(self, stack: Stack, token: str) -> None:
        self.http = httpx.Client(
            base_url=stack.url, headers={"authorization": f"Bearer {token}"}, timeout=30
        )

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        content = None if body is None else orjson.dumps(body)
        response = self.http.request(method, path, content=content)
        assert response.status_code == status, (method, path, response.text)
        check_documented(method, path, status, response.json())
        return response.json()

    def get(self, path: str, status: int = 200) -> Any:
        return self.call("GET", path, status=status)

    def post(self, path: str, body: Any = None, status: int = 200) -> Any:
        return self.call("POST", path, body, status)

    def put(self, path: str, body: Any, status: int = 200) -> Any:
        return self.call("PUT", path, body, status)

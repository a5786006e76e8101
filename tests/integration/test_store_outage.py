"""A stopped Valkey over a real two-worker server: every surface answers 503 in its own
shape (Anthropic JSON, OpenAI JSON, the admin API's JSON, the dashboard's and console's
HTML pages), never blacksheep's text/plain 500."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest

from gateway.embedded_valkey import EmbeddedValkey, free_port
from tests.integration.conftest import Customer, gateway_env, new_customer, run_gateway
from tests.integration.ops_helpers import MESSAGE


@dataclass
class Down:
    url: str
    customer: Customer


@pytest.fixture(scope="module")
def down(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Down]:
    """A gateway whose valkey-server is stopped after its workers have served the customer."""
    import asyncio

    server = EmbeddedValkey(tmp_path_factory.mktemp("outage-valkey"), unix_socket=False)
    server.start()
    data_dir = tmp_path_factory.mktemp("outage-gateway")
    port = free_port()
    env = gateway_env(server.url, simulator, data_dir, port)
    try:
        customer = asyncio.run(new_customer(server.url))
        with run_gateway(env, port, data_dir / "gateway.log") as url:
            # Each worker caches the key, so the outage meets the calls after auth too.
            for _ in range(8):
                with httpx.Client(base_url=url, timeout=10) as client:
                    answer = client.get("/v1/usage", headers={"x-api-key": customer.key})
                    assert answer.status_code == 200
            server.stop()
            yield Down(url, customer)
    finally:
        server.stop()


def assert_json_503(answer: httpx.Response) -> dict[str, object]:
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.headers["request-id"].startswith("req_")
    body = orjson.loads(answer.content)
    assert isinstance(body, dict)
    return body


def test_public_api_routes_answer_503_in_their_wire_shape(down: Down) -> None:
    headers = {"x-api-key": down.customer.key, "content-type": "application/json"}
    with httpx.Client(base_url=down.url, timeout=10) as client:
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            body = assert_json_503(
                client.post(path, content=orjson.dumps(MESSAGE), headers=headers)
            )
            assert body["type"] == "error"
            assert body["error"] == {
                "type": "api_error",
                "message": "The gateway's usage store is unreachable; retry shortly.",
            }
        for path in ("/v1/usage", "/api/oauth/usage"):
            body = assert_json_503(client.get(path, headers=headers))
            assert body["type"] == "error"
        chat = {"model": MESSAGE["model"], "messages": MESSAGE["messages"]}
        body = assert_json_503(
            client.post("/v1/chat/completions", content=orjson.dumps(chat), headers=headers)
        )
        assert body["error"]["type"] == "server_error"  # type: ignore[index]


def test_admin_api_answers_503_in_json(down: Down) -> None:
    with httpx.Client(base_url=down.url, timeout=10) as client:
        answer = client.get(
            "/admin/accounts", headers={"authorization": "Bearer antex_op_" + "x" * 43}
        )
        assert assert_json_503(answer)["type"] == "error"


@pytest.mark.parametrize(
    ("path", "cookie"),
    [("/dashboard/usage", "antex_session"), ("/dashboard/keys", "antex_session"),
     ("/admin/console/accounts", "antex_console")],
)  # fmt: skip
def test_html_pages_answer_a_503_page(down: Down, path: str, cookie: str) -> None:
    with httpx.Client(base_url=down.url, timeout=10, cookies={cookie: "x" * 43}) as client:
        answer = client.get(path)
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert "data store" in answer.text

"""Faults and bad input over a real two-worker server with its own valkey-server: a hung
Valkey, slow bodies, incomplete headers, broken framing and odd path bytes. None of them
may produce a 5xx from input, a hang, or a raw path in the logs."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.embedded_valkey import EmbeddedValkey, free_port
from tests.integration.conftest import Customer, gateway_env, new_customer, run_gateway
from tests.integration.ops_helpers import MESSAGE

DEADLINE_S = 2  # ANTEX_BODY_READ_TIMEOUT and ANTEX_HEADER_READ_TIMEOUT of this server


@dataclass
class Own:
    url: str
    port: int
    valkey: EmbeddedValkey
    log_path: Path


@pytest.fixture(scope="module")
def own(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Own]:
    """A gateway on its own valkey-server, which the tests may freeze."""
    server = EmbeddedValkey(tmp_path_factory.mktemp("own-valkey"), unix_socket=False)
    server.start()
    data_dir = tmp_path_factory.mktemp("own-gateway")
    port = free_port()
    log_path = data_dir / "gateway.log"
    env = gateway_env(
        server.url, simulator, data_dir, port,
        ANTEX_BODY_READ_TIMEOUT=str(DEADLINE_S), ANTEX_HEADER_READ_TIMEOUT=str(DEADLINE_S),
        ANTEX_LOG_LEVEL="info",
    )  # fmt: skip
    try:
        with run_gateway(env, port, log_path) as url:
            yield Own(url, port, server, log_path)
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def own_customer(own: Own) -> Customer:
    return await new_customer(own.valkey.url)


def raw_exchange(port: int, data: bytes, wait: float = 10.0) -> tuple[bytes, bool]:
    """Sends ``data``; returns what came back and whether the server closed the connection
    (False: ``wait`` seconds passed with the connection still open)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(wait)
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            return answer, False
        return answer, True


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def body_of(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in answer else b""


def post_head(path: str, key: str, extra: str) -> bytes:
    return f"POST {path} HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\n{extra}\r\n".encode()


def test_a_slow_body_is_answered_408_in_the_routes_shape_and_closed(
    own: Own, own_customer: Customer
) -> None:
    for path, openai in (("/v1/messages", False), ("/v1/chat/completions", True)):
        head = post_head(path, own_customer.key, "content-length: 100\r\n")
        answer, closed = raw_exchange(own.port, head + b'{"a": 1')
        assert status_of(answer) == 408 and closed
        error = orjson.loads(body_of(answer))
        assert (error["error"]["type"] == "timeout_error") if not openai else error["error"]
    # The sign-in form too, without any credentials.
    head = b"POST /dashboard/signin HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n"
    answer, closed = raw_exchange(
        own.port, head + b"content-type: application/x-www-form-urlencoded\r\n\r\nemail=a"
    )
    assert status_of(answer) in (400, 403, 408) and closed


def test_a_connection_that_never_completes_its_headers_is_closed(own: Own) -> None:
    answer, closed = raw_exchange(own.port, b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n")
    assert closed and status_of(answer) in (0, 408)


FRAMING = {
    "chunk size not hex": b"transfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk size past 64 bits": b"transfer-encoding: chunked\r\n\r\nffffffffffffffffffff\r\nab\r\n",
    "chunk shorter than its size": b"transfer-encoding: chunked\r\n\r\n10\r\nabc\r\n0\r\n\r\n",
    "chunk without its CRLF": b"transfer-encoding: chunked\r\n\r\n3\r\nabcdef0\r\n\r\n",
    "negative chunk size": b"transfer-encoding: chunked\r\n\r\n-5\r\nabc\r\n0\r\n\r\n",
    "truncated chunked body": b"transfer-encoding: chunked\r\n\r\n10\r\nabc",
    "both lengths": b"transfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n3\r\n{}}\r\n0\r\n\r\n",
    "content-length not a number": b"content-length: 1x\r\n\r\n{}",
}


@pytest.mark.parametrize("case", list(FRAMING))
def test_broken_framing_is_refused_without_a_5xx(
    own: Own, own_customer: Customer, case: str
) -> None:
    for path in ("/v1/messages", "/v1/responses"):
        head = post_head(path, own_customer.key, "connection: close\r\n")
        answer, closed = raw_exchange(own.port, head[:-2] + FRAMING[case])
        status = status_of(answer)
        assert closed and status < 500, (case, answer[:200])
        if status >= 400 and body_of(answer):
            error = orjson.loads(body_of(answer))["error"]
            # Bytes the framing still waits for end in the body-read deadline (408).
            assert error["type"] in ("invalid_request_error", "timeout_error"), case


ODD_PATHS = [
    b"/v1/models/caf\xc3\xa9", b"/v1/models/\xff\xfe", b"/admin/accounts/\xc3\xa9",
    b"/v1/caf\xc3\xa9", b"/dashboard/\xe9", b"/v1/messages/\x01", b"/\xc3\xa9?x=1",
    b"/v1/responses/sk_live_abcdef_0123456789abcdef",
]


def test_odd_path_bytes_are_4xx_and_no_path_reaches_the_log(
    own: Own, own_customer: Customer
) -> None:
    for path in ODD_PATHS:
        request = b"GET " + path + b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-api-key: "
        answer, closed = raw_exchange(own.port, request + own_customer.key.encode() + b"\r\n\r\n")
        assert closed and 400 <= status_of(answer) < 500, (path, answer[:200])
        if body_of(answer):
            assert orjson.loads(body_of(answer))["error"]["message"]
    logged = own.log_path.read_bytes()
    assert b"Traceback" not in logged
    for path in ODD_PATHS:
        assert path.split(b"?")[0] not in logged
    assert b"sk_live_abcdef" not in logged


def frozen(valkey: EmbeddedValkey) -> Iterator[None]:
    assert valkey.pid is not None
    os.kill(valkey.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(valkey.pid, signal.SIGCONT)


def test_a_hung_valkey_turns_into_quick_503s_and_recovers(
    own: Own, own_customer: Customer
) -> None:
    headers = {"x-api-key": own_customer.key, "content-type": "application/json"}
    body = orjson.dumps(MESSAGE)
    # A client timeout well under valkey-py's default 5 s socket timeout: a stall fails here.
    with httpx.Client(base_url=own.url, timeout=3.0) as client:
        assert client.post("/v1/messages", content=body, headers=headers).status_code == 200
        timings: list[float] = []
        for _ in frozen(own.valkey):
            for _ in range(6):
                start = time.perf_counter()
                answer = client.post("/v1/messages", content=body, headers=headers)
                timings.append(time.perf_counter() - start)
                assert answer.status_code == 503
                assert answer.json()["error"]["type"] == "api_error"
            start = time.perf_counter()
            assert client.get("/readyz").status_code == 503
            timings.append(time.perf_counter() - start)
        print(f"hung valkey: slowest answer {max(timings):.3f} s over {len(timings)}")
        deadline = time.monotonic() + 10
        while client.post("/v1/messages", content=body, headers=headers).status_code != 200:
            assert time.monotonic() < deadline, "no recovery after SIGCONT"
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 200


BAD_HEADERS = [
    b"x-a\x01b: 1\r\n",
    b"x-api-key: \xff\xfe\r\n",
    b"x-api-key: sk_live_\xc3\xa9_abc\r\n",
    b"content-type: application/json\x00\r\n",
    b"authorization: Bearer \xe2\x80\xae\r\n",
    b"anthropic-version: " + b"9" * 8000 + b"\r\n",
    b"no colon here\r\n",
]


@pytest.mark.parametrize("header", BAD_HEADERS, ids=range(len(BAD_HEADERS)))
def test_bad_header_bytes_are_4xx_or_closed(own: Own, header: bytes) -> None:
    request = (
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 2\r\n"
        + header + b"\r\n{}"
    )  # fmt: skip
    answer, closed = raw_exchange(own.port, request)
    assert closed and status_of(answer) < 500, answer[:200]
    if status_of(answer) >= 400 and body_of(answer):
        assert orjson.loads(body_of(answer))["error"]["message"]

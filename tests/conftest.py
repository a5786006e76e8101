"""Session fixtures: a real embedded valkey-server on a free port, clients to it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import valkey
import valkey.asyncio as avalkey

from gateway.embedded_valkey import EmbeddedValkey


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"), unix_socket=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def valkey_url(valkey_server: EmbeddedValkey) -> str:
    return valkey_server.url


@pytest.fixture
def sync_valkey(valkey_url: str) -> Iterator[valkey.Valkey]:
    client = valkey.Valkey.from_url(valkey_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
async def async_valkey(valkey_url: str) -> AsyncIterator[avalkey.Valkey]:
    client = avalkey.Valkey.from_url(valkey_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def account_id() -> str:
    """A fresh account id: all of an account's keys share its tag, so tests never collide."""
    return uuid.uuid4().hex[:16]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"

"""The store's connection pool on a real Valkey: connections opened ahead of a burst, and a
burst beyond the pool waiting for a connection (within its bound) instead of failing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import valkey
import valkey.exceptions as vexc

from gateway import store


def connected(sync_valkey: valkey.Valkey) -> int:
    return int(sync_valkey.info("clients")["connected_clients"])


async def test_open_connections_opens_them_before_any_command(
    valkey_url: str, sync_valkey: valkey.Valkey
) -> None:
    before = connected(sync_valkey)
    client = store.open_client(valkey_url, pool_wait=0.5, max_connections=32)
    try:
        assert await store.open_connections(client, 8) == 8
        assert connected(sync_valkey) - before == 8
        # Opened once: the commands that follow reuse them.
        await asyncio.gather(*(client.ping() for _ in range(8)))
        assert connected(sync_valkey) - before == 8
    finally:
        await client.aclose()


async def test_a_burst_beyond_the_pool_waits_for_a_connection(valkey_url: str) -> None:
    client = store.open_client(valkey_url, pool_wait=5.0, max_connections=2)
    empty = f"pool-test:{uuid.uuid4().hex}"
    try:
        # Each call holds its connection ~50 ms on the server: 10 calls over 2 connections.
        replies = await asyncio.gather(*(client.blpop([empty], 0.05) for _ in range(10)))
        assert replies == [None] * 10
    finally:
        await client.aclose()


async def test_a_burst_that_outwaits_the_bound_is_an_outage(valkey_url: str) -> None:
    client = store.open_client(valkey_url, pool_wait=0.01, max_connections=1)
    empty = f"pool-test:{uuid.uuid4().hex}"
    try:
        replies: list[Any] = await asyncio.gather(
            *(client.blpop([empty], 0.2) for _ in range(3)), return_exceptions=True
        )
        refused = [r for r in replies if isinstance(r, BaseException)]
        assert refused
        assert all(isinstance(r, store.OUTAGES) for r in refused)
        assert all(isinstance(r, vexc.ConnectionError) for r in refused)
    finally:
        await client.aclose()

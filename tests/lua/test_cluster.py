"""The scripts on a real 3-shard Valkey Cluster: every account's keys share one slot."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import valkey
from valkey.asyncio.cluster import ValkeyCluster

from gateway import errors, keyspace, plans
from gateway.clock import system_clock
from gateway.embedded_valkey import free_port, valkey_binary
from gateway.keyspace import AccountKeys
from gateway.limits import CreditLimiter
from gateway.store import Scripts
from tests.lua.conftest import FakeClock, make_account

pytestmark = pytest.mark.cluster

SHARDS = 3


def _wait_for(check: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except valkey.ValkeyError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"cluster: {what} within {timeout:.0f}s")


@pytest.fixture(scope="module")
def cluster_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    server = valkey_binary()
    cli = str(Path(server).with_name("valkey-cli"))
    procs: list[subprocess.Popen[bytes]] = []
    ports = [free_port() for _ in range(SHARDS)]
    try:
        for port in ports:
            node_dir = tmp_path_factory.mktemp(f"cluster-{port}")
            procs.append(
                subprocess.Popen(
                    [
                        server, "--port", str(port), "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                        "--cluster-config-file", str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout", "5000", "--dir", str(node_dir),
                        "--save", "", "--appendonly", "no",
                        "--logfile", str(node_dir / "valkey.log"),
                    ],
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )  # fmt: skip
        for port in ports:
            client = valkey.Valkey(port=port, socket_connect_timeout=0.2)
            try:
                _wait_for(client.ping, f"node {port} answers")
            finally:
                client.close()
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        for port in ports:
            client = valkey.Valkey(port=port, decode_responses=True)
            try:
                _wait_for(lambda c=client: c.cluster("INFO")["cluster_state"] == "ok", "state ok")
            finally:
                client.close()
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_scripts_run_for_accounts_on_every_shard(cluster_ports: list[int]) -> None:
    client = ValkeyCluster(host="127.0.0.1", port=cluster_ports[0], decode_responses=True)
    try:
        scripts = Scripts()
        await scripts.load(client)
        clock = FakeClock()
        limiter = CreditLimiter(client, scripts, clock)
        # Draw random account ids until every shard owns at least two of them.
        per_shard: dict[str, list[str]] = {}
        while len(per_shard) < SHARDS or min(len(v) for v in per_shard.values()) < 2:
            a = uuid.uuid4().hex[:16]
            per_shard.setdefault(client.get_node_from_key(AccountKeys(a).account).name, []).append(
                a
            )
        accounts = [a for ids in per_shard.values() for a in ids[:4]]
        shards = {client.get_node_from_key(AccountKeys(a).account).name for a in accounts}
        assert len(shards) == SHARDS

        for n, account_id in enumerate(accounts):
            await make_account(client, account_id, limit_5h_mc=10_000, ip_slots=1)
            await client.sadd(keyspace.ACCOUNTS, account_id)
            await client.hset(AccountKeys(account_id).account, "plan", "pro")
            request_id = f"req-{n}"
            admission = await limiter.admit(
                account_id=account_id, key_id="k1", ip_tag="ip-home",
                request_id=request_id, estimate_mc=4000,
            )  # fmt: skip
            assert admission.ip_newly_bound and admission.in_flight == 1
            await limiter.settle(
                account_id=account_id, key_id="k1", request_id=request_id, cost_mc=10_000,
                record={"model": "claude-sonnet-4-6", "output_tokens": 10},
            )  # fmt: skip
            view = await limiter.usage(account_id)
            assert (view.five_hour.used_mc, view.in_flight) == (10_000, 0)
            with pytest.raises(errors.RateLimited, match="5-hour usage limit reached"):
                await limiter.admit(
                    account_id=account_id, key_id="k1", ip_tag="ip-home",
                    request_id="late", estimate_mc=4000,
                )  # fmt: skip
            with pytest.raises(errors.IpLimitReached):
                await limiter.admit(
                    account_id=account_id, key_id="k1", ip_tag="ip-away",
                    request_id="away", estimate_mc=1, check_only=True,
                )  # fmt: skip

        # Every primary lost its script cache (a restart): calls reload transparently.
        await client.script_flush()
        for account_id in accounts:
            await limiter.admit(
                account_id=account_id, key_id="k1", ip_tag="ip-home",
                request_id="after-flush", estimate_mc=1, check_only=True,
            )  # fmt: skip
            assert (await limiter.usage(account_id)).five_hour.used_mc == 10_000

        # A plan edit reaches every account on it, whichever shard holds it.
        updated = await plans.set_plan(client, plans.Plan("pro", 50, 500, 2, 8, 30))
        assert updated >= len(accounts)
        for account_id in accounts:
            assert await client.hget(AccountKeys(account_id).account, "limit_5h") == "50000"
            admission = await limiter.admit(
                account_id=account_id, key_id="k1", ip_tag="ip-home",
                request_id="after-plan", estimate_mc=4000,
            )  # fmt: skip
            assert admission.limit_5h_mc == 50_000
    finally:
        await client.aclose()


def _spawn(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=cwd, env=env)


@pytest.mark.cluster
async def test_gateway_serves_and_bills_on_the_cluster(
    cluster_ports: list[int], tmp_path: Path
) -> None:
    """The whole gateway, not only the scripts, on a valkey+cluster:// URL."""
    import sys

    import httpx
    import orjson

    from gateway import accounts
    from gateway.embedded_valkey import free_port
    from gateway.store import open_client
    from tests.integration.conftest import ROOT, gateway_env, stop, wait_http

    url = f"valkey+cluster://127.0.0.1:{cluster_ports[0]}"
    admin = open_client(url)
    try:
        from gateway.plans import list_plans

        await list_plans(admin)
        account_id = await accounts.create_account(
            admin, f"{uuid.uuid4().hex}@c.test", "pro", now_ms=system_clock()
        )
        created = await accounts.create_key(admin, account_id, "c", rounds=4, now_ms=system_clock())
    finally:
        await admin.aclose()

    sim_port, port = free_port(), free_port()
    sim = _spawn([sys.executable, "-m", "gateway.simulator", "--port", str(sim_port),
                  "--ttft-ms", "20", "--event-delay-ms", "3"], ROOT)
    (tmp_path / "clock").write_text("0")
    env = gateway_env(url, f"http://127.0.0.1:{sim_port}", tmp_path, port, ANTEX_WORKERS="1")
    proc = _spawn([sys.executable, "-m", "gateway", "serve"], ROOT, env)
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/_sim/stats", sim, "simulator")
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, "gateway")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            body = {"model": "claude-sonnet-4-6", "max_tokens": 20,
                    "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
            resp = await http.post(
                "/v1/messages", content=orjson.dumps(body), headers={"x-api-key": created.key}
            )
            assert resp.status_code == 200, resp.text
            deadline = asyncio.get_running_loop().time() + 5
            while True:  # settle runs after the response: poll until it lands
                usage = (await http.get("/v1/usage", headers={"x-api-key": created.key})).json()
                if usage["five_hour"]["utilization"] > 0 or usage["five_hour"]["resets_at"]:
                    break
                assert asyncio.get_running_loop().time() < deadline, usage
                await asyncio.sleep(0.05)
    finally:
        stop(proc)
        stop(sim)

"""The ``antex`` command: serve, the simulator, and operator commands.

Operator commands reach the same Valkey as the server: ``ANTEX_VALKEY_URL``, else the
embedded server serving ``ANTEX_DATA_DIR`` (started for the command when not running).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import valkey.asyncio as avalkey

from gateway import accounts
from gateway.config import Settings
from gateway.embedded_valkey import EmbeddedValkey
from gateway.errors import AntexError
from gateway.plans import list_plans

Command = Callable[[avalkey.Valkey, argparse.Namespace, Settings], Awaitable[Any]]
_COMMANDS: dict[tuple[str, str], Command] = {}


def command(group: str, action: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _COMMANDS[(group, action)] = fn
        return fn

    return register


@contextlib.asynccontextmanager
async def admin_valkey(settings: Settings) -> AsyncIterator[avalkey.Valkey]:
    embedded: EmbeddedValkey | None = None
    url = settings.valkey_url
    if url is None:
        candidate = EmbeddedValkey(Path(settings.data_dir))
        url = candidate.running_url()
        if url is None:
            url = await asyncio.to_thread(candidate.start)
            embedded = candidate
    client = avalkey.Valkey.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def emit(args: argparse.Namespace, value: Any, text: str) -> None:
    if getattr(args, "json", False):
        sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(text + "\n")


@command("account", "create")
async def _account_create(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    await list_plans(client)  # seeds the shipped plans on first use
    account_id = await accounts.create_account(client, args.email, args.plan or s.default_plan)
    account = await accounts.get_account(client, account_id)
    emit(
        args,
        account,
        f"account {account_id} created for {account['email']} on plan {account['plan']}",
    )


@command("key", "create")
async def _key_create(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account_id = await accounts.require_account(client, args.email)
    created = await accounts.create_key(client, account_id, args.name, rounds=s.bcrypt_rounds)
    emit(args, {"key": created.key, "key_id": created.key_id}, created.key)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="antex", description=__doc__)
    sub = parser.add_subparsers(dest="group", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--demo", action="store_true", help="create a demo account and key")

    sim = sub.add_parser("simulator", help="run the Anthropic-wire upstream simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8090)
    sim.add_argument("--workers", type=int, default=1)

    account = sub.add_parser("account", help="manage accounts").add_subparsers(
        dest="action", required=True
    )
    create = account.add_parser("create", help="create an account")
    create.add_argument("email")
    create.add_argument("--plan", help="plan name (default: ANTEX_DEFAULT_PLAN)")
    create.add_argument("--json", action="store_true")

    key = sub.add_parser("key", help="manage API keys").add_subparsers(dest="action", required=True)
    kcreate = key.add_parser("create", help="create a key; it is printed once")
    kcreate.add_argument("email", help="account email (or id)")
    kcreate.add_argument("--name", default="default")
    kcreate.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.group == "serve":
            from gateway.observability import configure_logging
            from gateway.serve import serve

            configure_logging(settings.log_level, settings.log_format)
            serve(settings, demo=args.demo)
            return 0
        if args.group == "simulator":
            from gateway import simulator

            simulator.run(host=args.host, port=args.port, workers=args.workers)
            return 0
        handler = _COMMANDS[(args.group, args.action)]

        async def run() -> None:
            async with admin_valkey(settings) as client:
                await handler(client, args, settings)

        asyncio.run(run())
    except AntexError as exc:
        sys.stderr.write(f"antex: {exc.message}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

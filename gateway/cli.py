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

from gateway import accounts, admin_tokens, layout
from gateway.clock import make_clock
from gateway.config import Settings
from gateway.dashboard import signin
from gateway.embedded_valkey import EmbeddedValkey
from gateway.errors import AntexError, InvalidRequest
from gateway.limits import CreditLimiter, rfc3339
from gateway.plans import Plan, get_plan, list_plans, set_plan
from gateway.scripts import Scripts
from gateway.valkey_client import open_client

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
    client = open_client(url, decode_responses=True)
    try:
        # Operator commands never write into a layout they do not understand.
        layout.refuse_newer(await layout.stamped_version(client) or layout.UNVERSIONED)
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


def _now(s: Settings) -> int:
    return make_clock(s.clock_file)()


def _at(ms: Any) -> str:
    return rfc3339(int(ms)) if ms else "-"


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """Plain aligned columns; ``columns`` are (field, heading) pairs."""
    if not rows:
        return "(none)"
    cells = [[h for _, h in columns]]
    for row in rows:
        cells.append(["-" if row.get(f) in (None, "", []) else _cell(row[f]) for f, _ in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    )


def _cell(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _account_text(a: dict[str, Any]) -> str:
    lines = [
        f"account   {a['id']}  {a['email']}",
        f"plan      {a['plan'] or '-'} ({a['subscription']}), period ends {a['period_end'] or '-'}",
        f"credits   5h {a['credits_5h'] or '-'} / 7d {a['credits_7d'] or '-'}, "
        f"concurrency {a['concurrency']}",
        f"IP slots  {a['ip_slots']} per key + {a['extra_ip_slots']} extra",
    ]
    if "keys" in a:
        lines += ["", _keys_text(a["keys"])]
    return "\n".join(lines)


def _keys_text(keys: list[dict[str, Any]]) -> str:
    rows = [
        {
            **k,
            "created": _at(k["created_ms"]),
            "used": _at(k["last_used_ms"]),
            "ips": f"{len(k['bound_ips'])}/{k['ip_slots']} {','.join(k['bound_ips'])}".strip(),
        }
        for k in keys
    ]
    return table(
        rows,
        [
            ("key_id", "KEY ID"),
            ("name", "NAME"),
            ("status", "STATUS"),
            ("created", "CREATED"),
            ("used", "LAST USED"),
            ("ips", "IPS"),
            ("quarantine_reason", "QUARANTINE"),
        ],
    )


async def _account(client: avalkey.Valkey, ref: str) -> str:
    return await accounts.require_account(client, ref)


@command("account", "create")
async def _account_create(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    await list_plans(client)  # seeds the shipped plans on first use
    plan = None if args.no_plan else (args.plan or s.default_plan)
    now = _now(s)
    account_id = await accounts.create_account(client, args.email, plan, now_ms=now)
    account = await accounts.show_account(client, account_id, now_ms=now)
    emit(
        args,
        account,
        f"account {account_id} created for {account['email']} on plan "
        f"{account['plan'] or '(none)'}",
    )


@command("account", "show")
async def _account_show(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account = await accounts.show_account(
        client, await _account(client, args.email), now_ms=_now(s)
    )
    emit(args, account, _account_text(account))


@command("account", "list")
async def _account_list(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    found = await accounts.list_accounts(client, now_ms=_now(s))
    text = table(
        found,
        [
            ("id", "ID"),
            ("email", "EMAIL"),
            ("plan", "PLAN"),
            ("subscription", "STATE"),
            ("period_end", "PERIOD END"),
            ("extra_ip_slots", "EXTRA SLOTS"),
        ],
    )
    emit(args, found, text)


@command("account", "plan")
async def _account_plan(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account = await accounts.assign_plan(
        client,
        await _account(client, args.email),
        args.plan,
        now_ms=_now(s),
        period_days=args.period_days,
    )
    emit(
        args,
        account,
        f"{account['email']} is on plan {account['plan']} until {account['period_end']}",
    )


@command("account", "extend")
async def _account_extend(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account_id = await _account(client, args.email)
    days = args.days
    if days is None:
        plan = await get_plan(
            client, (await accounts.get_account(client, account_id)).get("plan", "")
        )
        if plan is None:
            raise InvalidRequest("the account's plan no longer exists; pass --days")
        days = plan.period_days
    account = await accounts.extend_plan(client, account_id, days, now_ms=_now(s))
    emit(
        args,
        account,
        f"{account['email']}: plan {account['plan']} now runs until {account['period_end']}",
    )


@command("account", "cancel")
async def _account_cancel(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account = await accounts.cancel_plan(client, await _account(client, args.email), now_ms=_now(s))
    emit(args, account, f"{account['email']}: plan {account['plan']} cancelled")


@command("key", "create")
async def _key_create(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account_id = await _account(client, args.email)
    created = await accounts.create_key(
        client, account_id, args.name, rounds=s.bcrypt_rounds, now_ms=_now(s)
    )
    # stdout carries the key alone so scripts can capture it; it is never shown again.
    sys.stderr.write(f"key {created.key_id}: save it now, it cannot be shown again\n")
    emit(
        args,
        {"account_id": account_id, "key_id": created.key_id, "name": args.name, "key": created.key},
        created.key,
    )


@command("key", "list")
async def _key_list(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    found = await accounts.list_keys(client, await _account(client, args.email))
    emit(args, found, _keys_text(found))


@command("key", "revoke")
async def _key_revoke(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account_id, key_id = await accounts.find_key(client, args.key_id)
    await accounts.revoke_key(client, account_id, key_id, now_ms=_now(s))
    emit(args, await accounts.get_key(client, account_id, key_id), f"key {key_id} revoked")


@command("key", "release")
@command("quarantine", "release")
async def _key_release(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account_id, key_id = await accounts.find_key(client, args.key_id)
    key = await accounts.release_key(client, account_id, key_id, now_ms=_now(s))
    emit(args, key, f"key {key_id} released from quarantine")


@command("ip", "list")
async def _ip_list(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account_id, key_id = await accounts.find_key(client, args.key_id)
    found = await accounts.list_ips(client, account_id, key_id)
    head = f"key {key_id}: {len(found['bound'])} of {found['ip_slots']} IP slots bound"
    emit(args, found, head + "\n" + table(found["bound"], [("ip", "IP"), ("bound_at", "BOUND AT")]))


@command("ip", "unbind")
async def _ip_unbind(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    if (args.ip is None) == (not args.all):
        raise InvalidRequest("give one IP to unbind, or --all")
    account_id, key_id = await accounts.find_key(client, args.key_id)
    removed = await accounts.unbind_ips(client, account_id, key_id, args.ip, now_ms=_now(s))
    emit(
        args,
        {"key_id": key_id, "unbound": removed},
        f"key {key_id}: unbound {', '.join(removed) or 'nothing'}",
    )


@command("ip", "add-slots")
async def _ip_add_slots(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    if (args.key is None) == (args.account is None):
        raise InvalidRequest("give --key KEY_ID or --account EMAIL")
    if args.key is not None:
        account_id, key_id = await accounts.find_key(client, args.key)
        total = await accounts.add_key_ip_slots(client, account_id, key_id, args.count)
        key = await accounts.get_key(client, account_id, key_id)
        value = {"key_id": key_id, "extra_ip_slots": total, "ip_slots": key["ip_slots"]}
        text = f"key {key_id}: {total} extra IP slots, {key['ip_slots']} in all"
    else:
        account_id = await _account(client, args.account)
        total = await accounts.add_account_ip_slots(client, account_id, args.count)
        value = {"account_id": account_id, "extra_ip_slots": total}
        text = f"account {account_id}: {total} extra IP slots for every key"
    emit(args, value, text)


@command("quarantine", "list")
async def _quarantine_list(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account_id = await _account(client, args.account) if args.account else None
    found = await accounts.list_quarantined(client, account_id)
    rows = [{**k, "since": _at(k["quarantined_ms"])} for k in found]
    text = table(
        rows,
        [
            ("key_id", "KEY ID"),
            ("email", "EMAIL"),
            ("name", "NAME"),
            ("since", "SINCE"),
            ("quarantine_reason", "REASON"),
        ],
    )
    value: dict[str, Any] = {"quarantined": found}
    if account_id is not None:
        events = await accounts.account_events(client, account_id, args.count)
        value["events"] = events
        text += "\n\nevents, newest first:\n" + table(
            events,
            [
                ("at", "AT"),
                ("type", "TYPE"),
                ("key_id", "KEY ID"),
                ("ips", "IPS"),
                ("reason", "REASON"),
            ],
        )
    emit(args, value, text)


@command("admin-token", "create")
async def _token_create(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    token_id, token = await admin_tokens.create_token(client, args.name, now_ms=_now(s))
    sys.stderr.write(f"operator token {token_id}: save it now, it cannot be shown again\n")
    emit(args, {"token_id": token_id, "name": args.name, "token": token}, token)


@command("admin-token", "list")
async def _token_list(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    found = await admin_tokens.list_tokens(client)
    rows = [{**t, "created": _at(t["created_ms"])} for t in found]
    emit(
        args,
        found,
        table(rows, [("token_id", "TOKEN ID"), ("name", "NAME"), ("created", "CREATED")]),
    )


@command("admin-token", "revoke")
async def _token_revoke(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    await admin_tokens.revoke_token(client, args.token_id)
    emit(
        args,
        {"token_id": args.token_id, "revoked": True},
        f"operator token {args.token_id} revoked",
    )


@command("plan", "set")
async def _plan_set(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    current = await get_plan(client, args.name)
    plan = Plan(
        name=args.name,
        credits_5h=args.credits_5h,
        credits_7d=args.credits_7d,
        ip_slots=args.ip_slots,
        concurrency=args.concurrency,
        period_days=args.period_days or (current.period_days if current else 30),
        description=args.description
        if args.description is not None
        else (current.description if current else ""),
    )
    updated = await set_plan(client, plan)
    emit(
        args,
        {"plan": orjson.loads(plan.to_json()), "accounts_updated": updated},
        f"plan {plan.name} saved; limits copied into {updated} accounts",
    )


@command("plan", "list")
async def _plan_list(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    found = [orjson.loads(p.to_json()) for p in await list_plans(client)]
    text = table(
        found,
        [
            ("name", "PLAN"),
            ("credits_5h", "CREDITS 5H"),
            ("credits_7d", "CREDITS 7D"),
            ("ip_slots", "IP SLOTS"),
            ("concurrency", "CONCURRENCY"),
            ("period_days", "DAYS"),
            ("description", "DESCRIPTION"),
        ],
    )
    emit(args, found, text)


@command("usage", "show")
async def _usage(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    account_id = await _account(client, args.email)
    limiter = CreditLimiter(client, Scripts(), make_clock(s.clock_file))
    report = await accounts.usage_report(client, limiter, account_id, requests=args.requests)
    emit(args, report, _usage_text(report))


def _usage_text(r: dict[str, Any]) -> str:
    u, c = r["usage"], r["credits"]
    lines = [
        f"account {r['account_id']} ({r['email']}), plan {u['plan']['name'] or '-'}, "
        f"period ends {u['plan']['period_end'] or '-'}"
    ]
    for title, name in (("5-hour", "five_hour"), ("weekly", "seven_day")):
        w = u[name]
        resets = f"resets at {w['resets_at']}" if w["resets_at"] else "nothing used"
        lines.append(
            f"{title:7} {w['utilization']:5.1f}% used ({c[name]['used']:g} of "
            f"{c[name]['limit']} credits), {resets}"
        )
    lines += [f"in flight: {u['requests_in_flight']}", "", "recent requests:"]
    rows = [
        {
            **e,
            "tokens": f"{e.get('input_tokens', 0)}/{e.get('output_tokens', 0)}",
            "credits": e.get("credits_mc", 0) / 1000,
        }
        for e in r["recent_requests"]
    ]
    lines.append(
        table(
            rows,
            [
                ("at", "AT"),
                ("model", "MODEL"),
                ("route", "ROUTE"),
                ("status", "STATUS"),
                ("tokens", "IN/OUT"),
                ("credits", "CREDITS"),
                ("latency_ms", "MS"),
                ("key_id", "KEY ID"),
            ],
        )
    )
    return "\n".join(lines)


@command("login-link", "issue")
async def _login_link(client: avalkey.Valkey, args: argparse.Namespace, s: Settings) -> None:
    # For gateways without ANTEX_SMTP_URL: the operator hands the link over themselves.
    account_id = await accounts.require_account(client, args.email)
    link = await signin.issue_link(client, account_id, s.base_url, make_clock(s.clock_file)())
    emit(args, {"link": link, "expires_in_s": signin.LINK_TTL_MS // 1000}, link)


def _operator_parsers(sub: Any) -> None:
    """The operator groups; every command takes --json for machine-readable output."""

    def group(name: str, help_text: str) -> Any:
        return sub.add_parser(name, help=help_text).add_subparsers(dest="action", required=True)

    def action(parent: Any, name: str, help_text: str, *positional: str) -> Any:
        p = parent.add_parser(name, help=help_text)
        for arg in positional:
            p.add_argument(arg)
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    account = group("account", "manage accounts and their subscriptions")
    create = action(account, "create", "create an account", "email")
    choice = create.add_mutually_exclusive_group()
    choice.add_argument("--plan", help="plan name (default: ANTEX_DEFAULT_PLAN)")
    choice.add_argument("--no-plan", action="store_true", help="no plan until one is assigned")
    action(account, "show", "show an account and its keys", "email")
    action(account, "list", "list accounts")
    plan = action(account, "plan", "put an account on a plan for a fresh period", "email", "plan")
    plan.add_argument("--period-days", type=int, help="default: the plan's period")
    extend = action(account, "extend", "extend the plan period (renews a cancelled one)", "email")
    extend.add_argument("--days", type=int, help="default: the plan's period")
    action(account, "cancel", "end the subscription now", "email")

    key = group("key", "manage API keys")
    kcreate = action(key, "create", "create a key; it is printed once", "email")
    kcreate.add_argument("--name", default="default")
    action(key, "list", "list an account's keys (never the secrets)", "email")
    action(key, "revoke", "revoke a key on every worker at once", "key_id")
    action(key, "release", "release a key from quarantine", "key_id")

    ip = group("ip", "IP bindings of keys")
    action(ip, "list", "bound IPs of a key", "key_id")
    unbind = action(ip, "unbind", "free one bound IP (IPv6: its /64) or all", "key_id")
    unbind.add_argument("ip", nargs="?")
    unbind.add_argument("--all", action="store_true")
    slots = action(ip, "add-slots", "add (or with a negative count remove) extra IP slots")
    slots.add_argument("count", type=int)
    target = slots.add_mutually_exclusive_group(required=True)
    target.add_argument("--key", help="key id: slots for this key only")
    target.add_argument("--account", help="account email or id: slots for every key")

    quarantine = group("quarantine", "quarantined keys and security events")
    qlist = action(quarantine, "list", "quarantined keys (with --account: and its events)")
    qlist.add_argument("--account", help="account email or id")
    qlist.add_argument("--count", type=int, default=50, help="events to show")
    action(quarantine, "release", "release a key from quarantine", "key_id")

    tokens = group("admin-token", "operator tokens for the /admin API")
    tcreate = action(tokens, "create", "create a token; it is printed once")
    tcreate.add_argument("--name", default="operator")
    action(tokens, "list", "list tokens (never the tokens themselves)")
    action(tokens, "revoke", "revoke a token", "token_id")

    plans = group("plan", "the plan catalog")
    pset = action(plans, "set", "create or update a plan", "name")
    for flag in ("--credits-5h", "--credits-7d", "--ip-slots", "--concurrency"):
        pset.add_argument(flag, type=int, required=True)
    pset.add_argument("--period-days", type=int)
    pset.add_argument("--description")
    action(plans, "list", "list plans")

    usage = sub.add_parser("usage", help="an account's windows and recent requests")
    usage.add_argument("email")
    usage.add_argument("--requests", type=int, default=10, help="recent requests to show")
    usage.add_argument("--json", action="store_true", help="print JSON")
    usage.set_defaults(action="show")

    link = sub.add_parser("login-link", help="print a one-time dashboard sign-in link (15 min)")
    link.add_argument("email", help="account email (or id)")
    link.add_argument("--json", action="store_true", help="print JSON")
    link.set_defaults(action="issue")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="antex", description=__doc__)
    sub = parser.add_subparsers(dest="group", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--demo", action="store_true", help="create a demo account and key")

    sim = sub.add_parser("simulator", help="run the Anthropic-wire upstream simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8090)
    sim.add_argument("--workers", type=int, default=1)

    _operator_parsers(sub)
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

"""`make loadtest`: starts Valkey, the simulator and `antex serve` on free loopback ports,
runs each locust profile headless for a bounded time, keeps locust's CSV/HTML in
loadtests/out/ and writes loadtests/results/summary.md (expected 429s apart from failures).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import stack
from gateway.plans import Plan

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
TINY_PLAN = Plan("loadtest-tiny", 3, 3, 2, 4, 30, "load test: a window that runs out fast")


@dataclass(frozen=True)
class Profile:
    name: str
    locustfile: str
    users: int
    spawn_rate: int
    accounts: int
    keys_per_account: int
    plan: Plan
    expect_refusals: bool
    note: str


PROFILES = (
    Profile(
        "claude_code",
        "claude_code.py",
        40,
        10,
        3,
        2,
        stack.BIG_PLAN,
        False,
        "40 simulated Claude Code users on 6 keys of 3 accounts (about 7 users per key), "
        "streaming tool loops with growing context, count_tokens, Haiku titles; 80 % "
        "Sonnet, 10 % Opus, 10 % Haiku; 1–4 s think time.",
    ),
    Profile(
        "openai_codex",
        "openai_codex.py",
        20,
        10,
        1,
        2,
        stack.BIG_PLAN,
        False,
        "20 users on 2 keys: Codex-style /v1/responses streaming function-call loops and "
        "streaming /v1/chat/completions with tools.",
    ),
    Profile(
        "window_exhaustion",
        "window_exhaustion.py",
        20,
        10,
        4,
        1,
        TINY_PLAN,
        True,
        "20 users on 4 accounts of a 3-credit plan (concurrency 4): each window admits a "
        "few requests, then refuses with 429 rate_limit_error.",
    ),
)


def log(message: str) -> None:
    print(f"[loadtest {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_profile(
    p: Profile, url: str, keys: list[str], seconds: int, gateway: stack.Service
) -> dict[str, Any]:
    prefix = OUT / p.name
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE / p.locustfile),
        "--headless",
        "-u",
        str(p.users),
        "-r",
        str(p.spawn_rate),
        "-t",
        f"{seconds}s",
        "--host",
        url,
        "--csv",
        str(prefix),
        "--html",
        str(prefix) + ".html",
        "--only-summary",
        "--stop-timeout",
        "10",
        "--loglevel",
        "WARNING",
    ]
    # Keys reach locust through its environment only: never a file, never a command line.
    env = stack.clean_env(LOADTEST_KEYS=",".join(keys))
    cpu0 = gateway.cpu_seconds()
    started = time.monotonic()
    proc = subprocess.run(
        argv,
        cwd=stack.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    wall = time.monotonic() - started
    (OUT / f"{p.name}.log").write_text(proc.stdout[-20000:] + proc.stderr[-20000:])
    stats = list(csv.DictReader(open(f"{prefix}_stats.csv")))
    failures = list(csv.DictReader(open(f"{prefix}_failures.csv")))
    return {
        "profile": p,
        "stats": stats,
        "failures": failures,
        "exit": proc.returncode,
        "wall": wall,
        "gateway_cpu_s": gateway.cpu_seconds() - cpu0,
    }


def _int(row: dict[str, str], col: str) -> int:
    return int(float(row.get(col) or 0))


def summarize(results: list[dict[str, Any]], seconds: int, meta: dict[str, str]) -> tuple[str, int]:
    lines = [
        f"# Load test summary — {meta['date']}",
        "",
        f"`make loadtest` (`python -m loadtests.run`): each profile ran headless for {seconds} s "
        f"against `antex serve` (2 granian workers) with the shipped simulator as upstream and an "
        f"embedded Valkey, all started on free loopback ports on this shared 2-core machine "
        f"({meta['machine']}). Locust's CSV and HTML reports are in `loadtests/out/` (not "
        "committed).",
        "",
        "A 429 whose body is an Anthropic `rate_limit_error` (an exhausted window or the plan's "
        "concurrency cap) is expected and counted on its own `EXPECTED` row; on the OpenAI "
        "routes a 404 would mean the route is not built yet and is counted the same way. "
        "Anything else that is not a 200 is a failure.",
        "",
        "Source addresses: locust cannot bind several source IPs, so every simulated user comes "
        "from 127.0.0.1 and a fleet is modelled as many users per key over a few keys and "
        "accounts (IP binding still runs on every request, against one address).",
        "",
    ]
    total_failures = 0
    for r in results:
        p: Profile = r["profile"]
        rows = [s for s in r["stats"] if s["Name"] != "Aggregated"]
        agg = next((s for s in r["stats"] if s["Name"] == "Aggregated"), None)
        real = [s for s in rows if s["Type"] != "EXPECTED"]
        exp = [s for s in rows if s["Type"] == "EXPECTED"]
        fails = sum(_int(s, "Failure Count") for s in real)
        reqs = sum(_int(s, "Request Count") for s in real)
        refusals = sum(_int(s, "Request Count") for s in exp if s["Name"].startswith("429"))
        problems = []
        if fails:
            problems.append(f"{fails} failed requests")
        if p.expect_refusals and not refusals:
            problems.append("no window refusal was seen")
        if r["exit"] not in (0, 1):
            problems.append(f"locust exited with {r['exit']}")
        if not reqs:
            problems.append("no request completed")
        total_failures += len(problems)
        verdict = "PASS" if not problems else "FAIL: " + "; ".join(problems)
        agg_rps = float(agg["Requests/s"]) if agg else 0.0
        lines += [
            f"## {p.name} — {verdict}",
            "",
            p.note,
            "",
            f"{reqs:,} requests, {fails} failures, {refusals:,} expected 429s; "
            f"{agg_rps:.0f} events/s; the gateway used {r['gateway_cpu_s']:.1f} CPU s over the "
            f"profile ({r['gateway_cpu_s'] / max(1, reqs) * 1e3:.1f} ms per request, idle time "
            "between think pauses included).",
            "",
            "| type | name | requests | failures | median ms | p95 ms | p99 ms | req/s |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for s in rows:
            lines.append(
                f"| {s['Type']} | {s['Name']} | {_int(s, 'Request Count'):,} | "
                f"{_int(s, 'Failure Count')} | {s['50%']} | {s['95%']} | {s['99%']} | "
                f"{float(s['Requests/s']):.1f} |"
            )
        if r["failures"]:
            lines += ["", "Failures:", ""]
            lines += [
                f"- {f['Method']} {f['Name']}: {f['Error']} × {f['Occurrences']}"
                for f in r["failures"]
            ]
        lines.append("")
    lines += [
        "## Overall",
        "",
        "PASS: no unexpected failure."
        if not total_failures
        else f"FAIL: {total_failures} profile problem(s) above.",
        "",
    ]
    return "\n".join(lines), total_failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=60, help="run time per profile")
    parser.add_argument("--profiles", default=",".join(p.name for p in PROFILES))
    parser.add_argument("--summary", type=Path, default=HERE / "results" / "summary.md")
    args = parser.parse_args(argv)
    wanted = set(args.profiles.split(","))
    OUT.mkdir(parents=True, exist_ok=True)
    stack.raise_nofile_limit()
    work = Path(tempfile.mkdtemp(prefix="antex-load-"))
    logs = work / "logs"
    services: list[stack.Service] = []
    valkey = None
    results = []
    try:
        valkey, _ = stack.start_valkey(work)
        # Burst unless a profile asks per request (x-sim-burst: 0 with its own event delay).
        sim = stack.start_simulator(logs, burst=True)
        services.append(sim)
        antex = stack.start_antex(logs, work, valkey.url, sim.url)
        services.append(antex)
        for p in PROFILES:
            if p.name not in wanted:
                continue
            keys: list[str] = []
            for i in range(p.accounts):
                _, made = stack.customer(
                    valkey.url, f"{p.name}-{i}@antex.load", p.plan, keys=p.keys_per_account
                )
                keys += made
            log(f"{p.name}: {p.users} users for {args.seconds} s")
            results.append(run_profile(p, antex.url, keys, args.seconds, antex))
    finally:
        for service in reversed(services):
            service.stop()
        if valkey is not None:
            valkey.stop()
    import platform

    meta = {
        "date": dt.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
    }
    text, problems = summarize(results, args.seconds, meta)
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(text)
    log(f"summary: {args.summary} ({'PASS' if not problems else 'FAIL'})")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

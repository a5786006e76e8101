"""The *bare* baseline: blacksheep on granian (ASGI, uvloop) with an aiohttp passthrough and
no logic at all (no auth, no Valkey, no usage scan), so "antex ≥ 50 % of bare" has a floor.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator

import aiohttp
from blacksheep import Application, Content, Request, Response, StreamedContent

UPSTREAM_ENV = "BENCH_BARE_UPSTREAM"
# Everything but hop-by-hop and credential headers goes upstream, as a passthrough would.
_DROP = frozenset({b"host", b"content-length", b"connection", b"transfer-encoding",
                   b"x-api-key", b"authorization"})  # fmt: skip


def create_app() -> Application:
    app = Application(show_error_details=False)
    upstream = os.environ[UPSTREAM_ENV].rstrip("/")
    state: dict[str, aiohttp.ClientSession] = {}

    async def on_start(_: Application) -> None:
        state["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
            auto_decompress=False,
        )

    async def on_stop(_: Application) -> None:
        await state["session"].close()

    app.on_start += on_start
    app.on_stop += on_stop

    async def healthz(request: Request) -> Response:
        return Response(200, [], Content(b"text/plain", b"ok"))

    async def messages(request: Request) -> Response:
        body = await request.read() or b""
        headers = {"x-api-key": "bare"}
        for name, value in request.scope["headers"]:
            if name.lower() not in _DROP:
                headers[name.decode("latin-1")] = value.decode("latin-1")
        resp = await state["session"].post(upstream + "/v1/messages", data=body, headers=headers)
        ctype = resp.headers.get("content-type", "application/json")
        if not ctype.startswith("text/event-stream"):
            data = await resp.read()
            resp.release()
            return Response(resp.status, [], Content(ctype.encode(), data))

        async def provider() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.content.iter_any():
                    yield chunk
            finally:
                resp.release()

        return Response(resp.status, [], StreamedContent(b"text/event-stream", provider))

    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/messages", messages)
    return app


def main() -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ[UPSTREAM_ENV] = args.upstream
    Granian(
        "bench.bare_app:create_app", factory=True, interface=Interfaces.ASGI,
        address="127.0.0.1", port=args.port, workers=args.workers, loop=Loops.uvloop,
        backlog=4096, log_access=False,
    ).serve()  # fmt: skip


if __name__ == "__main__":
    main()

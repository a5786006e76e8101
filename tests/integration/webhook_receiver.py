"""A small webhook receiver (stdlib http.server in a thread) that keeps what it was sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass
class Delivery:
    received: float  # time.monotonic()
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    attempts: int = 0
    fail_first: int = 0  # answer 503 to this many attempts before accepting
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of_type(self, event_type: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.json()["type"] == event_type]

    def wait_for(
        self, event_type: str, match: dict[str, Any], timeout: float = 15
    ) -> Delivery:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for d in self.of_type(event_type):
                if all(d.json()["data"].get(k) == v for k, v in match.items()):
                    return d
            time.sleep(0.01)
        raise AssertionError(f"no {event_type} {match} within {timeout}s")


@contextmanager
def webhook_receiver(fail_first: int = 0) -> Iterator[Receiver]:
    box = Receiver(fail_first=fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with box.lock:
                box.attempts += 1
                refuse = box.attempts <= box.fail_first
                if not refuse:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    box.deliveries.append(Delivery(time.monotonic(), headers, body))
            self.send_response(503 if refuse else 204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/antex"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        server.shutdown()
        server.server_close()

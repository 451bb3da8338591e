"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 that can fail, or never answer."""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Receiver:
    """A programmable webhook receiver: answers `status` (after `fail_first` answers of `fail_status`),
    or never answers at all while `hang` is set, until the test ends."""

    status: int = 200
    fail_first: int = 0
    fail_status: int = 500
    hang: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    attempts: list[tuple[str, int]] = field(default_factory=list)  # (Idempotency-Key, status answered)
    bodies: list[Any] = field(default_factory=list)  # JSON bodies of the 2xx-answered requests
    user_agents: list[str] = field(default_factory=list)
    got_request: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def answer(self, key: str, agent: str, body: bytes) -> int | None:
        with self.lock:
            self.user_agents.append(agent)
            if self.hang:
                self.attempts.append((key, 0))
                return None
            status = self.fail_status if len(self.attempts) < self.fail_first else self.status
            self.attempts.append((key, status))
            if 200 <= status < 300:
                self.bodies.append(json.loads(body))
            return status

    def delivered_keys(self) -> list[str]:
        with self.lock:
            return [key for key, status in self.attempts if 200 <= status < 300]

    def attempts_per_key(self) -> Counter[str]:
        with self.lock:
            return Counter(key for key, _ in self.attempts)


@contextlib.contextmanager
def running_receiver() -> Iterator[Receiver]:
    """A `Receiver` serving on 127.0.0.1 (a free port) until the block ends; `url` is where to POST."""
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = state.answer(
                self.headers.get("Idempotency-Key", ""), self.headers.get("User-Agent", ""), body
            )
            state.got_request.set()
            if status is None:
                state.release.wait(30)
                self.close_connection = True
                return
            self.send_response(status)
            for name, value in state.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)

"""A real local HTTP server for tests that stand in for a remote JSON API (an LLM, Telegram).

It listens on 127.0.0.1, port 0, in a thread of the test process, records every request and
answers with whatever the test's ``respond`` function returns. Use it as a context manager;
leaving the block stops the server and joins its thread.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # decoded JSON, or None
    #: ``time.monotonic()`` when the server had read the request: what tests order events by.
    received_at: float = 0.0


#: (request, number of earlier requests) -> (HTTP status, JSON body)
Respond = Callable[[Request, int], tuple[int, Any]]


class FakeJSONServer:
    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = Request("POST", self.path, headers, json.loads(raw) if raw else None,
                                  time.monotonic())
                with server._lock:
                    earlier = len(server.requests)
                    server.requests.append(request)
                status, payload = server.respond(request, earlier)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def recorded(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def __enter__(self) -> FakeJSONServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)

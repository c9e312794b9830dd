"""A fault-injecting proxy in front of the real OpenBao server. A TEST DOUBLE.

Everything a real server can show (KV, versions, namespaces, logins,
denials, throttling with quotas, sealing) is tested against the real
server, tests/support/openbao.py. This proxy forwards each request there unchanged
and records it, except where a ``Fault`` matches the request's path: then
it answers what no real server can be made to answer on demand, and only
that:

- a hang (an answer that never comes, so the deadline must end the wait);
- a 5xx other than sealing (a crashed storage backend, a load balancer's
  502 page);
- a malformed answer (HTML, JSON of the wrong shape), an oversized one, a
  redirect, a status Vault does not use;
- an error text quoting the credentials sent (no Vault or OpenBao version
  does; a buggy proxy or plugin could, so the plugin blanks them anyway);
- a request held until the test has changed the server (``hold``), so that
  the next one meets a state the real server keeps only for a moment: a KV
  mount's upgrade window, 0.1 s for 1,000 keys.

A fault with ``times`` answers that many requests, then passes the rest.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Fault:
    path: str  # an API path prefix, such as "secret/data/" (after /v1/)
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    hang: bool = False  # accept the request, never answer
    times: int | None = None  # answer this many matching requests, then pass them through
    hold: threading.Event | None = None  # pass the request through once this is set (at most 10 s)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0  # what the client was answered
    at: float = field(default_factory=time.monotonic)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stops reading (the oversized answer, the deadline) is expected


class FaultProxy:
    def __init__(self, target: str, *faults: Fault) -> None:
        self.faults = list(faults)
        self.seen: list[Seen] = []
        self.released = threading.Event()
        self._lock = threading.Lock()
        proxy, upstream = self, urlsplit(target)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
                proxy.seen.append(seen)
                fault = proxy.match(self.path)
                if fault is not None and fault.hold is not None:
                    fault.hold.wait(10)
                    fault = None
                if fault is not None and fault.hang:
                    proxy.released.wait()
                    return
                if fault is not None:
                    status, headers, data = fault.status, list(fault.headers.items()), fault.body
                else:
                    conn = http.client.HTTPConnection(upstream.hostname or "", upstream.port, timeout=10)
                    conn.request(self.command, self.path, body, dict(self.headers.items()))
                    upstream_answer = conn.getresponse()
                    status, headers, data = (
                        upstream_answer.status,
                        upstream_answer.getheaders(),
                        upstream_answer.read(),
                    )
                    conn.close()
                seen.status = status
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_LIST = answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def match(self, path: str) -> Fault | None:
        with self._lock:
            fault = next((f for f in self.faults if path.startswith("/v1/" + f.path)), None)
            if fault is not None and fault.times is not None:
                if fault.times <= 0:
                    return None
                fault.times -= 1
            return fault

    def paths(self) -> list[str]:
        return [f"{s.method} {s.path.split('?')[0].removeprefix('/v1/')}" for s in self.seen]

    def __enter__(self) -> FaultProxy:
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

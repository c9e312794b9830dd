"""For the server's tests: ``nomad-secrets serve`` as a real process on
127.0.0.1, and clients that speak its protocols as the CI systems do.

The Drone signer here is written from the published algorithm (the cavage
draft as drone-go's plugin/internal/client uses 99designs/httpsignatures-go:
HMAC-SHA256 over ``name: value`` lines of the five headers, base64), not
from the server's code, so that the two can disagree.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SECRET_MEDIA = "application/vnd.drone.secret.v1+json"
ADMISSION_MEDIA = "application/vnd.drone.admission.v1+json"
DRONE_HEADERS = ("accept", "accept-encoding", "content-type", "date", "digest")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_secret(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


# --- Drone's side ------------------------------------------------------------


def http_date(when: float | None = None) -> str:
    return formatdate(time.time() if when is None else when, usegmt=True)


def drone_headers(
    secret: str,
    body: bytes,
    accept: str = SECRET_MEDIA,
    encoding: str = "identity",
    date: str | None = None,
    signed: tuple[str, ...] = DRONE_HEADERS,
) -> dict[str, str]:
    """The headers drone-go's client sends with ``body``, signed with ``secret``."""
    headers = {
        "Accept": accept,
        "Accept-Encoding": encoding,
        "Content-Type": "application/json",
        "Digest": "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode(),
        "Date": date or http_date(),
    }
    lower = {k.lower(): v for k, v in headers.items()}
    signing = "\n".join(f"{name}: {lower[name]}" for name in signed)
    mac = base64.b64encode(hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()).decode()
    headers["Signature"] = (
        f'keyId="hmac-key",algorithm="hmac-sha256",signature="{mac}",headers="{" ".join(signed)}"'
    )
    return headers


def secret_body(
    path: str,
    name: str = "",
    repo: str = "octocat/hello-world",
    event: str = "push",
    branch: str = "main",
    source_repo: str = "",
) -> bytes:
    """A request body as drone-go marshals it (most fields left out)."""
    build = {
        "id": 7,
        "event": event,
        "target": branch,
        "ref": f"refs/heads/{branch}",
        "source_repo": source_repo,
    }
    return json.dumps(
        {
            "path": path,
            "name": name,
            "repo": {"id": 1, "slug": repo, "namespace": repo.split("/")[0]},
            "build": build,
        }
    ).encode()


# --- services the server asks (test doubles) ---------------------------------


class JsonService:
    """A ThreadingHTTPServer on 127.0.0.1 that answers GETs with JSON: the
    subclass's ``answer(path, headers)`` gives (status, body)."""

    def __init__(self) -> None:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = service.answer(self.path, {k.lower(): v for k, v in self.headers.items()})
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, Any]:
        raise NotImplementedError

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


# --- the server process --------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    """``nomad-secrets serve --config <config>`` on 127.0.0.1:<port>: this
    checkout's, or ``program`` (another installation's ``nomad-secrets``,
    run from the config's directory)."""

    config: Path
    port: int
    extra_args: tuple[str, ...] = ()
    ca_file: Path | None = None
    program: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    @property
    def scheme(self) -> str:
        return "https" if self.ca_file else "http"

    def start(self, timeout: float = 20.0) -> Server:
        command = [self.program] if self.program else [sys.executable, "-m", "nomad_secrets"]
        self.proc = subprocess.Popen(
            [*command, "serve", "--config", str(self.config), *self.extra_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=self.config.parent if self.program else ROOT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        for stream, lines in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=_collect, args=(stream, lines), daemon=True).start()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError(f"the server exited {self.proc.returncode}: {''.join(self.stderr)}")
            try:
                if self.get("/healthz").status == 200:
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the server did not start: {''.join(self.stderr)}")

    def connection(self, timeout: float = 15.0, source: str | None = None) -> http.client.HTTPConnection:
        """A connection to the server, from ``source`` (another address of
        127.0.0.0/8: another peer) when given."""
        address = None if source is None else (source, 0)
        if self.ca_file is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout, source_address=address)
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=timeout, context=context, source_address=address
        )

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        conn: http.client.HTTPConnection | None = None,
    ) -> Answer:
        own = conn is None
        conn = conn or self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            answer = conn.getresponse()
            return Answer(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
        finally:
            if own:
                conn.close()

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return self.request("GET", path, headers=headers)

    def drone_secret(self, secret: str, body: bytes, **kw: Any) -> Answer:
        return self.request("POST", "/drone/secret", body, drone_headers(secret, body, **kw))

    def access_log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.stdout) if line.startswith("{")]

    def log_mark(self) -> int:
        """How many access log lines there are once no more are arriving:
        where the next request's lines will start."""
        count = -1
        while count != len(self.access_log()):
            count = len(self.access_log())
            time.sleep(0.1)
        return count

    def logged(self, since: int, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The access log lines after the first ``since``, once ``count`` of
        them have arrived (the server writes each before it answers, but the
        pipe reaches this process a little later)."""
        end = time.monotonic() + timeout
        while len(self.access_log()) < since + count and time.monotonic() < end:
            time.sleep(0.02)
        return self.access_log()[since:]

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _collect(stream: Any, lines: list[str]) -> None:
    for line in iter(stream.readline, b""):
        lines.append(line.decode("utf-8", "replace"))


def server_config(
    tmp: Path,
    body: str,
    *,
    port: int | None = None,
    tls: tuple[Path, Path] | None = None,
    server_extra: str = "",
) -> tuple[Path, int]:
    """A config file with ``[server]`` on 127.0.0.1 (plain HTTP, or TLS with
    the given certificate and key) and ``body`` after it."""
    port = port or free_port()
    transport = f'tls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"\n' if tls else "plain_http = true\n"
    text = f'[server]\nlisten = "127.0.0.1:{port}"\n{transport}{server_extra}\n{body}'
    path = tmp / "config.toml"
    write_secret(path, text)
    return path, port
